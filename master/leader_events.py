"""What the master leader's core (master/leader.py) takes in and gives out.

Events are what its driver feeds `Leader.handle()`; effects are what it
returns, each carried out by the driver (see the contract at the top of
master/leader.py). Plain frozen data: nothing here does anything.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, TypeVar

from uds import wire
from uds.master.commands import Outcome
from uds.master.state import ClusterState

T = TypeVar("T")


class UnknownEventError(Exception):
    """The driver fed something that is not a leader event: a bug."""


class StateReader(Protocol):
    """Runs a pure query on the replicated state (RaftGroup.read is one)."""

    def read(self, query: Callable[[ClusterState], T]) -> T: ...


class DirectReader:
    """Reads a ClusterState in the caller's thread: for simulations and tests."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def read(self, query: Callable[[ClusterState], T]) -> T:
        return query(self.state)


# ---- events -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RaftStatus:
    ready: bool                     # replayed its log and joined the group
    leader: bool
    leader_address: str | None      # where clients reach the leader (a follower), if known


@dataclass(frozen=True, slots=True)
class Received:
    peer: bytes                     # routing id to answer to
    message: wire.Message


@dataclass(frozen=True, slots=True)
class Committed:
    tag: int
    outcomes: tuple[Outcome, ...] | list[Outcome]   # ClusterState.apply's, in order


@dataclass(frozen=True, slots=True)
class ProposalFailed:
    tag: int
    reason: str


@dataclass(frozen=True, slots=True)
class Tick:
    """The end of a burst of events, or a Wake falling due."""


Event = RaftStatus | Received | Committed | ProposalFailed | Tick

NOT_STARTED = RaftStatus(ready=False, leader=False, leader_address=None)


# ---- effects ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Request:
    """Who asked, so that the answer can go back."""

    peer: bytes
    request_id: int                 # 0 for messages that carry none
    message_type: int


@dataclass(frozen=True, slots=True)
class Propose:
    """Append these commands to the Raft log as one entry."""

    commands: tuple
    tag: int


@dataclass(frozen=True, slots=True)
class Send:
    """A message to a peer that did not ask for it (the load balancer)."""

    peer: bytes
    message: wire.Message


@dataclass(frozen=True, slots=True)
class Reply:
    """The one answer to a request: its reply, or a wire.Error."""

    request: Request
    message: wire.Message


@dataclass(frozen=True, slots=True)
class Wake:
    """Tick no later than `at` (the shell's clock)."""

    at: float


@dataclass(frozen=True, slots=True)
class Note:
    """A line for the log."""

    text: str
    warning: bool = False


Effect = Propose | Send | Reply | Wake | Note
