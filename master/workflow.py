"""Workflows in the masters' state: jobs that wait for other jobs, for a
start time or for a release; deadlines; backoffs; and the result cache's
place in a chunk's life.

Rules of this module:
- Pure, like master/state.py (whose ClusterState these functions change):
  nothing here reads the clock or touches files; `now` is the command's.
- A job's chunks are WAITING until the job is ready: every job it depends on
  (after= and the jobs its refs name) has succeeded, its start time has come
  and it is not held. The last dependency's success makes it ready inside
  the very command that ended that dependency, so a dependency costs no
  commit of its own. A dependency that fails or is cancelled ends its
  dependents the same way, naming it; dependents of those follow, through a
  work list rather than recursion (a chain of a thousand jobs must not
  overflow a replica's stack).
- References name jobs that exist, so no cycle can form.
- Timers (start times, deadlines, backoffs) are a heap in the state; the
  leader proposes RunTimers once its clock passes `next_timer_at()`, and
  every replica fires what is due by that command's `now`. A timer whose
  job or attempt has moved on is stale and skipped.
"""
from __future__ import annotations

import heapq
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable

from uds.master import attempts
from uds.master.collection import release_packed_results
from uds.master.commands import (
    ALL_CHUNKS, CHUNK_CACHED, CHUNK_CANCELLED, FINAL_PHASES, IN_FLIGHT_PHASES, JOB_READY, JOB_RELEASED, JOB_WIDE,
    SAME_CHUNK, ChunkPhase, FileRef, PruneCache, PruneCacheOutcome, ReleaseJob, ReleaseOutcome, RunTimers, SubmitJob,
    TimersOutcome, is_id, unknown_job,
)
from uds.master.result_cache import cache_key
from uds.wire.enums import ErrorCode, JobState
from uds.wire.limits import MAX_CHUNK_INPUTS_BYTES, MAX_JOB_SPEC_BYTES

if TYPE_CHECKING:
    from uds.master.records import JobRecord
    from uds.master.state import ClusterState

# Timer kinds, in the heap's entries (at, kind, job, chunk, attempt).
START, DEADLINE, BACKOFF = 0, 1, 2
# What one input costs in a message besides its name: a file id, a size, framing.
INPUT_ENTRY_BYTES = 32

InFlight = tuple[tuple[int, int, "bytes | None"], ...]


# ---- at submission --------------------------------------------------------

def dependencies(spec: SubmitJob) -> tuple[bytes, ...]:
    """Every job the spec waits for, in order, without repeats."""
    return tuple(dict.fromkeys([*spec.after, *(ref.job for ref in spec.refs)]))


def dependency_problem(state: ClusterState, spec: SubmitJob) -> tuple[str, int]:
    """Why the spec's dependencies and refs cannot be accepted, with the
    error code; ("", 0) when they can."""
    for job in dependencies(spec):
        if job == spec.job:
            return "a job cannot depend on itself", ErrorCode.INVALID
        if job not in state.job_records:
            if job in state.history.lines:
                return f"job {job.hex()} is past retention: its outputs are no longer known", ErrorCode.INVALID
            return f"unknown job {job.hex()}", ErrorCode.UNKNOWN_JOB
    # The names each ref adds: job-wide, to every chunk (a job-wide
    # SAME_CHUNK ref), or to one chunk. A ref's name may clash with no other
    # name the chunk sees; the spec's own inputs keep their rule (a chunk's
    # own input of a job-wide name replaces it for that chunk).
    job_wide: list[str] = []
    every_chunk: list[str] = []
    one_chunk: dict[int, list[str]] = {}
    for ref in spec.refs:
        producer = state.job_records[ref.job]
        count = producer.spec.chunk_count
        if ref.from_chunk == SAME_CHUNK and count != spec.chunk_count:
            return (f"input {ref.name!r} takes each chunk's output of job {ref.job.hex()}, which has "
                    f"{count} chunks, not {spec.chunk_count}"), ErrorCode.INVALID
        if ref.from_chunk >= count:
            return f"job {ref.job.hex()} has {count} chunks, no chunk {ref.from_chunk}", ErrorCode.INVALID
        if ref.from_chunk == ALL_CHUNKS:
            names, producing = [f"{ref.name}.{index}" for index in range(count)], range(count)
        elif ref.from_chunk == SAME_CHUNK:
            names = [ref.name]
            producing = range(spec.chunk_count) if ref.chunk == JOB_WIDE else [ref.chunk]
        else:
            names, producing = [ref.name], [ref.from_chunk]
        if ref.chunk != JOB_WIDE:
            one_chunk.setdefault(ref.chunk, []).extend(names)
        elif ref.from_chunk == SAME_CHUNK:
            every_chunk.extend(names)
        else:
            job_wide.extend(names)
        if producer.state is JobState.SUCCEEDED:
            missing = _missing_output(producer, ref.output, producing)
            if missing:
                return missing, ErrorCode.INVALID
    everywhere = [*job_wide, *every_chunk]
    clash = _clash(everywhere, (spec.inputs,))
    seen_everywhere = set(everywhere)
    for own in spec.chunk_inputs:
        clash = clash or next((name for name in own if name in seen_everywhere), "")
    for index, names in one_chunk.items():
        own = spec.chunk_inputs[index] if spec.chunk_inputs else {}
        clash = clash or _clash(names, (seen_everywhere, spec.inputs, own))
    if clash:
        return f"input {clash!r} is named twice", ErrorCode.INVALID
    job_wide_bytes = sum(len(name) + INPUT_ENTRY_BYTES for name in (*spec.inputs, *job_wide))
    if job_wide_bytes > MAX_JOB_SPEC_BYTES:
        return f"its job-wide inputs would take {job_wide_bytes} bytes, more than {MAX_JOB_SPEC_BYTES}", \
            ErrorCode.INVALID
    for index in (one_chunk or ([JOB_WIDE] if every_chunk else [])):
        names = [*every_chunk, *one_chunk.get(index, ())]
        if sum(len(name) + INPUT_ENTRY_BYTES for name in names) > MAX_CHUNK_INPUTS_BYTES:
            return f"the inputs of a chunk would take more than {MAX_CHUNK_INPUTS_BYTES} bytes", ErrorCode.INVALID
    return "", 0


def _clash(names: list[str], others: tuple) -> str:
    """A name that is twice in `names` or also in one of `others`, or ""."""
    counted: set[str] = set()
    for name in names:
        if name in counted or any(name in other for other in others):
            return name
        counted.add(name)
    return ""


def _missing_output(producer: JobRecord, output: str, chunks: Iterable[int]) -> str:
    """Which of `chunks` of a succeeded producer lacks `output`, as an error, or ""."""
    for index in chunks:
        result = producer.chunks[index].result
        if result is None or output not in result.outputs:
            return f"job {producer.spec.job.hex()} chunk {index} has no output {output!r}"
    return ""


def created(state: ClusterState, record: JobRecord, now: float) -> None:
    """A job was just created with its chunks WAITING: note what it waits
    for, set its timers, and start it if nothing holds it back."""
    spec = record.spec
    job = spec.job
    pending = []
    for dependency in dependencies(spec):
        producer = state.job_records[dependency]
        dependency_state = producer.state
        if dependency_state is JobState.SUCCEEDED:
            missing = resolve_from(state, record, dependency)
            if missing:     # checked before it was accepted: only a bug gets here
                end_job(state, record, missing, cancelled=False, now=now)
                return
            continue
        if dependency_state in (JobState.FAILED, JobState.CANCELLED):
            _end_for_dependency(state, record, dependency, dependency_state, now)
            return
        pending.append(dependency)
        state.dependents.setdefault(dependency, []).append(job)
    record.waiting_for = tuple(pending)
    if spec.deadline is not None:
        heapq.heappush(state.timers, (spec.deadline, DEADLINE, job, 0, 0))
    if spec.start_at is not None and spec.start_at > now:
        heapq.heappush(state.timers, (spec.start_at, START, job, 0, 0))
    start_if_ready(state, record, now)


def waits(spec: SubmitJob) -> bool:
    """Whether the job may not queue its chunks the moment it is created."""
    return bool(spec.after or spec.refs or spec.hold or spec.start_at is not None or spec.cache)


# ---- becoming ready --------------------------------------------------------

def start_if_ready(state: ClusterState, record: JobRecord, now: float) -> None:
    """Queue the job's chunks if nothing holds it back any more."""
    spec = record.spec
    if record.ready or record.finished_at is not None or record.held or record.waiting_for:
        return
    if spec.start_at is not None and spec.start_at > now:
        return
    record.ready = True
    if spec.after or spec.refs or spec.hold or spec.start_at is not None:
        state._log(now, JOB_READY, job=spec.job)
    for index in range(spec.chunk_count):
        make_ready(state, record, index, now)
    state._finish_job_if_done(record, now)


def resolve_from(state: ClusterState, record: JobRecord, producer_job: bytes) -> str:
    """Replace the job's refs to `producer_job`, which has just succeeded (or
    had before the job was submitted), by the files they name; "" or why
    they cannot be (a producer that lacks the output). Each producer's refs
    are read the moment it succeeds, so retention may forget it before the
    job's other dependencies end."""
    spec = record.spec
    refs = [ref for ref in spec.refs if ref.job == producer_job]
    if not refs:
        return ""
    if record.resolved is None:
        inputs, chunk_inputs = dict(spec.inputs), [dict(own) for own in spec.chunk_inputs]
    else:
        inputs, chunk_inputs = record.resolved[0], list(record.resolved[1])
    if not chunk_inputs:
        chunk_inputs = [{} for _ in range(spec.chunk_count)]
    producer = state.job_records[producer_job]
    outputs: dict[int, dict[str, FileRef]] = {}

    def output_of(index: int, name: str) -> FileRef | None:
        if index not in outputs:
            result = producer.chunks[index].result
            outputs[index] = {} if result is None else result.outputs
        return outputs[index].get(name)

    for ref in refs:
        if ref.from_chunk == SAME_CHUNK:
            targets = [(chunk_inputs[index], ref.name, index)
                       for index in (range(spec.chunk_count) if ref.chunk == JOB_WIDE else [ref.chunk])]
        else:
            into = inputs if ref.chunk == JOB_WIDE else chunk_inputs[ref.chunk]
            if ref.from_chunk == ALL_CHUNKS:
                targets = [(into, f"{ref.name}.{index}", index) for index in range(producer.spec.chunk_count)]
            else:
                targets = [(into, ref.name, ref.from_chunk)]
        for into, name, index in targets:
            file = output_of(index, ref.output)
            if file is None:
                return f"job {producer_job.hex()} chunk {index} has no output {ref.output!r}"
            into[name] = file
    # No empty map per chunk when no chunk has inputs of its own: a job of
    # 200,000 chunks with job-wide refs would keep as many in every replica.
    record.resolved = (inputs, tuple(chunk_inputs) if any(chunk_inputs) else ())
    return ""


def make_ready(state: ClusterState, record: JobRecord, index: int, now: float) -> None:
    """A WAITING chunk of a ready job goes on: from the cache, to wait for
    its running twin, or to the queue."""
    chunk = record.chunks[index]
    key = (record.spec.job, index)
    if record.spec.cache:
        cache = state.result_cache
        digest = chunk_cache_key(record, index)
        packed = cache.lookup(digest, now)
        if packed is not None:
            chunk.phase = ChunkPhase.CACHED
            chunk.packed_result = packed
            attempts.ended(chunk, 0, now)
            record.chunks_succeeded += 1
            record.chunks_cached += 1
            state._log(now, CHUNK_CACHED, job=key[0], chunk=index, attempt=chunk.attempt)
            return
        if not cache.claim(digest, key):
            chunk.phase = ChunkPhase.WAITING
            return
    chunk.phase = ChunkPhase.QUEUED
    state.queued[key] = None


def chunk_cache_key(record: JobRecord, index: int) -> bytes:
    chunk_inputs = record.chunk_inputs
    return cache_key(record.spec, record.inputs, chunk_inputs[index] if chunk_inputs else {}, index)


def chunk_final(state: ClusterState, record: JobRecord, index: int, now: float) -> None:
    """A chunk of a cache=True job became final: a success is recorded and
    is its twins' result; otherwise its twins go on without it."""
    chunk = record.chunks[index]
    cache = state.result_cache
    digest = chunk_cache_key(record, index)
    twins = cache.settle(digest, (record.spec.job, index))
    if chunk.phase is ChunkPhase.SUCCEEDED and chunk.packed_result is not None:
        dropped = cache.record(digest, chunk.packed_result, now)
        if dropped:
            release_packed_results(state, dropped, now)
    for job, twin_index in twins:
        twin_record = state.job_records.get(job)
        if twin_record is None or twin_record.chunks[twin_index].phase is not ChunkPhase.WAITING:
            continue
        make_ready(state, twin_record, twin_index, now)
        state._finish_job_if_done(twin_record, now)


# ---- ending ------------------------------------------------------------------

def settle_dependents(state: ClusterState, now: float) -> None:
    """The jobs that the command finished start or end their dependents,
    and theirs in turn."""
    pending = state.finished_jobs
    while pending:
        finished = state.job_records.get(pending.pop(0))
        if finished is None:
            continue
        job = finished.spec.job
        outcome = finished.state
        for dependent_job in state.dependents.pop(job, ()):
            dependent = state.job_records.get(dependent_job)
            if dependent is None or dependent.finished_at is not None:
                continue
            if outcome is JobState.SUCCEEDED:
                dependent.waiting_for = tuple(other for other in dependent.waiting_for if other != job)
                missing = resolve_from(state, dependent, job)
                if missing:
                    end_job(state, dependent, missing, cancelled=False, now=now)
                else:
                    start_if_ready(state, dependent, now)
            else:
                _end_for_dependency(state, dependent, job, outcome, now)


def _end_for_dependency(state: ClusterState, record: JobRecord, dependency: bytes, outcome: JobState,
                        now: float) -> None:
    if outcome is JobState.CANCELLED:
        end_job(state, record, f"dependency {dependency.hex()} was cancelled", cancelled=True, now=now)
    else:
        end_job(state, record, f"dependency {dependency.hex()} failed", cancelled=False, now=now)


def end_job(state: ClusterState, record: JobRecord, reason: str, *, cancelled: bool, now: float,
            record_error: bool = True) -> InFlight:
    """Cancel every chunk of the job that is not final, and end it as
    cancelled or failed for `reason` (its error too, with `record_error`);
    the attempts that were in flight (chunk, attempt, worker), for the
    balancer to kill."""
    job = record.spec.job
    in_flight = []
    for index, chunk in enumerate(record.chunks):
        phase = chunk.phase
        if phase in FINAL_PHASES:
            continue
        key = (job, index)
        if phase is ChunkPhase.QUEUED:
            del state.queued[key]
        elif phase is ChunkPhase.DELAYED:
            del state.delayed[key]
        elif phase in IN_FLIGHT_PHASES:
            state._leave_flight(job, index, chunk)
            in_flight.append((index, chunk.attempt, chunk.worker))
            state._log(now, CHUNK_CANCELLED, job=job, chunk=index, attempt=chunk.attempt, node=chunk.worker,
                       detail=reason)
        elif phase is ChunkPhase.WAITING and record.ready and record.spec.cache:
            state.result_cache.drop_twin(chunk_cache_key(record, index), key)
        chunk.phase = ChunkPhase.CANCELLED
        attempts.ended(chunk, 0, now)
        record.chunks_cancelled += 1
        if record.spec.cache and record.ready and phase is not ChunkPhase.WAITING:
            chunk_final(state, record, index, now)
    if cancelled:
        record.cancelled = True
    else:
        record.failed_by = reason
    if record_error and not record.first_error:
        record.first_error = reason
    record.held = False
    state._finish_job_if_done(record, now)
    return tuple(in_flight)


# ---- commands --------------------------------------------------------------------

def release_job(state: ClusterState, command: ReleaseJob, now: float) -> ReleaseOutcome:
    record = state.job_records.get(command.job) if is_id(command.job) else None
    if record is None:
        if is_id(command.job) and command.job in state.history.lines:
            return ReleaseOutcome(changed=False)
        return ReleaseOutcome(ok=False, error=unknown_job(command.job), error_code=ErrorCode.UNKNOWN_JOB)
    if not record.held or record.finished_at is not None:
        return ReleaseOutcome(changed=False)
    record.held = False
    state._log(now, JOB_RELEASED, job=command.job)
    start_if_ready(state, record, now)
    return ReleaseOutcome(changed=True)


def run_timers(state: ClusterState, command: RunTimers, now: float) -> TimersOutcome:
    timers = state.timers
    fired = 0
    cancelled = []
    while timers and timers[0][0] <= now:
        _at, kind, job, index, attempt = heapq.heappop(timers)
        record = state.job_records.get(job)
        if record is None or record.finished_at is not None:
            continue
        fired += 1
        if kind == START:
            start_if_ready(state, record, now)
        elif kind == DEADLINE:
            in_flight = end_job(state, record, "deadline exceeded", cancelled=False, now=now)
            if in_flight:
                cancelled.append((job, in_flight))
        else:
            chunk = record.chunks[index]
            if chunk.phase is ChunkPhase.DELAYED and chunk.attempt == attempt:
                del state.delayed[(job, index)]
                chunk.phase = ChunkPhase.QUEUED
                state.queued[(job, index)] = None
    return TimersOutcome(cancelled=tuple(cancelled), fired=fired)


def delay(state: ClusterState, job: bytes, index: int, attempt: int, until: float) -> None:
    """The chunk's new attempt waits until `until` before it is queued."""
    state.delayed[(job, index)] = None
    heapq.heappush(state.timers, (until, BACKOFF, job, index, attempt))


def prune_cache(state: ClusterState, command: PruneCache, now: float) -> PruneCacheOutcome:
    values = (command.max_entries, command.max_age_s, command.gc_grace_s)
    if type(command.max_entries) is not int or command.max_entries < 0 or not all(
            type(value) in (int, float) and value >= 0 for value in values[1:]):
        return PruneCacheOutcome(ok=False, error="PruneCache needs a count and seconds", error_code=ErrorCode.INVALID)
    dropped = state.result_cache.prune(now, command.max_age_s, command.max_entries)
    if dropped:
        state.holds.prune(now, command.gc_grace_s)
        release_packed_results(state, dropped, now)
    return PruneCacheOutcome(dropped=len(dropped))


# ---- reading -------------------------------------------------------------------------

def waiting_reason(record: JobRecord) -> str:
    """Why a job that is not ready waits, for people; "" when it is ready."""
    if record.ready or record.finished_at is not None:
        return ""
    if record.held:
        return "held: waiting for a release"
    if record.waiting_for:
        return "waiting for job " + ", ".join(job.hex() for job in record.waiting_for)
    start_at = record.spec.start_at
    if start_at is not None:
        return "starts at " + datetime.fromtimestamp(start_at, timezone.utc).isoformat(timespec="seconds")
    return "waiting"
