"""Replacing a master: `uds admin masters remove` and `add`.

The end-to-end test runs three real masters, storage, one balancer and two
workers; kills a follower with kill -9, removes it from the Raft group, puts
a new master with an empty data folder in its [[masters]] entry, starts it
and adds it, while jobs run. Every job succeeds with each chunk committed
once, and the new master ends at the others' commit index.

The rest checks the requests themselves: what the client and the leader
refuse, and why.
"""
from __future__ import annotations

import re
import time

import pytest
import zmq

from daemons import ClusterLayout, free_port, wait_until
from test_master_failover import committed, every_chunk_committed_once, leader, start_masters, start_the_rest, workers_ready, balancer_active
from uds import client, wire
from uds.client import cli
from uds.client.masters import MasterChangeError, change_request
from uds.master.membership import PENDING_EXPIRY_S, MembershipRefused, PendingChange, judge
from uds.wire.enums import ErrorCode, NodeRole
from uds.wire.transport import Transport, recv_message, send_message
from uds.wire.messages import MASTER_ADD, MASTER_REMOVE

WAIT_S = 20.0
NODE = bytes(16)
NOW = 1_795_000_000.0
MEMBERS = ["10.0.0.1:7110", "10.0.0.2:7110", "10.0.0.3:7110"]
# The leader's cluster file as it is now: the new master's entry is in.
LISTED = {**{raft: f"tcp://{raft.split(':')[0]}:7100" for raft in MEMBERS}, "10.0.0.4:7110": "tcp://10.0.0.4:7100"}


def change(action: int, raft: str, address: str = "") -> wire.MasterChange:
    return wire.MasterChange.make(NODE, request_id=1, action=action, raft=raft, address=address)


# -- the leader's judgement (pure) ----------------------------------------------

def test_the_leader_accepts_a_new_master_and_the_removal_of_a_member():
    added = judge(change(MASTER_ADD, "10.0.0.4:7110", "tcp://10.0.0.4:7100"), MEMBERS[0], MEMBERS, None, NOW,
                  LISTED)
    assert (added.add, added.raft, added.address) == (True, "10.0.0.4:7110", "tcp://10.0.0.4:7100")
    removed = judge(change(MASTER_REMOVE, "10.0.0.3:7110"), MEMBERS[0], MEMBERS, None, NOW, LISTED)
    assert (removed.add, removed.raft) == (False, "10.0.0.3:7110")


NOT_LISTED = r"no \[\[masters\]\] entry of the leader's cluster file"


@pytest.mark.parametrize("request_, reason", [
    (change(7, "10.0.0.4:7110", "tcp://10.0.0.4:7100"), "unknown action 7"),
    (change(MASTER_ADD, "10.0.0.4", "tcp://10.0.0.4:7100"), "is not host:port"),
    (change(MASTER_ADD, "10.0.0.4:99999", "tcp://10.0.0.4:7100"), "is not host:port"),
    (change(MASTER_ADD, "10.0.0.2:7110", "tcp://10.0.0.2:7100"), "already a master"),
    (change(MASTER_ADD, "10.0.0.4:7110", ""), "no client address"),
    (change(MASTER_REMOVE, "10.0.0.9:7110"), "is not a master of the group"),
    (change(MASTER_REMOVE, "10.0.0.1:7110"), "is the leader"),
    (change(MASTER_ADD, "10.0.0.5:7110", "tcp://10.0.0.5:7100"), NOT_LISTED),     # a made-up master
    (change(MASTER_ADD, "10.0.0.4:7110", "tcp://10.0.0.9:7100"), NOT_LISTED),     # the client address mistyped
])
def test_the_leader_refuses_what_it_cannot_do(request_, reason):
    with pytest.raises(MembershipRefused, match=reason) as refused:
        judge(request_, MEMBERS[0], MEMBERS, None, NOW, LISTED)
    assert refused.value.code == ErrorCode.INVALID


def test_one_change_at_a_time():
    under_way = judge(change(MASTER_REMOVE, "10.0.0.3:7110"), MEMBERS[0], MEMBERS, None, NOW, LISTED)
    pending = PendingChange(under_way, peer=b"peer", request_id=1, asked_at=NOW)
    adding = change(MASTER_ADD, "10.0.0.4:7110", "tcp://10.0.0.4:7100")
    with pytest.raises(MembershipRefused, match="already in progress .remove master 10.0.0.3:7110"):
        judge(adding, MEMBERS[0], MEMBERS, pending, NOW + 1.0, LISTED)
    # A change whose commit never came (its leader was deposed) holds nothing back for ever.
    assert judge(adding, MEMBERS[0], MEMBERS, pending, NOW + PENDING_EXPIRY_S, LISTED).add


# -- the client's reading of ADDRESS (the cluster file) -------------------------

@pytest.fixture
def layout(tmp_path):
    return ClusterLayout.create(tmp_path / "cluster", masters=3)


def test_either_address_of_an_entry_names_the_master(layout):
    entry = layout.cluster.masters[1]
    assert change_request(layout.cluster, True, entry.address) == (MASTER_ADD, entry.raft, entry.address)
    assert change_request(layout.cluster, True, entry.raft) == (MASTER_ADD, entry.raft, entry.address)
    assert change_request(layout.cluster, False, entry.address) == (MASTER_REMOVE, entry.raft, "")


def test_a_master_to_add_needs_its_entry_in_the_cluster_file(layout):
    with pytest.raises(MasterChangeError, match=r"not a \[\[masters\]\] entry.*add its entry"):
        change_request(layout.cluster, True, "tcp://127.0.0.1:1")


def test_a_master_gone_from_the_file_is_removed_by_its_raft_address(layout):
    assert change_request(layout.cluster, False, "10.9.9.9:7110") == (MASTER_REMOVE, "10.9.9.9:7110", "")
    with pytest.raises(MasterChangeError, match=r"give the Raft address"):
        change_request(layout.cluster, False, "tcp://10.9.9.9:7100")


def test_the_cli_says_why_an_add_is_refused_before_asking_anyone(layout, capsys):
    assert cli.main(["--cluster", str(layout.path), "admin", "masters", "add", "tcp://127.0.0.1:1"]) == 1
    assert "not a [[masters]] entry" in capsys.readouterr().err


def test_the_cli_needs_an_action_and_an_address(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["admin", "masters", "add"])
    assert exited.value.code == cli.EXIT_USAGE
    with pytest.raises(SystemExit):
        cli.main(["admin", "masters", "replace", "127.0.0.1:1"])


# -- through real daemons --------------------------------------------------------

def ask_master(layout: ClusterLayout, index: int, role: NodeRole, message: wire.Message) -> wire.Message:
    """Send `message` to master `index` with the key of `role`; its answer."""
    with Transport(layout.keys(role)) as transport:
        socket = transport.client_socket(zmq.DEALER, layout.cluster.masters[index].address, NodeRole.MASTER)
        try:
            send_message(socket, wire.encode(message))
            assert socket.poll(int(WAIT_S * 1000), zmq.POLLIN), "no answer"
            return wire.decode(recv_message(socket, None).frames)
        finally:
            socket.close(linger=0)


def refusals_before_any_change(layout: ClusterLayout, leader_index: int, follower: int) -> None:
    """Only a client key may ask, and only the leader acts."""
    entry = layout.cluster.masters[follower]
    request = wire.MasterChange.make(NODE, request_id=7, action=MASTER_REMOVE, raft=entry.raft, address="")
    for role in (NodeRole.WORKER, NodeRole.LOADBALANCER, NodeRole.MASTER):
        refused = ask_master(layout, leader_index, role, request)
        assert isinstance(refused, wire.Error) and refused.error_code == ErrorCode.FORBIDDEN, (role, refused)
    redirected = ask_master(layout, follower, NodeRole.CLIENT, request)
    assert isinstance(redirected, wire.Error) and redirected.error_code == ErrorCode.NOT_LEADER, redirected
    assert wire.leader_hint(redirected) == layout.cluster.masters[leader_index].address

def replace_entry(layout: ClusterLayout, index: int) -> dict[str, str]:
    """What an operator does: the dead master's [[masters]] entry, in place,
    now names the new master (new ports, a new, empty data folder)."""
    old = layout.cluster.masters[index]
    new = {"address": f"tcp://127.0.0.1:{free_port()}", "raft": f"127.0.0.1:{free_port()}",
           "data": "data/master-new"}
    text = layout.path.read_text()
    for key, value in (("address", old.address), ("raft", old.raft), ("data", f"data/master-{index}")):
        text, replaced = re.subn(rf'^{key} = "{re.escape(value)}"$', f'{key} = "{new[key]}"', text, flags=re.M)
        assert replaced == 1, key
    layout.path.write_text(text)
    return new


def all_chunks_committed_once(connection: client.Connection, jobs: list, chunks: int) -> None:
    for job in jobs:
        every_chunk_committed_once(connection, job, chunks)


def test_a_dead_follower_is_replaced_by_a_new_master_while_jobs_run(tmp_path):
    layout = ClusterLayout.create(tmp_path / "cluster", masters=3)
    connection = None
    chunks = 12
    program = b"#!/bin/sh\nsleep 0.1\necho $UDS_CHUNK\n"
    try:
        masters = start_masters(layout)
        start_the_rest(layout)
        connection = client.connect(layout.path, timeout=WAIT_S)
        wait_until(lambda: workers_ready(connection) and balancer_active(connection),
                   what="workers and an active balancer", timeout=WAIT_S)
        before = [connection.submit_job(program, chunks=chunks, timeout=60) for _ in range(2)]
        wait_until(lambda: committed(connection, before[0].id), what="a first result", timeout=WAIT_S)

        dead = next(index for index in range(3) if index != leader(layout))
        refusals_before_any_change(layout, leader(layout), dead)
        dead_entry = layout.cluster.masters[dead]
        masters[dead].kill9()
        removed = connection.change_masters(False, dead_entry.address)      # by its ZeroMQ address
        assert removed.raft == dead_entry.raft
        assert dead_entry.raft not in removed.members and len(removed.members) == 2
        during = connection.submit_job(program, chunks=chunks, timeout=60)   # two members: still a majority

        before_edit = layout.root / "cluster-before.toml"       # as a host not yet told would have it
        before_edit.write_text(layout.path.read_text())
        new = replace_entry(layout, dead)
        assert not (layout.root / new["data"]).exists(), "the new master starts with no data folder"
        replacement = layout.start("master", name=str(dead), wait=False)
        with client.connect(layout.path, timeout=WAIT_S) as operator:       # reads the edited file
            added = operator.change_masters(True, new["raft"])
            assert added.raft == new["raft"]
            assert new["raft"] in added.members and len(added.members) == 3
            with pytest.raises(MasterChangeError, match="already a master"):
                operator.change_masters(True, new["address"])
            replacement.wait_ready()
            after = [operator.submit_job(program, chunks=chunks, timeout=60) for _ in range(2)]
            all_chunks_committed_once(operator, [*before, during, *after], chunks)

            def caught_up():
                records = operator.masters()
                indexes = {record.commit_index for record in records}
                return all(record.reachable for record in records) and len(indexes) == 1 and records
            records = wait_until(caught_up, what="the new master at the others' commit index", timeout=WAIT_S)
            assert records[dead].address == new["address"] and records[dead].role == "follower"
            assert records[dead].commit_index >= added.commit_index
            print(f"replaced master {dead}: removed at index {removed.commit_index}, added at "
                  f"{added.commit_index}; every master now at {records[0].commit_index}")

            # A master restarted from a cluster file that still names the dead
            # master and not the new one comes back with the membership it had
            # committed (its journal): with the leader killed, it and the new
            # master are a majority of three and elect a leader; the group of
            # its file would have no majority left.
            old_leader = leader(layout)
            survivor = next(index for index in range(3) if index not in (dead, old_leader))
            masters[survivor].kill9()
            masters[survivor] = layout.start("master", "--cluster", str(before_edit), name=str(survivor))
            wait_until(caught_up, what="the restarted master at the others' commit index", timeout=WAIT_S)
            masters[old_leader].kill9()
            # A list, so that master 0 elected is a true value too.
            [elected] = wait_until(lambda: [found for found in [leader(layout)] if found in (dead, survivor)],
                                   what="a leader elected by the restarted and the new master", timeout=WAIT_S)
            print(f"leader {old_leader} killed: master {elected} elected by the restarted and the new master")
    finally:
        if connection is not None:
            connection.close()
        layout.cleanup()
