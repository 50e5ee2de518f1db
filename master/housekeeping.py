"""The leader's own proposals, made from the Tick: finished jobs past
retention leave the state (ForgetJobs), the state's timers fire when they
fall due (RunTimers: start times, deadlines, retry backoffs), and the
result cache is pruned about once a minute (PruneCache).

Rules of this module: those of master/leader.py, whose `Leader` inherits
`Housekeeping`. Each kind has at most one command queued or awaiting its
commit, so a slow commit never piles up copies; what follows a commit is a
method here, chosen by the purpose kept with the command.

- Timers live in the replicated state, so that every replica fires the
  same ones at the same commit: the leader only notices, from the state's
  `next_timer_at()`, that its clock passed the next one, and proposes a
  RunTimers; its apply fires every timer due by the command's `now`. Jobs a
  deadline ends come back in the outcome with their attempts in flight,
  which the balancer is asked to kill, as for a cancel.
- A RunTimers the state refuses is not followed by another for
  TIMERS_RETRY_S: the refusal would come back at every Tick. One it applies
  clears every timer due by its `now`, stale ones (of a job that ended) too,
  so the next is later.
- The cache is pruned on the leader's settings ([scheduling]): the command
  carries them, so the replicas drop the same entries.

What it uses of the leader: `retention`, `scheduling`, `storage_policy`,
`_reader`, `_raft`, `_now`, `_queue`, `_count`, `_cancel_attempts`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from uds.master import commands
from uds.master.leader_events import Effect, Note, RaftStatus, StateReader
from uds.master.retention import jobs_to_forget, next_due_at
from uds.wire.cluster import Retention, Scheduling, StoragePolicy
from uds.wire.enums import ErrorCode

# How often the leader prunes the result cache; an entry may outlive its
# age or count by this much.
CACHE_PRUNE_INTERVAL_S = 60.0
# After the state refuses a RunTimers, the leader waits this long before the next.
TIMERS_RETRY_S = 1.0


# ---- what a command's outcome is for ------------------------------------------

@dataclass(frozen=True, slots=True)
class Forget:
    """A ForgetJobs."""


@dataclass(frozen=True, slots=True)
class FireTimers:
    """A RunTimers."""


@dataclass(frozen=True, slots=True)
class PruneResults:
    """A PruneCache."""


class Housekeeping:
    retention: Retention
    scheduling: Scheduling
    storage_policy: StoragePolicy
    _reader: StateReader
    _raft: RaftStatus
    _now: float                     # the `now` of the event being handled
    _queue: Callable[..., None]
    _count: Callable[..., None]
    _cancel_attempts: Callable[[bytes, tuple[tuple[int, int, bytes | None], ...]], list[Effect]]

    def _housekeeping_init(self) -> None:
        self._forgetting = False
        self._retention_due_at: float | None = None
        self._firing_timers = False
        self._timer_due_at: float | None = None     # the state's next timer, read at the last Tick
        self._timers_retry_at = 0.0
        self._pruning_cache = False
        self._cache_prune_at: float | None = None
        self._cache_entries = 0                     # the cache's size, read at the last Tick

    def _housekeeping_take_office(self, now: float) -> None:
        self._cache_prune_at = now + CACHE_PRUNE_INTERVAL_S     # not at once: a new leader has enough to do

    def _housekeeping(self, now: float) -> None:
        """The leader's Tick: queue what has fallen due."""
        self._forget_past_retention(now)
        self._fire_timers(now)
        self._prune_cache(now)

    def _housekeeping_wakes(self) -> list[float | None]:
        """When the Tick has housekeeping to do next (the leader's only)."""
        if not self._raft.leader:
            return []
        times = []
        if not self._forgetting:
            times.append(self._retention_due_at)
        if not self._firing_timers and self._timer_due_at is not None:
            times.append(max(self._timer_due_at, self._timers_retry_at))
        if not self._pruning_cache and self._cache_entries:
            times.append(self._cache_prune_at)
        return times

    # ---- retention ------------------------------------------------------------

    def _forget_past_retention(self, now: float) -> None:
        """Propose that the finished jobs due by the retention settings leave
        the state, and note when the next falls due."""
        if self._forgetting:
            return
        settings = self.retention
        jobs, self._retention_due_at = self._reader.read(
            lambda state: (jobs_to_forget(state, settings, now), next_due_at(state, settings)))
        if jobs:
            self._forgetting = True
            self._queue(commands.ForgetJobs(tuple(jobs), settings.history_lines, self.storage_policy.gc_grace_s),
                        Forget())

    def _forgot(self, purpose: Forget, outcome: commands.Outcome) -> list[Effect]:
        self._forgetting = False
        if outcome.ok:
            self._count("jobs_forgotten", outcome.forgotten)
        return []

    # ---- timers ---------------------------------------------------------------

    def _fire_timers(self, now: float) -> None:
        if self._firing_timers:
            return
        self._timer_due_at = self._reader.read(lambda state: state.next_timer_at())
        if self._timer_due_at is not None and now >= max(self._timer_due_at, self._timers_retry_at):
            self._firing_timers = True
            self._queue(commands.RunTimers(), FireTimers())

    def _timers_fired(self, purpose: FireTimers, outcome: commands.Outcome) -> list[Effect]:
        self._firing_timers = False
        if not outcome.ok:
            # A failed proposal (BUSY) is tried again at once; a refusal waits.
            if outcome.error_code != ErrorCode.BUSY:
                self._timers_retry_at = self._now + TIMERS_RETRY_S
            return [Note(f"timers did not run: {outcome.error}", warning=True)]
        self._count("timers_fired", outcome.fired)
        effects: list[Effect] = []
        for job, attempts in outcome.cancelled:
            self._count("jobs_past_deadline")
            effects.extend(self._cancel_attempts(job, attempts))
        return effects

    # ---- the result cache -----------------------------------------------------

    def _prune_cache(self, now: float) -> None:
        if self._pruning_cache:
            return
        self._cache_entries = self._reader.read(lambda state: state.cache_size())
        if not self._cache_entries or self._cache_prune_at is None:
            # Nothing to drop: no entry in the log, no Wake. The first
            # prune comes an interval after the last Tick that found it empty.
            self._cache_prune_at = now + CACHE_PRUNE_INTERVAL_S
            return
        if now < self._cache_prune_at:
            return
        self._cache_prune_at = now + CACHE_PRUNE_INTERVAL_S
        settings = self.scheduling
        self._pruning_cache = True
        self._queue(commands.PruneCache(max_entries=settings.cache_max_entries,
                                        max_age_s=settings.cache_max_age_s,
                                        gc_grace_s=self.storage_policy.gc_grace_s), PruneResults())

    def _cache_pruned(self, purpose: PruneResults, outcome: commands.Outcome) -> list[Effect]:
        self._pruning_cache = False
        if outcome.ok:
            self._count("cache_entries_pruned", outcome.dropped)
        return []
