"""The load balancer's scheduler: exact effects for small scenarios, and a
hypothesis state machine of workers, a master and a restartable balancer."""
from __future__ import annotations

import dataclasses
from collections import deque
from itertools import count
from unittest.mock import ANY

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from uds import wire
from uds.loadbalancer.scheduler import (
    NO_WORKER, AskHello, AssignChunks, Assignment, AttemptKey, CancelOnWorker,
    CancelRequested, Dispatched, DispatchAttempt, ForwardToMaster, JobSpec, Note, Scheduler, Tick,
    UnknownEventError, WorkerHeartbeat, WorkerHello, WorkerJoined, WorkerLost,
)
from uds.wire import ChunkState, FINAL_CHUNK_STATES
from uds.wire.capacity import Capacity
from uds.wire.records import ChunkEvent, ChunkResult
from uds.wire.resources import ResourceLimits

LEASE_S = 10.0
W1, W2, W3 = (bytes([n]) * 16 for n in (1, 2, 3))
JOB, JOB_B, JOB_C = b"J" * 16, b"K" * 16, b"L" * 16
PROGRAM = (b"p" * 16, 1_000)
BIG_INPUT = (b"b" * 16, 50_000)
SMALL_INPUT = (b"s" * 16, 10)


GIB = 1 << 30


def spec(job: bytes = JOB, inputs: dict | None = None, chunk_count: int = 8,
         limits: ResourceLimits = ResourceLimits()) -> JobSpec:
    return JobSpec(job=job, program=PROGRAM, args=("--x",), inputs=inputs or {},
                   chunk_count=chunk_count, timeout_s=60.0, limits=limits)


def attempt(chunk: int, number: int = 1, job: bytes = JOB, inputs: dict | None = None):
    return DispatchAttempt(job=job, chunk=chunk, attempt=number, inputs=inputs or {})


def join(scheduler: Scheduler, worker: bytes, slots: int = 2, now: float = 0.0,
         cached: tuple = (), running: tuple = (), started_at: float = 1.0,
         capacity: Capacity = Capacity()) -> list:
    """Hello plus the first heartbeat: the worker is then ready for work."""
    scheduler.handle(WorkerHello(worker, slots, 10**9, "host", "tcp://w", started_at, capacity), now)
    return scheduler.handle(WorkerHeartbeat(worker, running, cache_added=cached), now)


def status(worker: bytes, chunk: int, number: int, state: int, job: bytes = JOB):
    return ChunkEvent(job, chunk, number, state, worker)


def forwarded(worker: bytes, chunk: int, number: int, state: int, job: bytes = JOB, **result):
    return ForwardToMaster(ChunkEvent(job, chunk, number, state, worker, ChunkResult(**result)))


def lost(worker: bytes, chunk: int, number: int, error: str, elapsed_s: float, job: bytes = JOB):
    return forwarded(worker, chunk, number, ChunkState.LOST, job=job, error=error,
                     elapsed_s=elapsed_s)


def assign(worker: bytes, job_spec: JobSpec, *pairs: tuple[int, int]) -> AssignChunks:
    return AssignChunks(worker, job_spec, tuple(Assignment(c, a, {}) for c, a in pairs))


def without_notes(effects: list) -> list:
    return [effect for effect in effects if not isinstance(effect, Note)]


# ---- placement --------------------------------------------------------------

def test_affinity_picks_the_worker_caching_the_most_bytes():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, cached=(SMALL_INPUT, PROGRAM))
    join(scheduler, W2, cached=(BIG_INPUT,))
    job = spec(inputs={"big": BIG_INPUT, "small": SMALL_INPUT})
    effects = scheduler.handle(Dispatched((job,), (attempt(0),)), 1.0)
    assert effects == [assign(W2, job, (0, 1))]


def test_each_file_counts_once_and_chunk_inputs_count():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, cached=(PROGRAM,))           # 1,000 bytes, named three times below
    join(scheduler, W2, cached=(BIG_INPUT,))          # 50,000 bytes, a chunk input
    job = spec(inputs={"a": PROGRAM, "b": PROGRAM})
    chunk = attempt(0, inputs={"c": BIG_INPUT})
    effects = scheduler.handle(Dispatched((job,), (chunk,)), 1.0)
    assert effects == [AssignChunks(W2, job, (Assignment(0, 1, {"c": BIG_INPUT}),))]


def test_ties_go_to_the_least_loaded_then_most_free_then_smallest_id():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=4, running=((JOB_B, 0, 1),))    # 1/4 busy
    join(scheduler, W2, slots=2)                               # idle, 2 free
    join(scheduler, W3, slots=3)                               # idle, 3 free
    job = spec()
    assert scheduler.handle(Dispatched((job,), (attempt(0),)), 1.0) == [assign(W3, job, (0, 1))]

    tied = Scheduler(LEASE_S)
    join(tied, W2)
    join(tied, W1)
    assert tied.handle(Dispatched((job,), (attempt(0),)), 1.0) == [assign(W1, job, (0, 1))]


def test_one_assign_per_worker_and_job_and_files_are_predicted():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=2)
    join(scheduler, W2, slots=1)
    job = spec()
    effects = scheduler.handle(Dispatched((job,), (attempt(0), attempt(1), attempt(2))), 1.0)
    # chunk 0: both idle, W1 has more free slots; chunk 1: the shared program
    # does not count for placement, so the less loaded W2 gets it; chunk 2:
    # W2 is full, W1 has a slot. One assignment message per worker and job.
    assert effects == [assign(W1, job, (0, 1), (2, 1)), assign(W2, job, (1, 1))]
    assert scheduler.capacity() == (3, 0)


def test_a_shared_program_does_not_pile_chunks_onto_one_worker():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=4)
    join(scheduler, W2, slots=4)
    job = spec()
    effects = scheduler.handle(Dispatched((job,), tuple(attempt(index) for index in range(4))), 1.0)
    assert effects == [assign(W1, job, (0, 1), (2, 1)), assign(W2, job, (1, 1), (3, 1))]


def test_predicted_cache_keeps_the_next_job_on_the_same_worker():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=4)
    join(scheduler, W2, slots=4)
    first, second = spec(inputs={"x": BIG_INPUT}), spec(job=JOB_B, inputs={"x": BIG_INPUT})
    assert scheduler.handle(Dispatched((first,), (attempt(0),)), 1.0) == [assign(W1, first, (0, 1))]
    effects = scheduler.handle(Dispatched((second,), (attempt(0, job=JOB_B),)), 2.0)
    assert effects == [assign(W1, second, (0, 1))]


def test_no_free_slot_keeps_it_pending_until_a_final_status_frees_one():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=1)
    job = spec()
    assert scheduler.handle(Dispatched((job,), (attempt(0), attempt(1))), 1.0) == [
        assign(W1, job, (0, 1))]
    assert (scheduler.pending_count(), scheduler.capacity()) == (1, (1, 0))
    assert scheduler.handle(status(W1, 0, 1, ChunkState.STARTED), 2.0) == [
        forwarded(W1, 0, 1, ChunkState.STARTED)]
    done = ChunkEvent(JOB, 0, 1, ChunkState.SUCCEEDED, W1,
                      ChunkResult(exit_code=0, elapsed_s=1.5, outputs={"out": SMALL_INPUT}))
    assert scheduler.handle(done, 3.0) == [
        forwarded(W1, 0, 1, ChunkState.SUCCEEDED, exit_code=0, elapsed_s=1.5,
                  outputs={"out": SMALL_INPUT}),
        assign(W1, job, (1, 1))]
    assert scheduler.pending_count() == 0


def test_a_worker_gets_work_only_after_its_first_heartbeat():
    scheduler = Scheduler(LEASE_S)
    hello = WorkerHello(W1, 2, 10**9, "h", "a", 1.0)
    assert scheduler.handle(hello, 0.0) == [WorkerJoined(W1, ANY)]
    job = spec()
    assert scheduler.handle(Dispatched((job,), (attempt(0),)), 1.0) == []
    assert scheduler.capacity() == (2, 0)
    assert scheduler.handle(WorkerHeartbeat(W1), 2.0) == [assign(W1, job, (0, 1))]


def test_redispatch_is_ignored_and_job_specs_are_dropped_when_done():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=1)
    job = spec()
    scheduler.handle(Dispatched((job,), (attempt(0), attempt(1))), 1.0)
    assert scheduler.handle(Dispatched((job,), (attempt(0), attempt(1))), 2.0) == []
    assert (scheduler.assigned(W1), scheduler.pending()) == ((AttemptKey(JOB, 0, 1),),
                                                           (AttemptKey(JOB, 1, 1),))
    scheduler.handle(status(W1, 0, 1, ChunkState.SUCCEEDED), 3.0)
    scheduler.handle(status(W1, 1, 1, ChunkState.FAILED), 4.0)
    # Nothing of the job is live, so its spec is gone: a bare attempt is refused.
    effects = scheduler.handle(Dispatched((), (attempt(1, 2),)), 5.0)
    assert without_notes(effects) == [forwarded(NO_WORKER, 1, 2, ChunkState.REJECTED,
                                                error="load balancer: no job spec for it")]
    # And an attempt that already ended is not run again.
    assert without_notes(scheduler.handle(Dispatched((job,), (attempt(0),)), 6.0)) == []


def test_settle_time_holds_placement_after_a_start():
    scheduler = Scheduler(LEASE_S, settle_s=2.0)
    job = spec()
    scheduler.handle(Dispatched((job,), (attempt(0),)), 0.0)
    assert join(scheduler, W1, now=0.5) == []
    assert scheduler.handle(WorkerHeartbeat(W1), 2.5) == [assign(W1, job, (0, 1))]


# ---- rebuilding after a restart ---------------------------------------------

def test_heartbeat_of_a_restarted_balancer_adopts_what_workers_run():
    scheduler = Scheduler(LEASE_S)
    assert join(scheduler, W1, slots=2, running=((JOB, 0, 1),)) == []
    assert scheduler.assigned(W1) == (AttemptKey(JOB, 0, 1),)
    assert scheduler.capacity() == (2, 1)
    job = spec()
    # The master re-sends what is in flight: the adopted attempt is not placed again.
    assert scheduler.handle(Dispatched((job,), (attempt(0), attempt(1))), 1.0) == [
        assign(W1, job, (1, 1))]


def test_an_attempt_resent_before_the_heartbeat_is_adopted_not_placed():
    scheduler = Scheduler(LEASE_S)
    job = spec()
    scheduler.handle(WorkerHello(W1, 1, 10**9, "h", "a", 1.0), 0.0)
    scheduler.handle(Dispatched((job,), (attempt(0),)), 0.1)
    assert scheduler.handle(WorkerHeartbeat(W1, ((JOB, 0, 1),)), 0.2) == []
    assert (scheduler.assigned(W1), scheduler.pending_count()) == ((AttemptKey(JOB, 0, 1),), 0)


def test_unknown_worker_heartbeat_asks_for_hello():
    scheduler = Scheduler(LEASE_S)
    assert scheduler.handle(WorkerHeartbeat(W1, ((JOB, 0, 1),)), 0.0) == [AskHello(W1)]
    assert scheduler.workers(0.0) == []


def test_status_from_unknown_worker_is_forwarded_and_settles_a_pending_attempt():
    scheduler = Scheduler(LEASE_S)
    job = spec()
    scheduler.handle(Dispatched((job,), (attempt(0),)), 0.0)
    effects = scheduler.handle(status(W1, 0, 1, ChunkState.SUCCEEDED), 1.0)
    assert without_notes(effects) == [forwarded(W1, 0, 1, ChunkState.SUCCEEDED), AskHello(W1)]
    assert any(isinstance(effect, Note) for effect in effects)
    assert scheduler.pending_count() == 0


# ---- cancel -----------------------------------------------------------------

def test_cancel_drops_pending_and_cancels_assigned_per_worker():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=1)
    join(scheduler, W2, slots=1)
    job = spec()
    scheduler.handle(Dispatched((job,), (attempt(0), attempt(1), attempt(2))), 1.0)
    assert scheduler.pending() == (AttemptKey(JOB, 2, 1),)
    assert scheduler.handle(CancelRequested(JOB), 2.0) == [
        CancelOnWorker(W1, JOB, ((0, 1),)), CancelOnWorker(W2, JOB, ((1, 1),))]
    assert scheduler.pending_count() == 0
    # The slot is busy until the worker lets go.
    assert scheduler.capacity() == (2, 0)
    assert scheduler.handle(status(W1, 0, 1, ChunkState.CANCELLED), 3.0) == [
        forwarded(W1, 0, 1, ChunkState.CANCELLED)]
    # A heartbeat still listing a cancelled attempt gets the cancel again;
    # one that no longer lists it frees the slot.
    assert scheduler.handle(WorkerHeartbeat(W2, ((JOB, 1, 1),)), 4.0) == [
        CancelOnWorker(W2, JOB, ((1, 1),))]
    assert scheduler.handle(WorkerHeartbeat(W2), 5.0) == []
    assert scheduler.capacity() == (2, 2)


def test_cancel_of_single_attempts():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=1)
    job = spec()
    scheduler.handle(Dispatched((job,), (attempt(0), attempt(1), attempt(2))), 1.0)
    assert scheduler.handle(CancelRequested(JOB, ((1, 1), (0, 1))), 2.0) == [
        CancelOnWorker(W1, JOB, ((0, 1),))]
    assert scheduler.pending() == (AttemptKey(JOB, 2, 1),)


# ---- liveness and lease ------------------------------------------------------

def test_silent_worker_is_lost_with_its_attempts_and_late_heartbeat_cancels_them():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=2, now=0.0)
    job = spec()
    scheduler.handle(Dispatched((job,), (attempt(0),)), 1.0)
    assert scheduler.handle(Tick(), LEASE_S) == []
    effects = scheduler.handle(Tick(), LEASE_S + 0.5)
    assert effects == [WorkerLost(W1, ANY), lost(W1, 0, 1, "worker lost", elapsed_s=LEASE_S - 0.5)]
    view = effects[0].view
    assert (view.state, view.running, view.last_seen_s) == ("lost", 1, LEASE_S + 0.5)
    assert (scheduler.workers(LEASE_S), scheduler.capacity()) == ([], (0, 0))
    # It comes back, still running the attempt the master has given up on.
    assert scheduler.handle(WorkerHeartbeat(W1, ((JOB, 0, 1),)), 11.0) == [AskHello(W1)]
    hello = WorkerHello(W1, 2, 10**9, "h", "a", started_at=1.0)
    assert scheduler.handle(hello, 11.1) == [WorkerJoined(W1, ANY)]
    assert scheduler.handle(WorkerHeartbeat(W1, ((JOB, 0, 1),)), 11.2) == [
        CancelOnWorker(W1, JOB, ((0, 1),))]
    assert scheduler.assigned(W1) == ()


def test_hello_with_a_new_start_time_loses_the_old_attempts():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=2, started_at=1.0)
    job = spec()
    scheduler.handle(Dispatched((job,), (attempt(0),)), 1.0)
    same = scheduler.handle(WorkerHello(W1, 2, 10**9, "h", "a", 1.0), 2.0)
    assert same == [] and scheduler.assigned(W1) == (AttemptKey(JOB, 0, 1),)
    assert scheduler.handle(WorkerHello(W1, 2, 10**9, "h", "a", 7.0), 3.0) == [
        lost(W1, 0, 1, "worker restarted", elapsed_s=2.0), WorkerJoined(W1, ANY)]
    assert scheduler.assigned(W1) == ()


def test_assignment_not_acknowledged_within_the_lease_is_lost():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=1)
    job = spec()
    scheduler.handle(Dispatched((job,), (attempt(0), attempt(1))), 1.0)
    assert scheduler.handle(WorkerHeartbeat(W1), 5.0) == []          # may still be in flight
    assert scheduler.handle(WorkerHeartbeat(W1), 11.5) == [
        lost(W1, 0, 1, "worker does not run it", elapsed_s=10.5), assign(W1, job, (1, 1))]


def test_attempt_claimed_by_two_workers_is_lost_and_cancelled_on_both():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=1)
    join(scheduler, W2, slots=1)
    job = spec()
    scheduler.handle(Dispatched((job,), (attempt(0),)), 1.0)
    effects = scheduler.handle(WorkerHeartbeat(W2, ((JOB, 0, 1),)), 2.0)
    assert without_notes(effects) == [
        lost(W1, 0, 1, "claimed by two workers", elapsed_s=1.0),
        CancelOnWorker(W1, JOB, ((0, 1),)), CancelOnWorker(W2, JOB, ((0, 1),))]


def test_a_copy_cancelled_by_the_balancer_reports_lost_not_cancelled():
    # The master heard LOST for attempt 1; if the CANCELLED of a copy it
    # never asked to cancel overtook that LOST, it would cancel the chunk.
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=1)
    join(scheduler, W2, slots=1)
    scheduler.handle(Dispatched((spec(),), (attempt(0),)), 1.0)
    scheduler.handle(WorkerHeartbeat(W2, ((JOB, 0, 1),)), 2.0)
    assert without_notes(scheduler.handle(status(W2, 0, 1, ChunkState.CANCELLED), 3.0)) == [
        forwarded(W2, 0, 1, ChunkState.LOST)]
    # A cancel the master asked for stays a cancel.
    scheduler.handle(Dispatched((spec(),), (attempt(1),)), 4.0)
    scheduler.handle(CancelRequested(JOB, ((1, 1),)), 5.0)
    assert without_notes(scheduler.handle(status(W1, 1, 1, ChunkState.CANCELLED), 6.0)) == [
        forwarded(W1, 1, 1, ChunkState.CANCELLED)]


def test_a_status_is_forwarded_with_the_start_of_the_process_that_sent_it():
    # The masters fence a STARTED from a worker process since replaced by it.
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=1, started_at=7.5)
    join(scheduler, W2, slots=1)
    scheduler.handle(Dispatched((spec(),), (attempt(0),)), 1.0)
    started = dataclasses.replace(status(W1, 0, 1, ChunkState.STARTED), worker_started_at=7.0)
    assert without_notes(scheduler.handle(started, 2.0)) == [ForwardToMaster(started)]
    # Also when the balancer forwards its worker's CANCELLED as LOST.
    scheduler.handle(WorkerHeartbeat(W2, ((JOB, 0, 1),)), 3.0)
    cancelled = dataclasses.replace(status(W2, 0, 1, ChunkState.CANCELLED), worker_started_at=1.0)
    assert without_notes(scheduler.handle(cancelled, 4.0)) == [
        ForwardToMaster(dataclasses.replace(cancelled, state=int(ChunkState.LOST)))]


def test_adopting_onto_a_full_worker_displaces_its_unacknowledged_assignment():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=1)
    job = spec()
    scheduler.handle(Dispatched((job,), (attempt(0),)), 1.0)
    assert scheduler.handle(WorkerHeartbeat(W1, ((JOB_B, 3, 1),)), 2.0) == [
        lost(W1, 0, 1, "worker was full", elapsed_s=1.0), CancelOnWorker(W1, JOB, ((0, 1),))]
    assert scheduler.assigned(W1) == (AttemptKey(JOB_B, 3, 1),)


def test_status_for_an_attempt_of_another_worker_is_forwarded_with_a_note():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=1)
    join(scheduler, W2, slots=1)
    job = spec()
    scheduler.handle(Dispatched((job,), (attempt(0),)), 1.0)
    effects = scheduler.handle(status(W2, 0, 1, ChunkState.SUCCEEDED), 2.0)
    assert without_notes(effects) == [forwarded(W2, 0, 1, ChunkState.SUCCEEDED),
                                      CancelOnWorker(W1, JOB, ((0, 1),))]
    assert [type(effect) for effect in effects].count(Note) == 1
    assert scheduler.capacity() == (2, 2)


# ---- resources --------------------------------------------------------------

def test_an_attempt_goes_only_where_its_memory_fits_beside_what_runs_there():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=4, capacity=Capacity(4000, 4 * GIB, 0))
    join(scheduler, W2, slots=4, capacity=Capacity(4000, 16 * GIB, 0))
    big = spec(limits=ResourceLimits(memory_bytes=6 * GIB))
    effects = scheduler.handle(Dispatched((big,), (attempt(0), attempt(1), attempt(2))), 1.0)
    # Only W2 holds 6 GiB, and only twice: the third waits for room.
    assert effects == [assign(W2, big, (0, 1), (1, 1))]
    assert scheduler.pending() == (AttemptKey(JOB, 2, 1),)
    assert scheduler.reserved(W2) == Capacity(0, 12 * GIB, 0)
    assert scheduler.handle(status(W2, 0, 1, ChunkState.SUCCEEDED), 2.0)[1:] == [assign(W2, big, (2, 1))]
    assert scheduler.reserved(W2) == Capacity(0, 12 * GIB, 0)


def test_an_attempt_that_fits_nowhere_waits_while_younger_ones_run():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=2, capacity=Capacity(2000, 8 * GIB, 10 * GIB))
    huge = spec(job=JOB_B, limits=ResourceLimits(millicpus=4000))
    small = spec(limits=ResourceLimits(millicpus=1500, disk_bytes=2 * GIB))
    effects = scheduler.handle(Dispatched((huge, small), (attempt(0, job=JOB_B), attempt(0), attempt(1))), 1.0)
    assert effects == [assign(W1, small, (0, 1))]          # 1.5 + 1.5 cpus would pass its 2
    assert scheduler.pending() == (AttemptKey(JOB_B, 0, 1), AttemptKey(JOB, 1, 1))
    # A worker big enough joins: the old attempt goes there, cached bytes or not.
    effects = join(scheduler, W2, slots=1, capacity=Capacity(8000, 0, 0), now=2.0)
    assert effects == [assign(W2, huge, (0, 1))]


def test_cache_still_decides_among_the_workers_where_it_fits():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, cached=(BIG_INPUT,), capacity=Capacity(1000, 2 * GIB, 0))
    join(scheduler, W2, capacity=Capacity(8000, 32 * GIB, 0))
    join(scheduler, W3, cached=(BIG_INPUT,), capacity=Capacity(8000, 32 * GIB, 0))
    job = spec(inputs={"big": BIG_INPUT}, limits=ResourceLimits(memory_bytes=4 * GIB))
    assert scheduler.handle(Dispatched((job,), (attempt(0),)), 1.0) == [assign(W3, job, (0, 1))]


def test_a_worker_that_measured_nothing_takes_any_request():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1)
    job = spec(limits=ResourceLimits(memory_bytes=64 * GIB, millicpus=64_000, disk_bytes=GIB))
    assert scheduler.handle(Dispatched((job,), (attempt(0),)), 1.0) == [assign(W1, job, (0, 1))]


def test_unknown_events_are_refused():
    with pytest.raises(UnknownEventError):
        Scheduler(LEASE_S).handle(object(), 0.0)


# ---- effects map onto wire messages -----------------------------------------

def test_effects_and_views_encode_as_their_messages():
    scheduler = Scheduler(LEASE_S)
    join(scheduler, W1, slots=2)
    job = spec(inputs={"big": BIG_INPUT})
    record_job = JobSpec.from_record(wire.decode(wire.encode(wire.ChunkDispatch.make(
        W1, epoch=1, attempt_count=1, jobs=[job.to_record()],
        attempts=[{"job": JOB, "chunk": 0, "attempt": 1, "inputs": {}}]))).jobs[0])
    assert record_job == job
    [assignment] = scheduler.handle(Dispatched((job,), (attempt(0),)), 1.0)
    request = wire.WorkerRequest.make(
        W3, job=assignment.job_spec.job, program_length=job.program[1],
        num_input_files=len(job.inputs), epoch=1, program=job.program, args=list(job.args),
        inputs=job.inputs, chunk_count=job.chunk_count, timeout_s=job.timeout_s,
        assignments=[a.to_record() for a in assignment.assignments])
    [cancel] = scheduler.handle(CancelRequested(JOB), 2.0)
    [event] = scheduler.handle(status(W1, 0, 1, ChunkState.CANCELLED), 3.0)
    messages = [
        request,
        wire.ChunkCancel.make(W3, epoch=1, job=cancel.job, attempts=list(cancel.attempts)),
        wire.ChunkEvents.carrying(W3, 1, 1, [event.event]),
        wire.NodeReport.make(W3, epoch=1, nodes=[v.to_record() for v in scheduler.workers(4.0)]),
    ]
    for message in messages:
        decoded = wire.decode(wire.encode(message))
        assert type(decoded) is type(message)
        for field in dataclasses.fields(message):
            # msgpack gives back lists where the cores hold tuples.
            assert getattr(decoded, field.name) == _as_lists(getattr(message, field.name)), field.name


def _as_lists(value):
    if isinstance(value, (tuple, list)):
        return [_as_lists(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_lists(item) for key, item in value.items()}
    return value


# ---- the state machine ------------------------------------------------------

FILE_POOL = [(bytes([0xF0 + n]) * 16, size) for n, size in enumerate((10, 500, 5_000, 80_000))]


# Jobs of the state machine: nothing asked, 3 GiB and a cpu, 5 GiB.
JOB_LIMITS = {JOB: ResourceLimits(), JOB_B: ResourceLimits(memory_bytes=3 * GIB, millicpus=1000),
              JOB_C: ResourceLimits(memory_bytes=5 * GIB)}
WORKER_SIZES = [Capacity(), Capacity(2000, 4 * GIB, 0), Capacity(4000, 8 * GIB, 0), Capacity(1000, 16 * GIB, 0)]


class SimWorker:
    def __init__(self, node: bytes, slots: int, started_at: float, capacity: Capacity = Capacity()) -> None:
        self.node, self.slots, self.started_at, self.capacity = node, slots, started_at, capacity
        self.running: dict[AttemptKey, None] = {}
        self.deaf = False                     # drops the assignments sent to it


class SchedulerMachine(RuleBasedStateMachine):
    """Workers, a master and a balancer that can restart; time is virtual."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.scheduler = Scheduler(LEASE_S)
        self.sims: dict[bytes, SimWorker] = {}
        self.specs: dict[bytes, JobSpec] = {}
        self.cancelled_jobs: set[bytes] = set()
        self.outstanding: dict[AttemptKey, DispatchAttempt] = {}   # the master's view
        self.numbers = count(1)
        self.inbox: deque = deque()

    # -- plumbing --
    def send(self, event) -> None:
        self.inbox.append(event)
        while self.inbox:
            self._deliver(self.inbox.popleft())

    def _deliver(self, event) -> None:
        known_before = {view.node for view in self.scheduler.workers(self.now)}
        effects = self.scheduler.handle(event, self.now)
        known_after = {view.node for view in self.scheduler.workers(self.now)}
        for effect in effects:
            if isinstance(effect, (AssignChunks, CancelOnWorker, WorkerJoined)):
                assert effect.worker in known_after, effect
            if isinstance(effect, AssignChunks):
                self._check_not_overcommitted(effect)
            if isinstance(effect, WorkerLost):
                assert effect.worker in known_before and effect.worker not in known_after
            if isinstance(effect, AskHello):
                assert effect.worker not in known_after
            self._carry_out(effect)

    def _carry_out(self, effect) -> None:
        if isinstance(effect, AssignChunks):
            assert effect.assignments
            sim = self.sims[effect.worker]
            for item in effect.assignments:
                key = AttemptKey(effect.job_spec.job, item.chunk, item.attempt)
                if sim.deaf or key in sim.running:
                    continue
                if len(sim.running) < sim.slots:
                    sim.running[key] = None
                else:
                    self.inbox.append(ChunkEvent(*key, ChunkState.REJECTED, sim.node))
        elif isinstance(effect, CancelOnWorker):
            assert effect.attempts
            sim = self.sims[effect.worker]
            for chunk, number in effect.attempts:
                key = AttemptKey(effect.job, chunk, number)
                if sim.running.pop(key, False) is None:
                    self.inbox.append(ChunkEvent(*key, ChunkState.CANCELLED, sim.node))
        elif isinstance(effect, ForwardToMaster) and effect.event.state in FINAL_CHUNK_STATES:
            self.outstanding.pop(AttemptKey(effect.event.job, effect.event.chunk, effect.event.attempt), None)
        elif isinstance(effect, AskHello) and effect.worker in self.sims:
            self.inbox.append(self._hello(self.sims[effect.worker]))

    def _check_not_overcommitted(self, effect: AssignChunks) -> None:
        """What a placement asks of a worker fits in what it offers, beside
        all else placed there (a 0 on either side: nothing to hold to)."""
        asked = effect.job_spec.request
        reserved = self.scheduler.reserved(effect.worker)
        offered = self.sims[effect.worker].capacity
        for name in ("millicpus", "memory_bytes", "disk_bytes"):
            if getattr(asked, name) and getattr(offered, name):
                assert getattr(reserved, name) <= getattr(offered, name), (effect, reserved, offered)

    def _hello(self, sim: SimWorker) -> WorkerHello:
        return WorkerHello(sim.node, sim.slots, 10**9, "h", "a", sim.started_at, sim.capacity)

    def _pick_sim(self, index: int) -> SimWorker | None:
        return self.sims[sorted(self.sims)[index % len(self.sims)]] if self.sims else None

    # -- rules --
    @rule(slots=st.integers(1, 3), size=st.sampled_from(WORKER_SIZES))
    def add_worker(self, slots: int, size: Capacity = Capacity()) -> None:
        if len(self.sims) < 4:
            sim = SimWorker(bytes([0x10 + len(self.sims)]) * 16, slots, self.now, size)
            self.sims[sim.node] = sim
            self.send(self._hello(sim))

    @rule(index=st.integers(0, 3), added=st.sets(st.sampled_from(FILE_POOL), max_size=2),
          removed=st.sets(st.sampled_from(FILE_POOL), max_size=1))
    def heartbeat(self, index: int, added: set, removed: set) -> None:
        if (sim := self._pick_sim(index)) is not None:
            self.send(WorkerHeartbeat(sim.node, tuple(sim.running), tuple(added),
                                      tuple(file_id for file_id, _ in removed)))

    @rule(job=st.sampled_from([JOB, JOB_B, JOB_C]), chunks=st.sets(st.integers(0, 3), max_size=3),
          inputs=st.sets(st.sampled_from(FILE_POOL), max_size=2), resend=st.booleans())
    def dispatch(self, job: bytes, chunks: set, inputs: set, resend: bool) -> None:
        if job in self.cancelled_jobs:
            return                            # the master never runs a cancelled job again
        self.specs.setdefault(job, JobSpec(job, PROGRAM, (), {}, 4, 60.0, JOB_LIMITS[job]))
        fresh = [DispatchAttempt(job, chunk, next(self.numbers),
                                 {f"in{n}": ref for n, ref in enumerate(sorted(inputs))})
                 for chunk in sorted(chunks)]
        self.outstanding.update((a.key, a) for a in fresh)
        again = [a for a in self.outstanding.values() if a.job == job] if resend else []
        self.send(Dispatched((self.specs[job],), tuple(fresh + again)))

    @rule(index=st.integers(0, 3), state=st.sampled_from(
        [ChunkState.STARTED, ChunkState.SUCCEEDED, ChunkState.FAILED]))
    def report(self, index: int, state: int) -> None:
        sim = self._pick_sim(index)
        if sim is not None and sim.running:
            key = next(iter(sim.running))
            if state != ChunkState.STARTED:
                del sim.running[key]
            self.send(ChunkEvent(*key, state, sim.node))

    @rule(job=st.sampled_from([JOB, JOB_B, JOB_C]), whole=st.booleans())
    def cancel(self, job: bytes, whole: bool) -> None:
        keys = [key for key in self.outstanding if key.job == job][: None if whole else 1]
        if whole:
            self.cancelled_jobs.add(job)
        elif not keys:
            return
        for key in keys:
            del self.outstanding[key]
        pairs = () if whole else tuple((key.chunk, key.attempt) for key in keys)
        self.send(CancelRequested(job, pairs))

    @rule(seconds=st.sampled_from([0.5, 3.0, 6.0, LEASE_S + 1.0]), all_beat=st.booleans())
    def time_passes(self, seconds: float, all_beat: bool) -> None:
        self.now += seconds
        if all_beat:                          # keeps workers alive across long runs
            for sim in list(self.sims.values()):
                self.send(WorkerHeartbeat(sim.node, tuple(sim.running)))
        self.send(Tick())

    @rule(index=st.integers(0, 3))
    def restart_worker(self, index: int) -> None:
        if (sim := self._pick_sim(index)) is not None:
            sim.started_at, sim.running = self.now + 0.001, {}
            self.send(self._hello(sim))

    @rule(index=st.integers(0, 3))
    def toggle_deaf(self, index: int) -> None:
        if (sim := self._pick_sim(index)) is not None:
            sim.deaf = not sim.deaf

    @rule()
    def restart_balancer(self) -> None:
        self.scheduler = Scheduler(LEASE_S)
        for job in sorted({key.job for key in self.outstanding}):
            self.send(Dispatched((self.specs[job],), tuple(
                a for a in self.outstanding.values() if a.job == job)))

    # -- invariants --
    @invariant()
    def slots_are_never_overbooked(self) -> None:
        views = self.scheduler.workers(self.now)
        for view in views:
            assert view.running + view.free_slots <= view.slots, view
            assert len(self.scheduler.assigned(view.node)) == view.running
        assert self.scheduler.capacity() == (sum(v.slots for v in views),
                                             sum(v.free_slots for v in views))

    @invariant()
    def an_attempt_is_in_one_place_at_most(self) -> None:
        places = list(self.scheduler.pending())
        for view in self.scheduler.workers(self.now):
            places.extend(self.scheduler.assigned(view.node))
        assert len(places) == len(set(places))

    @invariant()
    def every_outstanding_attempt_is_pending_or_assigned(self) -> None:
        placed = set(self.scheduler.pending())
        for view in self.scheduler.workers(self.now):
            placed.update(self.scheduler.assigned(view.node))
        assert set(self.outstanding) <= placed

    @invariant()
    def a_pending_attempt_fits_no_free_slot(self) -> None:
        """Placement is eager: what still waits has no worker with a free
        slot and room for its request."""
        for key in self.scheduler.pending():
            asked = self.specs[key.job].request
            for view in self.scheduler.workers(self.now):
                if view.free_slots:
                    assert not view.capacity.fits(asked, self.scheduler.reserved(view.node)), (key, view)

    def teardown(self) -> None:
        """Healthy workers, heartbeats and results: everything the master is
        waiting for ends up final, LOST or cancelled."""
        for sim in self.sims.values():
            sim.deaf = False
        if not self.sims:
            self.add_worker(2)
        if all(sim.capacity.memory_bytes and sim.capacity.memory_bytes < 5 * GIB for sim in self.sims.values()):
            # A worker that every job fits, so that everything can end.
            sim = SimWorker(bytes([0x1F]) * 16, 2, self.now, WORKER_SIZES[2])
            self.sims[sim.node] = sim
            self.send(self._hello(sim))
        for _ in range(400):                  # each round frees every slot once
            if not self.outstanding:
                break
            for sim in list(self.sims.values()):
                self.send(WorkerHeartbeat(sim.node, tuple(sim.running)))
                for key in list(sim.running):
                    del sim.running[key]
                    self.send(ChunkEvent(*key, ChunkState.SUCCEEDED, sim.node))
            self.now += LEASE_S / 3
            self.send(Tick())
        assert not self.outstanding


SchedulerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_scheduler_state_machine = SchedulerMachine.TestCase
