"""What workers offer and what jobs ask, through real daemons: a job no
worker could hold is refused at submit, and a job whose only fitting worker
left waits, saying why."""
import time

import pytest

from uds import client
from uds.errors import InvalidJobError

SLEEPER = b"#!/bin/sh\nsleep 30\n"


@pytest.fixture
def small_and_large(daemons):
    """A worker offering 1 GiB and 1 cpu, one offering 4 GiB and 2 cpus."""
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
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


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


def test_a_job_whose_only_fitting_worker_left_waits_and_says_why(small_and_large):
    connection, large = small_and_large
    job = connection.submit_job(SLEEPER, limits={"memory": "2G"})
    _wait_until(lambda: job.status().chunks[0].state == "running")
    large.kill9()
    _wait_until(lambda: job.status().waiting != "")
    status = job.status()
    assert status.state in ("queued", "running") and status.chunks[0].state in ("queued", "dispatched")
    assert status.waiting == "no worker has 2 GiB of memory: the largest has 1 GiB"
    job.cancel()
