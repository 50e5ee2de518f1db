"""Events pushed through real daemons: a held events query answered at the
commit of the event it waits for, `uds events --job J --follow`,
`as_completed` on the same mechanism, and a job's events followed through
the kill of the leader, each exactly once and in order."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

from daemons import ROOT, wait_until
from test_cli import uds
from test_master_failover import leader, three_masters  # noqa: F401 - a fixture
from uds import client

WAIT_S = 60.0


def held_queries(connection: client.Connection) -> int:
    return connection.master_stats().get("events_queries_held", 0)


def test_a_held_query_is_answered_when_the_event_it_waits_for_commits(shared_cluster):
    connection = shared_cluster.connection
    job = connection.submit_job(b"#!/bin/sh\necho hi\n", hold=True)
    start = connection.events(after=0, limit=1).last_seq
    held_before = held_queries(connection)
    answered: list = []

    def ask() -> None:
        with client.connect(shared_cluster.layout.path, timeout=30) as own:
            page = own.events(after=start, job=job.id, kinds=["job_succeeded"], wait=25.0)
            answered.append((time.monotonic(), page))

    asker = threading.Thread(target=ask)
    asker.start()
    wait_until(lambda: held_queries(connection) > held_before, what="the query held", timeout=WAIT_S)
    assert not answered
    released_at = time.monotonic()
    job.release()
    asker.join(WAIT_S)
    [(at, page)] = answered
    assert [event.kind for event in page.events] == ["job_succeeded"] and page.events[0].job == job.id
    assert page.events[0].seq > start and page.through_seq >= page.events[0].seq and page.gap is None
    assert at - released_at < 10.0


def test_uds_events_follows_a_job_and_exits_at_its_end(shared_cluster):
    connection = shared_cluster.connection
    job = connection.submit_job(b"#!/bin/sh\necho hi\n", chunks=3, hold=True)
    held_before = held_queries(connection)
    follower = subprocess.Popen(
        [sys.executable, "-m", "uds.client.cli", "--cluster", str(shared_cluster.layout.path), "events",
         "--job", job.id, "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        wait_until(lambda: held_queries(connection) > held_before, what="the follower held", timeout=WAIT_S)
        job.release()
        out, err = follower.communicate(timeout=WAIT_S)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    kinds = [line.split()[2] for line in out.decode().splitlines()]
    assert kinds[0] == "job_submitted" and kinds[1] == "job_released" and kinds[-1] == "job_succeeded"
    assert kinds.count("chunk_succeeded") == 3
    # Without --follow: what the log holds, the same lines.
    again = uds("events", "--job", job.id, cluster_dir=shared_cluster.layout.path).stdout.decode()
    assert [line.split()[2] for line in again.splitlines()] == kinds
    only = uds("events", "--job", job.id, "--kind", "chunk_succeeded", cluster_dir=shared_cluster.layout.path)
    assert [line.split()[2] for line in only.stdout.decode().splitlines()] == ["chunk_succeeded"] * 3


def test_as_completed_yields_jobs_in_the_order_they_end(shared_cluster):
    connection = shared_cluster.connection
    done = connection.submit_job(b"#!/bin/sh\necho done\n")
    done.wait(timeout=WAIT_S)
    slow = connection.submit_job(b"#!/bin/sh\nsleep 2\n", hold=True)
    fast = connection.submit_job(b"#!/bin/sh\necho fast\n", hold=True)
    queries_before = connection.master_stats()["events_queries"]
    order = []
    for job in connection.as_completed([slow, fast, done], timeout=WAIT_S):
        order.append(job)
        if job is done:
            slow.release()
            fast.release()
    assert order == [done, fast, slow]
    ends = connection.events(kinds=["job_succeeded"], limit=10_000).events
    assert [event.job for event in ends if event.job in (slow.id, fast.id)] == [fast.id, slow.id]
    # One query for the log's end, then one held query per end at most: no polling.
    assert connection.master_stats()["events_queries"] - queries_before <= 1 + 3


def test_a_jobs_events_followed_through_the_kill_of_the_leader(three_masters):  # noqa: F811
    layout, connection, masters, others = three_masters
    chunks = 1000
    job = connection.submit_job(b"#!/bin/sh\n", chunks=chunks, timeout=120)
    seen: list = []
    received_at: list[float] = []
    killed_at: list[float] = []
    killed = threading.Event()

    def kill_when_running() -> None:
        wait_until(lambda: len(seen) > 50, what="events before the kill", timeout=WAIT_S)
        [old] = wait_until(lambda: (lambda index: index is not None and [index])(leader(layout)),
                           what="the leader", timeout=WAIT_S)
        killed_at.append(time.monotonic())
        masters[old].kill9()
        killed.set()

    killer = threading.Thread(target=kill_when_running)
    killer.start()
    with client.connect(layout.path, timeout=WAIT_S) as own:
        for event in own.job(job.id).events():
            seen.append(event)
            received_at.append(time.monotonic())
    killer.join(WAIT_S)
    assert killed.is_set(), "the leader was not killed"
    seqs = [event.seq for event in seen]
    assert seqs == sorted(set(seqs)), "an event twice or out of order"
    assert seen[0].kind == "job_submitted" and seen[-1].kind == "job_succeeded", (seen[:2], seen[-3:])
    assert all(event.job == job.id for event in seen)
    assert "gap" not in {event.kind for event in seen}
    # The new leader's log holds exactly these events of the job.
    logged = list(connection.job(job.id).events(follow=False))
    assert [event.seq for event in logged] == seqs, (set(seqs) ^ {event.seq for event in logged})
    assert logged == seen
    assert sorted(event.chunk for event in seen if event.kind == "chunk_succeeded") == list(range(chunks))
    resumed = [at for at in received_at if at > killed_at[0]]
    assert resumed, "every event was read before the kill"
    print(f"events followed through the kill -9 of the leader: the next event came {resumed[0] - killed_at[0]:.2f}s "
          f"after the kill")
