"""Reading the masters' replicated state: what a client, the leader and the
balancer are told, and which jobs no alive worker could hold.

Rules of this module:
- `StateQueries` is the read side of `ClusterState` (master/state.py), which
  inherits it; it holds no data of its own, so the pickled state (class
  name, module and fields) is exactly that of ClusterState.
- Every method is a pure read that returns copies; nothing here changes the
  state, reads the clock or touches files or sockets. The shell calls them
  under its own lock.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable

from uds.master.commands import (
    ChunkView, Event, FileRef, JobSummary, JobView, NodeView, ReadyAttempt, RunningAttempt,
)
from uds.master.event_log import log_slice
from uds.master.records import FAILURE_LETTERS
from uds.master.workflow import dependencies, waiting_reason
from uds.wire.capacity import NO_CAPACITY, Capacity, unfit_reason
from uds.wire.enums import JobState, NodeRole
from uds.wire.records import NO_RESULT
from uds.wire.resources import ResourceLimits

if TYPE_CHECKING:
    from uds.master.retention import HistoryLine, JobHistory
    from uds.master.records import ChunkRecord, JobRecord, NodeRecord
    from uds.master.result_cache import ResultCache

# QUEUED chunks `ready_attempts` looks at past those of jobs that wait for a
# worker that could hold them: bounds a leader's tick while such a job waits.
MAX_READY_SCAN = 20_000

ChunkKey = tuple[bytes, int]        # (job, chunk index)


class StateQueries:
    """Pure reads over the tables ClusterState declares."""

    __slots__ = ()

    job_records: dict[bytes, JobRecord]
    node_records: dict[bytes, NodeRecord]
    queued: OrderedDict[ChunkKey, None]
    dispatched: dict[ChunkKey, None]
    running: dict[ChunkKey, None]
    event_log: deque[Event]
    last_seq: int
    history: JobHistory
    timers: list[tuple[float, int, bytes, int, int]]
    result_cache: ResultCache

    def job_state(self, job: bytes) -> JobState | None:
        """The job's state, a forgotten job's too (None: never known, or
        forgotten so long ago that its history line is gone too)."""
        job_record = self.job_records.get(job)
        if job_record is not None:
            return job_record.state
        line = self.history.line(job)
        return None if line is None else JobState(line.state)

    def history_line(self, job: bytes) -> HistoryLine | None:
        """What stays of a job past retention (None: not forgotten, or its line is gone too)."""
        return self.history.line(job)

    def forgotten_jobs(self, limit: int) -> list[HistoryLine]:
        """Up to `limit` history lines, the most recently forgotten first."""
        return self.history.newest_lines(limit)

    def status_view(self, job: bytes, first_chunk: int = 0, chunk_limit: int | None = None) -> JobView | None:
        """`job_view`, or for a job past retention the view of its history
        line: final, with counts and no chunk reports."""
        view = self.job_view(job, first_chunk, chunk_limit)
        if view is not None:
            return view
        line = self.history.line(job)
        return None if line is None else line.job_view()

    def job_view(self, job: bytes, first_chunk: int = 0, chunk_limit: int | None = None) -> JobView | None:
        """The job as a client sees it, with the reports of up to `chunk_limit`
        chunks from `first_chunk` on (None: all of them; 0: counts only).
        Costs O(chunk_limit), so a page of a huge job is cheap to read."""
        job_record = self.job_records.get(job)
        if job_record is None:
            return None
        spec = job_record.spec
        first_chunk = min(max(0, first_chunk), spec.chunk_count)
        last_chunk = spec.chunk_count if chunk_limit is None else min(spec.chunk_count,
                                                                      first_chunk + max(0, chunk_limit))
        return JobView(
            job=spec.job, state=job_record.state, chunk_count=spec.chunk_count,
            chunks_succeeded=job_record.chunks_succeeded, chunks_failed=job_record.chunks_failed,
            name=spec.name, submitted_at=job_record.submitted_at, finished_at=job_record.finished_at,
            error=job_record.first_error, first_chunk=first_chunk,
            chunks=tuple(_chunk_view(index, job_record.chunks[index])
                         for index in range(first_chunk, last_chunk)),
            limits=spec.limits, network=spec.network, waiting=self.waiting_reason(job_record),
            chunks_cached=job_record.chunks_cached, after=dependencies(spec), start_at=spec.start_at,
            deadline=spec.deadline, cache=spec.cache,
        )

    def unfit_reason(self, limits: ResourceLimits) -> str:
        """Why no alive worker could ever run an attempt with these limits
        (memory, cpus, disk), or "" when one could or none is known."""
        workers = [record.capacity for record in self.node_records.values()
                   if record.role == NodeRole.WORKER and record.alive]
        return unfit_reason(Capacity.requested(limits), workers)

    def waiting_reason(self, job_record: JobRecord) -> str:
        """Why the job's chunks that are not final cannot run now, or "":
        no worker is alive, or none that is could hold one of them."""
        if job_record.finished_at is not None:
            return ""
        if not job_record.ready:
            return waiting_reason(job_record)
        if not any(record.role == NodeRole.WORKER and record.alive for record in self.node_records.values()):
            return "no worker is alive"
        return self.unfit_reason(job_record.spec.limits)

    def job_spec(self, job: bytes) -> dict[str, Any] | None:
        """The JOB_SPEC record: what a worker needs to run any chunk of the job."""
        job_record = self.job_records.get(job)
        if job_record is None:
            return None
        spec = job_record.spec
        return dict(job=spec.job, program=spec.program, args=list(spec.args), inputs=dict(job_record.inputs),
                    chunk_count=spec.chunk_count, timeout_s=spec.timeout_s, limits=spec.limits.as_body(),
                    network=spec.network)

    def chunk_inputs(self, job: bytes, chunk: int) -> dict[str, FileRef]:
        """The chunk's own inputs (DISPATCH_ATTEMPT.inputs); {} when the job has none
        or there is no such chunk."""
        job_record = self.job_records.get(job)
        if job_record is None or not job_record.chunk_inputs:
            return {}
        if not 0 <= chunk < job_record.spec.chunk_count:
            return {}
        return dict(job_record.chunk_inputs[chunk])

    def ready_attempts(self, limit: int) -> list[ReadyAttempt]:
        """QUEUED chunks, oldest first, but none of a job that no alive
        worker could hold (it waits, and takes no dispatch credit); costs
        O(limit), or up to MAX_READY_SCAN while such a job waits."""
        unfit = self._unfit_jobs()
        if not unfit:
            return [self._attempt_of(key) for key in islice(self.queued, max(0, limit))]
        ready = []
        for key in islice(self.queued, MAX_READY_SCAN):
            if len(ready) >= limit:
                break
            if not unfit(key[0]):
                ready.append(self._attempt_of(key))
        return ready

    def in_flight_count(self) -> int:
        """Attempts dispatched or running that hold dispatch credit: not the
        dispatched ones of a job that no alive worker could hold, which the
        balancer keeps until such a worker is back."""
        unfit = self._unfit_jobs()
        waiting = sum(1 for job, _ in self.dispatched if unfit(job)) if unfit else 0
        return len(self.dispatched) + len(self.running) - waiting

    def _unfit_jobs(self) -> Callable[[bytes], bool] | None:
        """Whether a job fits no alive worker (memoised for one query), or
        None when every job fits (no worker measured anything, or none is alive)."""
        workers = [record.capacity for record in self.node_records.values()
                   if record.role == NodeRole.WORKER and record.alive]
        if not workers or any(worker == NO_CAPACITY for worker in workers):
            return None
        known: dict[bytes, bool] = {}

        def unfit(job: bytes) -> bool:
            if job not in known:
                request = Capacity.requested(self.job_records[job].spec.limits)
                known[job] = bool(unfit_reason(request, workers))
            return known[job]

        return unfit

    def dispatched_attempts(self) -> list[ReadyAttempt]:
        """DISPATCHED but not yet started: what a newly active load balancer
        must be sent again."""
        return [self._attempt_of(key) for key in self.dispatched]

    def running_attempts(self) -> list[RunningAttempt]:
        running = []
        for job, index in self.running:
            chunk = self.job_records[job].chunks[index]
            running.append(RunningAttempt(job, index, chunk.attempt, chunk.worker))
        return running

    def events_after(self, seq: int, limit: int) -> tuple[list[Event], int]:
        """Up to `limit` events with seq > `seq`, oldest first, and the newest
        seq in the log. Events older than the log keeps are gone: the first
        returned seq is then larger than seq + 1."""
        log = self.event_log
        first_seq = self.last_seq - len(log) + 1
        start = max(seq + 1, first_seq) - first_seq
        return log_slice(log, start, max(0, limit)), self.last_seq

    def next_timer_at(self) -> float | None:
        """When the earliest start time, deadline or backoff falls due (None:
        no timer is set); the leader proposes RunTimers from then on. A
        stale timer counts too: firing it costs a commit and clears it."""
        return self.timers[0][0] if self.timers else None

    def cache_size(self) -> int:
        """Results in the result cache."""
        return len(self.result_cache)

    def lease(self) -> tuple[bytes | None, int]:
        """The load balancer holding the lease and its epoch (0: never granted)."""
        return self.lease_holder, self.lease_epoch

    def nodes(self) -> list[NodeView]:
        return [NodeView(node=node, role=record.role, host=record.host, address=record.address,
                         slots=record.slots, cache_bytes=record.cache_bytes,
                         started_at=record.started_at, state="alive" if record.alive else "lost",
                         changed_at=record.changed_at, millicpus=record.millicpus,
                         memory_bytes=record.memory_bytes, disk_bytes=record.disk_bytes,
                         sandbox=record.sandbox, facts=record.facts)
                for node, record in self.node_records.items()]

    def jobs(self, limit: int) -> list[JobSummary]:
        """Up to `limit` jobs, newest first."""
        return [JobSummary(job, record.spec.name, record.state, record.submitted_at)
                for job, record in islice(reversed(self.job_records.items()), max(0, limit))]

    def _attempt_of(self, key: ChunkKey) -> ReadyAttempt:
        job, index = key
        return ReadyAttempt(job, index, self.job_records[job].chunks[index].attempt,
                            self.chunk_inputs(job, index))


def _chunk_view(index: int, chunk: ChunkRecord) -> ChunkView:
    return ChunkView(chunk=index, phase=chunk.phase.label, attempt=chunk.attempt, worker=chunk.worker,
                     result=chunk.result or NO_RESULT, retries_used=chunk.retries_used,
                     lost_count=chunk.lost_count,
                     failures=tuple(FAILURE_LETTERS[letter] for letter in chunk.failures))
