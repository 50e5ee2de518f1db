"""The masters' replicated truth: jobs, chunks and their attempts, nodes and
the sequenced event log.

Rules of this module:
- Nothing here reads the clock, draws random numbers, sleeps, or touches files
  or sockets. `now` comes in with every `apply`, so every replica that applies
  the same Raft log computes the same state.
- `apply` never raises on what a peer sent: a bad command becomes an error
  outcome and changes nothing, because a replica must not crash on a command
  that is already committed. A command is checked completely before anything
  changes. A broken invariant of our own raises `StateInvariantError`: a bug,
  which should crash tests loudly.
- The attempt number is the fencing token: only an event of a chunk's current
  attempt changes the chunk; a final chunk never changes again.
- Everything is plain data (dataclasses, dicts, deques, no lambdas or locks),
  so pysyncobj can pickle the whole object as a snapshot. Keep it compact.
- Queries are pure reads that return copies, in master/queries.py
  (StateQueries, which ClusterState inherits); the shell calls them under
  its own lock. The records per chunk, job and node are master/records.py;
  which finished jobs leave the state is master/retention.py.

Transitions are the table CHUNK_TRANSITIONS; doc/states.md draws them.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import MISSING, dataclass, field, fields, replace
from enum import Enum
from typing import Any, Callable, Iterable

from uds.master.commands import (
    CHUNK_DISPATCHED, CHUNK_FAILED, CHUNK_LOST, CHUNK_RETRIED, CHUNK_STARTED,
    CHUNK_SUCCEEDED, EVENT_DUPLICATE, EVENT_FINAL, EVENT_INVALID, EVENT_STALE, EVENT_UNKNOWN,
    FINAL_PHASES, IN_FLIGHT_PHASES, JOB_CANCELLED, JOB_FAILED, JOB_SUBMITTED, JOB_SUCCEEDED,
    LEASE_GRANTED, NODE_JOINED, NODE_LOST, CancelJob, CancelOutcome, ChunkEventOutcome, ChunkPhase,
    Command, DispatchAttempts, DispatchOutcome, Event, ForgetJobs, GrantLease, LeaseOutcome, NodeLost,
    NodeOutcome, NodeSeen, Outcome, PinFiles, PruneCache, PruneCollection, ReleaseJob, RunTimers,
    StateInvariantError, SubmitJob, SubmitOutcome, checked_result,
    chunk_event_problem, is_id, node_seen_problem, unknown_job, normalised_submit, pack_result, submit_problem,
)
from uds.master import attempts, workflow
from uds.master.collection import FileHolds, pin_files, prune_collection
from uds.master.queries import ChunkKey, StateQueries
from uds.master.records import ChunkRecord, JobRecord, NodeRecord
from uds.master.result_cache import ResultCache
from uds.master.retention import JobHistory, forget_jobs
from uds.wire.enums import ChunkState, ErrorCode, JobState, NodeRole
from uds.wire.errors import WireError
from uds.wire.limits import MAX_BODY_ITEMS
from uds.wire.records import ChunkEvent, ChunkResult

# A chunk under which this many workers were lost in a row is quarantined
# (failed as poison) instead of being handed to yet another worker; each job
# carries the cluster's setting (SubmitJob.poison_after), this is the default.
POISON_LIMIT = 3
POISON_ERROR = f"poison: {POISON_LIMIT} workers lost under it in a row"
# A chunk that workers refuse (REJECTED: storage out of reach, no disk, an
# input that cannot be read) waits this long before its next attempt,
# doubling with each refusal in a row up to INFRA_BACKOFF_MAX_S: an outage
# costs a few attempts a minute, and never the chunk.
INFRA_BACKOFF_FIRST_S = 0.5
INFRA_BACKOFF_MAX_S = 30.0

# Newest events kept in the log; older ones are dropped, seq keeps counting.
EVENT_LOG_LIMIT = 100_000

# Event details are for people reading `uds events`; long stderr-like texts
# are cut so that the replicated log stays small.
EVENT_DETAIL_MAX_CHARS = 200

# Every replica holds every chunk record; this bounds what one submission can
# cost them. It matches the wire's cap on a body list (chunk_inputs).
MAX_CHUNKS_PER_JOB = MAX_BODY_ITEMS


class ChunkAction(Enum):
    """What a worker's report does to a chunk of its current attempt."""

    START = "start"         # -> RUNNING
    SUCCEED = "succeed"     # -> SUCCEEDED
    FAIL = "fail"           # application: -> a new attempt (after the job's backoff), or FAILED when retries are used up
    LOSE = "lose"           # infrastructure, a worker lost: -> QUEUED with a new attempt, or FAILED as poison
    REFUSE = "refuse"       # infrastructure, refused by the worker: -> a new attempt after a growing backoff
    TAKE_BACK = "take_back" # infrastructure, a balancer took it back: -> QUEUED with a new attempt
    DUPLICATE = "duplicate" # nothing new (a second STARTED)


_CHUNK_STATES: dict[int, ChunkState] = dict(ChunkState._value2member_map_)
_REPORT_ACTIONS = {
    ChunkState.SUCCEEDED: ChunkAction.SUCCEED,
    ChunkState.FAILED: ChunkAction.FAIL,
    ChunkState.TIMED_OUT: ChunkAction.FAIL,
    ChunkState.LOST: ChunkAction.LOSE,
    ChunkState.REJECTED: ChunkAction.REFUSE,
    # A worker cancels an attempt only when a balancer tells it to. The masters
    # ask that only through CancelJob or a deadline, which have made the chunk
    # final already; any other cancel is a balancer taking a copy back (maybe
    # a balancer since restarted, which cannot say so).
    ChunkState.CANCELLED: ChunkAction.TAKE_BACK,
}
# (phase, reported state) -> action, for events of the current attempt of a
# chunk that is not final. A pair missing here (any report on a QUEUED chunk,
# whose current attempt was never dispatched) is refused as invalid.
CHUNK_TRANSITIONS: dict[tuple[ChunkPhase, ChunkState], ChunkAction] = {
    (ChunkPhase.DISPATCHED, ChunkState.STARTED): ChunkAction.START,
    (ChunkPhase.RUNNING, ChunkState.STARTED): ChunkAction.DUPLICATE,
    **{(phase, state): action for phase in IN_FLIGHT_PHASES for state, action in _REPORT_ACTIONS.items()},
}


def _new_event_log() -> deque:
    return deque(maxlen=EVENT_LOG_LIMIT)


@dataclass(slots=True)
class ClusterState(StateQueries):
    job_records: dict[bytes, JobRecord] = field(default_factory=dict)   # in submission order
    node_records: dict[bytes, NodeRecord] = field(default_factory=dict)
    # QUEUED chunks in dispatch order. An OrderedDict (a linked list inside)
    # reads its first entries in O(1) however many were removed before them,
    # which a plain dict does not; a requeued chunk is appended at the back.
    queued: OrderedDict[ChunkKey, None] = field(default_factory=OrderedDict)
    dispatched: dict[ChunkKey, None] = field(default_factory=dict)
    running: dict[ChunkKey, None] = field(default_factory=dict)
    event_log: deque[Event] = field(default_factory=_new_event_log)
    last_seq: int = 0
    # The load-balancer lease: who is active, under which epoch. Epochs only rise.
    lease_holder: bytes | None = None
    lease_epoch: int = 0
    # Finished jobs kept and the history lines of those forgotten (master/retention.py).
    history: JobHistory = field(default_factory=JobHistory)
    # Pins and releases of forgotten jobs' files: what keeps files from
    # collection besides the jobs themselves (master/collection.py).
    holds: FileHolds = field(default_factory=FileHolds)
    # Workflows (master/workflow.py): DELAYED chunks, the jobs waiting for
    # each unfinished job, the timer heap, the result cache, and the jobs
    # the command being applied finished whose dependents are still to settle.
    delayed: dict[ChunkKey, None] = field(default_factory=dict)
    dependents: dict[bytes, list[bytes]] = field(default_factory=dict)
    timers: list[tuple[float, int, bytes, int, int]] = field(default_factory=list)
    result_cache: ResultCache = field(default_factory=ResultCache)
    finished_jobs: list[bytes] = field(default_factory=list)

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        # Pickled as its slots. A snapshot taken before a table existed
        # lacks it: it starts empty rather than missing on every replica.
        _, slots = state
        for known in fields(self):
            if known.name in slots:
                value = slots[known.name]
            elif known.default_factory is not MISSING:
                value = known.default_factory()
            else:
                value = known.default
            setattr(self, known.name, value)

    # ------------------------------------------------------------------
    # Writing: the one entry point the replicated method calls.

    def apply(self, commands: Iterable[Command], now: float) -> list[Outcome]:
        """Apply committed commands in order; one outcome per command."""
        outcomes = []
        for command in commands:
            handler = _HANDLERS.get(type(command))
            if handler is None:
                outcomes.append(_refused(f"unknown command {type(command).__name__}"))
            else:
                outcomes.append(handler(self, command, now))
            if self.finished_jobs:
                workflow.settle_dependents(self, now)
        return outcomes

    def _apply_submit_job(self, command: SubmitJob, now: float) -> SubmitOutcome:
        problem = submit_problem(command, MAX_CHUNKS_PER_JOB)
        if problem:
            return SubmitOutcome(ok=False, error=problem, error_code=ErrorCode.INVALID)
        spec = normalised_submit(command)
        existing = self.job_records.get(spec.job)
        if existing is None and spec.job in self.history.lines:
            return SubmitOutcome(created=False)     # forgotten, not to run again
        if existing is not None:
            if existing.spec == spec:
                return SubmitOutcome(created=False)
            return SubmitOutcome(ok=False, error="job id reused with a different spec",
                                 error_code=ErrorCode.INVALID)
        unfit = self.unfit_reason(spec.limits)
        if unfit:
            # Refused while the client waits, rather than queued for ever.
            return SubmitOutcome(ok=False, error=f"no worker can run this job: {unfit}",
                                 error_code=ErrorCode.INVALID)
        problem, code = workflow.dependency_problem(self, spec)
        if problem:
            return SubmitOutcome(ok=False, error=problem, error_code=code)
        job = spec.job
        waits = workflow.waits(spec)
        phase = ChunkPhase.WAITING if waits else ChunkPhase.QUEUED
        job_record = JobRecord(spec=spec, submitted_at=now, held=spec.hold, ready=not waits,
                               chunks=[ChunkRecord(phase) for _ in range(spec.chunk_count)])
        self.job_records[job] = job_record
        label = f"{spec.name}: " if spec.name else ""
        self._log(now, JOB_SUBMITTED, job=job, detail=f"{label}{spec.chunk_count} chunks")
        job_record.first_seq = self.last_seq
        if waits:
            workflow.created(self, job_record, now)
        else:
            self.queued.update(((job, index), None) for index in range(spec.chunk_count))
            if spec.deadline is not None:
                workflow.created(self, job_record, now)
        return SubmitOutcome(created=True)

    def _apply_dispatch_attempts(self, command: DispatchAttempts, now: float) -> DispatchOutcome:
        dispatched = []
        skipped = 0
        for entry in _sequence(command.attempts):
            found = self._chunk_at(entry)
            if found is None:
                skipped += 1
                continue
            job_record, index, chunk = found
            if chunk.phase is not ChunkPhase.QUEUED or type(entry[2]) is not int or chunk.attempt != entry[2]:
                skipped += 1
                continue
            key = (job_record.spec.job, index)
            _move(self.queued, self.dispatched, key)
            chunk.phase = ChunkPhase.DISPATCHED
            attempts.dispatched(chunk, now)
            job_record.started_at = now if job_record.started_at is None else job_record.started_at
            dispatched.append((key[0], index, chunk.attempt))
            self._log(now, CHUNK_DISPATCHED, job=key[0], chunk=index, attempt=chunk.attempt)
        return DispatchOutcome(dispatched=tuple(dispatched), skipped=skipped)

    def _apply_chunk_event(self, event: ChunkEvent, now: float) -> ChunkEventOutcome:
        job_record = self.job_records.get(event.job) if is_id(event.job) else None
        if job_record is None:
            return ChunkEventOutcome(ok=False, error="unknown job", error_code=ErrorCode.UNKNOWN_JOB,
                                     status=EVENT_UNKNOWN)
        if type(event.chunk) is not int or not 0 <= event.chunk < job_record.spec.chunk_count:
            return ChunkEventOutcome(ok=False, error=f"unknown chunk {event.chunk!r}",
                                     error_code=ErrorCode.INVALID, status=EVENT_UNKNOWN)
        problem = chunk_event_problem(event)
        if problem:
            return ChunkEventOutcome(ok=False, error=problem, error_code=ErrorCode.INVALID,
                                     status=EVENT_INVALID)
        chunk = job_record.chunks[event.chunk]
        if event.attempt != chunk.attempt:
            return ChunkEventOutcome(status=EVENT_STALE, phase=chunk.phase.label)
        if chunk.phase in FINAL_PHASES:
            return ChunkEventOutcome(status=EVENT_FINAL, phase=chunk.phase.label)
        state = _CHUNK_STATES[event.state]
        action = CHUNK_TRANSITIONS.get((chunk.phase, state))
        if action is None:
            return ChunkEventOutcome(
                ok=False, error=f"{state.name} for attempt {chunk.attempt} which is {chunk.phase.label}",
                error_code=ErrorCode.INVALID, status=EVENT_INVALID, phase=chunk.phase.label)
        if action is ChunkAction.DUPLICATE:
            return ChunkEventOutcome(status=EVENT_DUPLICATE, phase=chunk.phase.label)
        if action is ChunkAction.START and self._from_replaced_process(event):
            # The worker restarted since it sent this: its new process never
            # heard of the attempt, so a chunk RUNNING on it would wait for
            # ever (the leader re-sends only DISPATCHED attempts). Left
            # DISPATCHED, the attempt is re-sent. An ending from the old
            # process is still that attempt's genuine result, and is applied.
            return ChunkEventOutcome(status=EVENT_STALE, phase=chunk.phase.label)
        if action is not ChunkAction.START:
            try:
                event = replace(event, result=checked_result(event.result))
            except WireError as fault:
                return ChunkEventOutcome(ok=False, error=str(fault), error_code=ErrorCode.INVALID,
                                         status=EVENT_INVALID, phase=chunk.phase.label)
        _ACTIONS[action](self, job_record, event, chunk, now)
        finished = self._finish_job_if_done(job_record, now)
        return ChunkEventOutcome(phase=chunk.phase.label, job_finished=finished)

    def _from_replaced_process(self, event: ChunkEvent) -> bool:
        """Whether a worker process older than the one the masters know for
        the worker sent `event` (0: the load balancer made it up)."""
        record = self.node_records.get(event.worker)
        return record is not None and 0 < event.worker_started_at < record.started_at

    def _apply_cancel_job(self, command: CancelJob, now: float) -> CancelOutcome:
        job_record = self.job_records.get(command.job) if is_id(command.job) else None
        if job_record is None:
            if is_id(command.job) and command.job in self.history.lines:
                return CancelOutcome(changed=False)
            return CancelOutcome(ok=False, error=unknown_job(command.job), error_code=ErrorCode.UNKNOWN_JOB)
        if job_record.finished_at is not None:
            return CancelOutcome(changed=False)
        cancelled_attempts = workflow.end_job(self, job_record, "job cancelled", cancelled=True, now=now,
                                              record_error=False)
        return CancelOutcome(cancelled_attempts=cancelled_attempts, changed=True)

    def _apply_node_seen(self, command: NodeSeen, now: float) -> NodeOutcome:
        problem = node_seen_problem(command)
        if problem:
            return NodeOutcome(ok=False, error=problem, error_code=ErrorCode.INVALID)
        details = dict(role=command.role, host=command.host, address=command.address,
                       slots=command.slots, cache_bytes=command.cache_bytes,
                       started_at=float(command.started_at), millicpus=command.millicpus,
                       memory_bytes=command.memory_bytes, disk_bytes=command.disk_bytes,
                       sandbox=command.sandbox, facts=command.facts)
        existing = self.node_records.get(command.node)
        if existing is not None and existing.alive:
            if all(getattr(existing, name) == value for name, value in details.items()):
                return NodeOutcome(changed=False)
            restarted = existing.started_at != details["started_at"]
            for name, value in details.items():
                setattr(existing, name, value)
            if restarted:
                # Back as a new process before it was found lost: its history shows the join.
                self._log(now, NODE_JOINED, node=command.node,
                          detail=f"{NodeRole(command.role).name.lower()} {command.host} {command.address}, restarted")
            if restarted and command.role == NodeRole.WORKER:
                self._lose_attempts_on(command.node, now, "worker restarted")
            return NodeOutcome(changed=False, updated=True)
        # First time, or back after being lost.
        self.node_records[command.node] = NodeRecord(**details, alive=True, changed_at=now)
        self._log(now, NODE_JOINED, node=command.node,
                  detail=f"{NodeRole(command.role).name.lower()} {command.host} {command.address}")
        new_process = existing is None or existing.started_at != details["started_at"]
        if new_process and command.role == NodeRole.WORKER:
            # What it started before the masters knew this process may be an
            # earlier process's, which no balancer remembers: give it up
            # (fenced, so safe). Back as the same process, it keeps its work.
            self._lose_attempts_on(command.node, now, "worker joined as a new process")
        return NodeOutcome(changed=True)

    def _apply_grant_lease(self, command: GrantLease, now: float) -> LeaseOutcome:
        holder, epoch = command.holder, command.epoch
        if not is_id(holder) or type(epoch) is not int:
            return LeaseOutcome(ok=False, error="a lease needs a node id and an epoch",
                                error_code=ErrorCode.INVALID, holder=self.lease_holder, epoch=self.lease_epoch)
        if holder == self.lease_holder and epoch == self.lease_epoch:
            return LeaseOutcome(holder=holder, epoch=epoch)
        if epoch != self.lease_epoch + 1:
            # Two leaders' grants raced, or a renewal outlived its epoch: the
            # first to commit wins and the other changes nothing.
            return LeaseOutcome(ok=False, error=f"epoch {epoch} is not the next after {self.lease_epoch}",
                                error_code=ErrorCode.BUSY, holder=self.lease_holder, epoch=self.lease_epoch)
        self.lease_holder, self.lease_epoch = holder, epoch
        self._log(now, LEASE_GRANTED, node=holder, detail=f"epoch {epoch}")
        return LeaseOutcome(holder=holder, epoch=epoch, granted=True)

    def _apply_node_lost(self, command: NodeLost, now: float) -> NodeOutcome:
        record = self.node_records.get(command.node) if is_id(command.node) else None
        if record is None:
            return NodeOutcome(ok=False, error="unknown node", error_code=ErrorCode.INVALID)
        if not record.alive:
            return NodeOutcome(changed=False)
        record.alive = False
        record.changed_at = now
        self._log(now, NODE_LOST, node=command.node, detail=NodeRole(record.role).name.lower())
        if record.role == NodeRole.WORKER:
            # Only workers run attempts: a storage node's (or a balancer's)
            # loss leaves every chunk as it is, whatever ids they share.
            self._lose_attempts_on(command.node, now, "worker lost")
        return NodeOutcome(changed=True)

    def _lose_attempts_on(self, node: bytes, now: float, why: str) -> None:
        """The node's processes are gone: its RUNNING attempts are lost. The
        balancer says so too, unless it restarted and never learnt of them;
        then nothing else would ever requeue them."""
        on_node = [key for key in self.running if self.job_records[key[0]].chunks[key[1]].worker == node]
        for job, index in on_node:
            job_record = self.job_records[job]
            chunk = job_record.chunks[index]
            event = ChunkEvent(job=job, chunk=index, attempt=chunk.attempt, state=int(ChunkState.LOST),
                               worker=node, result=ChunkResult(error=why))
            self._lose(job_record, event, chunk, now)
            self._finish_job_if_done(job_record, now)

    # ------------------------------------------------------------------
    # Chunk actions: `event` is of the chunk's current attempt and the chunk
    # is DISPATCHED or RUNNING (CHUNK_TRANSITIONS guarantees both).

    def _start(self, job_record: JobRecord, event: ChunkEvent, chunk: ChunkRecord, now: float) -> None:
        key = (job_record.spec.job, event.chunk)
        _move(self.dispatched, self.running, key)
        chunk.phase = ChunkPhase.RUNNING
        chunk.worker = event.worker
        attempts.started(chunk, now)
        self._log(now, CHUNK_STARTED, job=key[0], chunk=event.chunk, attempt=chunk.attempt,
                  node=event.worker)

    def _succeed(self, job_record: JobRecord, event: ChunkEvent, chunk: ChunkRecord, now: float) -> None:
        self._finish_chunk(job_record, event, chunk, ChunkPhase.SUCCEEDED, event.result, now)
        job_record.chunks_succeeded += 1
        self._log(now, CHUNK_SUCCEEDED, job=job_record.spec.job, chunk=event.chunk,
                  attempt=chunk.attempt, node=event.worker, detail=f"{event.result.elapsed_s:.3f} s")

    def _fail(self, job_record: JobRecord, event: ChunkEvent, chunk: ChunkRecord, now: float) -> None:
        """An application failure: the program's own (exit, timeout, limit)."""
        why = event.result.failure_text(event.state)
        chunk.failed_attempt("a")
        chunk.lost_count = 0
        spec = job_record.spec
        if chunk.retries_used < spec.max_retries:
            chunk.retries_used += 1
            self._requeue(job_record, event, chunk, now, CHUNK_RETRIED,
                          _noted(why, f"retry {chunk.retries_used} of {spec.max_retries}"), spec.retry_backoff_s)
            return
        self._fail_finally(job_record, event, chunk, now, why)

    def _lose(self, job_record: JobRecord, event: ChunkEvent, chunk: ChunkRecord, now: float) -> None:
        """An infrastructure failure that the chunk may have caused: its worker was lost."""
        chunk.failed_attempt("i")
        chunk.lost_count += 1
        limit = job_record.spec.poison_after
        if chunk.lost_count >= limit:
            self._fail_finally(job_record, event, chunk, now, f"poison: {limit} workers lost under it in a row")
            return
        self._requeue(job_record, event, chunk, now, CHUNK_LOST,
                      _report_text(event, f"lost {chunk.lost_count} of {limit} in a row"))

    def _refuse(self, job_record: JobRecord, event: ChunkEvent, chunk: ChunkRecord, now: float) -> None:
        """An infrastructure failure that is the cluster's: retried, after a
        backoff that grows with the refusals in a row, and never counted."""
        chunk.failed_attempt("i")
        in_a_row = len(chunk.failures) - len(chunk.failures.rstrip("i"))
        delay_s = min(INFRA_BACKOFF_MAX_S, INFRA_BACKOFF_FIRST_S * 2 ** min(in_a_row - 1, 16))
        self._requeue(job_record, event, chunk, now, CHUNK_LOST,
                      _report_text(event, f"infrastructure, next attempt in {delay_s:g} s"), delay_s)

    def _take_back(self, job_record: JobRecord, event: ChunkEvent, chunk: ChunkRecord, now: float) -> None:
        chunk.failed_attempt("i")
        self._requeue(job_record, event, chunk, now, CHUNK_LOST, _report_text(event, "taken back"))

    def _fail_finally(self, job_record: JobRecord, event: ChunkEvent, chunk: ChunkRecord,
                      now: float, why: str) -> None:
        self._finish_chunk(job_record, event, chunk, ChunkPhase.FAILED, replace(event.result, error=why), now)
        job_record.chunks_failed += 1
        if not job_record.first_error:
            job_record.first_error = _short(f"chunk {event.chunk}: {why}")
        self._log(now, CHUNK_FAILED, job=job_record.spec.job, chunk=event.chunk,
                  attempt=chunk.attempt, node=event.worker, detail=why)

    def _finish_chunk(self, job_record: JobRecord, event: ChunkEvent, chunk: ChunkRecord,
                      phase: ChunkPhase, result: ChunkResult, now: float) -> None:
        self._leave_flight(job_record.spec.job, event.chunk, chunk)
        chunk.phase = phase
        chunk.worker = event.worker
        chunk.packed_result = pack_result(result)
        attempts.ended(chunk, event.state, now)
        if job_record.spec.cache:
            workflow.chunk_final(self, job_record, event.chunk, now)

    def _requeue(self, job_record: JobRecord, event: ChunkEvent, chunk: ChunkRecord, now: float,
                 kind: str, detail: str, delay_s: float = 0.0) -> None:
        """A new attempt at the back of the queue, or DELAYED for `delay_s`;
        the old one is fenced off."""
        job = job_record.spec.job
        self._leave_flight(job, event.chunk, chunk)
        self._log(now, kind, job=job, chunk=event.chunk, attempt=chunk.attempt,
                  node=event.worker, detail=detail)
        attempts.requeued(chunk, event, now)
        chunk.attempt += 1
        chunk.worker = None
        if delay_s > 0:
            chunk.phase = ChunkPhase.DELAYED
            workflow.delay(self, job, event.chunk, chunk.attempt, now + delay_s)
        else:
            chunk.phase = ChunkPhase.QUEUED
            self.queued[(job, event.chunk)] = None

    def _leave_flight(self, job: bytes, index: int, chunk: ChunkRecord) -> None:
        if chunk.phase not in IN_FLIGHT_PHASES:
            raise StateInvariantError(f"chunk {index} of job {job.hex()} is {chunk.phase.label}, not in flight")
        _remove(self.dispatched if chunk.phase is ChunkPhase.DISPATCHED else self.running, (job, index))

    def _finish_job_if_done(self, job_record: JobRecord, now: float) -> bool:
        if job_record.finished_at is not None or job_record.chunks_final < job_record.spec.chunk_count:
            return False
        job_record.finished_at = now
        if job_record.spec.job in self.dependents:
            self.finished_jobs.append(job_record.spec.job)
        self.history.job_finished(job_record)
        state = job_record.state
        kind = {JobState.SUCCEEDED: JOB_SUCCEEDED, JobState.FAILED: JOB_FAILED,
                JobState.CANCELLED: JOB_CANCELLED}.get(state)
        if kind is None:
            raise StateInvariantError(f"job {job_record.spec.job.hex()} has all chunks final but is {state.name}")
        detail = job_record.first_error if state is JobState.FAILED else (
            f"{job_record.chunks_succeeded} of {job_record.spec.chunk_count} chunks succeeded")
        self._log(now, kind, job=job_record.spec.job, detail=detail)
        return True

    def _log(self, now: float, kind: str, *, job: bytes | None = None, chunk: int | None = None,
             attempt: int | None = None, node: bytes | None = None, detail: str = "") -> None:
        self.last_seq += 1
        self.event_log.append(Event(self.last_seq, now, kind, job, chunk, attempt, node, _short(detail)))

    def _chunk_at(self, entry: Any) -> tuple[JobRecord, int, ChunkRecord] | None:
        """The chunk a peer-supplied (job, chunk, attempt) names, if it exists."""
        if not isinstance(entry, (tuple, list)) or len(entry) != 3 or not is_id(entry[0]):
            return None
        job_record = self.job_records.get(entry[0])
        index = entry[1]
        if job_record is None or type(index) is not int or not 0 <= index < job_record.spec.chunk_count:
            return None
        return job_record, index, job_record.chunks[index]


_HANDLERS: dict[type, Callable[[ClusterState, Any, float], Outcome]] = {
    SubmitJob: ClusterState._apply_submit_job,
    DispatchAttempts: ClusterState._apply_dispatch_attempts,
    ChunkEvent: ClusterState._apply_chunk_event,
    CancelJob: ClusterState._apply_cancel_job,
    NodeSeen: ClusterState._apply_node_seen,
    GrantLease: ClusterState._apply_grant_lease,
    NodeLost: ClusterState._apply_node_lost,
    ForgetJobs: forget_jobs,
    PinFiles: pin_files,
    PruneCollection: prune_collection,
    ReleaseJob: workflow.release_job,
    RunTimers: workflow.run_timers,
    PruneCache: workflow.prune_cache,
}

_ACTIONS: dict[ChunkAction, Callable[[ClusterState, JobRecord, ChunkEvent, ChunkRecord, float], None]] = {
    ChunkAction.START: ClusterState._start,
    ChunkAction.SUCCEED: ClusterState._succeed,
    ChunkAction.FAIL: ClusterState._fail,
    ChunkAction.LOSE: ClusterState._lose,
    ChunkAction.REFUSE: ClusterState._refuse,
    ChunkAction.TAKE_BACK: ClusterState._take_back,
}


def _refused(reason: str) -> Outcome:
    return Outcome(ok=False, error=reason, error_code=ErrorCode.INVALID)


def _sequence(value: Any) -> tuple | list:
    return value if isinstance(value, (tuple, list)) else ()


def _move(source: dict, target: dict, key: ChunkKey) -> None:
    _remove(source, key)
    target[key] = None


def _remove(table: dict, key: ChunkKey) -> None:
    try:
        del table[key]
    except KeyError:
        raise StateInvariantError(f"chunk {key[1]} of job {key[0].hex()} missing from its phase table") from None


def _report_text(event: ChunkEvent, note: str) -> str:
    """"state: the worker's text; note", the text cut so that the note
    survives the event log's cut."""
    error = event.result.error
    return _noted(_CHUNK_STATES[event.state].name.lower() + (f": {error}" if error else ""), note)


def _noted(text: str, note: str) -> str:
    """"text; note", the text cut so that the note survives the event log's cut."""
    return f"{_short(text, EVENT_DETAIL_MAX_CHARS - len(note) - 2)}; {note}"


def _short(text: str, limit: int = EVENT_DETAIL_MAX_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 3)] + "..."
