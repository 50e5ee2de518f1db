"""The box each attempt runs in: a user of its own, a private mount
namespace built by bubblewrap, a filesystem of its own and a cgroup.

Rules: a slot is a uid and a small ext4 filesystem (a sparse file on a loop
device) that holds the attempt's working folder, output folder and /tmp; a
slot serves one attempt at a time and is emptied before it serves the next.
Inside the box the system is read-only, the three folders are the only
writable places, the inputs are read-only at /uds/inputs, the program is
/uds/program, and the worker's data and key folders are hidden. The host's
root is shown by one recursive read-only bind, with the box's own places
mounted over it (bubblewrap reads the mount table once per bind, so fewer
binds is the cheaper box). The program
joins its cgroup before bubblewrap starts (a /bin/sh prologue writes its own
pid into cgroup.procs and sets the rlimits, then execs), so nothing it
forks is ever outside it, and the worker forks without a preexec function.
"""
from __future__ import annotations

import logging
import os
import pathlib
import shutil
import stat
import subprocess
import threading
from dataclasses import dataclass
from typing import Mapping, Sequence

from uds.wire.resources import ResourceLimits
from uds.worker.cgroups import AttemptCgroup, CgroupError, CgroupLayout, detect

log = logging.getLogger("worker")

BWRAP = "/usr/bin/bwrap"
SETPRIV = "/usr/bin/setpriv"
# What /etc/resolv.conf may link to, shown in a box that has the network.
RESOLVER_PATHS = ("/run/systemd/resolve", "/run/resolvconf")
SHELL = "/bin/sh"
# One uid per slot. Without a range in the cluster file, each worker takes a
# block of its own from its node id, so that workers sharing a machine do not
# share uids: far above the ranges Debian hands out to people and services.
DEFAULT_FIRST_UID = 200_000
DEFAULT_UID_BLOCKS = 8192
# The slot filesystem's size when the cluster names no disk limit (a sparse file).
# ext4's journal and tables in a slot filesystem, beside the files.
SLOT_OVERHEAD_BYTES = 16 << 20
# Slots beyond the worker's chunk slots: an ended attempt's slot is emptied
# on a helper thread while the next attempt may already start.
SPARE_SLOTS = 2
# Fixed places inside the box.
INPUTS_PATH = "/uds/inputs"
OUTPUT_PATH = "/uds/out"
WORK_PATH = "/uds/work"
PROGRAM_PATH = "/uds/program"
# Paths of the host that the box rebuilds itself instead of showing.
_OWN_ROOT_ENTRIES = {"proc", "dev", "tmp", "uds"}


class SandboxUnavailable(Exception):
    """The sandbox cannot be built on this machine; says why."""


class NoFreeSlot(Exception):
    """Every slot is busy or still being emptied."""


@dataclass
class Slot:
    index: int
    uid: int
    root: pathlib.Path          # the slot filesystem's mount point
    image: pathlib.Path
    base_used_bytes: int = 0    # what an empty slot filesystem reports as used

    @property
    def work(self) -> pathlib.Path:
        return self.root / "work"

    @property
    def output(self) -> pathlib.Path:
        return self.root / "out"

    @property
    def tmp(self) -> pathlib.Path:
        return self.root / "tmp"

    def used_bytes(self) -> int:
        """Bytes the attempt's three folders take, from the filesystem's own count."""
        stats = os.statvfs(self.root)
        return max(0, (stats.f_blocks - stats.f_bfree) * stats.f_frsize - self.base_used_bytes)


def default_uids(node_hex: str, count: int) -> range:
    """The block of `count` uids a worker uses when no range is named."""
    stride = max(64, count)
    first = DEFAULT_FIRST_UID + (int(node_hex, 16) % DEFAULT_UID_BLOCKS) * stride
    return range(first, first + count)


def parse_uid_range(text: str) -> range:
    """"61000-61063" (inclusive) or "61000": the uids slots may use."""
    first, _, last = text.strip().partition("-")
    try:
        start, end = int(first), int(last or first)
    except ValueError:
        raise ValueError(f"slot uids: expected a range such as 61000-61063, got {text!r}") from None
    if not 0 < start <= end < 1 << 31:
        raise ValueError(f"slot uids: expected a range of positive uids such as 61000-61063, got {text!r}")
    return range(start, end + 1)


def bwrap_arguments(root_entries: Mapping[str, str | None] | None, hidden: Sequence[str], slot: Slot,
                    program: str, inputs_dir: str, network: bool) -> list[str]:
    """bubblewrap's arguments for one attempt. root_entries None: the host's
    root is shown read-only by one recursive bind (the worker made the /uds
    mount points in it, see `make_mount_points`); otherwise name under / ->
    its symlink target, or None for a folder or file shown read-only, each
    its own bind on a root of bubblewrap's own (a slower fallback)."""
    arguments = [BWRAP]
    if root_entries is None:
        arguments += ["--ro-bind", "/", "/"]
    else:
        for name, target in sorted(root_entries.items()):
            if name in _OWN_ROOT_ENTRIES:
                continue
            if target is not None:
                arguments += ["--symlink", target, f"/{name}"]
            else:
                arguments += ["--ro-bind", f"/{name}", f"/{name}"]
    # /dev and /proc of its own cover the host's (in the whole-root bind, below them).
    # /dev/shm of its own for POSIX semaphores and shared memory (Python's
    # multiprocessing): a tmpfs, so its pages count against the memory limit.
    arguments += ["--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm", "--proc", "/proc"]
    for path in hidden:
        arguments += ["--tmpfs", path]
    if root_entries is None or "run" in root_entries:
        # A socket file under /run (the system bus, say) is reachable from any
        # network namespace: the box gets an empty /run, and with the network
        # only the resolver's files that /etc/resolv.conf may point into.
        arguments += ["--tmpfs", "/run"]
        if network:
            for path in RESOLVER_PATHS:
                arguments += ["--ro-bind-try", path, path]
    if root_entries is not None:
        arguments += ["--dir", "/uds"]
    arguments += ["--ro-bind", inputs_dir, INPUTS_PATH,
                  "--ro-bind", program, PROGRAM_PATH,
                  "--bind", str(slot.work), WORK_PATH,
                  "--bind", str(slot.output), OUTPUT_PATH,
                  "--bind", str(slot.tmp), "/tmp",
                  *(["--bind", str(slot.tmp), "/var/tmp"] if root_entries is None or "var" in root_entries else []),
                  "--remount-ro", "/",
                  "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
    if not network:
        arguments.append("--unshare-net")
    arguments += ["--die-with-parent", "--new-session", "--chdir", WORK_PATH, "--",
                  SETPRIV, "--reuid", str(slot.uid), "--regid", str(slot.uid), "--clear-groups",
                  "--no-new-privs", "--bounding-set", "-all", "--"]
    return arguments


def make_mount_points(root: pathlib.Path = pathlib.Path("/")) -> bool:
    """The empty folders and file the box mounts over at /uds, made once in
    the host's root (root's, 0755), so that the host's root can be shown by
    one recursive read-only bind: a read-only root has no room to make them
    in the box. False where they cannot be made or are not what they should
    be (a read-only root, a link, another owner): the box then builds a root
    of its own, one bind per entry."""
    try:
        (root / "uds").mkdir(mode=0o755, exist_ok=True)
        for path in (WORK_PATH, OUTPUT_PATH, INPUTS_PATH):
            (root / path.lstrip("/")).mkdir(mode=0o755, exist_ok=True)
        program = root / PROGRAM_PATH.lstrip("/")
        if not program.exists():
            os.close(os.open(program, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
    except OSError:
        return False
    expected = {WORK_PATH: stat.S_ISDIR, OUTPUT_PATH: stat.S_ISDIR, INPUTS_PATH: stat.S_ISDIR,
                PROGRAM_PATH: stat.S_ISREG, "/uds": stat.S_ISDIR, "/var/tmp": stat.S_ISDIR}
    for path, is_kind in expected.items():
        try:
            info = os.lstat(root / path.lstrip("/"))
        except OSError:
            return False
        if not is_kind(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022 and path != "/var/tmp":
            return False
    return True


def launch_script(procs_files: Sequence[pathlib.Path], limits: ResourceLimits) -> str:
    """The /bin/sh prologue: join the cgroup, set the rlimits, exec "$@"."""
    lines = [f"echo $$ > {_quote(str(path))} || exit 126" for path in procs_files]
    if limits.cpu_time_s:
        lines.append(f"ulimit -t {limits.cpu_time_s}")
    if limits.disk_bytes:
        lines.append(f"ulimit -f {max(1, limits.disk_bytes // 512)}")     # in 512-byte blocks
    if limits.pids:
        # Per uid, and the slot's uid is this attempt's alone. Root's own
        # processes (bubblewrap) are exempt; the cgroup's pids.max is not.
        # dash calls RLIMIT_NPROC -p, bash -u.
        lines.append(f"{{ ulimit -u {limits.pids} 2>/dev/null || ulimit -p {limits.pids}; }}")
    lines.append('exec "$@"')
    return "; ".join(lines)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def root_entries() -> dict[str, str | None]:
    entries: dict[str, str | None] = {}
    for name in os.listdir("/"):
        path = f"/{name}"
        if os.path.islink(path):
            entries[name] = os.readlink(path)
        elif os.path.isdir(path) or os.path.isfile(path):
            entries[name] = None
    return entries


def hidden_paths(paths: Sequence[pathlib.Path]) -> list[str]:
    """Host folders covered by an empty tmpfs in the box. Those under /tmp
    (replaced by the slot's own), /dev or /proc are not there to hide."""
    shown = []
    for path in paths:
        resolved = path.resolve()
        if not resolved.exists() or resolved.parts[1:2] in (("tmp",), ("dev",), ("proc",)) \
                or resolved == pathlib.Path("/"):
            continue
        shown.append(str(resolved))
    return sorted(set(shown))


class Sandbox:
    """Slots, cgroups and the command that starts a program in its box."""

    def __init__(self, node_hex: str, data: pathlib.Path, hidden: Sequence[pathlib.Path], slots: int,
                 uids: range, slot_disk_bytes: int) -> None:
        if os.geteuid() != 0:
            raise SandboxUnavailable("the worker is not root, so it cannot run programs as slot users")
        for tool in (BWRAP, SETPRIV, SHELL, "/sbin/mkfs.ext4" if os.path.exists("/sbin/mkfs.ext4")
                     else "/usr/sbin/mkfs.ext4"):
            if not os.access(tool, os.X_OK):
                raise SandboxUnavailable(f"{tool} is missing (scripts/install-system-deps.sh installs it)")
        if len(uids) < slots + SPARE_SLOTS:
            raise SandboxUnavailable(f"slot uids: {len(uids)} uids for {slots + SPARE_SLOTS} slots")
        try:
            self.cgroups: CgroupLayout = detect(node_hex)
        except CgroupError as fault:
            raise SandboxUnavailable(str(fault)) from None
        self.root_entries: dict[str, str | None] | None = None if make_mount_points() else root_entries()
        self.hidden = hidden_paths([data, *hidden])
        self.slot_root = data / "slots"
        self.slots: list[Slot] = []
        self.free: list[Slot] = []
        self._lock = threading.Lock()
        _unmount_below(self.slot_root)
        shutil.rmtree(self.slot_root, ignore_errors=True)
        self.slot_root.mkdir(parents=True)
        try:
            for index in range(slots + SPARE_SLOTS):
                self.slots.append(_make_slot(self.slot_root, index, uids[index], slot_disk_bytes))
        except (OSError, subprocess.CalledProcessError) as fault:
            self.close()
            raise SandboxUnavailable(f"cannot make the slot filesystems: {_describe(fault)}") from None
        self.free = list(self.slots)
        self.slot_disk_bytes = slot_disk_bytes
        self.label = f"bubblewrap, {self.cgroups.label}"

    def end_leftovers(self) -> int:
        """End and remove the attempt cgroups an earlier run left; how many."""
        leftovers = self.cgroups.leftovers()
        for cgroup in leftovers:
            cgroup.end()
            cgroup.remove()
        return len(leftovers)

    def acquire(self) -> Slot:
        with self._lock:
            if not self.free:
                raise NoFreeSlot("every sandbox slot is busy or still being emptied")
            return self.free.pop(0)

    def empty(self, slot: Slot) -> None:
        """Remove what the last attempt left in the slot (any thread)."""
        for folder in (slot.work, slot.output, slot.tmp):
            _empty_folder(folder)

    def release(self, slot: Slot) -> None:
        """Give an emptied slot back (any thread)."""
        with self._lock:
            self.free.append(slot)

    def cgroup(self, name: str, limits: ResourceLimits) -> AttemptCgroup:
        cgroup = self.cgroups.attempt(name)
        cgroup.end()        # a leftover of the same name
        cgroup.create(limits)
        return cgroup

    def command(self, slot: Slot, cgroup: AttemptCgroup, limits: ResourceLimits, program: str,
                args: Sequence[str], inputs_dir: str, network: bool) -> list[str]:
        script = launch_script(cgroup.procs_files, limits)
        box = bwrap_arguments(self.root_entries, self.hidden, slot, program, inputs_dir, network)
        return [SHELL, "-c", script, "uds-attempt", *box, PROGRAM_PATH, *args]

    def close(self) -> None:
        """Unmount the slot filesystems and remove this worker's cgroup folders
        (the attempts in them have ended)."""
        for slot in self.slots:
            _unmount(slot.root)
            slot.image.unlink(missing_ok=True)
        self.cgroups.remove_bases()


def clear_after(data: pathlib.Path, node_hex: str) -> None:
    """What a worker killed without warning left: the processes in its attempt
    cgroups, the cgroups, its slot filesystems. For tests and `uds dev --stop`."""
    try:
        layout = detect(node_hex)
    except CgroupError:
        layout = None
    if layout is not None:
        for cgroup in layout.leftovers():
            cgroup.end()
            cgroup.remove()
        layout.remove_bases()
    _unmount_below(data / "slots")


def slot_image_bytes(disk_bytes: int) -> int:
    """The slot filesystem's size: room for `disk_bytes` of files beside
    ext4's own journal and tables, so the limit, not the filesystem, is what
    a job meets first."""
    return disk_bytes + disk_bytes // 16 + SLOT_OVERHEAD_BYTES


def _make_slot(root: pathlib.Path, index: int, uid: int, disk_bytes: int) -> Slot:
    image, mountpoint = root / f"{index}.img", root / str(index)
    with open(image, "wb") as file:
        file.truncate(slot_image_bytes(disk_bytes))
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1",
                    str(image)], check=True, capture_output=True)
    mountpoint.mkdir(mode=0o700)
    # noinit_itable: no background zeroing of the inode tables that mkfs left
    # for later (written through the loop device while the first
    # chunks run); a slot filesystem is made anew at every start, so the
    # check that zeroing helps has nothing to check.
    subprocess.run(["mount", "-o", "loop,nosuid,nodev,noinit_itable", str(image), str(mountpoint)], check=True,
                   capture_output=True)
    os.chmod(mountpoint, 0o700)
    shutil.rmtree(mountpoint / "lost+found", ignore_errors=True)
    slot = Slot(index, uid, mountpoint, image)
    for folder in (slot.work, slot.output, slot.tmp):
        folder.mkdir(mode=0o700)
        os.chown(folder, uid, uid)
    slot.tmp.chmod(0o1777)
    slot.base_used_bytes = slot.used_bytes()
    return slot


def _empty_folder(folder: pathlib.Path) -> None:
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for name in entries:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            # A folder the program made unreadable to itself is still root's to remove.
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                path.unlink()
            except OSError:
                pass


def _unmount(path: pathlib.Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _unmount_below(root: pathlib.Path) -> None:
    """Unmount the slot filesystems a crashed run left mounted."""
    try:
        mounts = pathlib.Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = str(root.resolve()) + "/"
    for line in mounts:
        parts = line.split()
        if len(parts) > 1 and parts[1].startswith(prefix):
            _unmount(pathlib.Path(parts[1]))


def _describe(fault: Exception) -> str:
    if isinstance(fault, subprocess.CalledProcessError):
        return f"{' '.join(map(str, fault.cmd[:2]))}: {(fault.stderr or b'').decode(errors='replace').strip()}"
    return str(fault)
