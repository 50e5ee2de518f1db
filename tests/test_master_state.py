"""master/state.py: the replicated truth, driven by commands with exact
outcomes, views and events; then a hypothesis state machine that checks the
invariants after every step."""
import copy
import dataclasses
import pickle
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from uds import wire
from uds.master.commands import (
    CancelJob, CancelOutcome, ChunkEventOutcome, DispatchAttempts, DispatchOutcome, Event,
    JobSummary, NodeLost, NodeOutcome, NodeSeen, Outcome, ReadyAttempt, RunningAttempt,
    RunTimers, SubmitJob, SubmitOutcome,
)
from uds.master.attempts import chunk_attempts
from uds.master.commands import FINAL_PHASES
from uds.master.state import (
    EVENT_LOG_LIMIT, POISON_LIMIT, ClusterState, StateInvariantError,
    POISON_ERROR,
)
from state_expectations import check_accepted, expected_event_phase, expected_event_status
from uds.wire.enums import ChunkState, ErrorCode, JobState, NodeRole
from uds.wire.records import NO_RESULT, ChunkEvent, ChunkResult
from uds.wire.resources import ResourceLimits

JOB_A = bytes.fromhex("aa" * 16)
JOB_B = bytes.fromhex("bb" * 16)
WORKER_1 = bytes.fromhex("01" * 16)
WORKER_2 = bytes.fromhex("02" * 16)
PROGRAM = (bytes.fromhex("f0" * 16), 1234)
DATA = (bytes.fromhex("da" * 16), 10)
OUT = (bytes.fromhex("0e" * 16), 5)
LOG = (bytes.fromhex("1e" * 16), 7)
NODE_ID = bytes.fromhex("cd" * 16)


def submit(job=JOB_A, chunk_count=2, max_retries=0, chunk_inputs=(), name="demo") -> SubmitJob:
    return SubmitJob(job=job, name=name, program=PROGRAM, args=("-v",), inputs={"data": DATA},
                     chunk_inputs=chunk_inputs, chunk_count=chunk_count, timeout_s=60.0,
                     max_retries=max_retries)


def event(chunk, attempt, state, job=JOB_A, worker=WORKER_1, worker_started_at=0.0,
          **result) -> ChunkEvent:
    return ChunkEvent(job=job, chunk=chunk, attempt=attempt, state=state, worker=worker,
                      result=ChunkResult(**result), worker_started_at=worker_started_at)


def one(state: ClusterState, command, now=10.0):
    [outcome] = state.apply([command], now)
    return outcome


def started(chunk_count=2, max_retries=0, job=JOB_A) -> ClusterState:
    """A state with one job whose chunks are all dispatched (attempt 1)."""
    state = ClusterState()
    state.apply([submit(job=job, chunk_count=chunk_count, max_retries=max_retries)], 1.0)
    state.apply([DispatchAttempts(tuple((job, index, 1) for index in range(chunk_count)))], 2.0)
    return state


def phases(state, job=JOB_A):
    return [(chunk.phase, chunk.attempt) for chunk in state.job_view(job).chunks]


def kinds(state, after=0):
    events, _ = state.events_after(after, 1000)
    return [(e.kind, e.chunk, e.attempt) for e in events]


# -- SubmitJob --------------------------------------------------------------

def test_submit_creates_a_queued_job_with_queued_chunks():
    state = ClusterState()
    assert state.apply([submit(chunk_count=3)], 5.0) == [SubmitOutcome(created=True)]
    view = state.job_view(JOB_A)
    assert (view.state, view.chunk_count, view.name, view.submitted_at, view.finished_at) == (
        JobState.QUEUED, 3, "demo", 5.0, None)
    assert phases(state) == [("queued", 1)] * 3
    assert state.ready_attempts(10) == [ReadyAttempt(JOB_A, index, 1, {}) for index in range(3)]
    assert state.events_after(0, 10) == (
        [Event(1, 5.0, "job_submitted", JOB_A, None, None, None, "demo: 3 chunks")], 1)
    assert state.job_spec(JOB_A) == dict(job=JOB_A, program=PROGRAM, args=["-v"],
                                         inputs={"data": DATA}, chunk_count=3, timeout_s=60.0, limits={},
                                         network=False)


def test_submit_is_idempotent_by_job_id():
    state = ClusterState()
    state.apply([submit()], 1.0)
    before = copy.deepcopy(state)
    assert one(state, submit()) == SubmitOutcome(created=False)
    # As decoded from msgpack: lists instead of tuples, an int timeout.
    as_decoded = SubmitJob(job=JOB_A, name="demo", program=list(PROGRAM), args=["-v"],
                           inputs={"data": list(DATA)}, chunk_inputs=[], chunk_count=2,
                           timeout_s=60, max_retries=0)
    assert one(state, as_decoded) == SubmitOutcome(created=False)
    assert state == before


def test_submit_with_a_reused_id_and_another_spec_changes_nothing():
    state = ClusterState()
    state.apply([submit()], 1.0)
    before = copy.deepcopy(state)
    assert one(state, submit(chunk_count=5)) == SubmitOutcome(
        ok=False, error="job id reused with a different spec", error_code=ErrorCode.INVALID)
    assert state == before


@pytest.mark.parametrize("command, error", [
    (submit(chunk_count=0), "chunk_count must be 1..200000"),
    (submit(chunk_count=2, chunk_inputs=({},)), "1 chunk_inputs for 2 chunks"),
    (submit(job=b"short"), "job id must be 16 bytes"),
    (SubmitJob(JOB_A, "x", PROGRAM, (), {}, (), 1, 0.0, 0), "timeout_s must be positive"),
    (SubmitJob(JOB_A, "x", PROGRAM, (), {}, (), 1, 1.0, -1), "max_retries must be a count"),
    (SubmitJob(JOB_A, "x", (b"x", 1), (), {}, (), 1, 1.0, 0), "program must be a file reference"),
])
def test_an_invalid_submission_is_refused(command, error):
    state = ClusterState()
    assert one(state, command) == SubmitOutcome(ok=False, error=error, error_code=ErrorCode.INVALID)
    assert state == ClusterState()


def test_per_chunk_inputs_go_with_each_ready_attempt():
    state = ClusterState()
    per_chunk = ({"part": DATA}, {"part": OUT})
    state.apply([submit(chunk_inputs=per_chunk)], 1.0)
    assert state.ready_attempts(2) == [ReadyAttempt(JOB_A, 0, 1, {"part": DATA}),
                                       ReadyAttempt(JOB_A, 1, 1, {"part": OUT})]
    assert state.chunk_inputs(JOB_A, 1) == {"part": OUT}
    assert state.chunk_inputs(JOB_A, 7) == {}


def test_unknown_commands_are_refused_and_outcomes_follow_command_order():
    state = ClusterState()
    outcomes = state.apply([submit(), "nonsense", CancelJob(JOB_B), submit()], 1.0)
    assert outcomes == [
        SubmitOutcome(created=True),
        Outcome(ok=False, error="unknown command str", error_code=ErrorCode.INVALID),
        CancelOutcome(ok=False, error=f"unknown job {JOB_B.hex()}", error_code=ErrorCode.UNKNOWN_JOB),
        SubmitOutcome(created=False),
    ]


# -- DispatchAttempts -------------------------------------------------------

def test_dispatch_moves_queued_chunks_of_that_attempt_only():
    state = ClusterState()
    state.apply([submit(chunk_count=3)], 1.0)
    outcome = one(state, DispatchAttempts(((JOB_A, 0, 1), (JOB_A, 1, 2), (JOB_B, 0, 1),
                                           (JOB_A, 0, 1), (JOB_A, 9, 1), ("junk",))))
    assert outcome == DispatchOutcome(dispatched=((JOB_A, 0, 1),), skipped=5)
    assert phases(state) == [("dispatched", 1), ("queued", 1), ("queued", 1)]
    assert state.job_view(JOB_A).state == JobState.RUNNING
    assert state.in_flight_count() == 1
    assert state.dispatched_attempts() == [ReadyAttempt(JOB_A, 0, 1, {})]
    assert [attempt.chunk for attempt in state.ready_attempts(10)] == [1, 2]
    assert kinds(state, after=1) == [("chunk_dispatched", 0, 1)]


def test_ready_attempts_are_fifo_by_submission_then_chunk():
    state = ClusterState()
    state.apply([submit(job=JOB_A, chunk_count=2), submit(job=JOB_B, chunk_count=2)], 1.0)
    assert [attempt[:3] for attempt in state.ready_attempts(3)] == [
        (JOB_A, 0, 1), (JOB_A, 1, 1), (JOB_B, 0, 1)]
    assert state.ready_attempts(0) == []


def test_a_requeued_chunk_goes_to_the_back_of_the_queue():
    state = ClusterState()
    state.apply([submit(chunk_count=3, max_retries=1)], 1.0)
    state.apply([DispatchAttempts(((JOB_A, 0, 1),))], 2.0)
    state.apply([event(0, 1, ChunkState.FAILED, exit_code=1)], 3.0)
    assert [attempt[:3] for attempt in state.ready_attempts(10)] == [
        (JOB_A, 1, 1), (JOB_A, 2, 1), (JOB_A, 0, 2)]


# -- ChunkEvent -------------------------------------------------------------

def test_started_marks_the_chunk_running_on_its_worker():
    state = started()
    assert one(state, event(0, 1, ChunkState.STARTED)) == ChunkEventOutcome(phase="running")
    chunk = state.job_view(JOB_A).chunks[0]
    assert (chunk.phase, chunk.worker) == ("running", WORKER_1)
    assert state.running_attempts() == [RunningAttempt(JOB_A, 0, 1, WORKER_1)]
    assert state.dispatched_attempts() == [ReadyAttempt(JOB_A, 1, 1, {})]
    assert state.in_flight_count() == 2
    assert one(state, event(0, 1, ChunkState.STARTED)) == ChunkEventOutcome(
        status="duplicate", phase="running")


def test_success_commits_the_result_once():
    state = started()
    state.apply([event(0, 1, ChunkState.STARTED)], 3.0)
    succeeded = event(0, 1, ChunkState.SUCCEEDED, exit_code=0, outputs={"out/a": OUT}, stdout=LOG,
                      elapsed_s=1.5, bytes_from_cache=3, bytes_from_storage=4)
    assert state.apply([succeeded, succeeded], 4.0) == [
        ChunkEventOutcome(phase="succeeded"), ChunkEventOutcome(status="final", phase="succeeded")]
    view = state.job_view(JOB_A)
    assert (view.state, view.chunks_succeeded, view.chunks_failed) == (JobState.RUNNING, 1, 0)
    chunk = view.chunks[0]
    assert chunk.as_report() == dict(
        chunk=0, state="succeeded", attempt=1, worker=WORKER_1, failures=[], exit_code=0, outputs={"out/a": OUT},
        stdout=LOG, stderr=None, error="", elapsed_s=1.5, bytes_from_cache=3, bytes_from_storage=4,
        cpu_user_s=0.0, cpu_system_s=0.0, peak_memory_bytes=0, output_bytes=0, assigned_at=0.0,
        started_at=0.0, first_read_at=0.0, ended_at=0.0, uploaded_at=0.0)
    # The second chunk succeeds straight from DISPATCHED (its STARTED was lost).
    assert one(state, event(1, 1, ChunkState.SUCCEEDED, worker=WORKER_2, exit_code=0), now=5.0) == (
        ChunkEventOutcome(phase="succeeded", job_finished=True))
    view = state.job_view(JOB_A)
    assert (view.state, view.chunks_succeeded, view.finished_at, view.error) == (
        JobState.SUCCEEDED, 2, 5.0, "")
    assert view.chunks[1].worker == WORKER_2
    assert state.in_flight_count() == 0
    assert kinds(state)[-3:] == [("chunk_succeeded", 0, 1), ("chunk_succeeded", 1, 1),
                                 ("job_succeeded", None, None)]


def test_events_of_other_attempts_are_fenced_off():
    state = started(max_retries=1)
    state.apply([event(0, 1, ChunkState.FAILED, exit_code=2)], 3.0)
    assert phases(state)[0] == ("queued", 2)
    before = copy.deepcopy(state)
    for late in (event(0, 1, ChunkState.SUCCEEDED), event(0, 1, ChunkState.STARTED),
                 event(0, 3, ChunkState.SUCCEEDED)):
        assert one(state, late) == ChunkEventOutcome(status="stale", phase="queued")
    assert state == before


OUT_2 = (bytes.fromhex("2e" * 16), 6)


@pytest.mark.parametrize("newer_phase", ["dispatched", "running"])
@pytest.mark.parametrize("ended_by", [ChunkState.LOST, ChunkState.FAILED], ids=["lost", "failed"])
def test_a_stale_success_is_ignored_while_the_newer_attempt_is_in_flight(newer_phase, ended_by):
    """Worker 1's attempt 1 is given up (lost, or failed with a retry left)
    and attempt 2 goes to worker 2; then attempt 1's SUCCEEDED arrives late.
    It must not finish the chunk: attempt 2 stays in flight, and its own
    result is the one committed."""
    state = started(chunk_count=1, max_retries=1)
    state.apply([event(0, 1, ChunkState.STARTED)], 3.0)
    state.apply([event(0, 1, ended_by, exit_code=1)], 4.0)
    state.apply([DispatchAttempts(((JOB_A, 0, 2),))], 5.0)
    if newer_phase == "running":
        state.apply([event(0, 2, ChunkState.STARTED, worker=WORKER_2)], 6.0)
    before = copy.deepcopy(state)

    stale = event(0, 1, ChunkState.SUCCEEDED, exit_code=0, outputs={"out/a": OUT}, stdout=LOG)
    assert one(state, stale, now=7.0) == ChunkEventOutcome(status="stale", phase=newer_phase)
    assert state == before
    assert phases(state) == [(newer_phase, 2)]
    assert state.in_flight_count() == 1
    if newer_phase == "dispatched":
        assert state.dispatched_attempts() == [ReadyAttempt(JOB_A, 0, 2, {})]
        assert state.running_attempts() == []
    else:
        assert state.running_attempts() == [RunningAttempt(JOB_A, 0, 2, WORKER_2)]
        assert state.dispatched_attempts() == []
    view = state.job_view(JOB_A)
    assert (view.state, view.chunks_succeeded, view.finished_at) == (JobState.RUNNING, 0, None)
    assert "chunk_succeeded" not in [kind for kind, _, _ in kinds(state)]

    current = event(0, 2, ChunkState.SUCCEEDED, worker=WORKER_2, exit_code=0, outputs={"out/a": OUT_2},
                    elapsed_s=2.0)
    assert one(state, current, now=8.0) == ChunkEventOutcome(phase="succeeded", job_finished=True)
    view = state.job_view(JOB_A)
    assert (view.state, view.chunks_succeeded, view.finished_at) == (JobState.SUCCEEDED, 1, 8.0)
    chunk = view.chunks[0]
    assert (chunk.attempt, chunk.worker, chunk.result.outputs, chunk.result.stdout,
            chunk.result.elapsed_s) == (2, WORKER_2, {"out/a": OUT_2}, None, 2.0)
    assert state.in_flight_count() == 0
    assert [(kind, attempt) for kind, _, attempt in kinds(state) if kind == "chunk_succeeded"] == [
        ("chunk_succeeded", 2)]
    # And once final, the stale result is still ignored.
    assert one(state, stale, now=9.0) == ChunkEventOutcome(status="stale", phase="succeeded")


def test_an_event_for_an_undispatched_attempt_is_refused():
    state = ClusterState()
    state.apply([submit()], 1.0)
    assert one(state, event(0, 1, ChunkState.STARTED)) == ChunkEventOutcome(
        ok=False, error="STARTED for attempt 1 which is queued", error_code=ErrorCode.INVALID,
        status="invalid", phase="queued")


def test_a_late_started_after_the_final_event_is_ignored():
    state = started()
    state.apply([event(0, 1, ChunkState.SUCCEEDED, exit_code=0)], 3.0)
    assert one(state, event(0, 1, ChunkState.STARTED)) == ChunkEventOutcome(
        status="final", phase="succeeded")
    assert state.running_attempts() == []


@pytest.mark.parametrize("bad, outcome", [
    (event(0, 1, ChunkState.STARTED, job=JOB_B),
     ChunkEventOutcome(ok=False, error="unknown job", error_code=ErrorCode.UNKNOWN_JOB, status="unknown")),
    (event(5, 1, ChunkState.STARTED),
     ChunkEventOutcome(ok=False, error="unknown chunk 5", error_code=ErrorCode.INVALID, status="unknown")),
    (event(0, 1, 99),
     ChunkEventOutcome(ok=False, error="unknown chunk state 99", error_code=ErrorCode.INVALID,
                       status="invalid")),
    (event(0, 1, ChunkState.SUCCEEDED, outputs={"a": ("no", 1)}),
     ChunkEventOutcome(ok=False, error="result.outputs['a'][0]: expected bytes, got str",
                       error_code=ErrorCode.INVALID, status="invalid", phase="dispatched")),
    (event(0, 1, ChunkState.FAILED, elapsed_s=float("nan")),
     ChunkEventOutcome(ok=False, error="result.elapsed_s: nan outside 0.0..10000000000.0",
                       error_code=ErrorCode.INVALID, status="invalid", phase="dispatched")),
    (ChunkEvent(JOB_A, 0, 1, ChunkState.SUCCEEDED, WORKER_1, result={"exit_code": 0}),
     ChunkEventOutcome(ok=False, error="result is a dict, not a ChunkResult",
                       error_code=ErrorCode.INVALID, status="invalid", phase="dispatched")),
])
def test_bad_events_are_refused_without_change(bad, outcome):
    state = started()
    before = copy.deepcopy(state)
    assert one(state, bad) == outcome
    assert state == before


def test_failures_use_retries_then_fail_the_chunk_and_the_job():
    state = started(chunk_count=1, max_retries=2)
    outcomes = []
    for attempt in (1, 2, 3):
        if attempt > 1:
            state.apply([DispatchAttempts(((JOB_A, 0, attempt),))], 3.0)
        outcomes += state.apply([event(0, attempt, ChunkState.FAILED, exit_code=3, stderr=LOG)], 4.0)
    assert outcomes == [ChunkEventOutcome(phase="queued"), ChunkEventOutcome(phase="queued"),
                        ChunkEventOutcome(phase="failed", job_finished=True)]
    view = state.job_view(JOB_A)
    assert (view.state, view.chunks_failed, view.finished_at, view.error) == (
        JobState.FAILED, 1, 4.0, "chunk 0: exit code 3")
    chunk = view.chunks[0]
    result = chunk.result
    assert (chunk.phase, chunk.attempt, result.exit_code, result.stderr, result.error, chunk.retries_used) == (
        "failed", 3, 3, LOG, "exit code 3", 2)
    events, _ = state.events_after(0, 100)
    assert [(e.kind, e.attempt, e.detail) for e in events if e.kind.startswith(("chunk_retried", "chunk_f", "job_f"))] == [
        ("chunk_retried", 1, "exit code 3; retry 1 of 2"),
        ("chunk_retried", 2, "exit code 3; retry 2 of 2"),
        ("chunk_failed", 3, "exit code 3"),
        ("job_failed", None, "chunk 0: exit code 3"),
    ]


def test_a_timeout_counts_as_a_program_failure():
    state = started(chunk_count=1, max_retries=0)
    assert one(state, event(0, 1, ChunkState.TIMED_OUT)) == ChunkEventOutcome(
        phase="failed", job_finished=True)
    assert state.job_view(JOB_A).error == "chunk 0: timed out"


def test_worker_loss_does_not_use_retries_but_poison_fails_the_chunk():
    state = started(chunk_count=1, max_retries=0)
    for attempt in range(1, POISON_LIMIT + 1):
        if attempt > 1:
            state.apply([DispatchAttempts(((JOB_A, 0, attempt),))], 3.0)
        outcome = one(state, event(0, attempt, ChunkState.LOST))
        if attempt < POISON_LIMIT:
            assert outcome == ChunkEventOutcome(phase="queued")
            assert phases(state) == [("queued", attempt + 1)]
    assert outcome == ChunkEventOutcome(phase="failed", job_finished=True)
    chunk = state.job_view(JOB_A).chunks[0]
    assert (chunk.result.error, chunk.retries_used, chunk.lost_count) == (POISON_ERROR, 0, 3)
    assert chunk.failures == ("infrastructure",) * POISON_LIMIT
    assert state.job_view(JOB_A).error == f"chunk 0: {POISON_ERROR}"
    assert [kind for kind, _, _ in kinds(state)].count("chunk_lost") == POISON_LIMIT - 1


@pytest.mark.parametrize("refusal", [ChunkState.REJECTED, ChunkState.CANCELLED])
def test_refusals_and_take_backs_are_retried_for_ever_and_never_poison(refusal):
    state = started(chunk_count=1, max_retries=0)
    now = 3.0
    for attempt in range(1, 3 * POISON_LIMIT):
        if attempt > 1:
            if refusal == ChunkState.REJECTED:
                # A refused chunk waits out its backoff, growing with each refusal.
                assert phases(state) == [("delayed", attempt)]
                due = state.next_timer_at()
                assert due - now == min(30.0, 0.5 * 2 ** (attempt - 2))
                now = due + 1.0
                state.apply([RunTimers()], now)
            assert phases(state) == [("queued", attempt)]
            state.apply([DispatchAttempts(((JOB_A, 0, attempt),))], now)
        one(state, event(0, attempt, refusal), now)
    chunk = state.job_view(JOB_A).chunks[0]
    assert (chunk.retries_used, chunk.lost_count) == (0, 0)
    assert chunk.failures == ("infrastructure",) * (3 * POISON_LIMIT - 1)
    assert state.job_view(JOB_A).state == JobState.RUNNING


def test_a_chunk_cancelled_by_its_worker_without_cancel_job_is_lost_not_cancelled():
    # Only a balancer taking back a copy cancels without CancelJob; the chunk
    # must run again, not end cancelled with nobody having asked.
    state = started(chunk_count=2)
    state.apply([event(0, 1, ChunkState.SUCCEEDED, exit_code=0)], 3.0)
    assert one(state, event(1, 1, ChunkState.CANCELLED)) == ChunkEventOutcome(phase="queued")
    assert phases(state) == [("succeeded", 1), ("queued", 2)]
    assert state.job_view(JOB_A).state == JobState.RUNNING


def test_job_state_stays_running_while_a_dispatched_chunk_is_requeued():
    state = started(chunk_count=1, max_retries=1)
    state.apply([event(0, 1, ChunkState.LOST)], 3.0)
    assert state.job_view(JOB_A).state == JobState.RUNNING
    assert state.job_state(JOB_A) == JobState.RUNNING
    assert state.job_state(JOB_B) is None


# -- CancelJob --------------------------------------------------------------

def test_cancel_cancels_every_unfinished_chunk_and_lists_those_in_flight():
    state = ClusterState()
    state.apply([submit(chunk_count=4)], 1.0)
    state.apply([DispatchAttempts(((JOB_A, 0, 1), (JOB_A, 1, 1), (JOB_A, 2, 1)))], 2.0)
    state.apply([event(0, 1, ChunkState.SUCCEEDED, exit_code=0),
                 event(1, 1, ChunkState.STARTED, worker=WORKER_2)], 3.0)
    assert one(state, CancelJob(JOB_A), now=7.0) == CancelOutcome(
        cancelled_attempts=((1, 1, WORKER_2), (2, 1, None)), changed=True)
    view = state.job_view(JOB_A)
    assert [chunk.phase for chunk in view.chunks] == ["succeeded", "cancelled", "cancelled", "cancelled"]
    assert (view.state, view.finished_at, view.chunks_succeeded) == (JobState.CANCELLED, 7.0, 1)
    assert state.in_flight_count() == 0 and state.ready_attempts(10) == []
    assert kinds(state)[-3:] == [("chunk_cancelled", 1, 1), ("chunk_cancelled", 2, 1),
                                 ("job_cancelled", None, None)]
    before = copy.deepcopy(state)
    assert one(state, CancelJob(JOB_A)) == CancelOutcome(changed=False)
    assert one(state, event(1, 1, ChunkState.SUCCEEDED)) == ChunkEventOutcome(
        status="final", phase="cancelled")
    assert state == before


def test_cancelling_a_finished_job_changes_nothing():
    state = started(chunk_count=1)
    state.apply([event(0, 1, ChunkState.SUCCEEDED, exit_code=0)], 3.0)
    assert one(state, CancelJob(JOB_A)) == CancelOutcome(changed=False)
    assert state.job_view(JOB_A).state == JobState.SUCCEEDED


# -- Nodes ------------------------------------------------------------------

def node_seen(host="w1", slots=4) -> NodeSeen:
    return NodeSeen(node=NODE_ID, role=int(NodeRole.WORKER), host=host, address="tcp://w1:5000",
                    slots=slots, cache_bytes=1 << 30, started_at=100.0)


def test_nodes_join_are_lost_and_come_back_with_one_event_per_change():
    state = ClusterState()
    assert one(state, node_seen(), now=1.0) == NodeOutcome(changed=True)
    assert one(state, node_seen(), now=2.0) == NodeOutcome(changed=False)
    assert one(state, node_seen(slots=8), now=2.0) == NodeOutcome(updated=True)
    [view] = state.nodes()
    assert (view.state, view.slots, view.changed_at) == ("alive", 8, 1.0)
    assert one(state, NodeLost(NODE_ID), now=3.0) == NodeOutcome(changed=True)
    assert one(state, NodeLost(NODE_ID), now=4.0) == NodeOutcome(changed=False)
    assert state.nodes()[0].state == "lost"
    assert one(state, node_seen(), now=5.0) == NodeOutcome(changed=True)
    assert (state.nodes()[0].state, state.nodes()[0].changed_at) == ("alive", 5.0)
    events, last_seq = state.events_after(0, 10)
    assert [(e.kind, e.node, e.at) for e in events] == [
        ("node_joined", NODE_ID, 1.0), ("node_lost", NODE_ID, 3.0), ("node_joined", NODE_ID, 5.0)]
    assert events[0].detail == "worker w1 tcp://w1:5000" and last_seq == 3


def worker_seen(started_at=100.0, worker=WORKER_1) -> NodeSeen:
    return NodeSeen(node=worker, role=int(NodeRole.WORKER), host="w1", address="", slots=2,
                    cache_bytes=0, started_at=started_at)


def running_on_worker_1() -> ClusterState:
    """Chunk 0 RUNNING on WORKER_1 (a known worker), chunk 1 DISPATCHED."""
    state = started(chunk_count=2)
    state.apply([worker_seen(), event(0, 1, ChunkState.STARTED)], 3.0)
    assert phases(state) == [("running", 1), ("dispatched", 1)]
    return state


@pytest.mark.parametrize("command, why", [
    (NodeLost(WORKER_1), "worker lost"),
    (worker_seen(started_at=200.0), "worker restarted"),
])
def test_a_lost_or_restarted_worker_loses_its_running_attempts(command, why):
    # A restarted balancer may never learn what the dead process ran.
    state = running_on_worker_1()
    after = state.last_seq
    one(state, command, now=4.0)
    assert phases(state) == [("queued", 2), ("dispatched", 1)]
    assert state.job_view(JOB_A).chunks[0].lost_count == 1
    lost_events = [e for e in state.events_after(after, 10)[0] if e.kind == "chunk_lost"]
    assert [(e.chunk, e.attempt, e.node, e.detail) for e in lost_events] == [
        (0, 1, WORKER_1, f"lost: {why}; lost 1 of {POISON_LIMIT} in a row")]
    # The balancer's own LOST, or a late result of that attempt, is stale now.
    assert one(state, event(0, 1, ChunkState.LOST)).status == "stale"
    assert one(state, event(0, 1, ChunkState.SUCCEEDED, exit_code=0)).status == "stale"


def test_the_same_worker_process_seen_again_keeps_its_attempts():
    state = running_on_worker_1()
    assert one(state, worker_seen(), now=4.0) == NodeOutcome(changed=False)
    assert phases(state) == [("running", 1), ("dispatched", 1)]


def test_a_worker_joining_while_unknown_loses_what_it_started_before():
    state = started(chunk_count=1)
    state.apply([event(0, 1, ChunkState.STARTED)], 3.0)
    assert one(state, worker_seen(), now=4.0) == NodeOutcome(changed=True)
    assert phases(state) == [("queued", 2)]


def test_a_lost_worker_back_as_the_same_process_keeps_what_it_started_since():
    state = running_on_worker_1()
    state.apply([NodeLost(WORKER_1), DispatchAttempts(((JOB_A, 0, 2),)), event(0, 2, ChunkState.STARTED)], 4.0)
    assert one(state, worker_seen(), now=5.0) == NodeOutcome(changed=True)
    assert phases(state) == [("running", 2), ("dispatched", 1)]
    # Back from lost as a new process, it loses it.
    state.apply([NodeLost(WORKER_1)], 6.0)
    state.apply([DispatchAttempts(((JOB_A, 0, 3),)), event(0, 3, ChunkState.STARTED)], 7.0)
    one(state, worker_seen(started_at=300.0), now=8.0)
    assert phases(state) == [("failed", 3), ("dispatched", 1)]
    assert state.job_view(JOB_A).chunks[0].result.error == POISON_ERROR


def restarted_while_dispatched() -> ClusterState:
    """Chunk 0 DISPATCHED to WORKER_1, whose process of started_at 100 was
    replaced by one of 200 before its STARTED of the attempt committed."""
    state = started(chunk_count=1)
    state.apply([worker_seen(started_at=100.0)], 3.0)
    one(state, worker_seen(started_at=200.0), now=4.0)
    return state


def test_a_started_from_a_replaced_worker_process_is_stale_and_the_attempt_is_sent_again():
    # The new process never heard of the attempt: RUNNING on it, the chunk
    # would wait for ever; left DISPATCHED, the leader sends it again.
    state = restarted_while_dispatched()
    before = copy.deepcopy(state)
    assert one(state, event(0, 1, ChunkState.STARTED, worker_started_at=100.0)) == ChunkEventOutcome(
        status="stale", phase="dispatched")
    assert state == before
    assert [attempt[:3] for attempt in state.dispatched_attempts()] == [(JOB_A, 0, 1)]
    # The same report from the current process is applied.
    assert one(state, event(0, 1, ChunkState.STARTED, worker_started_at=200.0)) == ChunkEventOutcome(
        phase="running")
    assert phases(state) == [("running", 1)]
    assert state.job_view(JOB_A).chunks[0].worker == WORKER_1


@pytest.mark.parametrize("worker_started_at", [0.0, 200.0, 300.0])
def test_a_started_that_names_no_older_process_is_applied(worker_started_at):
    # 0: made up by the balancer, not fenced; newer: a process the masters
    # have not registered yet (its NodeSeen will lose what it started).
    state = restarted_while_dispatched()
    outcome = one(state, event(0, 1, ChunkState.STARTED, worker_started_at=worker_started_at))
    assert outcome.status == "applied"
    assert phases(state) == [("running", 1)]


def test_a_started_from_a_worker_not_known_is_applied():
    state = started(chunk_count=1)
    assert one(state, event(0, 1, ChunkState.STARTED, worker_started_at=100.0)).status == "applied"


def test_a_result_from_a_replaced_worker_process_is_committed_once():
    # The attempt's genuine result: committed, and the current process's
    # copy of the same attempt (sent again) finds the chunk final.
    state = restarted_while_dispatched()
    assert one(state, event(0, 1, ChunkState.SUCCEEDED, worker_started_at=100.0, exit_code=0)) == (
        ChunkEventOutcome(phase="succeeded", job_finished=True))
    assert one(state, event(0, 1, ChunkState.STARTED, worker_started_at=200.0)).status == "final"
    assert one(state, event(0, 1, ChunkState.SUCCEEDED, worker_started_at=200.0, exit_code=0)).status == "final"
    assert [kind for kind, _, _ in kinds(state)].count("chunk_succeeded") == 1


def test_unknown_or_malformed_nodes_are_refused():
    state = ClusterState()
    assert one(state, NodeLost(NODE_ID)) == NodeOutcome(
        ok=False, error="unknown node", error_code=ErrorCode.INVALID)
    assert one(state, NodeSeen(NODE_ID, 99, "h", "a", 1, 0, 0.0)) == NodeOutcome(
        ok=False, error="unknown node role 99", error_code=ErrorCode.INVALID)
    assert state == ClusterState()


# -- Listing, the event log, snapshots --------------------------------------

def test_jobs_are_listed_newest_first():
    state = ClusterState()
    state.apply([submit(job=JOB_A, name="first")], 1.0)
    state.apply([submit(job=JOB_B, name="second")], 2.0)
    assert state.jobs(10) == [JobSummary(JOB_B, "second", JobState.QUEUED, 2.0),
                              JobSummary(JOB_A, "first", JobState.QUEUED, 1.0)]
    assert state.jobs(1) == [JobSummary(JOB_B, "second", JobState.QUEUED, 2.0)]


def test_event_log_pages_by_sequence_number():
    state = started(chunk_count=3)
    events, last_seq = state.events_after(0, 2)
    assert [e.seq for e in events] == [1, 2] and last_seq == 4
    assert [e.seq for e in state.events_after(2, 100)[0]] == [3, 4]
    assert state.events_after(4, 100) == ([], 4)
    assert state.events_after(3, 0) == ([], 4)


def test_event_log_keeps_the_newest_events_and_keeps_counting():
    chunk_count = EVENT_LOG_LIMIT // 2
    state = ClusterState()
    state.apply([submit(chunk_count=chunk_count)], 1.0)
    state.apply([DispatchAttempts(tuple((JOB_A, index, 1) for index in range(chunk_count)))], 2.0)
    state.apply([event(index, 1, ChunkState.STARTED) for index in range(chunk_count)], 3.0)
    total = 1 + 2 * chunk_count
    events, last_seq = state.events_after(0, 3)
    assert last_seq == total
    assert [e.seq for e in events] == [total - EVENT_LOG_LIMIT + 1 + offset for offset in range(3)]
    assert [e.seq for e in state.events_after(total - 2, 10)[0]] == [total - 1, total]
    # Either side of the middle (the log is read from its nearer end).
    last_dispatched = 1 + chunk_count
    assert [(e.seq, e.kind) for e in state.events_after(last_dispatched - 1, 2)[0]] == [
        (last_dispatched, "chunk_dispatched"), (last_dispatched + 1, "chunk_started")]
    assert [(e.seq, e.kind) for e in state.events_after(last_dispatched, 2)[0]] == [
        (last_dispatched + 1, "chunk_started"), (last_dispatched + 2, "chunk_started")]


def test_pickle_round_trip_gives_an_equal_state_that_carries_on_identically():
    state = started(chunk_count=3, max_retries=1)
    state.apply([event(0, 1, ChunkState.STARTED), event(1, 1, ChunkState.FAILED, exit_code=1),
                 event(2, 1, ChunkState.SUCCEEDED, exit_code=0, outputs={"o": OUT}), node_seen()], 3.0)
    restored = pickle.loads(pickle.dumps(state))
    assert restored == state
    follow_up = [event(0, 1, ChunkState.SUCCEEDED, exit_code=0), DispatchAttempts(((JOB_A, 1, 2),)),
                 CancelJob(JOB_A)]
    assert restored.apply(follow_up, 9.0) == state.apply(follow_up, 9.0)
    assert restored == state
    assert restored.ready_attempts(5) == state.ready_attempts(5)


def test_a_broken_bookkeeping_invariant_raises():
    state = started()
    state.dispatched.clear()  # simulate a bug elsewhere in this module
    with pytest.raises(StateInvariantError, match="missing from its phase table"):
        state.apply([event(0, 1, ChunkState.STARTED)], 3.0)


def test_job_view_pages_through_the_chunks():
    state = started(chunk_count=5)
    assert [c.chunk for c in state.job_view(JOB_A).chunks] == [0, 1, 2, 3, 4]
    page = state.job_view(JOB_A, first_chunk=1, chunk_limit=2)
    assert page.first_chunk == 1 and [c.chunk for c in page.chunks] == [1, 2]
    assert page.reply_fields()["next_chunk"] == 3
    counts_only = state.job_view(JOB_A, first_chunk=2, chunk_limit=0)
    assert counts_only.chunks == () and counts_only.reply_fields()["next_chunk"] == 2
    past_the_end = state.job_view(JOB_A, first_chunk=99, chunk_limit=10)
    assert past_the_end.first_chunk == 5 and past_the_end.chunks == ()
    assert [c.chunk for c in state.job_view(JOB_A, first_chunk=3, chunk_limit=99).chunks] == [3, 4]


def test_a_status_reply_stops_at_what_one_body_holds():
    from uds.master.views import job_status_reply
    chunk_count = 40
    state = started(chunk_count=chunk_count)
    # Each chunk reports about 300 KiB of output names: 40 of them are far
    # more than one body holds.
    outputs = {f"out/{index:05d}-" + "x" * 200: OUT for index in range(1400)}
    state.apply([event(chunk, 1, ChunkState.SUCCEEDED, exit_code=0, outputs=outputs)
                 for chunk in range(chunk_count)], 3.0)
    reply = job_status_reply(NODE_ID, 1, JOB_A, state.job_view(JOB_A))
    frames = wire.encode(reply)
    assert len(frames[1]) <= wire.limits.MAX_BODY_BYTES
    assert 0 < reply.next_chunk < chunk_count and reply.first_chunk == 0
    rest = job_status_reply(NODE_ID, 2, JOB_A, state.job_view(JOB_A, first_chunk=reply.next_chunk))
    assert rest.first_chunk == reply.next_chunk and rest.next_chunk == chunk_count
    decoded = wire.decode(wire.encode(rest))
    assert [report["chunk"] for report in decoded.chunks] == list(range(reply.next_chunk, chunk_count))


def test_items_that_fit_cuts_a_list_at_its_budget():
    assert wire.items_that_fit([b"x" * 10] * 10, budget_bytes=36) == 3   # 12 bytes each packed
    assert wire.items_that_fit([b"x" * 100], budget_bytes=10) == 1      # never zero
    assert wire.items_that_fit([], budget_bytes=10) == 0


def test_views_encode_as_their_wire_messages():
    state = started(chunk_count=2)
    state.apply([event(0, 1, ChunkState.SUCCEEDED, exit_code=0, outputs={"out/a": OUT}, stdout=LOG),
                 event(1, 1, ChunkState.STARTED), node_seen()], 3.0)
    view = state.job_view(JOB_A)
    messages = [
        wire.JobStatusReply.make(NODE_ID, request_id=1, **view.reply_fields()),
        wire.ChunkDispatch.make(NODE_ID, epoch=1, attempt_count=1, jobs=[state.job_spec(JOB_A)],
                                attempts=[ReadyAttempt(JOB_A, 0, 2, {"x": DATA})._asdict()]),
        wire.EventsReply.make(NODE_ID, request_id=2, last_seq=state.events_after(0, 10)[1],
                              events=[e._asdict() for e in state.events_after(0, 10)[0]]),
        wire.NodesReply.make(NODE_ID, request_id=3, nodes=[n.as_record(free_slots=2, running=2)
                                                           for n in state.nodes()]),
    ]
    for message in messages:
        decoded = wire.decode(wire.encode(message))
        assert type(decoded) is type(message)
    assert decoded.nodes[0]["state"] == "alive"


def test_chunk_event_from_a_decoded_record():
    record = dict(job=JOB_A, chunk=0, attempt=1, state=int(ChunkState.SUCCEEDED), worker=WORKER_1,
                  worker_started_at=100.0, exit_code=0, outputs={"o": list(OUT)}, stdout=list(LOG), stderr=None, error="",
                  elapsed_s=1.0, bytes_from_cache=0, bytes_from_storage=9, cpu_user_s=0.5, cpu_system_s=0.0,
                  peak_memory_bytes=7, output_bytes=0)
    assert ChunkEvent.from_body(record) == event(
        0, 1, int(ChunkState.SUCCEEDED), worker_started_at=100.0, exit_code=0, outputs={"o": OUT},
        stdout=LOG, elapsed_s=1.0, bytes_from_storage=9, cpu_user_s=0.5, peak_memory_bytes=7)


# Anything at all in any field: `apply` must answer, never raise.
anything = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2**33), st.floats(allow_nan=True), st.text(max_size=3),
    st.sampled_from([JOB_A, WORKER_1, b"short", PROGRAM, list(PROGRAM), {"x": DATA}, {"x": "y"},
                     (), ({},), ((JOB_A, 0, 1),), [[JOB_A, 0, 1]], [[]], {1: 2}]))


# Well-formed commands about the jobs and nodes at hand, of which the test
# spoils none, one or two fields with `anything`: most are accepted, so the
# exact change an accepted command makes is checked as often as a refusal.
JOBS_AT_HAND = st.sampled_from([JOB_A, JOB_B])
CHUNKS_AT_HAND = st.integers(0, 1)
ATTEMPTS_AT_HAND = st.sampled_from([1, 1, 2])
chunk_events_at_hand = st.builds(
    event, CHUNKS_AT_HAND, ATTEMPTS_AT_HAND, st.sampled_from(list(ChunkState)),
    job=JOBS_AT_HAND, worker=st.sampled_from([WORKER_1, WORKER_2]),
    worker_started_at=st.sampled_from([0.0, 100.0, 150.0, 200.0]),
    exit_code=st.sampled_from([None, 0, 3]), outputs=st.sampled_from([{}, {"o": OUT}]),
    stdout=st.sampled_from([None, LOG]), error=st.sampled_from(["", "why"]),
    elapsed_s=st.sampled_from([0, 1.5]), bytes_from_cache=st.integers(0, 9))
well_formed = st.one_of(
    chunk_events_at_hand,   # the richest command: drawn as often as all the others together
    st.one_of(
        st.builds(submit, job=st.sampled_from([JOB_A, JOB_B, bytes.fromhex("cc" * 16)]),
                  chunk_count=st.integers(1, 3), max_retries=st.integers(0, 2),
                  name=st.sampled_from(["demo", ""])),
        st.builds(DispatchAttempts, st.lists(st.tuples(JOBS_AT_HAND, CHUNKS_AT_HAND, ATTEMPTS_AT_HAND),
                                             max_size=3).map(tuple)),
        st.builds(CancelJob, JOBS_AT_HAND),
        st.builds(node_seen, host=st.sampled_from(["w1", "w2"]), slots=st.integers(0, 8)),
        st.builds(NodeLost, st.sampled_from([NODE_ID, WORKER_1])),
    ),
)


def commands_at_hand_state() -> ClusterState:
    """Both jobs at hand in flight, one chunk running, the node at hand and
    WORKER_2 (a process of started_at 150, running nothing) alive."""
    state = started(chunk_count=2, max_retries=1)
    state.apply([submit(job=JOB_B, chunk_count=2), DispatchAttempts(((JOB_B, 0, 1), (JOB_B, 1, 1))),
                 worker_seen(started_at=150.0, worker=WORKER_2), event(0, 1, ChunkState.STARTED, job=JOB_B), node_seen()], 3.0)
    return state


@st.composite
def spoiled(draw, commands=well_formed):
    command = draw(commands)
    names = [field.name for field in dataclasses.fields(command)]
    spoil_count = min(len(names), draw(st.sampled_from([0, 1, 1, 2])))
    for name in draw(st.lists(st.sampled_from(names), min_size=spoil_count, max_size=spoil_count,
                              unique=True)):
        command = dataclasses.replace(command, **{name: draw(anything)})
    return command


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(spoiled(), st.one_of(
    st.builds(SubmitJob, anything, anything, anything, anything, anything, anything, anything,
              anything, anything),
    st.builds(DispatchAttempts, anything),
    st.builds(ChunkEvent, anything, anything, anything, anything, anything, st.one_of(
        anything, st.builds(ChunkResult, anything, anything, anything, anything, anything, anything,
                            anything, anything))),
    st.builds(CancelJob, anything), st.builds(NodeLost, anything),
    st.builds(NodeSeen, anything, anything, anything, anything, anything, anything, anything),
)), max_size=6))
def test_malformed_commands_get_error_outcomes_and_change_nothing(commands):
    state = commands_at_hand_state()
    for command in commands:
        before = copy.deepcopy(state)
        [outcome] = state.apply([command], 5.0)
        if not outcome.ok:
            assert state == before and outcome.error and outcome.error_code
        else:
            # Accepted: it must have been well formed and done exactly its change.
            check_accepted(before, state, command, outcome, 5.0)


@pytest.mark.parametrize("command", [
    event(0, True, ChunkState.SUCCEEDED, exit_code=0),
    event(0, 1, True),
    event(0, 1, ChunkState.SUCCEEDED, exit_code=True),
    event(0, 1, ChunkState.SUCCEEDED, elapsed_s=float("nan")),
    DispatchAttempts(((JOB_A, 0, True),)),
    NodeSeen(NODE_ID, True, "h", "a", 1, 0, 0.0),
    SubmitJob(JOB_B, "x", PROGRAM, (), {}, (), True, 1.0, 0),
], ids=["bool attempt", "bool state", "bool exit code", "nan elapsed", "bool attempt to dispatch",
        "bool role", "bool chunk count"])
def test_values_of_the_wrong_type_are_not_taken_as_ok(command):
    """Each of these once looked like a valid value to a loose check (a bool
    is an int to isinstance); none may be accepted as what it resembles."""
    state = ClusterState()
    state.apply([submit(chunk_count=1)], 1.0)
    if not isinstance(command, DispatchAttempts):
        state.apply([DispatchAttempts(((JOB_A, 0, 1),))], 2.0)
    before = copy.deepcopy(state)
    [outcome] = state.apply([command], 5.0)
    if outcome.ok:
        check_accepted(before, state, command, outcome, 5.0)
    else:
        assert state == before


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([ChunkState.SUCCEEDED, ChunkState.FAILED, ChunkState.LOST, ChunkState.CANCELLED]),
       st.builds(ChunkResult, anything, anything, anything, anything, anything, anything, anything,
                 anything))
def test_a_final_event_with_any_result_is_kept_checked_or_refused_unchanged(reported, result):
    state = started(chunk_count=1)
    before = copy.deepcopy(state)
    [outcome] = state.apply([ChunkEvent(JOB_A, 0, 1, int(reported), WORKER_1, result)], 5.0)
    if not outcome.ok:
        assert state == before and outcome.status == "invalid" and outcome.error.startswith("result")
        return
    chunk = state.job_view(JOB_A).chunks[0]
    expected = {ChunkState.SUCCEEDED: ("succeeded", result.checked()),
                ChunkState.CANCELLED: ("cancelled", result.checked()),
                ChunkState.FAILED: ("failed", replace(result.checked(), error=result.failure_text(reported))),
                ChunkState.LOST: ("queued", NO_RESULT)}[reported]
    assert (chunk.phase, chunk.result) == expected


# -- The state machine ------------------------------------------------------

FINAL = {"succeeded", "failed", "cancelled"}
JOB_IDS = [bytes([index]) * 16 for index in range(1, 5)]
WORKERS = [WORKER_1, WORKER_2]
PROCESSES = [0.0, 100.0, 200.0]     # a worker process's started_at; 0: not from a worker


class ClusterStateMachine(RuleBasedStateMachine):
    """Submits, dispatches, feeds often stale or duplicated chunk events and
    cancels; checks the invariants after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.state = ClusterState()
        self.now = 0.0
        self.history: list[tuple[list, float]] = []       # every apply, for replay
        self.final_chunks: dict[tuple[bytes, int], object] = {}
        self.attempts: dict[tuple[bytes, int], int] = {}
        self.ever_dispatched: set[bytes] = set()
        self.cancelled: set[bytes] = set()
        self.sent_events: list[ChunkEvent] = []
        self.submitted: dict[bytes, SubmitJob] = {}
        self.kept_attempts: dict[tuple[bytes, int], list] = {}
        self.requeues: dict[tuple[bytes, int], int] = {}
        self.requeues_seen_seq = 0
        self.attempts_checked: dict[tuple[bytes, int], tuple] = {}

    def apply(self, commands: list) -> list:
        self.now += 1.0
        self.history.append((commands, self.now))
        return self.state.apply(commands, self.now)

    @rule(job=st.sampled_from(JOB_IDS), chunk_count=st.integers(1, 4),
          max_retries=st.integers(0, 2), other_spec=st.booleans())
    def submit(self, job, chunk_count, max_retries, other_spec):
        first = self.submitted.get(job)
        command = submit(job=job, chunk_count=chunk_count, max_retries=max_retries)
        if first is not None:
            command = submit(job=job, chunk_count=first.chunk_count + 1) if other_spec else first
        [outcome] = self.apply([command])
        if first is None:
            assert outcome == SubmitOutcome(created=True)
            self.submitted[job] = command
        else:
            assert outcome.created is False
            assert outcome.ok is not other_spec

    @precondition(lambda self: self.state.ready_attempts(1))
    @rule(limit=st.integers(1, 6), stale=st.booleans())
    def dispatch(self, limit, stale):
        ready = [attempt[:3] for attempt in self.state.ready_attempts(limit)]
        extra = [(job, chunk, attempt - 1) for job, chunk, attempt in ready] if stale else []
        [outcome] = self.apply([DispatchAttempts(tuple(ready + extra))])
        assert list(outcome.dispatched) == ready
        assert outcome.skipped == len(extra)
        self.ever_dispatched.update(job for job, _, _ in ready)

    @precondition(lambda self: self.submitted)
    @rule(data=st.data(), state=st.sampled_from(list(ChunkState)), worker=st.sampled_from(WORKERS),
          attempt_offset=st.sampled_from([0, 0, 0, -1, 1]))
    def chunk_event(self, data, state, worker, attempt_offset):
        """Any chunk, often of another attempt."""
        chunks = [(view, chunk) for view in self.views() for chunk in view.chunks]
        view, chunk = data.draw(st.sampled_from(chunks))
        self.feed(event(chunk.chunk, chunk.attempt + attempt_offset, int(state), job=view.job,
                        worker=worker, exit_code=1, stderr=LOG, elapsed_s=0.5))

    @precondition(lambda self: self.state.in_flight_count())
    @rule(data=st.data(), worker=st.sampled_from(WORKERS),
          state=st.sampled_from([ChunkState.STARTED, ChunkState.STARTED, ChunkState.SUCCEEDED,
                                 ChunkState.SUCCEEDED, ChunkState.FAILED, ChunkState.TIMED_OUT,
                                 ChunkState.LOST, ChunkState.REJECTED, ChunkState.CANCELLED]),
          process=st.sampled_from(PROCESSES))
    def work(self, data, worker, state, process):
        """What a worker would say about an attempt in flight, from any of its processes."""
        chunks = [(view, chunk) for view in self.views() for chunk in view.chunks
                  if chunk.phase in ("dispatched", "running")]
        view, chunk = data.draw(st.sampled_from(chunks))
        succeeded = state == ChunkState.SUCCEEDED
        self.feed(event(chunk.chunk, chunk.attempt, int(state), job=view.job, worker=worker,
                        exit_code=0 if succeeded else 1, stderr=LOG,
                        outputs={"out": OUT} if succeeded else {}, worker_started_at=process))

    def views(self):
        return [view for view in map(self.state.job_view, JOB_IDS) if view is not None]

    @precondition(lambda self: self.sent_events)
    @rule(data=st.data())
    def replay_event(self, data):
        self.feed(data.draw(st.sampled_from(self.sent_events)))

    def feed(self, sent: ChunkEvent) -> None:
        """Apply one event and check its outcome against the transition rules."""
        before = copy.deepcopy(self.state)
        chunk = self.state.job_view(sent.job).chunks[sent.chunk]
        known = {view.node: view.started_at for view in self.state.nodes()}.get(sent.worker)
        [outcome] = self.apply([sent])
        self.sent_events.append(sent)
        expected_status = expected_event_status(sent, chunk, known)
        assert outcome.status == expected_status, (outcome, chunk)
        if expected_status != "applied":
            assert self.state == before, outcome
            return
        after = self.state.job_view(sent.job).chunks[sent.chunk]
        assert (after.phase, after.attempt) == expected_event_phase(
            sent, chunk, self.submitted[sent.job].max_retries)

    @precondition(lambda self: self.state.delayed)
    @rule()
    def backoffs_pass(self):
        """Time passes until every backoff is due: delayed chunks are queued again."""
        self.now = max(self.now, self.state.next_timer_at())
        delayed = set(self.state.delayed)
        [outcome] = self.apply([RunTimers()])
        assert outcome.ok and outcome.fired >= len(delayed) and not self.state.delayed
        for job, index in delayed:
            assert self.state.job_view(job).chunks[index].phase == "queued"

    @rule(job=st.sampled_from(JOB_IDS), really=st.integers(0, 3))
    def cancel(self, job, really):
        if really:
            return  # cancel rarely, or every job ends cancelled
        view = self.state.job_view(job)
        [outcome] = self.apply([CancelJob(job)])
        if view is None:
            assert not outcome.ok
            return
        in_flight = {(c.chunk, c.attempt, c.worker) for c in view.chunks if c.phase in ("dispatched", "running")}
        assert set(outcome.cancelled_attempts) == in_flight
        if view.finished_at is None:
            self.cancelled.add(job)

    @rule(seen=st.booleans(), really=st.integers(0, 2))
    def node(self, seen, really):
        if not really:
            self.apply([node_seen() if seen else NodeLost(NODE_ID)])

    @rule(worker=st.sampled_from(WORKERS), process=st.sampled_from(PROCESSES[1:]), really=st.integers(0, 2))
    def worker_seen(self, worker, process, really):
        """A worker registers as one of its processes: a new one loses what the old one ran."""
        if not really:
            self.apply([worker_seen(started_at=process, worker=worker)])

    @invariant()
    def chunks_agree_with_jobs_and_queues(self):
        state = self.state
        counts = {"queued": 0, "dispatched": 0, "running": 0, "delayed": 0}
        queued = set()
        for job in JOB_IDS:
            view = state.job_view(job)
            if view is None:
                continue
            for chunk in view.chunks:
                key = (job, chunk.chunk)
                assert chunk.phase in counts or chunk.phase in FINAL
                assert chunk.attempt >= self.attempts.get(key, 1)
                self.attempts[key] = chunk.attempt
                if key in self.final_chunks:
                    assert chunk == self.final_chunks[key]
                elif chunk.phase in FINAL:
                    self.final_chunks[key] = chunk
                else:
                    counts[chunk.phase] += 1
                if chunk.phase == "queued":
                    queued.add((job, chunk.chunk, chunk.attempt))
            phases_of_job = [chunk.phase for chunk in view.chunks]
            assert view.chunks_succeeded == phases_of_job.count("succeeded")
            assert view.chunks_failed == phases_of_job.count("failed")
            assert view.state == self.expected_job_state(job, phases_of_job)
            assert (view.finished_at is not None) == (
                view.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED))
        assert state.in_flight_count() == counts["dispatched"] + counts["running"]
        assert len(state.dispatched_attempts()) == counts["dispatched"]
        assert len(state.running_attempts()) == counts["running"]
        assert len(state.delayed) == counts["delayed"]
        assert (state.next_timer_at() is not None) >= bool(counts["delayed"])
        ready = [attempt[:3] for attempt in state.ready_attempts(1000)]
        assert len(ready) == len(queued) and set(ready) == queued

    def expected_job_state(self, job, phases_of_job):
        if job in self.cancelled:
            return JobState.CANCELLED
        if all(phase in FINAL for phase in phases_of_job):
            return JobState.FAILED if "failed" in phases_of_job else JobState.SUCCEEDED
        return JobState.RUNNING if job in self.ever_dispatched else JobState.QUEUED

    @invariant()
    def each_success_is_committed_once(self):
        events, last_seq = self.state.events_after(0, EVENT_LOG_LIMIT)
        assert [e.seq for e in events] == list(range(1, last_seq + 1))
        successes = [(e.job, e.chunk) for e in events if e.kind == "chunk_succeeded"]
        assert len(successes) == len(set(successes))
        assert len(successes) == sum(view.chunks_succeeded for view in (
            self.state.job_view(job) for job in JOB_IDS) if view is not None)

    @invariant()
    def every_ended_attempt_is_kept_once_in_order(self):
        """Each attempt that ended without ending its chunk is in the chunk's
        past once, numbered in order, with the requeue that ended it logged;
        the current attempt comes last; what was kept never changes."""
        # The requeues logged since the last look (the log is read once over the run).
        events, self.requeues_seen_seq = self.state.events_after(self.requeues_seen_seq, EVENT_LOG_LIMIT)
        requeues = self.requeues
        for e in events:
            if e.kind in ("chunk_retried", "chunk_lost"):
                requeues[(e.job, e.chunk)] = requeues.get((e.job, e.chunk), 0) + 1
        for job, record in self.state.job_records.items():
            for index, chunk in enumerate(record.chunks):
                # Checked again only when the chunk changed since the last step.
                signature = (chunk.phase, chunk.attempt, chunk.past, chunk.dispatched_at, chunk.running_at,
                             chunk.committed_at, chunk.ended, requeues.get((job, index), 0))
                if self.attempts_checked.get((job, index)) == signature:
                    continue
                self.attempts_checked[(job, index)] = signature
                views, dropped = chunk_attempts(chunk)
                assert dropped == 0
                assert [view.attempt for view in views] == list(range(1, chunk.attempt + 1))
                assert len(views) - 1 == requeues.get((job, index), 0)
                assert all(view.committed_at is not None for view in views[:-1])
                assert (views[-1].committed_at is not None) == (chunk.phase in FINAL_PHASES)
                kept = self.kept_attempts.setdefault((job, index), [])
                assert views[:len(kept)] == kept
                self.kept_attempts[(job, index)] = views[:-1]

    def teardown(self):
        replicas = [ClusterState(), ClusterState()]
        for replica in replicas:
            for commands, now in self.history:
                replica.apply(commands, now)
        assert replicas[0] == replicas[1] == self.state
        assert pickle.loads(pickle.dumps(self.state)) == self.state


ClusterStateMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_cluster_state_machine = ClusterStateMachine.TestCase


# -- limits and what workers offer ---------------------------------------------

GIB = 1 << 30


def worker_offering(node: bytes, memory_bytes: int, millicpus: int = 0, started_at: float = 100.0) -> NodeSeen:
    return NodeSeen(node=node, role=int(NodeRole.WORKER), host="w", address="", slots=2, cache_bytes=0,
                    started_at=started_at, millicpus=millicpus, memory_bytes=memory_bytes, disk_bytes=0,
                    sandbox="bubblewrap")


def test_the_job_record_holds_its_limits_and_network_and_sends_them_with_its_spec():
    state = ClusterState()
    limits = ResourceLimits(memory_bytes=512 << 20, millicpus=1500, pids=64)
    assert one(state, replace(submit(), limits=limits, network=True)) == SubmitOutcome(created=True)
    view = state.job_view(JOB_A)
    assert (view.limits, view.network) == (limits, True)
    spec = state.job_spec(JOB_A)
    assert (spec["limits"], spec["network"]) == (limits.as_body(), True)
    assert view.reply_fields()["limits"] == {"memory_bytes": 512 << 20, "millicpus": 1500, "pids": 64}
    # The same job with other limits is another spec.
    assert one(state, replace(submit(), limits=limits)).error == "job id reused with a different spec"
    restored = pickle.loads(pickle.dumps(state))
    assert restored.job_view(JOB_A).limits == limits


def test_a_job_no_alive_worker_could_hold_is_refused_with_the_reason():
    state = ClusterState()
    state.apply([worker_offering(WORKER_1, 4 * GIB, 2000), worker_offering(WORKER_2, 16 * GIB + GIB // 2, 1000)],
                1.0)
    before = copy.deepcopy(state)
    outcome = one(state, replace(submit(), limits=ResourceLimits(memory_bytes=64 * GIB)))
    assert (outcome.ok, outcome.error_code) == (False, ErrorCode.INVALID)
    assert outcome.error == "no worker can run this job: no worker has 64 GiB of memory: the largest has 16.5 GiB"
    assert state == before
    outcome = one(state, replace(submit(), limits=ResourceLimits(memory_bytes=8 * GIB, millicpus=2000)))
    assert outcome.error == ("no worker can run this job: no worker has 8 GiB of memory and 2 cpus together")
    # What one worker holds is taken, and so is anything once no worker is alive.
    assert one(state, replace(submit(), limits=ResourceLimits(memory_bytes=8 * GIB, millicpus=1000))).ok
    state.apply([NodeLost(WORKER_1), NodeLost(WORKER_2)], 2.0)
    assert one(state, replace(submit(job=JOB_B), limits=ResourceLimits(memory_bytes=64 * GIB))).ok


def test_a_job_whose_only_fitting_worker_left_says_why_it_waits():
    state = ClusterState()
    assert state.apply([submit()], 1.0)[0].ok
    assert state.job_view(JOB_A).waiting == "no worker is alive"
    state.apply([worker_offering(WORKER_1, 2 * GIB), worker_offering(WORKER_2, 8 * GIB),
                 replace(submit(job=JOB_B), limits=ResourceLimits(memory_bytes=4 * GIB))], 2.0)
    assert (state.job_view(JOB_A).waiting, state.job_view(JOB_B).waiting) == ("", "")
    state.apply([NodeLost(WORKER_2)], 3.0)
    assert state.job_view(JOB_A).waiting == ""
    assert state.job_view(JOB_B).waiting == "no worker has 4 GiB of memory: the largest has 2 GiB"
    assert state.job_view(JOB_B).reply_fields()["waiting"] == state.job_view(JOB_B).waiting
    # Back, with the same offer: it runs again. A finished job waits for nothing.
    state.apply([worker_offering(WORKER_2, 8 * GIB, started_at=200.0)], 4.0)
    assert state.job_view(JOB_B).waiting == ""
    state.apply([CancelJob(JOB_B), NodeLost(WORKER_2)], 5.0)
    assert state.job_view(JOB_B).waiting == ""


def test_workers_offers_are_kept_in_their_node_records():
    state = ClusterState()
    state.apply([worker_offering(WORKER_1, 4 * GIB, 2500)], 1.0)
    [view] = state.nodes()
    assert (view.millicpus, view.memory_bytes, view.disk_bytes, view.sandbox) == (2500, 4 * GIB, 0, "bubblewrap")
    record = view.as_record()
    assert (record["millicpus"], record["memory_bytes"], record["sandbox"]) == (2500, 4 * GIB, "bubblewrap")
    assert one(state, replace(worker_offering(WORKER_1, -1), started_at=300.0)).ok is False


def test_a_waiting_job_is_not_offered_for_dispatch_and_holds_no_credit():
    state = ClusterState()
    big = ResourceLimits(memory_bytes=4 * GIB)
    state.apply([worker_offering(WORKER_1, 2 * GIB), worker_offering(WORKER_2, 8 * GIB),
                 replace(submit(job=JOB_A, chunk_count=3), limits=big), submit(job=JOB_B, chunk_count=2),
                 DispatchAttempts(((JOB_A, 0, 1),))], 1.0)
    assert state.in_flight_count() == 1
    state.apply([NodeLost(WORKER_2)], 2.0)
    # JOB_A fits no alive worker now: its dispatched chunk holds no credit and
    # its queued ones are passed over for JOB_B's.
    assert state.in_flight_count() == 0
    assert [(a.job, a.chunk) for a in state.ready_attempts(3)] == [(JOB_B, 0), (JOB_B, 1)]
    state.apply([worker_offering(WORKER_2, 8 * GIB, started_at=300.0)], 3.0)
    assert state.in_flight_count() == 1
    assert [(a.job, a.chunk) for a in state.ready_attempts(3)] == [(JOB_A, 1), (JOB_A, 2), (JOB_B, 0)]
