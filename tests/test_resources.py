"""What workers offer and what jobs ask, through real daemons: a job no
worker could hold is refused at submit, and a job whose only fitting worker
left waits, saying why."""
import subprocess
import sys

import pytest

from uds import client

from daemons import wait_until
from uds.errors import InvalidJobError
from uds.wire.resources import ResourceLimits

SLEEPER = b"#!/bin/sh\nsleep 30\n"


@pytest.fixture
def small_and_large(daemons):
    """A worker offering 1 GiB and 1 cpu, one offering 4 GiB and 2 cpus; the
    cluster file's [limits] give each chunk 512 MiB and 200 processes."""
    with open(daemons.path, "a") as cluster_file:
        cluster_file.write('\n[limits]\nmemory = "512M"\npids = 200\n')
    for role in ("storage", "master", "loadbalancer"):
        daemons.start(role, wait=False)
    daemons.start("worker", "--memory", "1G", "--cpus", "1", "--disk", "5G", name="small", wait=False)
    large = daemons.start("worker", "--memory", "4G", "--cpus", "2", "--disk", "5G", name="large", wait=False)
    for daemon in daemons.started:
        daemon.wait_ready()
    connection = client.connect(daemons.path, timeout=20)
    try:
        _wait_until(lambda: len(_workers(connection)) == 2 and all(n["free_slots"] for n in _workers(connection)))
        yield connection, large
    finally:
        connection.close()


def _workers(connection) -> list[dict]:
    return [node for node in connection.nodes() if node["role"] == 5 and node["state"] == "alive"]


def _wait_until(condition, timeout: float = 30.0) -> None:
    wait_until(condition, "condition", timeout)


def test_workers_advertise_what_they_were_given(small_and_large):
    connection, _large = small_and_large
    offered = sorted((n["host"] != "", n["millicpus"], n["memory_bytes"], n["disk_bytes"])
                     for n in _workers(connection))
    assert offered == [(True, 1000, 1 << 30, 5 << 30), (True, 2000, 4 << 30, 5 << 30)]
    assert all(n["sandbox"] for n in _workers(connection))


def test_a_job_no_worker_could_hold_is_refused_with_the_reason(small_and_large):
    connection, _large = small_and_large
    with pytest.raises(InvalidJobError, match="no worker has 8 GiB of memory: the largest has 4 GiB"):
        connection.submit_job(SLEEPER, limits={"memory": "8G"})
    with pytest.raises(InvalidJobError, match="no worker has 3 cpus: the largest has 2 cpus"):
        connection.submit_job(SLEEPER, limits={"memory": "1G", "cpus": 3})
    with pytest.raises(InvalidJobError, match=r"disk: 5 GiB is more than a chunk may fill on this cluster's "
                                              r"workers \(4 GiB, the cluster file's \[limits\] disk\)"):
        connection.submit_job(SLEEPER, limits={"disk": "5G"})


def test_a_job_whose_only_fitting_worker_left_waits_and_says_why(small_and_large):
    connection, large = small_and_large
    job = connection.submit_job(SLEEPER, limits={"memory": "2G"})
    assert job.status().limits == ResourceLimits(memory_bytes=2 << 30, pids=200)   # the default fills in
    assert connection.submit_job(b"#!/bin/sh\ntrue\n").status().limits == ResourceLimits(
        memory_bytes=512 << 20, pids=200)
    _wait_until(lambda: job.status().chunks[0].state == "running")
    large.kill9()
    _wait_until(lambda: job.status().waiting != "")
    status = job.status()
    assert status.state in ("queued", "running") and status.chunks[0].state in ("queued", "dispatched")
    assert status.waiting == "no worker has 2 GiB of memory: the largest has 1 GiB"
    job.cancel()


# ---- pure parts: the fit rule and what a worker measures --------------------

def test_a_request_fits_beside_what_is_reserved_and_a_zero_holds_nothing_back():
    from uds.wire.capacity import Capacity, unfit_reason
    worker = Capacity(2000, 4 << 30, 0)
    assert worker.fits(Capacity(2000, 4 << 30, 1 << 50))            # disk not measured
    assert not worker.fits(Capacity(1000, 1 << 30), reserved=Capacity(1500, 0, 0))
    assert worker.shortfall(Capacity(0, 2 << 30), Capacity(0, 3 << 30)) == "memory: 2 GiB asked, 1 GiB free of 4 GiB"
    assert unfit_reason(Capacity(0, 8 << 30), []) == ""              # no worker known: it waits
    assert unfit_reason(Capacity(0, 8 << 30), [worker, Capacity()]) == ""   # one measured nothing
    assert unfit_reason(Capacity(3000, 0), [worker]) == "no worker has 3 cpus: the largest has 2 cpus"


def test_a_worker_measures_what_it_is_not_told(tmp_path):
    from uds.wire.resources import ResourceSpecError
    from uds.worker.capacity import detect_memory_bytes, worker_capacity
    measured = worker_capacity(tmp_path)
    assert measured.millicpus >= 1000 and measured.memory_bytes > 0 and measured.disk_bytes > 0
    assert worker_capacity(tmp_path / "not" / "yet", cpus="1.5", memory="2G", disk=1000).millicpus == 1500
    assert worker_capacity(tmp_path, memory="2G").memory_bytes == 2 << 30
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemFree:  1 kB\nMemTotal:       16384 kB\n")
    assert detect_memory_bytes(meminfo) == 16 << 20
    assert detect_memory_bytes(tmp_path / "none") == 0
    for flags, message in ((dict(cpus="lots"), "cpus"), (dict(cpus="0"), "cpus"), (dict(memory="big"), "memory")):
        with pytest.raises(ResourceSpecError, match=message):
            worker_capacity(tmp_path, **flags)


def test_the_cluster_files_limits_are_the_defaults(tmp_path):
    from uds.wire import cluster as cluster_file
    from uds.wire.resources import NO_LIMITS, ResourceLimits
    text = cluster_file.render(keys="keys", masters=[{"address": "tcp://127.0.0.1:1", "raft": "127.0.0.1:2",
                                                      "data": "m"}],
                               loadbalancers=[{"address": "tcp://127.0.0.1:3", "data": "l"}],
                               storage=[{"address": "tcp://127.0.0.1:4", "data": "s"}], workers={})
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    assert cluster_file.default_limits(cluster_file.load(path)) == NO_LIMITS
    path.write_text(text + '\n[limits]\nmemory = "512M"\ncpus = 1.5\ncpu_time = "10m"\n')
    assert cluster_file.default_limits(cluster_file.load(path)) == ResourceLimits(
        memory_bytes=512 << 20, millicpus=1500, cpu_time_s=600)
    path.write_text(text + '\n[limits]\nmemory = "plenty"\n')
    with pytest.raises(cluster_file.ClusterFileError, match="limits: memory"):
        cluster_file.default_limits(cluster_file.load(path))


def test_a_worker_without_its_sandbox_refuses_to_start_unless_told_and_then_says_so(daemons):
    for role in ("storage", "master", "loadbalancer"):
        daemons.start(role)
    # Two uids cannot box two slots and their spares: the sandbox cannot be built.
    refused = daemons.start("worker", "--slots", "2", "--slot-uids", "70000-70001", name="boxless", wait=False)
    assert refused.process.wait(timeout=60) != 0
    assert "cannot build the sandbox programs run in: slot uids: 2 uids for 4 slots" in refused.log()
    assert "--unsafe-no-sandbox" in refused.log()
    daemons.start("worker", "--slots", "2", "--slot-uids", "70000-70001", "--unsafe-no-sandbox", name="unsafe")
    connection = client.connect(daemons.path, timeout=20)
    try:
        _wait_until(lambda: len(_workers(connection)) == 1)
        assert _workers(connection)[0]["sandbox"] == "none (--unsafe-no-sandbox)"
        assert connection.submit_job(b"#!/bin/sh\nid -u\n").wait(timeout=60).state == "succeeded"
    finally:
        connection.close()
    listing = subprocess.run([sys.executable, "-m", "uds.client.cli", "--cluster", str(daemons.path), "nodes"],
                             capture_output=True, text=True, timeout=60)
    assert "none (--unsafe-no-sandbox)" in listing.stdout, listing
