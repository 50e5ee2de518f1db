"""RaftNode: confirmed leadership, a fast fallback, no votes while following,
and a journal synced before a follower acknowledges an append."""
from __future__ import annotations

import socket
import time

import pytest

from uds.master.raft import CONFIRMED_LEADERSHIP_S, LEADER_FALLBACK_S, RAFT_MIN_TIMEOUT_S, syncobj_conf
from uds.master.raft_node import RaftNode
from uds.wire.enums import NodeRole
from uds.wire.keys import KeyFolder, create_cluster_keys

DEADLINE_S = 5.0


def free_addresses(count: int) -> list[str]:
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [f"127.0.0.1:{probe.getsockname()[1]}" for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def wait_until(predicate, timeout: float = DEADLINE_S):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s"
        time.sleep(0.005)


@pytest.fixture
def keys(tmp_path):
    return KeyFolder(create_cluster_keys(tmp_path / "keys"), NodeRole.MASTER)


@pytest.fixture
def lone_follower(keys, tmp_path):
    """A node whose partner never runs and which is never ticked: messages
    are handed to it directly, and what it sends is recorded with its syncs."""
    events: list[tuple] = []
    self_address, partner = free_addresses(2)
    node = RaftNode(self_address, [partner], syncobj_conf(keys, journalFile=str(tmp_path / "journal"),
                                                          autoTick=False),
                    [], confirm_s=CONFIRMED_LEADERSHIP_S, before_acknowledge=lambda: events.append(("sync",)))
    node._SyncObj__transport.send = lambda to, message: events.append(
        ("send", message["type"], message.get("next_node_idx"), message.get("success")))
    leader = next(iter(node._SyncObj__otherNodes))
    try:
        yield node, leader, events
    finally:
        node.destroy()


def append(term: int, prev_index: int, prev_term: int, entries: list[tuple]) -> dict:
    return {"type": "append_entries", "term": term, "commit_index": 1, "prevLogIdx": prev_index,
            "prevLogTerm": prev_term, "entries": entries}


def test_a_follower_syncs_once_per_append_before_it_acknowledges(lone_follower):
    node, leader, events = lone_follower
    entries = [(b"\x00", index, 1) for index in (2, 3, 4)]
    node._SyncObj__onMessageReceived(leader, append(1, 1, 0, entries))
    assert events == [("sync",), ("send", "next_node_idx", 5, True)]      # three entries, one sync, first

    events.clear()
    node._SyncObj__onMessageReceived(leader, append(1, 4, 1, []))        # a heartbeat changes nothing
    assert events == [("send", "next_node_idx", 5, True)]

    events.clear()                                                         # a new leader replaces entry 4
    node._SyncObj__onMessageReceived(leader, append(2, 3, 1, [(b"\x00", 4, 2)]))
    assert events == [("sync",), ("send", "next_node_idx", 5, True)]
    assert node.acknowledgement_syncs == 2


def test_a_follower_ignores_votes_while_its_leader_is_alive(lone_follower):
    node, leader, events = lone_follower
    node._SyncObj__onMessageReceived(leader, append(1, 1, 0, []))
    events.clear()
    vote = {"type": "request_vote", "term": 5, "last_log_index": 9, "last_log_term": 4}
    node._SyncObj__onMessageReceived(leader, vote)
    assert events == [] and node._getTerm() == 1 and node.votes_ignored == 1

    assert node.live_leader() is leader
    node._heard_leader_at -= RAFT_MIN_TIMEOUT_S                           # as if the leader fell silent
    assert node._getLeader() is leader and node.live_leader() is None
    node._SyncObj__onMessageReceived(leader, vote)
    assert events == [("send", "response_vote", None, None)] and node._getTerm() == 5


def test_a_vote_is_on_disk_before_it_is_sent(lone_follower, monkeypatch, tmp_path):
    import os

    from uds.master import raft_node
    node, leader, events = lone_follower
    real_fsync = os.fsync
    monkeypatch.setattr(raft_node.os, "fsync", lambda fd: (real_fsync(fd),
                                                          events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))))
    node._SyncObj__onMessageReceived(leader, {"type": "request_vote", "term": 3, "last_log_index": 9,
                                              "last_log_term": 2})
    meta, folder = str(tmp_path / "journal.meta"), str(tmp_path)
    # The new term, then the vote: each synced, file and folder, before the vote goes out.
    assert events == [("fsync", meta), ("fsync", folder), ("fsync", meta), ("fsync", folder),
                      ("send", "response_vote", None, None)]


def test_the_confirmation_must_stay_below_the_minimum_election_timeout(keys):
    with pytest.raises(ValueError, match="confirm_s"):
        RaftNode(free_addresses(1)[0], [], syncobj_conf(keys, autoTick=False), [], confirm_s=RAFT_MIN_TIMEOUT_S)


def test_an_isolated_leader_loses_its_confirmation_then_steps_down(keys):
    addresses = free_addresses(3)
    nodes = [RaftNode(addresses[index], addresses[:index] + addresses[index + 1:], syncobj_conf(keys), [],
                      confirm_s=CONFIRMED_LEADERSHIP_S) for index in range(3)]
    try:
        wait_until(lambda: any(node.confirmed_leader() for node in nodes))
        (leader,) = [node for node in nodes if node._isLeader()]
        assert leader.role() == "leader"
        wait_until(lambda: sorted(node.role() for node in nodes) == ["follower", "follower", "leader"])
        for node in nodes:
            if node is not leader:
                node.destroy()
        isolated_at = time.monotonic()
        wait_until(lambda: not leader.confirmed_leader())
        unconfirmed_s = time.monotonic() - isolated_at
        wait_until(lambda: not leader._isLeader())
        stepped_down_s = time.monotonic() - isolated_at
        assert unconfirmed_s <= CONFIRMED_LEADERSHIP_S + 0.05
        # pysyncobj checks once a tick (its autoTick period is 5 ms).
        assert stepped_down_s <= LEADER_FALLBACK_S + 0.1 < 1.0
    finally:
        for node in nodes:
            node.destroy()
