"""The sandbox around an attempt: its pure parts, and real programs run in a
real box (bubblewrap, slot user, slot filesystem, cgroup) with per-job
limits, as the worker's host runs them. Skipped where the box cannot be
built; cleaned up (cgroups, mounts, processes) even when a test fails."""
import os
import pathlib
import subprocess
import time
from dataclasses import dataclass

import pytest

from uds.wire import cluster as cluster_file
from uds.wire.resources import NO_LIMITS, ResourceLimits, Usage
from uds.worker.attempts import AttemptKey
from uds.worker.cgroups import (
    cpu_time_reason, disk_reason, memory_reason, own_cgroups, pids_reason, v1_mounts,
)
from uds.worker.host import account, watch_limits
from uds.worker.outputs import OutputRefused, collect, open_output
from uds.worker.runner import RunningChunk, chunk_environment, launch
from uds.worker.sandbox import (
    INPUTS_PATH, OUTPUT_PATH, Sandbox, SandboxUnavailable, Slot, bwrap_arguments, hidden_paths, make_mount_points,
    default_uids, launch_script, parse_uid_range,
)

MiB = 1 << 20


# ---- pure parts ----------------------------------------------------------------

def _slot() -> Slot:
    return Slot(0, 61234, pathlib.Path("/data/slots/0"), pathlib.Path("/data/slots/0.img"))


def test_bwrap_arguments_hide_the_data_and_cut_the_network_unless_asked():
    entries = {"usr": None, "bin": "usr/bin", "etc": None, "tmp": None, "proc": None}
    arguments = bwrap_arguments(entries, ["/var/lib/uds"], _slot(), "/data/programs/p", "/data/mnt/a", False)
    joined = " ".join(arguments)
    assert "--ro-bind /usr /usr" in joined and "--symlink usr/bin /bin" in joined
    assert "--ro-bind /tmp /tmp" not in joined and "--ro-bind /proc" not in joined
    assert "--tmpfs /var/lib/uds" in joined
    assert "--ro-bind /data/mnt/a /uds/inputs" in joined and "--ro-bind /data/programs/p /uds/program" in joined
    assert "--bind /data/slots/0/work /uds/work" in joined and "--bind /data/slots/0/tmp /tmp" in joined
    assert "--unshare-net" in arguments
    assert arguments[arguments.index("--reuid") + 1] == "61234"
    assert arguments.index("--remount-ro") < arguments.index("--")
    assert "--unshare-net" not in bwrap_arguments(entries, [], _slot(), "/p", "/i", True)



def test_the_whole_root_is_one_read_only_bind_with_the_boxs_own_places_over_it():
    arguments = bwrap_arguments(None, ["/var/lib/uds"], _slot(), "/data/programs/p", "/data/mnt/a", False)
    joined = " ".join(arguments)
    assert arguments[1:4] == ["--ro-bind", "/", "/"] and joined.count("--ro-bind / /") == 1
    assert "--symlink" not in arguments and "--dir" not in arguments
    # What the host's root holds there is covered: its /dev, /proc, /tmp, /var/tmp and the data.
    for covering in ("--dev /dev", "--proc /proc", "--tmpfs /var/lib/uds", "--bind /data/slots/0/tmp /tmp",
                     "--bind /data/slots/0/tmp /var/tmp"):
        assert joined.index(covering) > joined.index("--ro-bind / /")
    assert "--ro-bind /data/mnt/a /uds/inputs" in joined and "--unshare-net" in arguments
    assert "--tmpfs /run" in joined and "/run/systemd/resolve" not in joined     # no host sockets
    with_network = " ".join(bwrap_arguments(None, [], _slot(), "/p", "/i", True))
    assert "--tmpfs /run --ro-bind-try /run/systemd/resolve /run/systemd/resolve" in with_network


def test_the_mount_points_are_made_once_and_refused_when_not_roots_own(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making root's mount points needs root")
    (tmp_path / "var" / "tmp").mkdir(parents=True)
    assert make_mount_points(tmp_path) and make_mount_points(tmp_path)      # again: already there
    assert sorted(entry.name for entry in (tmp_path / "uds").iterdir()) == ["inputs", "out", "program", "work"]
    assert (tmp_path / "uds" / "program").is_file() and (tmp_path / "uds").stat().st_mode & 0o777 == 0o755
    (tmp_path / "uds" / "work").rmdir()
    (tmp_path / "uds" / "work").symlink_to("/etc")                         # not a folder of root's
    assert not make_mount_points(tmp_path)
    assert not make_mount_points(tmp_path / "missing")                      # nowhere to make them

def test_launch_script_joins_every_cgroup_before_the_box_and_sets_rlimits():
    limits = ResourceLimits(cpu_time_s=60, disk_bytes=2 * MiB, pids=32)
    script = launch_script([pathlib.Path("/cg/memory/a/cgroup.procs"), pathlib.Path("/cg/pids/a/cgroup.procs")],
                           limits)
    assert script.index("echo $$ > '/cg/memory/a/cgroup.procs'") < script.index("exec \"$@\"")
    assert "ulimit -t 60" in script and "ulimit -f 4096" in script and "ulimit -u 32" in script
    assert "ulimit" not in launch_script([], NO_LIMITS)


def test_launch_script_sets_the_rlimits_in_this_machines_shell(tmp_path):
    procs = tmp_path / "cgroup.procs"
    script = launch_script([procs], ResourceLimits(cpu_time_s=60, disk_bytes=2 * MiB, pids=32))
    shown = subprocess.run(["/bin/sh", "-c", script, "sh", "/bin/sh", "-c", "ulimit -t; ulimit -f; echo $$"],
                           capture_output=True, text=True, check=True)
    assert shown.stderr == ""
    assert shown.stdout.split()[:2] == ["60", "4096"]
    assert procs.read_text().strip() == shown.stdout.split()[2]      # exec kept the pid that joined
    nproc = subprocess.run(["/bin/sh", "-c", script, "sh", "/usr/bin/prlimit", "--nproc", "--output", "SOFT",
                            "--noheadings"], capture_output=True, text=True, check=True)
    assert nproc.stdout.strip() == "32"


def test_hidden_paths_skip_what_the_box_replaces(tmp_path):
    kept = pathlib.Path("/etc")
    assert hidden_paths([tmp_path, kept, pathlib.Path("/nonexistent/x")]) == ["/etc"]


def test_uid_ranges():
    assert default_uids("00" * 16, 4) == range(200000, 200004)
    assert default_uids("0" * 31 + "1", 4)[0] == 200064
    assert parse_uid_range("61000-61003") == range(61000, 61004)
    assert parse_uid_range("70000") == range(70000, 70001)
    for bad in ("a-b", "5-1", "0-3", ""):
        with pytest.raises(ValueError):
            parse_uid_range(bad)


def test_cgroup_files_are_read_as_the_kernel_writes_them():
    own = own_cgroups("4:memory:/process_api/x\n2:cpu,cpuacct:/\n0::/user.slice\n")
    assert own == {"memory": "/process_api/x", "cpu": "/", "cpuacct": "/", "": "/user.slice"}
    info = ("30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
            "31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
            "32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n")
    mounts = v1_mounts(info)
    assert mounts["memory"] == pathlib.Path("/sys/fs/cgroup/memory")
    assert mounts["cpuacct"] == pathlib.Path("/sys/fs/cgroup/cpu,cpuacct")


def test_reasons_read_as_sentences():
    assert memory_reason(256 * MiB, 256 * MiB) == "memory limit 256 MiB exceeded (peak 256 MiB)"
    assert pids_reason(256) == "pids limit 256 reached"
    assert disk_reason(2 << 30) == "disk limit 2 GiB exceeded"
    assert cpu_time_reason(600) == "cpu time limit 600 s exceeded"


def test_cluster_file_limits_are_the_defaults(tmp_path):
    def load(extra: str) -> cluster_file.Cluster:
        path = tmp_path / "cluster.toml"
        path.write_text(cluster_file.render("keys", [{"address": "tcp://127.0.0.1:1", "raft": "x:1",
                                                       "data": "m"}],
                                            [{"address": "tcp://127.0.0.1:2", "data": "l"}],
                                            [{"address": "tcp://127.0.0.1:3", "data": "s"}],
                                            {"slot_uids": "62000-62009"}) + extra)
        return cluster_file.load(path)

    loaded = load('\n[limits]\nmemory = "512M"\ncpus = 1.5\npids = 100\n')
    assert cluster_file.default_limits(loaded) == ResourceLimits(memory_bytes=512 * MiB, millicpus=1500, pids=100)
    assert loaded.workers.slot_uids == "62000-62009"
    assert cluster_file.default_limits(load("")) == NO_LIMITS
    with pytest.raises(cluster_file.ClusterFileError, match="memory"):
        load('\n[limits]\nmemory = "lots"\n')


# ---- outputs ------------------------------------------------------------------

def test_outputs_are_plain_files_walked_without_following_links(tmp_path):
    out = tmp_path / "out"
    (out / "a" / "b").mkdir(parents=True)
    (out / "top").write_bytes(b"1")
    (out / "a" / "b" / "deep").write_bytes(b"22")
    assert collect(str(out)) == [("a/b/deep", 2), ("top", 1)]
    descriptor = open_output(str(out), "a/b/deep")
    try:
        assert os.read(descriptor, 10) == b"22"
    finally:
        os.close(descriptor)
    (out / "a").rename(tmp_path / "elsewhere")
    (out / "a").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputRefused, match="'a' is a symbolic link"):
        collect(str(out))
    with pytest.raises(OSError):
        open_output(str(out), "a/b/deep")


@pytest.mark.parametrize("make, kind", [
    (lambda path: path.symlink_to("/etc/shadow"), "a symbolic link"),
    (lambda path: os.mkfifo(path), "a FIFO"),
    (lambda path: os.link(path.parent / "top", path), "a hard link"),
])
def test_links_fifos_and_hard_links_are_refused_by_name(tmp_path, make, kind):
    out = tmp_path / "out"
    out.mkdir()
    (out / "top").write_bytes(b"1")
    make(out / "bad")
    with pytest.raises(OutputRefused, match=kind) as refused:
        collect(str(out))
    assert "'bad'" in str(refused.value) or "'top'" in str(refused.value)


# ---- real programs in a real box --------------------------------------------------

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    data = tmp_path_factory.mktemp("sandbox-data")
    secret = tmp_path_factory.mktemp("secret-keys")     # under /tmp: shown nowhere in the box
    (secret / "worker.key").write_text("secret\n")
    try:
        box = Sandbox(os.urandom(8).hex(), data, [secret], slots=1, uids=range(61900, 61904),
                      slot_disk_bytes=64 * MiB)
    except SandboxUnavailable as fault:
        pytest.skip(f"no sandbox on this machine: {fault}")
    box.test_data, box.test_secret = data, secret
    try:
        yield box
    finally:
        for cgroup in box.cgroups.leftovers():
            cgroup.end()
            cgroup.remove()
        box.close()


@dataclass
class Outcome:
    exit_code: int
    reason: str
    usage: Usage
    outputs: list
    stdout: str
    stderr: str
    running: RunningChunk
    contents: dict


_counter = iter(range(1, 1 << 30))


def run_boxed(sandbox, tmp_path, script: str, limits=NO_LIMITS, network=False, timeout_s=20.0, while_running=None,
              collect_after_s=0.0):
    """Run `script` as an attempt, as worker/host.py would, and collect its outcome."""
    number = next(_counter)
    program = tmp_path / f"program-{number}"
    program.write_text(script)
    program.chmod(0o755)
    inputs = tmp_path / "inputs"
    inputs.mkdir(exist_ok=True)
    (inputs / "in.txt").write_text("input\n")
    inputs.chmod(0o755)
    key = AttemptKey(os.urandom(16), 0, number)
    slot = sandbox.acquire()
    running = None
    try:
        cgroup = sandbox.cgroup(key.name, limits)
        running = RunningChunk(key=key, workdir=tmp_path / key.name, output_dir=slot.output, process=None,
                               pidfd=None, cgroup=cgroup, program_uid=slot.uid, slot=slot)
        environment = chunk_environment(key, 1, INPUTS_PATH, OUTPUT_PATH, "test")
        launch(running, program, sandbox.command(slot, cgroup, limits, str(program), (), str(inputs), network),
               running.workdir, environment)
        deadline = time.monotonic() + timeout_s
        while running.process.poll() is None:
            watch_limits(running)
            if while_running is not None:
                while_running(running)
            if time.monotonic() > deadline:
                running.stop("test timeout")
            time.sleep(0.02)
        running.reap()
        reason, usage = account(running)
        time.sleep(collect_after_s)
        contents = {}
        try:
            outputs = collect(str(slot.output))
            for name, _ in outputs:
                descriptor = open_output(str(slot.output), name)
                contents[name] = os.read(descriptor, 1 << 20)
                os.close(descriptor)
        except OutputRefused as refused:
            outputs = str(refused)
        return Outcome(running.exit_code, reason, usage, outputs, running.stdout_path.read_text(),
                       running.stderr_path.read_text(), running, contents)
    finally:
        if running is not None and running.cgroup is not None:
            running.cgroup.end()
            running.cgroup.remove()
        sandbox.empty(slot)
        sandbox.release(slot)


def test_a_program_runs_as_its_slot_user_and_sees_only_its_own_folders(sandbox, tmp_path):
    data, secret = sandbox.test_data, sandbox.test_secret
    outcome = run_boxed(sandbox, tmp_path, f"""#!/bin/sh
id -u
cat "$UDS_INPUTS/in.txt"
echo result > "$UDS_OUTPUT/result"
echo scratch > /tmp/scratch && echo tmp-ok
for target in {data}/cache/poison {data}/x /etc/poison /usr/poison /uds/poison /poison "$UDS_INPUTS/poison" \\
              "$UDS_OUTPUT/../../poison"; do
    (echo bad > "$target") 2>/dev/null && echo "WROTE $target"
done
cat {secret}/worker.key 2>/dev/null && echo READ-KEYS
ls {data} 2>/dev/null && echo SAW-DATA
exit 0
""")
    assert outcome.exit_code == 0, outcome.stderr
    lines = outcome.stdout.split()
    assert lines[:2] == [str(outcome.running.program_uid), "input"] and "tmp-ok" in lines
    assert "WROTE" not in outcome.stdout and "READ-KEYS" not in outcome.stdout and "SAW-DATA" not in outcome.stdout
    assert outcome.outputs == [("result", 7)]
    assert not (data / "cache").exists() and not (data / "x").exists() and not pathlib.Path("/etc/poison").exists()
    assert outcome.usage.wall_s > 0 and outcome.usage.peak_memory_bytes > 0


def test_python_multiprocessing_works_in_the_box(sandbox, tmp_path):
    outcome = run_boxed(sandbox, tmp_path, """#!/usr/bin/python3
import multiprocessing
with multiprocessing.Pool(2) as pool:
    print(sum(pool.map(abs, [-1, -2, -3])))
""")
    assert (outcome.exit_code, outcome.stdout) == (0, "6\n"), outcome.stderr


def test_the_network_is_cut_unless_the_job_asks_for_it(sandbox, tmp_path):
    script = "#!/bin/sh\ncat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '\n"
    assert run_boxed(sandbox, tmp_path, script).stdout.split() == ["lo"]
    assert len(run_boxed(sandbox, tmp_path, script, network=True).stdout.split()) >= 1


def test_a_memory_hog_fails_with_the_limit_and_its_peak(sandbox, tmp_path):
    outcome = run_boxed(sandbox, tmp_path, """#!/usr/bin/python3
blocks = []
for _ in range(1024):
    blocks.append(bytearray(1 << 20))
print("allocated 1 GiB")
""", ResourceLimits(memory_bytes=256 * MiB))
    assert outcome.exit_code == -9
    assert outcome.reason == "memory limit 256 MiB exceeded (peak 256 MiB)"
    assert "allocated" not in outcome.stdout


def test_a_fork_bomb_is_held_by_the_pids_limit(sandbox, tmp_path):
    outcome = run_boxed(sandbox, tmp_path, """#!/bin/sh
bomb() { bomb | bomb & }
bomb
sleep 1
""", ResourceLimits(pids=32), timeout_s=15)
    assert outcome.reason == "pids limit 32 reached"


def test_a_disk_hog_is_stopped_at_the_jobs_limit(sandbox, tmp_path):
    outcome = run_boxed(sandbox, tmp_path, """#!/bin/sh
for i in 1 2 3 4 5 6 7 8; do dd if=/dev/zero of=$UDS_OUTPUT/part$i bs=1M count=4 2>/dev/null; done
sleep 5
""", ResourceLimits(disk_bytes=8 * MiB))
    assert outcome.reason == "disk limit 8 MiB exceeded"


def test_the_slot_filesystem_is_the_hard_cap(sandbox, tmp_path):
    outcome = run_boxed(sandbox, tmp_path, """#!/bin/sh
dd if=/dev/zero of=/tmp/fill bs=1M count=200 2>/dev/null || exit 1
""", ResourceLimits(disk_bytes=64 * MiB))
    assert outcome.exit_code != 0 and outcome.reason == "disk limit 64 MiB exceeded"


def test_cpu_time_counts_every_process(sandbox, tmp_path):
    outcome = run_boxed(sandbox, tmp_path, """#!/bin/sh
spin() { while :; do :; done; }
spin & spin & spin
""", ResourceLimits(cpu_time_s=1), timeout_s=20)
    assert outcome.reason == "cpu time limit 1 s exceeded"
    # The kernel splits user from system time by ticks: the sum is near, not exact.
    assert outcome.usage.cpu_user_s + outcome.usage.cpu_system_s >= 0.9


def _marked(mark: str) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_nothing_outlives_the_program_and_outputs_are_not_swapped(sandbox, tmp_path):
    mark = f"{time.time_ns() % 10**9}.5"
    outcome = run_boxed(sandbox, tmp_path, f"""#!/bin/sh
echo honest > "$UDS_OUTPUT/result"
setsid sh -c '(sleep {mark}) & sleep 0.3; rm -f "$UDS_OUTPUT/result"; ln -s /etc/shadow "$UDS_OUTPUT/result"' \\
    >/dev/null 2>&1 < /dev/null &
sleep 0.1
""", collect_after_s=0.5)      # the swap would have happened by then
    assert outcome.exit_code == 0
    assert _marked(mark) == []
    assert outcome.contents == {"result": b"honest\n"}


def test_a_hard_link_to_a_host_file_cannot_be_made(sandbox, tmp_path):
    outcome = run_boxed(sandbox, tmp_path, """#!/bin/sh
ln /etc/passwd "$UDS_OUTPUT/passwd" 2>&1 || echo refused
echo one > "$UDS_OUTPUT/a" && ln "$UDS_OUTPUT/a" "$UDS_OUTPUT/b"
""")
    assert "refused" in outcome.stdout
    assert "hard link" in outcome.outputs and "'a'" in outcome.outputs


def test_sigterm_reaches_the_program_not_the_box(sandbox, tmp_path):
    sent = []

    def terminate(running):
        if not sent and running.log_bytes() > 0:
            sent.append(True)
            running.signal(15)

    outcome = run_boxed(sandbox, tmp_path, """#!/bin/sh
trap 'echo got-term; exit 3' TERM
echo ready
while :; do sleep 0.05; done
""", while_running=terminate, timeout_s=10)
    assert "got-term" in outcome.stdout and outcome.exit_code == 3


def test_a_machine_without_bubblewrap_has_no_sandbox(tmp_path, monkeypatch):
    from uds.worker import sandbox as sandbox_module
    monkeypatch.setattr(sandbox_module, "BWRAP", "/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable, match="/nonexistent/bwrap is missing"):
        Sandbox("00" * 8, tmp_path, [], slots=1, uids=range(61900, 61904), slot_disk_bytes=64 * MiB)
