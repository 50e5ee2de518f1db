"""Three masters from one cluster file: every one serves, and a client
finds the leader from any of them. Real daemons on 127.0.0.1."""
from __future__ import annotations

import os
import signal
import time

import pytest
import zmq

from daemons import ClusterLayout
from uds import client as uds_client
from uds import wire
from uds.wire.enums import ErrorCode, NodeRole
from uds.wire.transport import Transport, recv_message, send_message

REPLY_TIMEOUT_MS = 5000


@pytest.fixture
def three_masters(tmp_path):
    layout = ClusterLayout.create(tmp_path, masters=3)
    try:
        masters = [layout.start("master", name=str(index), wait=False) for index in range(3)]
        for master in masters:
            master.wait_ready()      # followers too: each writes its ready file once it follows a leader
        yield layout
    finally:
        layout.cleanup()


def ask_master(layout: ClusterLayout, index: int, message: wire.Message) -> wire.Message:
    with Transport(layout.keys()) as transport:
        socket = transport.client_socket(zmq.DEALER, layout.cluster.masters[index].address, NodeRole.MASTER)
        send_message(socket, wire.encode(message))
        assert socket.poll(REPLY_TIMEOUT_MS, zmq.POLLIN), f"master {index} did not answer"
        return wire.decode(recv_message(socket, None).frames)


def test_every_master_serves_and_a_follower_names_the_leader(three_masters):
    layout = three_masters
    roles = [ask_master(layout, index, wire.StatsQuery.make(bytes(16), request_id=index)).counters["leader"]
             for index in range(3)]
    assert sorted(roles) == [0, 0, 1]
    leader = layout.cluster.masters[roles.index(1)].address
    follower = roles.index(0)
    refused = ask_master(layout, follower, wire.JobStatus.make(bytes(16), request_id=5, job_uuid_upper=0,
                                                               job_uuid_lower=0, detail=0, wait_ms=0,
                                                               first_chunk=0, max_chunks=0))
    assert isinstance(refused, wire.Error) and refused.error_code == ErrorCode.NOT_LEADER
    assert leader in refused.reason
    with uds_client.connect(layout.path, timeout=10) as connection:    # tries masters[0] first
        with pytest.raises(uds_client.UnknownJobError):
            connection.job_status("00" * 16)                            # answered by the leader


def test_committed_jobs_survive_every_master_killed_at_once(three_masters):
    layout = three_masters
    layout.start("storage")
    with uds_client.connect(layout.path, timeout=10) as connection:
        jobs = [connection.submit_job(b"#!/bin/sh\ntrue\n", chunks=3, name=f"kept-{index}") for index in range(4)]
    # Followers sync too, before they acknowledge the appends that carried the jobs.
    stats = [ask_master(layout, index, wire.StatsQuery.make(bytes(16), request_id=index)).counters
             for index in range(3)]
    assert all(counters["raft_journal_syncs"] > 0 for counters in stats)
    masters = [daemon for daemon in layout.started if daemon.role == "master"]
    for master in masters:
        master.process.kill()                                  # SIGKILL, all at once
    for master in masters:
        master.process.wait(timeout=10)
    restarted = [layout.start("master", name=str(index), wait=False) for index in range(3)]
    for master in restarted:
        master.wait_ready()
    with uds_client.connect(layout.path, timeout=10) as connection:
        for index, job in enumerate(jobs):
            status = connection.job_status(job.id, detail=False)
            assert status.name == f"kept-{index}" and status.chunk_count == 3


def test_masters_lists_each_masters_raft_standing_and_a_dead_one_as_unreachable(three_masters):
    layout = three_masters
    addresses = [master.address for master in layout.cluster.masters]
    with uds_client.connect(layout.path, timeout=10) as connection:
        records = connection.masters()
        assert [record.address for record in records] == addresses
        assert sorted(record.role for record in records) == ["follower", "follower", "leader"]
        (leader,) = [record for record in records if record.role == "leader"]
        assert {record.term for record in records} == {leader.term}
        assert {record.leader for record in records} == {leader.address}
        assert leader.lag == 0 and all(record.lag >= 0 for record in records)
        assert all(record.commit_index >= 1 and record.last_applied <= record.commit_index for record in records)

        follower = addresses.index(next(record.address for record in records if record.role == "follower"))
        [daemon for daemon in layout.started if daemon.role == "master"][follower].kill9()
        started = time.monotonic()
        records = connection.masters(timeout=0.5)
        assert time.monotonic() - started < 2.0
        assert records[follower].role == "unreachable" and not records[follower].reachable
        assert sum(record.role == "leader" for record in records) == 1


def test_a_leader_cut_off_from_its_followers_stops_answering_as_leader(three_masters):
    layout = three_masters
    roles = [ask_master(layout, index, wire.StatsQuery.make(bytes(16), request_id=index)).counters["leader"]
             for index in range(3)]
    leader = roles.index(1)
    masters = [daemon for daemon in layout.started if daemon.role == "master"]
    status = wire.JobStatus.make(bytes(16), request_id=7, job_uuid_upper=0, job_uuid_lower=0, detail=0,
                                 wait_ms=0, first_chunk=0, max_chunks=0)
    assert ask_master(layout, leader, status).error_code == ErrorCode.UNKNOWN_JOB     # answered as leader
    followers = [masters[index] for index in range(3) if index != leader]
    try:
        for follower in followers:
            os.kill(follower.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        while (answer := ask_master(layout, leader, status)).error_code == ErrorCode.UNKNOWN_JOB:
            assert time.monotonic() - frozen_at < 2.0, "the isolated leader still answers as leader"
        refused_after_s = time.monotonic() - frozen_at
        assert answer.error_code in (ErrorCode.NOT_LEADER, ErrorCode.BUSY)
        assert layout.cluster.masters[leader].address not in answer.reason    # it points at no one, not itself
        # Its confirmation lapses after CONFIRMED_LEADERSHIP_S (0.2 s); its loop looks at least every 0.1 s.
        assert refused_after_s < 0.6, refused_after_s
        counters = ask_master(layout, leader, wire.StatsQuery.make(bytes(16), request_id=9)).counters
        assert counters["leader"] == 0
    finally:
        for follower in followers:
            os.kill(follower.pid, signal.SIGCONT)


def test_a_follower_stops_naming_a_killed_leader_within_the_election_timeout(three_masters):
    layout = three_masters
    roles = [ask_master(layout, index, wire.StatsQuery.make(bytes(16), request_id=index)).counters["leader"]
             for index in range(3)]
    leader, follower = roles.index(1), roles.index(0)
    dead = layout.cluster.masters[leader].address
    status = wire.JobStatus.make(bytes(16), request_id=7, job_uuid_upper=0, job_uuid_lower=0, detail=0,
                                 wait_ms=0, first_chunk=0, max_chunks=0)
    assert dead in ask_master(layout, follower, status).reason
    [daemon for daemon in layout.started if daemon.role == "master"][leader].kill9()
    killed_at = time.monotonic()
    while dead in (answer := ask_master(layout, follower, status)).reason:
        assert time.monotonic() - killed_at < 2.0, "a follower still points at the killed leader"
    # Silent for the minimum election timeout (0.25 s), then no longer named.
    assert time.monotonic() - killed_at < 0.6
    assert answer.error_code in (ErrorCode.NOT_LEADER, ErrorCode.UNKNOWN_JOB)
