"""A control group per attempt: its limits, its end, what it used.

Rules: an attempt's cgroup is made under the worker's own cgroup in each
hierarchy (read from /proc/self/cgroup), so the worker's own limits still
hold over it, in a folder named for the worker (`uds-<node id>`), so that a
later run of the same worker finds and ends what an earlier one left. cgroup
v2 is used where the machine has controllers in it, v1 otherwise. Ending an
attempt is always: freeze, SIGKILL every member, thaw, wait until empty,
then remove the folders. Nothing here decides what a limit is worth; the
host passes the numbers in.
"""
from __future__ import annotations

import os
import pathlib
import signal
import time
from dataclasses import dataclass, field

from uds.wire.resources import ResourceLimits, Usage, format_bytes

CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup")
# v1 hierarchies an attempt joins; memory, pids and freezer are required.
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
V1_REQUIRED = ("memory", "pids", "freezer")
V2_REQUIRED = ("memory", "pids")
CFS_PERIOD_US = 100_000
# How long ending a cgroup may take before it is reported stuck.
EMPTY_TIMEOUT_S = 10.0
EMPTY_POLL_S = 0.002


class CgroupError(Exception):
    """This machine's cgroups cannot hold an attempt; says why."""


@dataclass(frozen=True)
class CgroupLayout:
    """Where attempt cgroups go: one folder per hierarchy (v1) or one (v2)."""

    version: int
    bases: dict[str, pathlib.Path] = field(default_factory=dict)   # controller (v1) or "" (v2) -> folder

    @property
    def label(self) -> str:
        return f"cgroup v{self.version}"

    def attempt(self, name: str) -> "AttemptCgroup":
        return AttemptCgroup(self, {controller: base / name for controller, base in self.bases.items()})

    def leftovers(self) -> list["AttemptCgroup"]:
        """Attempt cgroups an earlier run of this worker left."""
        names: set[str] = set()
        for base in self.bases.values():
            try:
                names.update(entry.name for entry in base.iterdir() if entry.is_dir())
            except OSError:
                continue
        return [self.attempt(name) for name in sorted(names)]


    def remove_bases(self) -> None:
        for base in self.bases.values():
            try:
                base.rmdir()
            except OSError:
                pass


def own_cgroups(text: str) -> dict[str, str]:
    """From /proc/self/cgroup: controller -> path ("" for the v2 line)."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            paths[""] = path
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    return paths


def v1_mounts(mountinfo: str) -> dict[str, pathlib.Path]:
    """controller -> where its v1 hierarchy is mounted, from /proc/self/mountinfo."""
    mounts: dict[str, pathlib.Path] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields_right = right.split()
        if len(fields_right) < 3 or fields_right[0] != "cgroup":
            continue
        mountpoint = pathlib.Path(left.split()[4])
        for option in fields_right[2].split(","):
            mounts.setdefault(option, mountpoint)
    return mounts


def v2_mount(mountinfo: str) -> pathlib.Path | None:
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            mountpoint = pathlib.Path(left.split()[4])
            if set(_read(mountpoint / "cgroup.controllers").split()) >= set(V2_REQUIRED):
                return mountpoint
    return None


def detect(worker: str) -> CgroupLayout:
    """The layout for this worker's attempts; raises CgroupError when the
    machine has neither a usable v2 mount nor the v1 controllers needed."""
    own = own_cgroups(_read(pathlib.Path("/proc/self/cgroup")))
    mountinfo = _read(pathlib.Path("/proc/self/mountinfo"))
    folder = f"uds-{worker}"
    unified = v2_mount(mountinfo)
    if unified is not None and "" in own:
        return _prepare_v2(unified / own[""].lstrip("/"), folder)
    mounts = v1_mounts(mountinfo)
    missing = [name for name in V1_REQUIRED if name not in mounts or name not in own]
    if missing:
        raise CgroupError(f"no cgroup v2 controllers and no cgroup v1 {', '.join(missing)} hierarchy")
    bases = {}
    for controller in V1_CONTROLLERS:
        if controller in mounts and controller in own:
            bases[controller] = mounts[controller] / own[controller].lstrip("/") / folder
    try:
        for base in bases.values():
            base.mkdir(exist_ok=True)
    except OSError as fault:
        raise CgroupError(f"cannot create attempt cgroups: {fault}") from None
    return CgroupLayout(1, bases)


def _prepare_v2(own: pathlib.Path, folder: str) -> CgroupLayout:
    """v2 allows processes only in leaves: the worker moves to a leaf of its
    own, and the controllers are enabled for the attempts' parent."""
    try:
        base = own / folder
        if (own / "cgroup.type").exists():     # not the root, which may hold processes and children
            leaf = own / "worker"
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(str(os.getpid()))
        (own / "cgroup.subtree_control").write_text("+memory +pids +cpu")
        base.mkdir(exist_ok=True)
        (base / "cgroup.subtree_control").write_text("+memory +pids +cpu")
    except OSError as fault:
        raise CgroupError(f"cannot create attempt cgroups under {own}: {fault}") from None
    return CgroupLayout(2, {"": base})


@dataclass
class AttemptCgroup:
    layout: CgroupLayout
    folders: dict[str, pathlib.Path]
    limits: ResourceLimits = ResourceLimits()

    def create(self, limits: ResourceLimits) -> None:
        """Make the folders and write the limits (0: none)."""
        self.limits = limits
        if not limits.millicpus and self.folders.get("cpu") not in (None, self.folders.get("cpuacct")):
            # A v1 cpu hierarchy of its own holds only the quota (cpuacct
            # measures): without one, a folder there is two system calls and
            # a join for nothing.
            del self.folders["cpu"]
        for folder in self.folders.values():
            folder.mkdir(exist_ok=True)
        if self.layout.version == 2:
            self._limit_v2(limits)
        else:
            self._limit_v1(limits)

    def _limit_v1(self, limits: ResourceLimits) -> None:
        memory = self.folders["memory"]
        if limits.memory_bytes:
            _write(memory / "memory.limit_in_bytes", limits.memory_bytes)
            if (memory / "memory.memsw.limit_in_bytes").exists():
                _write(memory / "memory.memsw.limit_in_bytes", limits.memory_bytes)   # no swap beyond it
        _write(self.folders["pids"] / "pids.max", limits.pids or "max")
        if limits.millicpus and "cpu" in self.folders:
            _write(self.folders["cpu"] / "cpu.cfs_period_us", CFS_PERIOD_US)
            _write(self.folders["cpu"] / "cpu.cfs_quota_us", limits.millicpus * CFS_PERIOD_US // 1000)

    def _limit_v2(self, limits: ResourceLimits) -> None:
        folder = self.folders[""]
        if limits.memory_bytes:
            _write(folder / "memory.max", limits.memory_bytes)
            if (folder / "memory.swap.max").exists():
                _write(folder / "memory.swap.max", 0)
        _write(folder / "pids.max", limits.pids or "max")
        if limits.millicpus and (folder / "cpu.max").exists():
            _write(folder / "cpu.max", f"{limits.millicpus * CFS_PERIOD_US // 1000} {CFS_PERIOD_US}")

    @property
    def procs_files(self) -> list[pathlib.Path]:
        """Where a process writes its pid to join this cgroup in every hierarchy."""
        return [folder / "cgroup.procs" for folder in self.folders.values()]

    def members(self) -> list[int]:
        pids: set[int] = set()
        for path in self.procs_files:
            pids.update(int(item) for item in _read(path).split())
        return sorted(pids)

    def signal(self, signum: int, uid: int | None = None) -> None:
        """Send `signum` to every member (only those running as `uid`, when given)."""
        for pid in self.members():
            if uid is not None and _uid_of(pid) != uid:
                continue
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def end(self, timeout_s: float = EMPTY_TIMEOUT_S) -> bool:
        """Freeze, SIGKILL every member, thaw, wait until empty. True once empty."""
        if not any(folder.exists() for folder in self.folders.values()):
            return True
        if not self.members():
            # The usual end: the box's pid namespace died with its first
            # process. An empty cgroup gains a member only by a member's fork
            # (or root's write), so there is nothing to freeze.
            return True
        self._freeze(True)
        self.signal(signal.SIGKILL)
        self._freeze(False)
        deadline = time.monotonic() + timeout_s
        while self.members():
            if time.monotonic() > deadline:
                return False
            self.signal(signal.SIGKILL)     # one forked between the read and the freeze
            time.sleep(EMPTY_POLL_S)
        return True

    def _freeze(self, frozen: bool) -> None:
        try:
            if self.layout.version == 2:
                _write(self.folders[""] / "cgroup.freeze", 1 if frozen else 0)
            else:
                _write(self.folders["freezer"] / "freezer.state", "FROZEN" if frozen else "THAWED")
        except OSError:
            pass

    def remove(self) -> None:
        for folder in self.folders.values():
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                # A v1 memory cgroup may need a moment after its last member.
                time.sleep(0.01)
                try:
                    folder.rmdir()
                except OSError:
                    pass

    def usage(self) -> Usage:
        """CPU time and peak memory of every member, living or gone."""
        if self.layout.version == 2:
            stat = _keyed(_read(self.folders[""] / "cpu.stat"))
            peak = _int(_read(self.folders[""] / "memory.peak"))
            return Usage(cpu_user_s=stat.get("user_usec", 0) / 1e6, cpu_system_s=stat.get("system_usec", 0) / 1e6,
                         peak_memory_bytes=peak)
        peak = _int(_read(self.folders["memory"] / "memory.max_usage_in_bytes"))
        if "cpuacct" not in self.folders:
            return Usage(peak_memory_bytes=peak)
        cpuacct = self.folders["cpuacct"]
        user, system = _read(cpuacct / "cpuacct.usage_user"), _read(cpuacct / "cpuacct.usage_sys")
        if user and system:     # nanoseconds, where the kernel has them
            return Usage(cpu_user_s=_int(user) / 1e9, cpu_system_s=_int(system) / 1e9, peak_memory_bytes=peak)
        stat = _keyed(_read(cpuacct / "cpuacct.stat"))
        ticks = os.sysconf("SC_CLK_TCK")
        return Usage(cpu_user_s=stat.get("user", 0) / ticks, cpu_system_s=stat.get("system", 0) / ticks,
                     peak_memory_bytes=peak)

    def cpu_seconds(self) -> float:
        """User and system time so far (nanosecond counter where there is one)."""
        if self.layout.version == 1 and "cpuacct" in self.folders:
            return _int(_read(self.folders["cpuacct"] / "cpuacct.usage")) / 1e9
        usage = self.usage()
        return usage.cpu_user_s + usage.cpu_system_s

    def limit_reached(self) -> str:
        """Which memory or pids limit the attempt ran into, for people; "" if none."""
        limits = self.limits
        if self.layout.version == 2:
            memory_events = _keyed(_read(self.folders[""] / "memory.events"))
            oom_killed = memory_events.get("oom_kill", 0) > 0
            pids_hit = _keyed(_read(self.folders[""] / "pids.events")).get("max", 0) > 0
        else:
            oom_control = _keyed(_read(self.folders["memory"] / "memory.oom_control"))
            oom_killed = oom_control.get("oom_kill", 0) > 0 or (
                "oom_kill" not in oom_control and _int(_read(self.folders["memory"] / "memory.failcnt")) > 0
                and oom_control.get("under_oom", 0) > 0)
            pids_hit = _keyed(_read(self.folders["pids"] / "pids.events")).get("max", 0) > 0
        if limits.memory_bytes and oom_killed:
            return memory_reason(limits.memory_bytes, self.usage().peak_memory_bytes)
        if limits.pids and pids_hit:
            return pids_reason(limits.pids)
        return ""


def memory_reason(limit: int, peak: int) -> str:
    return f"memory limit {format_bytes(limit)} exceeded (peak {format_bytes(peak)})"


def pids_reason(limit: int) -> str:
    return f"pids limit {limit} reached"


def cpu_time_reason(limit_s: int) -> str:
    return f"cpu time limit {limit_s} s exceeded"


def disk_reason(limit: int) -> str:
    return f"disk limit {format_bytes(limit)} exceeded"


def _uid_of(pid: int) -> int | None:
    try:
        for line in _read_strict(pathlib.Path(f"/proc/{pid}/status")).splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _keyed(text: str) -> dict[str, int]:
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            values[parts[0]] = int(parts[1])
    return values


def _int(text: str) -> int:
    text = text.strip()
    return int(text) if text.isdigit() else 0


def _read_strict(path: pathlib.Path) -> str:
    with open(path) as file:
        return file.read()


def _read(path: pathlib.Path) -> str:
    try:
        return _read_strict(path)
    except OSError:
        return ""


def _write(path: pathlib.Path, value: object) -> None:
    with open(path, "w") as file:
        file.write(str(value))
