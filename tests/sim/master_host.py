"""The master as the simulation runs it: the replicated ClusterState behind
a Raft group modelled as one linearizable log, and the real leader core
(master/leader.py) in a shell that drives it the way master/node.py does.

The shell is node.py's loop: what arrives (a Raft status, a commit or
failure of a proposal, a message) waits for the loop's next iteration, at
most LOOP_S later, which feeds it all in node.py's order (status, commits,
messages) and ends with one Tick, so messages that arrive together are one
burst and their commands ride in one proposal. A Wake schedules an
iteration. Nothing ticks on a period: a core that forgets to ask for a Wake
stalls here.

The log applies proposals in the order they were made, 2-4 ms later.
Replacing the leader demotes the core in office (RaftStatus leader=False);
each proposal in flight then vanishes, commits while its proposer hears that
it failed, or commits as usual, as a real election may have it. For a short
election nobody leads, and the demoted core answers at the master's address
as a follower would. Then a fresh `Leader` with no soft state takes office,
or now and then the demoted one wins again with what it kept (its queued
commands, its proposals still awaited). The replicated state survives.
While faults are on, a proposal of the leader in office may also fail
(`proposal_failure`), vanishing or committing all the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from uds import wire
from uds.master import leader as core
from uds.master.state import ClusterState

from .host import Host
from .loop import Simulation

# A proposal commits this long after it is proposed (plus up to as much again).
COMMIT_DELAY_S = 0.002
# A message or commit is handled by the loop's next iteration, at most this
# much later; what arrives meanwhile is handled in the same burst.
LOOP_S = 0.001
# How long nobody leads after the leader is replaced.
ELECTION_S = (0.0, 0.5)
# Odds that the demoted leader wins the election itself, keeping its soft state.
REELECTED_ODDS = 0.25
LEADING = core.RaftStatus(ready=True, leader=True, leader_address=None)
FOLLOWING = core.RaftStatus(ready=True, leader=False, leader_address=None)
_FEED_ORDER = {core.RaftStatus: 0, core.Committed: 1, core.ProposalFailed: 1, core.Received: 2}


@dataclass(eq=False)
class _Term:
    """One leader core, from its election until its last proposal settles."""

    leader: core.Leader
    generation: int
    wake_at: float | None = None        # the earliest Tick already scheduled


@dataclass
class _Entry:
    """A proposal in the log, not yet applied."""

    term: _Term
    tag: int
    commands: tuple
    heard: bool = True                  # its proposer hears Committed when it applies


class MasterHost(Host):
    def __init__(self, sim: Simulation, name: str = "master") -> None:
        super().__init__(sim, name)
        self.state = ClusterState()
        self.reader = core.DirectReader(self.state)
        self.generation = 0
        self.election = 0
        self.log: dict[int, _Entry] = {}        # proposal number -> entry, in log order
        self.next_number = 1
        self.inbox: list[tuple[_Term | None, Any]] = []
        self.iteration_due = False
        self.proposal_failure = 0.0             # odds that the leader's proposal fails (a fault)
        self.leading: _Term | None = None       # the core Raft has as leader; None in an election
        self.effect_handlers: dict[type, Callable[[_Term, Any], None]] = {
            core.Propose: self._append,
            core.Send: lambda term, effect: self.send(effect.peer.decode(), effect.message),
            core.Reply: lambda term, effect: self.send(effect.request.peer.decode(), effect.message),
            core.Wake: self._wake,
            core.Note: self._note,
        }
        self.term = self._take_office()

    # -- driving the core: master/node.py's loop -------------------------------

    def _take_office(self) -> _Term:
        self.generation += 1
        node_id = f"master{self.generation}".encode().ljust(16, b"\0")
        term = _Term(core.Leader(node_id, self.reader, host=self.name, address=self.name,
                                 started_at=self.sim.now), self.generation)
        self.term = self.leading = term
        self._post(term, LEADING)
        return term

    def _post(self, term: _Term | None, event: Any) -> None:
        """An event for the loop's next iteration (None: only a Tick), which
        comes within LOOP_S; `term` None: whoever is in office by then."""
        self.inbox.append((term, event))
        if not self.iteration_due:
            self.iteration_due = True
            self.later(self.sim.random.random() * LOOP_S, self._iterate)

    def _iterate(self) -> None:
        """Feed what arrived since the last iteration in node.py's order (the
        Raft status, the commits, the messages), then Tick each core fed."""
        self.iteration_due = False
        inbox, self.inbox = self.inbox, []
        inbox.sort(key=lambda item: _FEED_ORDER.get(type(item[1]), 0))
        ticking: list[_Term] = []
        for term, event in inbox:
            term = term or self.term
            if event is not None:
                self._feed(term, event)
            if term not in ticking:
                ticking.append(term)
        for term in ticking:
            if self._live(term):
                self._feed(term, core.Tick())

    def _feed(self, term: _Term, event: Any) -> None:
        for effect in term.leader.handle(event, self.sim.now):
            self.effect_handlers[type(effect)](term, effect)

    def on_message(self, source: str, message: wire.Message) -> None:
        self._post(None, core.Received(source.encode(), message))

    def _live(self, term: _Term) -> bool:
        return term is self.term or any(entry.term is term for entry in self.log.values())

    def _wake(self, term: _Term, effect: core.Wake) -> None:
        if term.wake_at is not None and term.wake_at <= effect.at:
            return                              # a Tick comes by then anyway
        term.wake_at = effect.at
        self.sim.at(effect.at, self._run, self._woken, (term, effect.at))

    def _woken(self, term: _Term, at: float) -> None:
        if term.wake_at == at:
            term.wake_at = None
        self._post(term, None)

    def _note(self, term: _Term, effect: core.Note) -> None:
        if self.sim.tracing:
            self.sim.note(f"master{term.generation}: {effect.text}")

    # -- the log ---------------------------------------------------------------

    def _append(self, term: _Term, effect: core.Propose) -> None:
        number = self.next_number
        self.next_number += 1
        self.log[number] = _Entry(term, effect.tag, effect.commands)
        self.later(COMMIT_DELAY_S * (1 + self.sim.random.random()), self._commit, number)
        if term is not self.leading:
            # A deposed leader's proposal is forwarded to the leader, or fails.
            self._settle_in_election(number)
        elif self.proposal_failure and self.sim.random.random() < self.proposal_failure:
            self.sim.count("proposal_failed")
            self._fail(number, vanish=self.sim.random.random() < 0.5)

    def _commit(self, number: int) -> None:
        """Apply the log up to `number`, in order."""
        while self.log and next(iter(self.log)) <= number:
            entry = self.log.pop(next(iter(self.log)))
            outcomes = self.state.apply(entry.commands, self.sim.now)
            if self.sim.tracing:
                self.sim.note(f"commit {len(entry.commands)} commands: " + ", ".join(
                    type(command).__name__ for command in entry.commands))
            if entry.heard:
                self._post(entry.term, core.Committed(entry.tag, outcomes))

    def _settle_in_election(self, number: int) -> None:
        """An election settles a proposal in flight one of three ways."""
        roll = self.sim.random.random()
        if roll < 2 / 3:
            self._fail(number, vanish=roll < 1 / 3)

    def _fail(self, number: int, vanish: bool) -> None:
        """Tell the proposer that proposal `number` failed; unless it
        vanished, it commits all the same (an outcome Raft cannot rule out)."""
        entry = self.log[number]
        if vanish:
            del self.log[number]
        else:
            entry.heard = False
        reason = "raft: discarded" if vanish else "raft: leader changed"
        self._post(entry.term, core.ProposalFailed(entry.tag, reason))

    # -- faults ----------------------------------------------------------------

    def replace_leader(self) -> None:
        """Demote the leader; a fresh one takes office after an election."""
        old = self.term
        self.leading = None
        self.election += 1
        self.sim.note(f"leader master{old.generation} demoted")
        self._post(old, FOLLOWING)
        for number, entry in list(self.log.items()):
            if entry.term is old and entry.heard:
                self._settle_in_election(number)
        self.sim.after(self.sim.random.uniform(*ELECTION_S), self._elected, self.election)

    def _elected(self, election: int) -> None:
        if election != self.election:
            return                              # replaced again meanwhile: a longer election
        if self.sim.random.random() < REELECTED_ODDS:
            self.leading = self.term            # the demoted core wins, with what it kept
            self._post(self.term, LEADING)
        else:
            self._take_office()
        self.sim.note(f"leader master{self.term.generation} elected")
