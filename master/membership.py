"""Changing the masters' Raft group: `uds admin masters add|remove`.

A `master_change` names a master by its Raft address (host:port, the
`raft` of its [[masters]] entry) and, to add one, the address clients use.
The leader alone changes the group, one change at a time, through
pysyncobj's dynamic membership, and answers once the change is committed.

Rules: nothing here imports zmq, reads the clock or touches the Raft group;
`judge` decides whether a request may go to the group at all (time comes
in as `now`), and `refusal_by_the_group` words what pysyncobj refused. The
shell (master/node.py) asks the group (master/replicated.py
`RaftGroup.change_membership`) and carries the answer back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from uds import wire
from uds.wire.enums import ErrorCode
from uds.wire.messages import MASTER_ACTIONS, MASTER_ADD, MASTER_REMOVE

# A change still uncommitted after this long no longer holds others back
# here: its callback may never come (a leader deposed before the commit
# whose entry the next leader dropped). pysyncobj itself still refuses a
# second change while one is uncommitted in its log.
PENDING_EXPIRY_S = 30.0


class MembershipRefused(Exception):
    """A change that may not go to the Raft group; `code` and the message
    are the error answered."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True)
class MembershipChange:
    """One checked change: `add` is False for a removal."""
    add: bool
    raft: str                 # host:port, pysyncobj's id of the member
    address: str              # where clients reach it; "" on a removal

    def describe(self) -> str:
        return f"{'add' if self.add else 'remove'} master {self.raft}"


@dataclass(frozen=True)
class PendingChange:
    """A change handed to the Raft group, waiting for its commit."""
    change: MembershipChange
    peer: bytes
    request_id: int
    asked_at: float


def check_raft_address(raft: str) -> str:
    """`raft` if it is host:port with a port in 1..65535."""
    host, colon, port = raft.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MembershipRefused(ErrorCode.INVALID, f"raft address {raft!r} is not host:port")
    return raft


def judge(message: wire.MasterChange, self_raft: str, members: list[str],
          pending: PendingChange | None, now: float, listed: Mapping[str, str]) -> MembershipChange:
    """The change `message` asks for, if the leader may hand it to the
    group: `members` are the Raft addresses of the group, this one first;
    `listed` the [[masters]] entries of the cluster file as it is now (raft
    address -> client address). Raise MembershipRefused otherwise.

    A master is added only as its cluster-file entry names it: a mistyped
    or made-up address would join the group as a member that never answers,
    and in a group of one or two that takes the majority away."""
    if message.action not in MASTER_ACTIONS:
        raise MembershipRefused(ErrorCode.INVALID,
                                f"unknown action {message.action}: {MASTER_ADD} adds, {MASTER_REMOVE} removes")
    raft = check_raft_address(message.raft)
    if pending is not None and now - pending.asked_at < PENDING_EXPIRY_S:
        raise MembershipRefused(ErrorCode.INVALID, f"a change is already in progress "
                                                   f"({pending.change.describe()}); try again once it is committed")
    if message.action == MASTER_ADD:
        if raft in members:
            raise MembershipRefused(ErrorCode.INVALID, f"{raft} is already a master of the group")
        if not message.address:
            raise MembershipRefused(ErrorCode.INVALID, f"no client address given for {raft}")
        if listed.get(raft) != message.address:
            raise MembershipRefused(ErrorCode.INVALID, f"{raft} with client address {message.address} is no "
                                                       f"[[masters]] entry of the leader's cluster file: add "
                                                       f"the entry there first")
        return MembershipChange(True, raft, message.address)
    if raft == self_raft:
        raise MembershipRefused(ErrorCode.INVALID, f"{raft} is the leader: a leader does not remove itself; "
                                                   f"stop it, and remove it through the next leader")
    if raft not in members:
        raise MembershipRefused(ErrorCode.INVALID, f"{raft} is not a master of the group "
                                                   f"(members: {', '.join(members)})")
    return MembershipChange(False, raft, "")


# pysyncobj's failures that mean this master no longer leads (or the entry
# was overwritten by a new leader's log): the client asks the leader again.
LEADERSHIP_LOST = frozenset({"not_leader", "missing_leader", "leader_changed", "discarded"})


def refusal_by_the_group(change: MembershipChange, failure: str) -> str:
    """Why pysyncobj's refusal or failure of `change` happened, for a person."""
    if failure == "request_denied":
        return (f"the Raft group refused to {change.describe()}: another change is not yet committed, "
                f"or this leader was just elected; try again")
    return f"{change.describe()} failed in the Raft group: {failure}; ask again to learn whether it took effect"
