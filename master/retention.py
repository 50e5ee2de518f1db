"""Retention: finished jobs leave the masters' replicated state, each leaving
a compact history line, so that neither the state, its snapshots nor the
history grow without bound.

Rules of this module:
- Pure, like master/state.py: nothing here reads the clock or touches files.
- The leader's core decides: `jobs_to_forget(state, settings, now)` is a
  pure read with the leader's retention settings (the cluster file's
  [retention]) and its `now`, which is also the `now` of the proposal. It
  proposes `ForgetJobs(jobs, history_lines)`, and every replica applies that
  very list (`forget_jobs`), so replicas agree whatever their own clocks
  or cluster files say.
- Only a finished job is forgotten, whatever a command lists: a job that is
  queued or running stays.
- A history line is bounded: times, counts, the first error (as short as an
  event's detail) and at most HISTORY_OUTPUT_IDS output file ids. The lines
  are bounded by the command's `history_lines`, oldest forgotten dropped first.
- A forgotten job's files are released (master/collection.py): for the
  command's `gc_grace_s` they stay out of collection as if still referenced.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING

from uds.master.collection import release_jobs
from uds.master.commands import (
    JOB_FORGOTTEN, FINAL_PHASES, ForgetJobs, ForgetOutcome, JobView, StateInvariantError, is_id,
)
from uds.wire.cluster import Retention
from uds.wire.enums import ErrorCode, JobState
from uds.wire.ids import ID_BYTES

if TYPE_CHECKING:
    from uds.master.records import JobRecord
    from uds.master.state import ClusterState

# Output file ids one history line keeps (of its first chunks): a line of a
# job of 200,000 chunks must cost what a line of one chunk costs, nearly.
HISTORY_OUTPUT_IDS = 32
# Jobs one ForgetJobs names: forgetting a job walks its chunks once, and a
# proposal must stay short to commit.
MAX_JOBS_PER_FORGET = 1000


@dataclass(frozen=True, slots=True)
class HistoryLine:
    """What stays of a forgotten job."""

    job: bytes
    name: str
    state: int                      # wire.enums.JobState: final
    submitted_at: float
    started_at: float | None        # its first dispatch; None if none ever was
    finished_at: float
    chunk_count: int
    chunks_succeeded: int
    chunks_failed: int
    chunks_cancelled: int
    error: str                      # the first chunk failure, or ""
    output_ids: bytes               # up to HISTORY_OUTPUT_IDS ids of 16 bytes, chunk order
    output_count: int               # outputs the job had in all
    chunks_cached: int = 0          # of chunks_succeeded: results reused (0 in a line older than the field)

    @classmethod
    def of(cls, record: JobRecord) -> HistoryLine:
        ids = bytearray()
        count = 0
        for chunk in record.chunks:
            if chunk.result is None:
                continue
            for file_id, _size in chunk.result.outputs.values():
                count += 1
                if len(ids) < HISTORY_OUTPUT_IDS * ID_BYTES:
                    ids += file_id
        spec = record.spec
        return cls(job=spec.job, name=spec.name, state=int(record.state),
                   submitted_at=record.submitted_at, started_at=record.started_at,
                   finished_at=record.finished_at, chunk_count=spec.chunk_count,
                   chunks_succeeded=record.chunks_succeeded, chunks_failed=record.chunks_failed,
                   chunks_cancelled=record.chunks_cancelled, error=record.first_error,
                   output_ids=bytes(ids), output_count=count, chunks_cached=record.chunks_cached)

    @property
    def outputs(self) -> list[bytes]:
        """The output file ids kept, in chunk order."""
        return [self.output_ids[at:at + ID_BYTES] for at in range(0, len(self.output_ids), ID_BYTES)]

    def job_view(self) -> JobView:
        """The job as a status reply shows it: final, with counts and no
        chunk reports (first_chunk is chunk_count, so no page follows)."""
        return JobView(job=self.job, state=JobState(self.state), chunk_count=self.chunk_count,
                       chunks_succeeded=self.chunks_succeeded, chunks_failed=self.chunks_failed,
                       name=self.name, submitted_at=self.submitted_at, finished_at=self.finished_at,
                       error=self.error, first_chunk=self.chunk_count, chunks=(), past_retention=True,
                       chunks_cached=self.chunks_cached)

    # A bare tuple keeps snapshots small: there may be 100,000 of these.
    def __getstate__(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, values: tuple) -> None:
        # A line pickled before a field existed takes that field's default.
        defaults = (0,)
        known = tuple(values) + defaults[len(values) - len(self.__slots__) + len(defaults):]
        for name, value in zip(self.__slots__, known, strict=True):
            object.__setattr__(self, name, value)


@dataclass(slots=True)
class JobHistory:
    """The state's part for retention: which finished jobs are kept, oldest
    finished first, and the lines of those forgotten, oldest forgotten first.
    (OrderedDicts: both are read from the front after many removals.)"""

    finished: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    finished_chunks: int = 0        # chunks of the jobs in `finished`
    lines: OrderedDict[bytes, HistoryLine] = field(default_factory=OrderedDict)
    # No line was submitted later than this: the newest submitted_at of the
    # lines added (some may have been dropped since), so that the job list
    # (master/job_list.py) passes over the lines without reading them when
    # they are all older than what it has. Derived: not pickled, worked out
    # again from the lines when a snapshot loads.
    lines_submitted_by: float = field(default=-math.inf, compare=False)

    def __getstate__(self) -> tuple[None, dict]:
        return None, {"finished": self.finished, "finished_chunks": self.finished_chunks, "lines": self.lines}

    def __setstate__(self, state: tuple[None, dict]) -> None:
        _, slots = state
        self.finished, self.finished_chunks, self.lines = slots["finished"], slots["finished_chunks"], slots["lines"]
        self.lines_submitted_by = max((line.submitted_at for line in self.lines.values()), default=-math.inf)

    def add_line(self, line: HistoryLine) -> None:
        self.lines[line.job] = line
        self.lines_submitted_by = max(self.lines_submitted_by, line.submitted_at)

    def job_finished(self, record: JobRecord) -> None:
        self.finished[record.spec.job] = None
        self.finished_chunks += record.spec.chunk_count

    def line(self, job: bytes) -> HistoryLine | None:
        return self.lines.get(job)

    def newest_lines(self, limit: int) -> list[HistoryLine]:
        return list(islice(reversed(self.lines.values()), max(0, limit)))


def forget_jobs(state: ClusterState, command: ForgetJobs, now: float) -> ForgetOutcome:
    """Apply ForgetJobs: each finished job listed leaves the state for a
    history line; anything else listed is skipped."""
    jobs, keep = command.jobs, command.history_lines
    if (not isinstance(jobs, (tuple, list)) or not all(is_id(job) for job in jobs)
            or type(keep) is not int or keep < 0):
        return ForgetOutcome(ok=False, error="ForgetJobs needs job ids and a count of history lines",
                             error_code=ErrorCode.INVALID)
    history = state.history
    forgotten = skipped = 0
    leaving: list[JobRecord] = []
    for job in jobs:
        record = state.job_records.get(job)
        if record is None or record.finished_at is None:
            skipped += 1
            continue
        if any(chunk.phase not in FINAL_PHASES for chunk in record.chunks) or job not in history.finished:
            raise StateInvariantError(f"finished job {job.hex()} has chunks not final or is not listed")
        line = HistoryLine.of(record)
        leaving.append(record)
        del state.job_records[job]
        del history.finished[job]
        history.finished_chunks -= record.spec.chunk_count
        history.add_line(line)
        state._log(now, JOB_FORGOTTEN, job=job, detail=f"{JobState(line.state).name.lower()}, past retention")
        forgotten += 1
    while len(history.lines) > keep:
        history.lines.popitem(last=False)
    # An entry written before collection carries no grace: it drops only
    # releases older than `now`, and its own last until a later prune.
    release_jobs(state, leaving, now, getattr(command, "gc_grace_s", 0.0))
    return ForgetOutcome(forgotten=forgotten, skipped=skipped)


def jobs_to_forget(state: ClusterState, settings: Retention, now: float,
                   limit: int = MAX_JOBS_PER_FORGET) -> list[bytes]:
    """Finished jobs due to leave, oldest finished first: those finished
    `period_s` ago or more, and the oldest beyond the caps on finished jobs
    and on their chunks. Costs O(what it returns)."""
    history = state.history
    excess_jobs = len(history.finished) - settings.max_finished_jobs
    excess_chunks = history.finished_chunks - settings.max_finished_chunks
    cutoff = now - settings.period_s
    chosen: list[bytes] = []
    chunks = 0
    for job in history.finished:
        if len(chosen) >= limit:
            break
        record = state.job_records[job]
        if len(chosen) < excess_jobs or chunks < excess_chunks or record.finished_at <= cutoff:
            chosen.append(job)
            chunks += record.spec.chunk_count
        else:
            break
    return chosen


def next_due_at(state: ClusterState, settings: Retention) -> float | None:
    """When the oldest finished job falls due by age (None: none is finished)."""
    oldest = next(iter(state.history.finished), None)
    if oldest is None:
        return None
    return state.job_records[oldest].finished_at + settings.period_s
