"""Ask every master of a cluster file where it stands in the Raft group.

Each master is asked directly, all at once, and given a short time to answer:
a master that does not answer is reported as unreachable rather than waited
for, so `uds nodes` shows a dead master at once. The role and the leader come
as integers in the master's stats (see master/node.py `_raft_counters`),
and so does whether its leadership is confirmed: its `leader` counter is 1
only while a majority has answered it within CONFIRMED_LEADERSHIP_S (0.2 s,
master/raft.py), and only such a leader serves clients. pysyncobj's role
alone may still say leader for a while after the leader is cut off.

`change_masters` adds a master to the Raft group or removes one, through
the leader (master/membership.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq

from uds import wire
from uds.errors import ClientError, InvalidJobError, RemoteError
from uds.wire.cluster import Cluster
from uds.wire.enums import NodeRole
from uds.wire.messages import MASTER_ACTIONS, MASTER_ADD, MASTER_REMOVE
from uds.wire.transport import Transport, recv_message, send_message

# Long enough for a master on a LAN, short enough that a dead one does not stall `uds nodes`.
MASTERS_TIMEOUT_S = 1.0
# pysyncobj's numbering of Raft states, as master/raft_node.py RAFT_ROLES.
RAFT_ROLES = ("follower", "candidate", "leader")
UNREACHABLE = "unreachable"

if TYPE_CHECKING:
    from uds.client.api import Connection


@dataclass(frozen=True)
class MasterRecord:
    address: str                    # where clients reach it
    role: str                       # follower, candidate, leader, or unreachable
    term: int | None = None
    commit_index: int | None = None
    last_applied: int | None = None
    leader: str | None = None       # the client address of the leader it follows
    lag: int | None = None          # the leader's commit index minus its own; None without a leader's answer
    confirmed_leader: bool | None = None    # leads, heard from a majority within 0.2 s; None if unreachable

    @property
    def reachable(self) -> bool:
        return self.role != UNREACHABLE


def ask_every_master(cluster: Cluster, transport: Transport, node_id: bytes,
                     timeout: float = MASTERS_TIMEOUT_S) -> list[MasterRecord]:
    """One record per [[masters]] entry, in the cluster file's order."""
    addresses = [master.address for master in cluster.masters]
    sockets = [transport.client_socket(zmq.DEALER, address, NodeRole.MASTER) for address in addresses]
    counters: list[dict | None] = [None] * len(addresses)
    try:
        for index, socket in enumerate(sockets):
            send_message(socket, wire.encode(wire.StatsQuery.make(node_id, request_id=index + 1)),
                         counters=transport)
        poller = zmq.Poller()
        for socket in sockets:
            poller.register(socket, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while any(answer is None for answer in counters) and (left := deadline - time.monotonic()) > 0:
            for socket, _ in poller.poll(int(left * 1000) + 1):
                index = sockets.index(socket)
                received = recv_message(socket, transport)
                if received is None:
                    continue
                try:
                    reply = wire.decode(received.frames)
                except wire.WireError:
                    continue
                if isinstance(reply, wire.StatsReply) and reply.request_id == index + 1:
                    counters[index] = reply.counters
                    poller.unregister(socket)
    finally:
        for socket in sockets:
            socket.close(linger=0)
    return _records(addresses, counters)


def _records(addresses: list[str], counters: list[dict | None]) -> list[MasterRecord]:
    answered = [answer for answer in counters if answer is not None and "raft_role" in answer]
    leaders = [answer for answer in answered if RAFT_ROLES[answer["raft_role"]] == "leader"]
    # Two may call themselves leader for a moment; the later term is the real one.
    leader = max(leaders, key=lambda answer: answer["raft_term"], default=None)
    records = []
    for address, answer in zip(addresses, counters):
        if answer is None or "raft_role" not in answer:
            records.append(MasterRecord(address, UNREACHABLE))
            continue
        followed = answer["raft_leader_index"]
        records.append(MasterRecord(
            address, RAFT_ROLES[answer["raft_role"]], answer["raft_term"], answer["raft_commit_index"],
            answer["raft_last_applied"], addresses[followed] if 0 <= followed < len(addresses) else None,
            None if leader is None else leader["raft_commit_index"] - answer["raft_commit_index"],
            bool(answer["leader"]) if "leader" in answer else None))
    return records


# -- changing the Raft group (`uds admin masters add|remove`) ------------------

# Adding a master commits one entry; the new one catches up afterwards, on its own.
MASTER_CHANGE_TIMEOUT_S = 10.0


class MasterChangeError(ClientError):
    """A membership change the client or the leader refused; the message says why."""


@dataclass(frozen=True)
class MembershipChanged:
    """A committed change: the group as the leader saw it just after."""
    raft: str                       # the Raft address added or removed
    commit_index: int               # the leader's commit index once the change was committed
    members: list[str]              # the Raft addresses of the group, the leader first


def member_addresses(cluster: Cluster, address: str) -> tuple[str, str] | None:
    """(Raft address, client address) of the [[masters]] entry that
    `address` names, by either of its two addresses; None if none does."""
    for master in cluster.masters:
        if address in (master.address, master.raft):
            return master.raft, master.address
    return None


def change_request(cluster: Cluster, add: bool, address: str) -> tuple[int, str, str]:
    """(action, Raft address, client address) of a master_change for
    `address`. A master to add must have its [[masters]] entry in the
    cluster file already: that is where the new master reads its own
    addresses, and where every process started later finds it. A master to
    remove may be gone from the file: give its Raft address (host:port)."""
    found = member_addresses(cluster, address)
    if add:
        if found is None:
            raise MasterChangeError(f"{address} is not a [[masters]] entry of the cluster file: "
                                    f"add its entry (address and raft) first, then start it, then add it")
        return MASTER_ADD, found[0], found[1]
    if found is not None:
        return MASTER_REMOVE, found[0], ""
    if "://" in address:
        raise MasterChangeError(f"{address} is not a [[masters]] entry of the cluster file: "
                                f"give the Raft address (host:port) of the master to remove")
    return MASTER_REMOVE, address, ""


def change_masters(connection: Connection, add: bool, address: str,
                   timeout: float = MASTER_CHANGE_TIMEOUT_S) -> MembershipChanged:
    """Ask the leader to add the master `address` names to the Raft group,
    or to remove it, and wait until the change is committed. `address` is
    either address of its [[masters]] entry (see change_request)."""
    action, raft, client_address = change_request(connection.cluster, add, address)
    saved, connection.timeout = connection.timeout, timeout
    try:
        reply = connection._ask(lambda request_id: wire.MasterChange.make(
            connection.node_id, request_id=request_id, action=action, raft=raft, address=client_address),
            wire.MasterChangeReply)
    except (InvalidJobError, RemoteError) as refused:
        raise MasterChangeError(f"{MASTER_ACTIONS[action]} master {raft}: {refused}") from None
    finally:
        connection.timeout = saved
    return MembershipChanged(raft, reply.commit_index, list(reply.members))
