"""Which master to ask: the search for the leader among the masters of a
cluster file, shared by the client and the load balancer.

Rules:
- One master at a time is the `target`: the one believed to lead, or the
  one being tried. A master that serves a request is the leader; it stays
  the target until it refuses or falls silent.
- A round tries each master at most once. An ERR_NOT_LEADER that names a
  master not yet tried in this round is followed at once. A refusal that
  names none (no leader yet, busy), or names one already tried, moves on to
  the next master not yet tried, in cluster-file order.
- A hint naming a master outside the list (one added to the Raft group
  after the cluster file was read) adds it to the list, up to
  MAX_MASTERS: the masters' own membership is the truth, the file only
  seeds it.
- Silence is an answer too: a target asked at time t that has said nothing
  by t + silence_s (+ whatever wait the request itself asked for) is taken
  for gone, and the search moves on. So is a target whose connection
  dropped while it held the request (`hung_up`), at once.
- A master found silent is quiet for `quiet_s`: rounds leave it out,
  unless every master is quiet. Anything heard from it ends its quiet. So a
  dead leader costs one silence, not one per round, and is still tried
  again once its quiet is over.
- A hint naming a quiet master ends its quiet, once per `quiet_s`: a
  follower names only a leader it heard from within the minimum election
  timeout (master/raft_node.py), so the hint says the master lives again (a
  frozen or cut-off master elected anew, say). Once per quiet period,
  because a hint can still be a little stale: following one costs at most
  one more silence. If the master was tried in this round already, the
  next round starts at it.
- Once every master that is not quiet has been tried in a round without one
  serving, the search waits `backoff_s` (doubling per fruitless round from
  `backoff_first_s`, jittered down to half, never above `backoff_cap_s`),
  then starts a new round at the master last named, if it is not quiet.

Pure: no sockets, no clock, no threads; `now` and the random source come in.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

# A live master answers in milliseconds; a new leader is elected 0.25-0.6 s
# after the old one stops (master/raft.py), so a master silent this long
# is taken for gone and the next one is tried, which lands near the
# election.
SILENCE_S = 0.5
# After a round in which no master served: wait this long, doubled for
# each further fruitless round, up to the cap.
BACKOFF_FIRST_S = 0.05
BACKOFF_CAP_S = 0.5
# A master found silent is left out of the rounds this long: longer than an
# election takes, so the search for the new leader does not wait on the
# dead one again.
QUIET_S = 2.0
# The most masters a search knows, those learned from hints included (a
# Raft group has 3 or 5; the cap only bounds what a faulty hint could add).
MAX_MASTERS = 16


@dataclass
class LeaderSearch:
    """Where to send the next request to the masters; see the module's rules."""

    addresses: tuple[str, ...]
    rng: random.Random
    silence_s: float = SILENCE_S
    backoff_first_s: float = BACKOFF_FIRST_S
    backoff_cap_s: float = BACKOFF_CAP_S
    quiet_s: float = QUIET_S
    target: int = 0
    # Masters tried in this round, the target among them.
    tried: set[int] = field(default_factory=set)
    # Master -> when it was last found silent, until it is heard from.
    silent_at: dict[int, float] = field(default_factory=dict)
    # Master -> when a hint last ended its quiet.
    hint_lifted_at: dict[int, float] = field(default_factory=dict)
    # When the target was first asked without having said anything since.
    asked_since: float | None = None
    resume_at: float = -math.inf
    fruitless_rounds: int = 0

    def __post_init__(self) -> None:
        if not self.addresses:
            raise ValueError("a leader search needs at least one master")
        if not 0 < self.backoff_first_s <= self.backoff_cap_s:
            raise ValueError("backoff_first_s must be positive and at most backoff_cap_s")
        self.addresses = tuple(self.addresses)
        self.tried = {self.target}

    # -- where to send -----------------------------------------------------------

    @property
    def address(self) -> str:
        return self.addresses[self.target]

    def due(self, now: float) -> int | None:
        """The master to send to now; None while backing off."""
        return self.target if now >= self.resume_at else None

    def wait_s(self, now: float) -> float:
        """How long until a master may be asked again (0: now)."""
        return max(0.0, self.resume_at - now)

    def index_of(self, address: str | None) -> int | None:
        """The index of the master at `address`; None if it is none of ours."""
        try:
            return self.addresses.index(address) if address else None
        except ValueError:
            return None

    # -- what happened -----------------------------------------------------------

    def asked(self, now: float) -> None:
        """Something that wants an answer went to the target at `now`."""
        if self.asked_since is None:
            self.asked_since = now

    def heard_from(self, index: int, now: float) -> None:
        """The master `index` said something: alive, whatever it said."""
        self.silent_at.pop(index, None)
        if index == self.target:
            self.asked_since = None

    def quiet(self, index: int, now: float) -> bool:
        """Whether master `index` was found silent less than quiet_s ago."""
        return now - self.silent_at.get(index, -math.inf) < self.quiet_s

    def served(self, index: int, now: float) -> None:
        """The master `index` served a request: it leads. A late answer from
        a master already left behind counts as much as the target's."""
        self.target = index
        self.tried = {index}
        self.silent_at.pop(index, None)
        self.asked_since = None
        self.resume_at = -math.inf
        self.fruitless_rounds = 0

    def refused(self, index: int, leader_address: str | None, now: float) -> None:
        """The master `index` will not serve: ERR_NOT_LEADER, naming the
        leader or not, or busy. A refusal from a master other than the
        target is old news and changes nothing."""
        if index != self.target:
            return
        named = self.index_of(leader_address)
        if named is None and leader_address and len(self.addresses) < MAX_MASTERS:
            self.addresses = (*self.addresses, leader_address)
            named = len(self.addresses) - 1
        if named is not None and self.quiet(named, now) \
                and now - self.hint_lifted_at.get(named, -math.inf) >= self.quiet_s:
            self.silent_at.pop(named)
            self.hint_lifted_at[named] = now
        self._move_on(now, named)

    def hung_up(self, index: int, now: float) -> None:
        """The master `index` dropped its connection while it held a request
        (it stopped): taken for gone at once, as if silent, and the search
        moves on; a wait the request asked for is not waited out."""
        if index != self.target:
            return
        self.silent_at[index] = now
        self._move_on(now, None)

    def overdue(self, now: float, patience_s: float = 0.0) -> bool:
        """True, and the search has moved on, if the target was asked more
        than silence_s (+ patience_s, a wait the request itself asked for)
        ago and has said nothing since."""
        if self.asked_since is None or now - self.asked_since <= self.silence_s + patience_s:
            return False
        self.silent_at[self.target] = now
        self._move_on(now, None)
        return True

    # -- the rounds ----------------------------------------------------------------

    def _move_on(self, now: float, named: int | None) -> None:
        self.asked_since = None
        lively = [index for index in self._after_target() if not self.quiet(index, now)]
        if not lively:                   # every master silent lately: try them all the same
            lively = self._after_target()
        if named is not None and named not in self.tried and named in lively:
            self._try(named)
            return
        untried = [index for index in lively if index not in self.tried]
        if untried:
            self._try(untried[0])
            return
        self.fruitless_rounds += 1
        self.resume_at = now + self.backoff_s()
        self.target = named if named is not None and named in lively else lively[0]
        self.tried = {self.target}

    def _try(self, index: int) -> None:
        self.target = index
        self.tried.add(index)

    def _after_target(self) -> list[int]:
        """Every master, in cluster-file order, starting after the target."""
        count = len(self.addresses)
        return [(self.target + step) % count for step in range(1, count + 1)]

    def backoff_s(self) -> float:
        """The wait after the current number of fruitless rounds: full
        exponential backoff with jitter down to half, never above the cap."""
        ceiling = min(self.backoff_cap_s, self.backoff_first_s * 2.0 ** min(30, max(0, self.fruitless_rounds - 1)))
        return ceiling * self.rng.uniform(0.5, 1.0)


__all__ = ["BACKOFF_CAP_S", "BACKOFF_FIRST_S", "MAX_MASTERS", "QUIET_S", "SILENCE_S", "LeaderSearch"]
