"""Which commands ride together in one proposal, and which proposals the
leader still awaits.

Commands queue, each with what its outcome is for (a purpose: plain data,
kept until the commit); `flush` cuts what queued into proposals while fewer
than MAX_OUTSTANDING_PROPOSALS await their commit. Pure: time comes in as
`now`, and nothing is sent from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from uds.master.leader_events import Propose

# One batch in flight: while it commits (about a millisecond) the next one
# gathers everything that arrives, which is what makes batches large.
MAX_OUTSTANDING_PROPOSALS = 1
MAX_COMMANDS_PER_PROPOSAL = 2000
# A proposal whose commit never came is given up after this long; its
# requesters retry (every command is idempotent).
PROPOSAL_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Proposal:
    commands: tuple
    purposes: tuple[Any, ...]       # one per command; None: nobody waits for it
    sent_at: float

    @property
    def gives_up_at(self) -> float:
        return self.sent_at + PROPOSAL_TIMEOUT_S


class Proposals:
    """`count(name, amount)` keeps the stats counters."""

    def __init__(self, count: Callable[[str, int], None]) -> None:
        self._count = count
        self._queued: list[tuple[Any, Any]] = []
        self._awaited: dict[int, Proposal] = {}
        self._next_tag = 1

    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def outstanding(self) -> int:
        return len(self._awaited)

    def queue(self, command: Any, purpose: Any = None) -> None:
        self._queued.append((command, purpose))

    def flush(self, now: float) -> list[Propose]:
        """Proposals for what queued, in order, as far as the limit allows."""
        proposals = []
        while self._queued and len(self._awaited) < MAX_OUTSTANDING_PROPOSALS:
            part = self._queued[:MAX_COMMANDS_PER_PROPOSAL]
            del self._queued[:MAX_COMMANDS_PER_PROPOSAL]
            commands = tuple(command for command, _ in part)
            tag = self._next_tag
            self._next_tag += 1
            self._awaited[tag] = Proposal(commands, tuple(purpose for _, purpose in part), now)
            self._count("proposals", 1)
            self._count("commands_proposed", len(commands))
            proposals.append(Propose(commands, tag))
        return proposals

    def drop_queued(self, now: float) -> Proposal | None:
        """What queued and was never proposed, no longer to be: a master that
        lost office must not propose it as a follower (pysyncobj forwards a
        follower's proposal to the new leader, which would commit what the
        old one decided, a lease grant among them)."""
        if not self._queued:
            return None
        dropped = Proposal(tuple(command for command, _ in self._queued),
                           tuple(purpose for _, purpose in self._queued), now)
        self._queued.clear()
        self._count("commands_dropped", len(dropped.commands))
        return dropped

    def settle(self, tag: int) -> Proposal | None:
        """The proposal `tag` names, no longer awaited; None if it was not."""
        return self._awaited.pop(tag, None)

    def give_up(self, now: float) -> list[Proposal]:
        """Proposals whose commit is overdue, no longer awaited."""
        overdue = [tag for tag, proposal in self._awaited.items() if now >= proposal.gives_up_at]
        for _ in overdue:
            self._count("proposals_timed_out", 1)
        return [self._awaited.pop(tag) for tag in overdue]

    def next_deadline(self) -> float | None:
        return min((proposal.gives_up_at for proposal in self._awaited.values()), default=None)
