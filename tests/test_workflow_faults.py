"""Failure classes on a real cluster whose daemons are frozen and killed: a
storage outage is the cluster's failure and quarantines nothing, a chunk
whose workers keep dying under it is quarantined as poison after K losses
in a row (K = the cluster file's [scheduling] poison_after), and one loss
followed by a success is only a retry.

The tests share one cluster; each leaves every daemon running again, and
the `healthy` fixture waits for that before the next one starts.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from uds import client
from uds.storage.directory import REFRESH_INTERVAL_S
from uds.wire.enums import NodeRole

from daemons import ClusterLayout, start_cluster, wait_until

WAIT_S = 60.0
POISON_AFTER = 2
WORKERS = 2


@pytest.fixture(scope="module")
def fault_cluster(tmp_path_factory):
    layout = ClusterLayout.create(
        tmp_path_factory.mktemp("faults") / "cluster", scheduling={"poison_after": POISON_AFTER},
        # One copy of each file, and a silent storage node declared lost
        # within a second and a half, so an outage is seen at once.
        storage_policy={"replicas": 1, "heartbeat_interval_s": 0.25, "lost_after_s": 1.5})
    running = None
    try:
        running = start_cluster(layout, workers=WORKERS)
        running.connection = client.connect(layout.path, timeout=20)
        yield running
    finally:
        if running is not None and running.connection is not None:
            running.connection.close()
        layout.cleanup()


@pytest.fixture
def healthy(fault_cluster):
    """The shared cluster, every daemon up and both workers free."""
    for name, daemon in fault_cluster.daemons.items():
        if not daemon.alive():
            fault_cluster.restart(name)
    wait_until(lambda: _free_workers(fault_cluster.connection) >= WORKERS, "workers free", timeout=30)
    return fault_cluster


def _free_workers(connection) -> int:
    nodes = connection.nodes()
    return sum(1 for node in nodes if node["role"] == NodeRole.WORKER and node["state"] == "alive"
               and node["free_slots"] == node["slots"])


def _storage_state(connection) -> str | None:
    return next((node["state"] for node in connection.nodes() if node["role"] == NodeRole.STORAGE), None)


def _running(job, attempt: int):
    chunk = job.status().chunks[0]
    return chunk if chunk.state == "running" and chunk.attempt == attempt else None


def _unique() -> bytes:
    return f"# {os.urandom(8).hex()}\n".encode()


def test_a_storage_outage_longer_than_the_poison_limit_fails_no_chunk(healthy):
    connection = healthy.connection
    program = (b"#!/bin/sh\n" + _unique() +
               b'if [ "$1" = warm ]; then sleep 0.5; exit 0; fi\necho stored > $UDS_OUTPUT/out\n')
    # Every worker fetches the program while storage is up: in the outage,
    # each attempt then fails only where it stores its output.
    wait_until(lambda: len({chunk.worker for chunk in connection.submit_job(
        program, args=["warm"], chunks=2 * WORKERS).wait(timeout=WAIT_S).chunks}) == WORKERS,
        "the program on every worker", timeout=WAIT_S)
    job = connection.submit_job(program, chunks=WORKERS, hold=True, timeout=30, cache=True)
    storage = healthy.daemons["storage"]
    os.kill(storage.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: _storage_state(connection) == "lost", "storage declared lost", timeout=20)
        time.sleep(REFRESH_INTERVAL_S + 0.5)   # the workers' membership has asked the masters since
        job.release()

        def rejected_enough():
            chunks = job.status().chunks
            assert not any(chunk.state == "failed" for chunk in chunks), chunks
            return all(len(chunk.failures) > POISON_AFTER for chunk in chunks)

        wait_until(rejected_enough, f"more than {POISON_AFTER} failures per chunk", timeout=WAIT_S)
    finally:
        os.kill(storage.pid, signal.SIGCONT)
    status = job.wait(timeout=WAIT_S)
    assert status.state == "succeeded", status
    for chunk in status.chunks:
        assert chunk.state == "succeeded"
        assert len(chunk.failures) > POISON_AFTER
        assert set(chunk.failures) == {"infrastructure"}
        assert chunk.attempt == len(chunk.failures) + 1
        assert connection.get(chunk.outputs["out"]) == b"stored\n"
        # Each failure was the outage: the output could not be stored.
        events = connection.events(job=job.id, kinds=["chunk_lost"], limit=10_000).events
        rejected = [event for event in events if event.chunk == chunk.chunk]
        assert len(rejected) == len(chunk.failures)
        assert all("could not store results" in event.detail for event in rejected), rejected
    # The results of the attempts that got through are in the cache.
    again = connection.submit_job(program, chunks=WORKERS, timeout=30, cache=True).status()
    assert (again.state, again.cached) == ("succeeded", WORKERS), again


def test_a_chunk_whose_workers_die_under_it_k_times_in_a_row_is_poison(healthy):
    job = healthy.connection.submit_job(b"#!/bin/sh\n" + _unique() + b"exec sleep 300\n", timeout=600)
    for attempt in range(1, POISON_AFTER + 1):
        running = wait_until(lambda: _running(job, attempt), f"attempt {attempt} running", timeout=WAIT_S)
        healthy.restart(healthy.worker_by_node(running.worker), kill=True)
    status = job.wait(timeout=WAIT_S)
    assert status.state == "failed", status
    chunk = status.chunks[0]
    assert (chunk.state, chunk.attempt) == ("failed", POISON_AFTER)
    assert chunk.failures == ("infrastructure",) * POISON_AFTER
    assert "poison" in chunk.result.error and "poison" in status.error


def test_a_chunk_whose_worker_dies_once_then_succeeds_is_not_poison(healthy):
    program = (b"#!/bin/sh\n" + _unique() +
               b'if [ "$UDS_ATTEMPT" = 1 ]; then exec sleep 300; fi\necho $UDS_ATTEMPT > $UDS_OUTPUT/out\n')
    job = healthy.connection.submit_job(program, timeout=600)
    running = wait_until(lambda: _running(job, 1), "attempt 1 running", timeout=WAIT_S)
    healthy.restart(healthy.worker_by_node(running.worker), kill=True)
    status = job.wait(timeout=WAIT_S)
    assert status.state == "succeeded", status
    chunk = status.chunks[0]
    assert (chunk.state, chunk.attempt, chunk.failures) == ("succeeded", 2, ("infrastructure",))
    assert healthy.connection.get(chunk.outputs["out"]) == b"2\n"
