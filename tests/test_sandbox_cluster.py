"""Hostile chunks through real daemons: a cluster whose cluster file gives
every job 256 MiB of memory, 64 pids and 64 MiB of disk ([limits]), and
workers that box each attempt (doc/worker.md)."""
import os
import pathlib
import time

import pytest

from conftest import SETTLE_TIMEOUT_S, _wait_for_workers
from daemons import ClusterLayout, start_cluster, wait_until

LIMITS = {"memory": "256M", "pids": 64, "disk": "64M"}


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    from uds import client
    layout = ClusterLayout.create(tmp_path_factory.mktemp("limited") / "cluster", limits=LIMITS)
    connection = None
    try:
        running = start_cluster(layout, workers=2)
        connection = running.connection = client.connect(layout.path, timeout=20)
        _wait_for_workers(connection, 2)
        yield running
    finally:
        if connection is not None:
            connection.close()
        layout.cleanup()


def _state_of(pid: int) -> str:
    """The State and cgroup lines of /proc/PID, to say why a process lives on."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
        cgroups = pathlib.Path(f"/proc/{pid}/cgroup").read_text().split()
    except OSError as fault:
        return f"gone ({fault.strerror})"
    return " ".join(line for line in status if line.startswith(("State", "PPid", "NSpid"))) + f" {cgroups}"


def _marked(mark: str) -> list[int]:
    """Processes whose command line holds `mark` (a sleep with a unique length)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if mark.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _await(condition, what: str, timeout_s: float = SETTLE_TIMEOUT_S):
    return wait_until(condition, what, timeout_s)


def _unique_sleep() -> str:
    return f"{1000 + time.time_ns() % 10**6}.25"


def test_a_chunk_cannot_touch_the_workers_data_nor_read_its_keys(limited):
    layout, connection = limited.layout, limited.connection
    cluster = layout.cluster
    data = [str(limited.daemons[name].data) for name in limited.worker_names()]
    targets = [f"{folder}/{part}" for folder in data for part in ("cache/complete/poison", "poison", "work/poison")]
    targets += ["/etc/poison", "/usr/poison", "/uds/poison", "/poison", "$UDS_INPUTS/poison",
                "$UDS_OUTPUT/../../cache/poison", f"{cluster.keys}/poison"]
    script = "#!/bin/sh\n" + "".join(f'(echo bad > "{target}") 2>/dev/null && echo "WROTE {target}"\n'
                                     for target in targets)
    script += f'cat {cluster.keys}/*/* 2>/dev/null && echo READ-KEYS\n'
    script += 'ls -A /run | grep -q . && echo HOST-RUN\n'     # no host sockets under /run
    script += 'echo scratch > /tmp/scratch && echo > "$UDS_OUTPUT/ok" && echo done\n'
    job = connection.submit_job(script.encode())
    status = job.wait(timeout=60)
    stdout = job.logs(0)[0].decode()
    assert status.state == "succeeded", status.error
    assert stdout.strip() == "done"
    for folder in data:
        assert not list(pathlib.Path(folder).rglob("poison"))
    assert not list(cluster.keys.rglob("poison"))


def test_a_memory_hog_fails_with_the_limit_and_the_worker_lives_on(limited):
    connection = limited.connection
    job = connection.submit_job(b"#!/usr/bin/python3\nblocks = [bytearray(1 << 20) for _ in range(1024)]\n")
    status = job.wait(timeout=60)
    assert status.state == "failed"
    assert status.chunks[0].result.error == "memory limit 256 MiB exceeded (peak 256 MiB)"
    assert all(limited.daemons[name].alive() for name in limited.worker_names())
    after = connection.submit_job(b"#!/bin/sh\necho alive\n", chunks=4).wait(timeout=60)
    assert after.state == "succeeded"


def test_a_fork_bomb_is_held_by_the_pids_limit(limited):
    job = limited.connection.submit_job(b"#!/bin/sh\nbomb() { bomb | bomb & }\nbomb\nsleep 1\n", timeout=30)
    status = job.wait(timeout=60)
    assert status.state == "failed"
    assert status.chunks[0].result.error == "pids limit 64 reached"


def test_a_disk_hog_is_stopped(limited):
    job = limited.connection.submit_job(
        b"#!/bin/sh\ndd if=/dev/zero of=$UDS_OUTPUT/fill bs=1M count=1000 2>/dev/null\nsleep 5\n", timeout=30)
    status = job.wait(timeout=60)
    assert status.state == "failed"
    assert status.chunks[0].result.error == "disk limit 64 MiB exceeded"


@pytest.mark.parametrize("make, names", [
    (b'ln /etc/shadow "$UDS_OUTPUT/shadow" || ln -s /etc/shadow "$UDS_OUTPUT/shadow"', "'shadow' is a symbolic link"),
    (b'echo one > "$UDS_OUTPUT/one" && ln "$UDS_OUTPUT/one" "$UDS_OUTPUT/two"', "hard link"),
    (b'mkfifo "$UDS_OUTPUT/pipe"', "'pipe' is a FIFO"),
])
def test_outputs_that_are_not_plain_files_are_refused_by_name(limited, make, names):
    job = limited.connection.submit_job(b"#!/bin/sh\n" + make + b"\n")
    status = job.wait(timeout=60)
    assert status.state == "failed"
    assert names in status.chunks[0].result.error
    assert not status.chunks[0].result.outputs


def test_a_leftover_cannot_swap_an_output_for_a_symlink(limited):
    mark = _unique_sleep()
    job = limited.connection.submit_job(f"""#!/bin/sh
echo honest > "$UDS_OUTPUT/result"
setsid sh -c '(sleep {mark}) & while :; do rm -f "$UDS_OUTPUT/result"; ln -s /etc/shadow "$UDS_OUTPUT/result"; \\
    sleep 0.001; done' > /dev/null 2>&1 < /dev/null &
sleep 0.2
""".encode())
    status = job.wait(timeout=60)
    assert _marked(mark) == []
    if status.state == "succeeded":     # as the program left it, or as the leftover left it when killed
        assert [limited.connection.get(file_id) for file_id in job.outputs(0).values()] in ([b"honest\n"], [])
    else:   # the leftover swapped it before the program's own exit: refused, never followed
        assert "'result' is a symbolic link" in status.chunks[0].result.error


def test_a_double_forked_sleep_is_gone_after_the_chunk_ends_and_after_a_cancel(limited):
    connection = limited.connection
    mark = _unique_sleep()
    done = connection.submit_job(f"#!/bin/sh\nsetsid sh -c '(sleep {mark} &) &' < /dev/null > /dev/null 2>&1\n"
                                 .encode()).wait(timeout=60)
    assert done.state == "succeeded"
    assert _marked(mark) == []
    mark = _unique_sleep()
    job = connection.submit_job(f"#!/bin/sh\nsetsid sh -c '(sleep {mark} &) &' < /dev/null > /dev/null 2>&1\n"
                                f"sleep 600\n".encode(), timeout=600)
    _await(lambda: _marked(mark), "the chunk's double-forked sleep never started")
    job.cancel()
    assert job.wait(timeout=60).state == "cancelled"
    _await(lambda: not _marked(mark), "the double-forked sleep outlived the cancel", timeout_s=10)


def test_a_killed_worker_leaves_no_chunk_process_and_its_restart_no_cgroup(limited):
    connection = limited.connection
    mark = _unique_sleep()
    job = connection.submit_job(f"#!/bin/sh\nsetsid sh -c '(sleep {mark} &) &' < /dev/null > /dev/null 2>&1\n"
                                f"sleep 600\n".encode(), timeout=600)
    _await(lambda: _marked(mark), "the chunk's double-forked sleep never started")
    node = _await(lambda: next((chunk.worker for chunk in job.status().chunks if chunk.worker), None),
                  "no worker named for the chunk")
    name = limited.worker_by_node(node if isinstance(node, str) else node.hex())
    data = limited.daemons[name].data
    limited.restart(name, kill=True)
    node_hex = (data / "node_id").read_text().strip()
    first_attempt = f"{job.id}-0-1"

    def first_attempts_processes() -> list[int]:
        # Once the worker is lost the chunk runs again (attempt 2, same
        # program, same mark) on either worker: only attempt 1's count.
        return [pid for pid in _marked(mark) if first_attempt in _state_of(pid)]
    try:
        _await(lambda: not first_attempts_processes(), "a chunk process outlived its killed worker", timeout_s=10)
    except TimeoutError as fault:
        states = {pid: _state_of(pid) for pid in first_attempts_processes()}
        raise AssertionError(f"{fault}: {states}\nthe restarted worker's log:\n"
                             f"{limited.daemons[name].log()[-4000:]}") from None
    assert list(pathlib.Path("/sys/fs/cgroup").glob(f"**/uds-{node_hex}/{first_attempt}")) == []
    job.cancel()
    _wait_for_workers(connection, 2)


def test_uds_dev_stop_leaves_no_chunk_process_mount_or_cgroup(tmp_path):
    from test_cli import uds
    from uds import client
    folder = tmp_path / "dev"
    mark = _unique_sleep()
    try:
        uds("dev", "--detach", "--workers", "1", "--slots", "1", "--dir", str(folder))
        with client.connect(folder) as connection:
            connection.submit_job(f"#!/bin/sh\nsetsid sh -c '(sleep {mark} &) &' < /dev/null > /dev/null 2>&1\n"
                                  f"sleep 600\n".encode(), timeout=600)
            _await(lambda: _marked(mark), "the chunk's double-forked sleep never started")
    finally:
        uds("dev", "--stop", "--dir", str(folder), check=False)
    assert _marked(mark) == []
    assert [line for line in pathlib.Path("/proc/mounts").read_text().splitlines() if str(folder) in line] == []
    node_hex = next(folder.glob("data/workers/*/node_id")).read_text().strip()
    assert list(pathlib.Path("/sys/fs/cgroup").glob(f"**/uds-{node_hex}")) == []


def test_a_jobs_own_limits_and_network_choice_reach_its_box_and_its_usage_comes_back(limited):
    connection = limited.connection
    hog = b"#!/usr/bin/python3\nblocks = [bytearray(1 << 20) for _ in range(200)]\n"
    tight = connection.submit_job(hog, limits={"memory": "96M"}).wait(timeout=60)
    assert tight.state == "failed"
    assert tight.chunks[0].result.error == "memory limit 96 MiB exceeded (peak 96 MiB)"
    roomy = connection.submit_job(hog + b"print(len(blocks))\n").wait(timeout=60)  # the default 256M holds it
    assert roomy.state == "succeeded", roomy.error
    usage = roomy.chunks[0].usage
    assert usage.peak_memory_bytes >= 200 << 20 and usage.cpu_user_s + usage.cpu_system_s > 0
    assert usage.output_bytes == len(b"200\n") and usage.wall_s > 0
    # Only loopback in the box unless the job asks for the network.
    probe = b"#!/bin/sh\ntail -n +3 /proc/net/dev | cut -d: -f1\n"   # this network namespace's interfaces
    boxed = connection.submit_job(probe)
    assert boxed.wait(timeout=60).state == "succeeded"
    assert boxed.logs(0)[0].split() == [b"lo"]
    open_job = connection.submit_job(probe, network=True)
    assert open_job.wait(timeout=60).state == "succeeded"
    host = [line.split(b":")[0] for line in pathlib.Path("/proc/net/dev").read_bytes().splitlines()[2:]]
    assert sorted(open_job.logs(0)[0].split()) == sorted(name.strip() for name in host)
