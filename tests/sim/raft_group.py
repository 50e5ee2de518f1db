"""The masters' Raft group as the simulation models it: one linearizable
log behind several master addresses, and which master is in office.

Rules:
- The replicated state is one ClusterState. Proposals of the master in
  office apply in the order they were made, COMMIT_DELAY_S (to twice that)
  after they were proposed.
- At most one master is in office (`leader`), elected by a majority of the
  masters that are up, awake and not cut off from the others, an election
  timeout (RAFT_TIMEOUT_S, master/raft.py's) after the leader was lost;
  nobody is in office meanwhile.
- A master answers as leader only while it is in office, or, cut off from
  the others, for CONFIRM_S after the cut: master/raft_node.py's confirmed
  leadership (a majority answered it within that long). The election comes
  no sooner than RAFT_TIMEOUT_S[0] after the cut, which is later. Nothing a
  cut-off master proposes commits: each proposal fails when the cut heals
  ("discarded"), and what it hears of earlier ones waits for the heal too.
- A follower's hint names the leader it follows: after an election the
  previous leader (dead or not) for up to HINT_LAG_S, then the new one;
  after a loss the lost leader for RAFT_TIMEOUT_S[0], then nobody. A master
  never names itself (master/node.py drops such a hint).
- Each master's shell asks `status(host)` at every iteration of its loop,
  before anything else, as master/node.py does: no core acts on leadership
  the group has taken away.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from uds.master import leader as core
from uds.master.commands import GrantLease
from uds.master.node import IDLE_POLL_MS
from uds.master.raft import CONFIRMED_LEADERSHIP_S, RAFT_MAX_TIMEOUT_S, RAFT_MIN_TIMEOUT_S
from uds.master.state import ClusterState
from uds.wire.records import ChunkEvent

from .loop import Simulation

if TYPE_CHECKING:
    from .master_host import MasterHost

# A proposal commits this long after it is proposed (plus up to as much again).
COMMIT_DELAY_S = 0.002
# Followers start an election this long after they last heard the leader.
RAFT_TIMEOUT_S = (RAFT_MIN_TIMEOUT_S, RAFT_MAX_TIMEOUT_S)
CONFIRM_S = CONFIRMED_LEADERSHIP_S
# A master's loop reads the Raft status at least this often.
STATUS_POLL_S = IDLE_POLL_MS / 1000.0
# After an election a follower names the previous leader for up to this long.
HINT_LAG_S = (0.0, 0.3)
# A master that (re)starts answers "master is starting" this long.
STARTING_S = (0.05, 0.3)
# How long nobody leads after the leader is demoted (a lost heartbeat, not
# a fault of its host), and the odds that the demoted one wins again.
DEMOTED_ELECTION_S = RAFT_TIMEOUT_S
REELECTED_ODDS = 0.25
LEADING = core.RaftStatus(ready=True, leader=True, leader_address=None)
STARTING = core.RaftStatus(ready=False, leader=False, leader_address=None)


@dataclass
class _Entry:
    """A proposal in the log, not yet applied."""

    proposer: "MasterHost"
    tag: int
    commands: tuple
    heard: bool = True                  # its proposer hears Committed when it applies


@dataclass
class _Hint:
    """Whom a follower names: `before` until `switch_at`, then `after`."""

    before: str | None
    after: str | None
    switch_at: float

    def at(self, now: float) -> str | None:
        return self.after if now >= self.switch_at else self.before


@dataclass(frozen=True)
class Election:
    at: float
    office: int
    leader: "MasterHost"


class RaftGroup:
    # A planted bug (bugs.py) sets this: a cut-off leader goes on believing
    # it leads (pysyncobj's own 30 s fallback) and its proposals commit.
    unconfirmed_leadership = False

    def __init__(self, sim: Simulation, names: tuple[str, ...]) -> None:
        self.sim = sim
        self.names = names
        self.state = ClusterState()
        self.reader = core.DirectReader(self.state)
        self.hosts: dict[str, "MasterHost"] = {}       # the process now at each address
        self.leader: "MasterHost | None" = None         # in office; None during an election
        self.office = 0                                 # elections won so far
        self.elections: list[Election] = []
        self.lost: str | None = None                    # the last leader to leave office
        self.reelect: "MasterHost | None" = None        # a demoted leader that may win again
        self.deposed: dict["MasterHost", float] = {}    # cut-off leader -> believes it leads until
        self.cut: set[str] = set()
        self.stranded: dict[str, list[tuple["MasterHost", int]]] = {}
        self.held: dict[str, list[tuple["MasterHost", Any]]] = {}
        self.hints: dict[str, _Hint] = {}
        self.log: dict[int, _Entry] = {}                # proposal number -> entry, in log order
        self.next_number = 1
        self.election_pending = False
        self.proposal_failure = 0.0                     # odds that the leader's proposal fails (a fault)
        self.committed_events: set[tuple] = set()       # every ChunkEvent applied, as event_key
        self.committed_grants: set[tuple[bytes, int]] = set()
        self.on_election: Callable[[Election], None] = lambda election: None

    # -- what a master's loop reads ------------------------------------------------

    def status(self, host: "MasterHost") -> core.RaftStatus:
        now = self.sim.now
        if host is self.leader:
            return LEADING
        if now < self.deposed.get(host, -math.inf):
            return LEADING
        if now < host.ready_at:
            return STARTING
        hint = None
        if host.name not in self.cut and host.name in self.hints:
            hint = self.hints[host.name].at(now)
        return core.RaftStatus(ready=True, leader=False, leader_address=None if hint == host.name else hint)

    def office_of(self, host: "MasterHost") -> int | None:
        """The office `host` answers as leader under now, if any."""
        if host is self.leader:
            return self.office
        return None

    # -- the log -----------------------------------------------------------------

    def propose(self, host: "MasterHost", tag: int, commands: tuple) -> None:
        believing = self.unconfirmed_leadership and host in self.deposed
        if host.name in self.cut and not believing:
            self.stranded.setdefault(host.name, []).append((host, tag))
            return
        number = self.next_number
        self.next_number += 1
        self.log[number] = _Entry(host, tag, commands)
        self.sim.after(COMMIT_DELAY_S * (1 + self.sim.random.random()), self._commit, number)
        if host is not self.leader and not believing:
            # A follower's proposal is forwarded to the leader, or fails.
            self._settle_in_election(number)
        elif self.proposal_failure and self.sim.random.random() < self.proposal_failure:
            self.sim.count("proposal_failed")
            self._fail(number, vanish=self.sim.random.random() < 0.5)

    def _commit(self, number: int) -> None:
        """Apply the log up to `number`, in order."""
        while self.log and next(iter(self.log)) <= number:
            entry = self.log.pop(next(iter(self.log)))
            outcomes = self.state.apply(entry.commands, self.sim.now)
            for command in entry.commands:
                if isinstance(command, ChunkEvent):
                    self.committed_events.add(event_key(command))
                elif isinstance(command, GrantLease):
                    self.committed_grants.add((command.holder, command.epoch))
            if self.sim.tracing:
                self.sim.note(f"commit {len(entry.commands)} commands: " + ", ".join(
                    type(command).__name__ for command in entry.commands))
            if entry.heard:
                self._notify(entry.proposer, core.Committed(entry.tag, outcomes))

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
        self._notify(entry.proposer, core.ProposalFailed(entry.tag, "raft: discarded" if vanish
                                                         else "raft: leader changed"))

    def _notify(self, host: "MasterHost", event: Any) -> None:
        """What a master hears of its proposals; a cut-off one hears it at the heal."""
        believing = self.unconfirmed_leadership and host in self.deposed
        if host.name in self.cut and self.hosts.get(host.name) is host and not believing:
            self.held.setdefault(host.name, []).append((host, event))
        else:
            host.post(event)

    # -- leaders lost and elected --------------------------------------------------

    def _lose_leader(self, election_s: tuple[float, float], believe_s: float = 0.0) -> None:
        old = self.leader
        assert old is not None
        self.leader = None
        self.lost = old.name
        now = self.sim.now
        if believe_s:
            self.deposed[old] = now + believe_s
            # Its loop reads the status again within a poll of the lapse.
            self.sim.after(believe_s + self.sim.random.random() * STATUS_POLL_S, old.post, None)
        else:
            old.post(None)
        for name in self.names:
            if name != old.name:
                self.hints[name] = _Hint(old.name, None, now + RAFT_TIMEOUT_S[0])
        for number, entry in list(self.log.items()):
            if entry.proposer is old and entry.heard:
                self._settle_in_election(number)
        self.sim.note(f"leader {old.name} lost")
        self._call_election(self.sim.random.uniform(*election_s))

    def _call_election(self, delay_s: float) -> None:
        if self.leader is None and not self.election_pending:
            self.election_pending = True
            self.sim.after(delay_s, self._elect)

    def _electable(self, host: "MasterHost") -> bool:
        return (self.hosts.get(host.name) is host and not host.crashed and not host.frozen
                and host.name not in self.cut and self.sim.now >= host.ready_at)

    def _elect(self) -> None:
        self.election_pending = False
        if self.leader is not None:
            return
        candidates = [host for host in self.hosts.values() if self._electable(host)]
        if len(candidates) <= len(self.names) // 2:
            self.sim.note("no majority to elect a leader")
            return                          # called again when a master comes back
        if self.reelect in candidates and self.sim.random.random() < REELECTED_ODDS:
            winner = self.reelect           # the demoted core wins, with what it kept
        else:
            winner = self.sim.random.choice(candidates)
        self.reelect = None
        self.leader = winner
        self.office += 1
        now = self.sim.now
        for name in self.names:
            if name != winner.name:
                self.hints[name] = _Hint(self.lost, winner.name,
                                         now + self.sim.random.uniform(*HINT_LAG_S))
        winner.post(None)
        self.sim.note(f"leader {winner.name} elected (office {self.office})")
        election = Election(now, self.office, winner)
        self.elections.append(election)
        self.on_election(election)

    def _rejoined(self, host: "MasterHost") -> None:
        """`host` is back with the others: it learns the leader, and an
        election that lacked a majority may now be held."""
        if self.leader is not None:
            self.hints[host.name] = _Hint(None, self.leader.name,
                                          self.sim.now + self.sim.random.uniform(*HINT_LAG_S))
        host.post(None)
        self._call_election(self.sim.random.uniform(*RAFT_TIMEOUT_S))

    # -- faults --------------------------------------------------------------------

    def demote(self) -> bool:
        """The leader loses office with its host unharmed (a lost heartbeat)."""
        if self.leader is None:
            return False
        self.reelect = self.leader
        self._lose_leader(DEMOTED_ELECTION_S)
        return True

    def crashed(self, host: "MasterHost") -> None:
        self.cut.discard(host.name)
        self.stranded.pop(host.name, None)
        self.held.pop(host.name, None)
        self.deposed.pop(host, None)
        if host is self.leader:
            self._lose_leader(RAFT_TIMEOUT_S)

    def started(self, host: "MasterHost", at_start: bool = False) -> None:
        """`host` runs at its address: at the cluster's start ready at once,
        restarted after STARTING_S."""
        self.hosts[host.name] = host
        if at_start:
            return
        host.ready_at = self.sim.now + self.sim.random.uniform(*STARTING_S)
        self.sim.after(host.ready_at - self.sim.now, self._rejoined, host)
        host.post(None)

    def elect_at_start(self, host: "MasterHost") -> None:
        self.leader = host
        self.office = 1
        self.elections.append(Election(self.sim.now, self.office, host))
        for name in self.names:
            if name != host.name:
                self.hints[name] = _Hint(None, host.name, 0.0)
                self.hosts[name].post(None)
        host.post(None)

    def frozen(self, host: "MasterHost") -> None:
        """A frozen leader is lost once the followers' election timeout passes."""
        if host is self.leader:
            self.sim.after(self.sim.random.uniform(*RAFT_TIMEOUT_S), self._still_frozen, host)

    def _still_frozen(self, host: "MasterHost") -> None:
        if host is self.leader and host.frozen:
            self._lose_leader((0.0, 0.0))

    def thawed(self, host: "MasterHost") -> None:
        if self.hosts.get(host.name) is host and host is not self.leader:
            self._rejoined(host)

    def cut_off(self, host: "MasterHost") -> bool:
        """Cut the leader off from the other masters (not from clients and
        balancers): it believes it leads for CONFIRM_S more."""
        if host is not self.leader:
            return False
        self.cut.add(host.name)
        believe_s = 30.0 if self.unconfirmed_leadership else CONFIRM_S
        self._lose_leader(RAFT_TIMEOUT_S, believe_s=believe_s)
        return True

    def heal(self, name: str) -> None:
        if name not in self.cut:
            return
        self.cut.discard(name)
        host = self.hosts[name]
        self.deposed.pop(host, None)
        self.sim.note(f"heal {name}")
        for proposer, event in self.held.pop(name, []):
            proposer.post(event)
        for proposer, tag in self.stranded.pop(name, []):
            proposer.post(core.ProposalFailed(tag, "raft: discarded"))
        self._rejoined(host)


def event_key(event: ChunkEvent) -> tuple:
    return (event.job, event.chunk, event.attempt, event.state, event.worker)
