"""Three masters, one storage, one load balancer, two workers, all real
daemons on 127.0.0.1: the client and the balancer find the leader by
themselves when a master is killed, and no chunk is committed twice.

The time from kill -9 of the leader to the next committed chunk result is
measured and printed; more failovers for a distribution:
UDS_MASTER_FAILOVERS=20 pytest tests/test_master_failover.py -s -k leader_killed
"""
from __future__ import annotations

import os
import signal
import statistics
import time
from collections import Counter

import pytest

from daemons import ClusterLayout, wait_until
from uds import client
from uds.client.masters import ask_every_master
from uds.wire.enums import NodeRole
from uds.wire.transport import Transport

FAILOVERS = int(os.environ.get("UDS_MASTER_FAILOVERS", "1"))
WAIT_S = 20.0


def master_roles(layout: ClusterLayout) -> dict[int, int]:
    """Master index -> 1 for the leader (its leadership confirmed), 0 for a
    follower, for every master that answers."""
    with Transport(layout.keys()) as transport:
        records = ask_every_master(layout.cluster, transport, bytes(16))
    return {index: int(record.confirmed_leader) for index, record in enumerate(records)
            if record.confirmed_leader is not None}


def leader(layout: ClusterLayout) -> int | None:
    leaders = [index for index, role in master_roles(layout).items() if role == 1]
    return leaders[0] if len(leaders) == 1 else None


def workers_ready(connection: client.Connection, count: int = 2) -> bool:
    alive = [node for node in connection.nodes() if node["role"] == NodeRole.WORKER and node["state"] == "alive"]
    return len(alive) >= count


def balancer_active(connection: client.Connection) -> bool:
    return any(node["lease_epoch"] for node in connection.nodes()
               if node["role"] == NodeRole.LOADBALANCER and node["state"] == "alive")


def start_masters(layout: ClusterLayout) -> dict[int, object]:
    masters = {index: layout.start("master", name=str(index), wait=False) for index in range(3)}
    for master in masters.values():
        master.wait_ready()
    wait_until(lambda: leader(layout) is not None, what="a leader", timeout=WAIT_S)
    return masters


def start_the_rest(layout: ClusterLayout) -> dict[str, object]:
    others = {"storage": layout.start("storage", wait=False),
              "loadbalancer": layout.start("loadbalancer", wait=False),
              "w0": layout.start("worker", name="w0", wait=False),
              "w1": layout.start("worker", name="w1", wait=False)}
    for daemon in others.values():
        daemon.wait_ready()
    return others


@pytest.fixture
def three_masters(tmp_path):
    """Three masters, storage, a balancer and two workers, and a client
    that has found the leader and sees both workers."""
    layout = ClusterLayout.create(tmp_path / "cluster", masters=3)
    connection = None
    try:
        masters = start_masters(layout)
        others = start_the_rest(layout)
        connection = client.connect(layout.path, timeout=WAIT_S)
        wait_until(lambda: workers_ready(connection) and balancer_active(connection),
                   what="workers and an active balancer", timeout=WAIT_S)
        yield layout, connection, masters, others
    finally:
        if connection is not None:
            connection.close()
        layout.cleanup()


def every_chunk_committed_once(connection: client.Connection, job, chunks: int) -> list[dict]:
    """Wait for `job` to succeed, each chunk with its own output, and its
    results in the event log, one per chunk; those results."""
    status = job.wait(timeout=WAIT_S)
    assert status.state == "succeeded", status
    assert sorted(int(connection.get(chunk.stdout)) for chunk in status.chunks) == list(range(chunks))
    # Chunks that ran through the failover kept running: none was run again.
    rerun = {chunk.chunk: chunk.attempt for chunk in status.chunks if chunk.attempt != 1}
    assert not rerun, f"chunks run again (chunk: its last attempt): {rerun}"
    results = wait_until(lambda: (lambda found: len(found) >= chunks and found)(committed(connection, job.id)),
                         what="every result in the event log", timeout=WAIT_S)
    assert Counter(event.chunk for event in results) == Counter(range(chunks)), "a chunk committed twice"
    return results


def committed(connection: client.Connection, job_id: str, kind: str = "chunk_succeeded") -> list:
    """The job's events of `kind` in the event log, read page by page."""
    return [event for event in connection.job(job_id).events(follow=False) if event.kind == kind]


def test_a_client_whose_first_master_is_dead_still_submits_and_completes_a_job(three_masters):
    layout, connection, masters, others = three_masters
    masters[0].kill9()
    started = time.monotonic()
    with client.connect(layout.path, timeout=WAIT_S) as fresh:       # asks masters[0] first
        job = fresh.submit_job(b"#!/bin/sh\necho hello $UDS_CHUNK\n", chunks=2)
        status = job.wait(timeout=WAIT_S)
        assert status.state == "succeeded", status
        assert sorted(fresh.get(chunk.stdout) for chunk in status.chunks) == [b"hello 0\n", b"hello 1\n"]
        print(f"first master dead: job submitted and done in {time.monotonic() - started:.2f}s")
        assert others["loadbalancer"].alive()


def test_the_leader_killed_mid_job_every_chunk_is_committed_once(three_masters):
    layout, connection, masters, others = three_masters
    chunks = 40
    failovers = []
    for round_number in range(FAILOVERS):
        job = connection.submit_job(b"#!/bin/sh\nsleep 0.2\necho $UDS_CHUNK\n", chunks=chunks, timeout=60)
        wait_until(lambda: committed(connection, job.id), what="a first result", timeout=WAIT_S)
        old = leader(layout)
        assert old is not None
        killed_at = time.time()
        masters[old].kill9()
        results = every_chunk_committed_once(connection, job, chunks)
        after = [event.at for event in results if event.at > killed_at]
        assert after, "no result committed after the kill: the job ended before it"
        failovers.append(min(after) - killed_at)
        masters[old] = layout.start("master", name=str(old))           # back, as a follower
        wait_until(lambda: len(master_roles(layout)) == 3, what="three masters answering", timeout=WAIT_S)
    assert others["loadbalancer"].alive()
    ordered = sorted(failovers)
    print(f"kill -9 of the leader to the next committed result over {len(ordered)} failovers: "
          f"median {statistics.median(ordered):.3f}s, max {ordered[-1]:.3f}s, "
          f"p99 {ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]:.3f}s; each: "
          + ", ".join(f"{took:.2f}" for took in failovers))
    # Loose enough for a loaded machine; the target (p99 1.5 s) is what is printed.
    assert ordered[-1] < 5.0


def test_the_leader_frozen_mid_job_then_thawed_every_chunk_is_committed_once(three_masters):
    """Silence without a hang-up: the client and the balancer leave a frozen
    leader after their short timeouts, and what it says once thawed is old news."""
    layout, connection, masters, others = three_masters
    chunks = 24
    job = connection.submit_job(b"#!/bin/sh\nsleep 0.2\necho $UDS_CHUNK\n", chunks=chunks, timeout=60)
    wait_until(lambda: committed(connection, job.id), what="a first result", timeout=WAIT_S)
    old = leader(layout)
    frozen_at = time.time()
    os.kill(masters[old].pid, signal.SIGSTOP)
    try:
        wait_until(lambda: (lambda found: [event for event in found if event.at > frozen_at])(
            committed(connection, job.id)), what="a result committed by the next leader", timeout=WAIT_S)
        took = time.time() - frozen_at
    finally:
        os.kill(masters[old].pid, signal.SIGCONT)
    status = job.wait(timeout=WAIT_S)
    assert status.state == "succeeded", status
    results = wait_until(lambda: (lambda found: len(found) >= chunks and found)(committed(connection, job.id)),
                         what="every result in the event log", timeout=WAIT_S)
    assert Counter(event.chunk for event in results) == Counter(range(chunks)), "a chunk committed twice"
    assert others["loadbalancer"].alive()
    print(f"leader frozen: a result committed by the next leader within {took:.2f}s (seen by the client)")


@pytest.fixture
def master_zero_follows(tmp_path):
    """Three masters of which master 0 is a follower when the balancer starts."""
    layout = ClusterLayout.create(tmp_path / "cluster", masters=3)
    try:
        masters = start_masters(layout)
        if leader(layout) == 0:
            masters[0].kill9()
            wait_until(lambda: leader(layout) not in (None, 0), what="another leader", timeout=WAIT_S)
            masters[0] = layout.start("master", name="0")
        assert leader(layout) != 0
        yield layout, masters
    finally:
        layout.cleanup()


def test_the_balancer_follows_the_leader_when_master_zero_is_not_it(master_zero_follows):
    layout, masters = master_zero_follows
    others = start_the_rest(layout)
    with client.connect(layout.path, timeout=WAIT_S) as connection:
        wait_until(lambda: workers_ready(connection) and balancer_active(connection),
                   what="workers and an active balancer", timeout=WAIT_S)
        job = connection.submit_job(b"#!/bin/sh\necho $UDS_CHUNK\n", chunks=4)
        assert job.wait(timeout=WAIT_S).state == "succeeded"
        # The leader goes; the balancer moves on again, and does not crash.
        masters[leader(layout)].kill9()
        job = connection.submit_job(b"#!/bin/sh\necho $UDS_CHUNK\n", chunks=4)
        assert job.wait(timeout=WAIT_S).state == "succeeded"
    balancer = others["loadbalancer"]
    assert balancer.alive(), balancer.log()
    assert "Socket operation on non-socket" not in balancer.log()
