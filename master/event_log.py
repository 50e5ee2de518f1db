"""Reading the replicated event log with a filter: what an events_query is
answered with, and what a held one waits for.

Rules of this module:
- Pure, like master/queries.py: it reads a ClusterState (under the shell's
  lock) and changes nothing; no clock, no sockets, no files.
- The log (`ClusterState.event_log`) holds the newest EVENT_LOG_LIMIT events,
  their seqs contiguous, ending at `last_seq`. A seq names one event for ever,
  on every master.
- One query looks at MAX_EVENTS_SCANNED events of the log at most, so that it
  holds the state's lock briefly however rare its matches; the reply then
  says how far it looked (`through_seq`) and the client asks on from there.
- `through_seq` is the seq up to which the reply covers the log: every event
  up to it that matched is in the reply. A client with a filter asks again
  after it, never after its last event, or it would read the same
  non-matching stretch again.
- A gap is reported only when the log dropped events, after `after_seq`,
  that might have matched: for a job whose submission is still in the log
  (`JobRecord.first_seq`) never, however old `after_seq` is.
"""
from __future__ import annotations

from collections import deque
from itertools import islice
from typing import TYPE_CHECKING, Iterable, NamedTuple

from uds.master.commands import Event

if TYPE_CHECKING:
    from uds.master.state import ClusterState

# The most events of the log one query looks at (see the module's rules):
# about 5 ms of the leader's lock.
MAX_EVENTS_SCANNED = 20_000
# The most events one reply carries (fewer if they do not fit in one body).
MAX_EVENTS_PER_REPLY = 10_000


class EventFilter(NamedTuple):
    """Which events a query wants: those of `job`, naming `node`, of one of
    `kinds`; None and an empty set mean any."""

    job: bytes | None = None
    node: bytes | None = None
    kinds: frozenset[str] = frozenset()

    def matches(self, event: Event) -> bool:
        return ((self.job is None or event.job == self.job)
                and (self.node is None or event.node == self.node)
                and (not self.kinds or event.kind in self.kinds))

    @classmethod
    def of(cls, job: bytes | None, node: bytes | None, kinds: Iterable[str]) -> EventFilter:
        return cls(job, node, frozenset(kinds))


class EventsMatch(NamedTuple):
    events: list[Event]         # matching events with seq > after_seq, oldest first
    through_seq: int            # the reply covers the log up to here
    gap_from: int               # events gap_from..gap_to that might have matched were dropped (0: none)
    gap_to: int


def events_matching(state: ClusterState, after_seq: int, job: bytes | None = None, node: bytes | None = None,
                    kinds: Iterable[str] = (), limit: int = MAX_EVENTS_PER_REPLY,
                    scan_limit: int = MAX_EVENTS_SCANNED) -> EventsMatch:
    """Up to `limit` events with seq > `after_seq` that match the filter,
    oldest first, looking at `scan_limit` events of the log at most."""
    wanted = EventFilter.of(job, node, kinds)
    log = state.event_log
    last_seq = state.last_seq
    first_kept = last_seq - len(log) + 1
    start_seq = max(after_seq + 1, first_kept)
    gap_from, gap_to = _gap(state, after_seq, wanted, first_kept)
    if job is not None:
        record = state.job_records.get(job)
        if record is not None and record.first_seq > 0:
            # Nothing of the job comes before its submission.
            start_seq = max(start_seq, record.first_seq)
    if start_seq > last_seq:
        return EventsMatch([], max(last_seq, 0), gap_from, gap_to)
    scanned = log_slice(log, start_seq - first_kept, max(1, scan_limit))
    found: list[Event] = []
    for event in scanned:
        if wanted.matches(event):
            found.append(event)
            if len(found) >= max(1, limit):
                return EventsMatch(found, event.seq, gap_from, gap_to)
    return EventsMatch(found, scanned[-1].seq, gap_from, gap_to)


def _gap(state: ClusterState, after_seq: int, wanted: EventFilter, first_kept: int) -> tuple[int, int]:
    """The dropped seqs after `after_seq` that might have matched, as
    (from, to), or (0, 0)."""
    if after_seq + 1 >= first_kept:
        return 0, 0
    gap_from, gap_to = after_seq + 1, first_kept - 1
    if wanted.job is not None:
        record = state.job_records.get(wanted.job)
        if record is not None and record.first_seq > 0:
            if record.first_seq >= first_kept:
                return 0, 0     # the job's events are all in the log
            gap_from = max(gap_from, record.first_seq)
    return gap_from, gap_to


def log_slice(log: deque[Event], start: int, count: int) -> list[Event]:
    """Up to `count` events of the log from index `start`. A deque is a
    linked list of blocks: reach the start from its nearer end."""
    stop = min(len(log), start + count)
    if start >= stop:
        return []
    if start < len(log) // 2:
        return list(islice(log, start, stop))
    newest_first = list(islice(reversed(log), len(log) - stop, len(log) - start))
    newest_first.reverse()
    return newest_first


def events_since(state: ClusterState, after_seq: int) -> list[Event]:
    """Every event of the log with seq > `after_seq` (those still kept), for
    the leader's look at what the last commits added."""
    return state.events_after(after_seq, len(state.event_log))[0]
