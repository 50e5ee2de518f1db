"""The job list: the jobs the masters know, newest first, the kept ones and
the history lines of those past retention, a page at a time.

Rules of this module:
- Pure, like master/state.py: it reads the state it is given (under the
  leader's lock) and changes nothing; no clock, no files.
- The order is (submitted_at, job id), newest first: a total order, so a
  page that starts after the previous page's last line (`before`, exclusive)
  neither repeats nor skips a line, whatever was submitted or forgotten in
  between. A job is in exactly one of the two tables: forgetting moves it.
- submitted_at is the leader's clock at the commit. The kept jobs are held
  in submission order and the history lines in forgetting order, but
  neither is sorted by submitted_at for sure: a new leader whose clock is
  behind the old one's submits "earlier" than jobs before it, and jobs are
  forgotten in the order they finished. So nothing here trusts an order to
  stop early: each table is read once, newest entries first, into a heap of
  the `limit + 1` newest lines seen. Read in that order, the heap fills with
  the newest lines at once and nearly every later entry is dismissed by one
  comparison of its submitted_at, so a page costs O(kept jobs + history
  lines) cheap steps (both bounded by [retention]) and no sort of them.
- The one bound trusted is JobHistory.lines_submitted_by, which no line's
  submitted_at exceeds: the kept jobs are read first, and when the page is
  full with jobs newer than that bound (the usual first page), or `since` is
  after it, the history lines (up to 100,000 by default) are not read.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from uds.wire.enums import JobState

if TYPE_CHECKING:
    from uds.master.records import JobRecord
    from uds.master.retention import HistoryLine, JobHistory

# The most lines one page holds, whatever a query asks for (one body holds
# more; wire.items_that_fit cuts a page of long names and errors shorter).
MAX_JOBS_PER_PAGE = 1000


@dataclass(frozen=True, slots=True)
class JobLine:
    """One line of the job list: the JOB_LINE record."""

    job: bytes
    name: str
    state: JobState
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    chunk_count: int
    chunks_succeeded: int
    chunks_failed: int
    chunks_cancelled: int
    chunks_cached: int
    past_retention: bool
    error: str

    @classmethod
    def of_record(cls, record: JobRecord) -> JobLine:
        spec = record.spec
        return cls(job=spec.job, name=spec.name, state=record.state, submitted_at=record.submitted_at,
                   started_at=record.started_at, finished_at=record.finished_at, chunk_count=spec.chunk_count,
                   chunks_succeeded=record.chunks_succeeded, chunks_failed=record.chunks_failed,
                   chunks_cancelled=record.chunks_cancelled, chunks_cached=record.chunks_cached,
                   past_retention=False, error=record.first_error)

    @classmethod
    def of_history(cls, line: HistoryLine) -> JobLine:
        return cls(job=line.job, name=line.name, state=JobState(line.state), submitted_at=line.submitted_at,
                   started_at=line.started_at, finished_at=line.finished_at, chunk_count=line.chunk_count,
                   chunks_succeeded=line.chunks_succeeded, chunks_failed=line.chunks_failed,
                   chunks_cancelled=line.chunks_cancelled, chunks_cached=line.chunks_cached,
                   past_retention=True, error=line.error)

    def as_record(self) -> dict[str, Any]:
        """The JOB_LINE record of a jobs_reply."""
        return dict(job=self.job, name=self.name, state=int(self.state), submitted_at=self.submitted_at,
                    started_at=self.started_at, finished_at=self.finished_at, chunk_count=self.chunk_count,
                    chunks_succeeded=self.chunks_succeeded, chunks_failed=self.chunks_failed,
                    chunks_cancelled=self.chunks_cancelled, chunks_cached=self.chunks_cached,
                    past_retention=self.past_retention, error=self.error)


@dataclass(frozen=True, slots=True)
class JobPage:
    lines: list[JobLine]            # newest first
    more: bool                      # older lines match too: ask again with before = the last line's key


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which lines a query wants: any of `states` (empty: any state),
    submitted at or after `since`, and strictly older than `before`
    ((submitted_at, job) of the previous page's last line)."""

    states: frozenset[JobState] = frozenset()
    since: float | None = None
    before: tuple[float, bytes] | None = None


def job_page(job_records: dict[bytes, JobRecord], history: JobHistory, wanted: JobFilter,
             limit: int) -> JobPage:
    """Up to `limit` lines that `wanted` lets through, newest first, and
    whether more follow. Kept jobs and history lines together."""
    limit = max(1, limit)
    newest = _Newest(limit + 1, wanted)
    states = frozenset(int(state) for state in wanted.states)
    newest.take(reversed(job_records.items()), _record_state, states, past=False)
    # Lines all older than the newest already chosen, or than `since`, are
    # not read at all: the usual first page costs only the kept jobs.
    if history.lines_submitted_by >= max(newest.floor_at, newest.since):
        newest.take(reversed(history.lines.items()), _line_state, states, past=True)
    chosen = newest.sorted()
    lines = [JobLine.of_history(item) if past else JobLine.of_record(item)
             for _at, _job, item, past in chosen[:limit]]
    return JobPage(lines=lines, more=len(chosen) > limit)


def _record_state(record: JobRecord) -> int:
    return record.state         # an IntEnum: compares and hashes as its value


def _line_state(line: HistoryLine) -> int:
    return line.state


class _Newest:
    """The `size` newest (submitted_at, job) entries offered that pass the
    filter: a min-heap whose root is the oldest kept, `floor_at` its time
    once full."""

    def __init__(self, size: int, wanted: JobFilter) -> None:
        self.size = size
        self.heap: list[tuple[float, bytes, Any, bool]] = []
        self.floor_at = -math.inf
        self.since = -math.inf if wanted.since is None else wanted.since
        self.before_at, self.before_job = (math.inf, b"") if wanted.before is None else wanted.before

    def take(self, entries: Iterable[tuple[bytes, Any]], state_of: Callable[[Any], int], states: frozenset[int],
             past: bool) -> None:
        """Offer (job, record or history line) entries, best newest first;
        `past`: they are history lines."""
        heap, size = self.heap, self.size
        floor_at, since = self.floor_at, self.since
        before_at, before_job = self.before_at, self.before_job
        for job, item in entries:
            at = item.submitted_at
            # The cheap tests first: most entries leave at the first one.
            if at < floor_at or at < since or at > before_at:
                continue
            if at == before_at and job >= before_job:
                continue
            if states and state_of(item) not in states:
                continue
            entry = (at, job, item, past)
            if len(heap) < size:
                heapq.heappush(heap, entry)
                if len(heap) == size:
                    floor_at = heap[0][0]
            elif (at, job) > heap[0][:2]:
                heapq.heapreplace(heap, entry)
                floor_at = heap[0][0]
        self.floor_at = floor_at

    def sorted(self) -> list[tuple[float, bytes, Any, bool]]:
        """Newest first. Ids are unique, so entries never compare past the id."""
        return sorted(self.heap, key=lambda entry: entry[:2], reverse=True)
