"""Workflows in the masters' state (master/workflow.py, master/result_cache.py
and the failure classes of master/state.py): one test per rule of
doc/states.md, then a hypothesis state machine over all of them."""
import copy
import pickle
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from uds.master.attempts import chunk_attempts
from uds.master.collection import reference_snapshot
from uds.master.commands import (
    ALL_CHUNKS, FINAL_PHASES, JOB_WIDE, SAME_CHUNK, CancelJob, ChunkPhase, NodeLost, NodeSeen, CancelOutcome, DispatchAttempts, ForgetJobs, InputRef,
    PruneCache, PruneCacheOutcome, ReleaseJob, ReleaseOutcome, RunTimers, SubmitJob, SubmitOutcome,
    TimersOutcome,
)
from uds.master.records import ChunkRecord, JobRecord
from uds.master.result_cache import cache_key
from uds.master.state import ClusterState
from uds.master.workflow import BACKOFF, DEADLINE, START, chunk_cache_key, dependencies
from uds.wire.enums import ChunkState, ErrorCode, JobState, NodeRole
from uds.wire.records import ChunkEvent, ChunkResult
from uds.wire.resources import ResourceLimits

JOB_A = bytes.fromhex("aa" * 16)
JOB_B = bytes.fromhex("bb" * 16)
JOB_C = bytes.fromhex("cc" * 16)
JOB_D = bytes.fromhex("dd" * 16)
UNKNOWN = bytes.fromhex("ee" * 16)
WORKER = bytes.fromhex("01" * 16)
PROGRAM = (bytes.fromhex("f0" * 16), 1234)
DATA = (bytes.fromhex("da" * 16), 10)
LOG = (bytes.fromhex("1e" * 16), 7)


def out(index: int, tag: int = 0):
    """A distinct output file per (chunk, tag)."""
    return (bytes([0x40 + tag, index]) * 8, 5 + index)


def submit(job=JOB_A, chunk_count=2, **workflow) -> SubmitJob:
    fields = dict(job=job, name="", program=PROGRAM, args=("-v",), inputs={"data": DATA}, chunk_inputs=(),
                  chunk_count=chunk_count, timeout_s=60.0, max_retries=0)
    fields.update(workflow)
    return SubmitJob(**fields)


def ref(name, job, output="part.txt", from_chunk=SAME_CHUNK, chunk=JOB_WIDE) -> InputRef:
    return InputRef(name, chunk, job, output, from_chunk)


def report(job, chunk, attempt, state, **result) -> ChunkEvent:
    return ChunkEvent(job=job, chunk=chunk, attempt=attempt, state=int(state), worker=WORKER,
                      result=ChunkResult(**result))


def one(state, command, now=10.0):
    [outcome] = state.apply([command], now)
    return outcome


def phases(state, job):
    return [chunk.phase.label for chunk in state.job_records[job].chunks]


def run(state, job, chunk, now=10.0, **result):
    """Dispatch the chunk's current attempt and report it succeeded."""
    attempt = state.job_records[job].chunks[chunk].attempt
    state.apply([DispatchAttempts(((job, chunk, attempt),))], now)
    result.setdefault("exit_code", 0)
    return one(state, report(job, chunk, attempt, ChunkState.SUCCEEDED, **result), now)


def end_attempt(state, job, chunk, chunk_state, now=10.0, **result):
    attempt = state.job_records[job].chunks[chunk].attempt
    state.apply([DispatchAttempts(((job, chunk, attempt),))], now)
    return one(state, report(job, chunk, attempt, chunk_state, **result), now)


def succeed_all(state, job, now=10.0, output="part.txt", tag=0):
    for index in range(state.job_records[job].spec.chunk_count):
        run(state, job, index, now, outputs={output: out(index, tag)}, stdout=LOG)


def dispatched_all(state, job, now=10.0):
    record = state.job_records[job]
    state.apply([DispatchAttempts(tuple((job, index, record.chunks[index].attempt)
                                        for index in range(record.spec.chunk_count)))], now)


def tables(state):
    return (set(state.queued), set(state.dispatched), set(state.running), set(state.delayed))


# -- dependencies ----------------------------------------------------------------

def test_a_job_waits_for_its_dependency_and_queues_inside_the_commit_that_ends_it():
    state = ClusterState()
    state.apply([submit(JOB_A, 2), submit(JOB_B, 3, after=(JOB_A,))], 1.0)
    view = state.job_view(JOB_B)
    assert (view.state, view.after, view.waiting) == (JobState.WAITING, (JOB_A,), f"waiting for job {JOB_A.hex()}")
    assert phases(state, JOB_B) == ["waiting"] * 3
    assert all(job == JOB_A for job, _ in state.queued)
    run(state, JOB_A, 0)
    assert phases(state, JOB_B) == ["waiting"] * 3
    last_seq = state.last_seq
    run(state, JOB_A, 1, now=12.0)
    assert state.job_view(JOB_A).state == JobState.SUCCEEDED
    assert (state.job_view(JOB_B).state, state.job_view(JOB_B).waiting) == (JobState.QUEUED, "no worker is alive")
    assert phases(state, JOB_B) == ["queued"] * 3
    assert [(a.job, a.chunk) for a in state.ready_attempts(10)] == [(JOB_B, i) for i in range(3)]
    kinds = [(e.kind, e.job) for e in state.events_after(last_seq, 100)[0]]
    assert ("job_ready", JOB_B) in kinds and kinds.index(("job_succeeded", JOB_A)) < kinds.index(("job_ready", JOB_B))
    assert JOB_A not in state.dependents


@pytest.mark.parametrize("how, state_after, reason", [
    ("fail", JobState.FAILED, "dependency {} failed"),
    ("cancel", JobState.CANCELLED, "dependency {} was cancelled"),
])
def test_a_failed_or_cancelled_dependency_ends_its_dependents_naming_it(how, state_after, reason):
    state = ClusterState()
    state.apply([submit(JOB_A, 1), submit(JOB_B, 2, after=(JOB_A,)), submit(JOB_C, 1, after=(JOB_B,))], 1.0)
    if how == "fail":
        end_attempt(state, JOB_A, 0, ChunkState.FAILED, exit_code=1)
    else:
        assert one(state, CancelJob(JOB_A)).changed
    b, c = state.job_view(JOB_B), state.job_view(JOB_C)
    assert (b.state, c.state) == (state_after, state_after)
    assert phases(state, JOB_B) == ["cancelled"] * 2 and phases(state, JOB_C) == ["cancelled"]
    assert b.finished_at == c.finished_at == 10.0
    if how == "fail":
        # Each names the job it waited for itself.
        assert (b.error, c.error) == (reason.format(JOB_A.hex()), reason.format(JOB_B.hex()))
    events = state.events_after(0, 100)[0]
    ends = [(e.kind, e.job) for e in events if e.kind.startswith("job_") and e.kind != "job_submitted"]
    kind = "job_failed" if how == "fail" else "job_cancelled"
    assert ends == [(kind, JOB_A), (kind, JOB_B), (kind, JOB_C)]
    assert tables(state) == (set(), set(), set(), set()) and not state.dependents and not state.finished_jobs


@pytest.mark.parametrize("how, state_after", [("fail", JobState.FAILED), ("cancel", JobState.CANCELLED)])
def test_a_job_submitted_after_its_dependency_ended_badly_ends_at_once(how, state_after):
    state = ClusterState()
    state.apply([submit(JOB_A, 1)], 1.0)
    if how == "fail":
        end_attempt(state, JOB_A, 0, ChunkState.FAILED, exit_code=1)
    else:
        one(state, CancelJob(JOB_A))
    assert one(state, submit(JOB_B, 2, after=(JOB_A,), deadline=500.0), now=20.0) == SubmitOutcome(created=True)
    view = state.job_view(JOB_B)
    assert (view.state, view.finished_at, phases(state, JOB_B)) == (state_after, 20.0, ["cancelled"] * 2)
    # And what depends on it follows.
    one(state, submit(JOB_C, 1, after=(JOB_B,)), now=21.0)
    assert state.job_view(JOB_C).state == state_after
    assert JOB_B not in state.dependents


def test_a_chain_of_two_thousand_jobs_cascades_without_recursion():
    state = ClusterState()
    jobs = [index.to_bytes(16, "big") for index in range(1, 2001)]
    state.apply([submit(jobs[0], 1)] + [submit(job, 1, after=(previous,)) for previous, job in zip(jobs, jobs[1:])],
                1.0)
    assert [state.job_view(job).state for job in jobs[1:]] == [JobState.WAITING] * 1999
    end_attempt(state, jobs[0], 0, ChunkState.FAILED, exit_code=1)
    assert all(state.job_view(job).state == JobState.FAILED for job in jobs)
    assert state.job_view(jobs[-1]).error == f"dependency {jobs[-2].hex()} failed"
    assert not state.dependents and not state.finished_jobs
    pickle.loads(pickle.dumps(state))


def test_a_chain_of_two_thousand_cached_jobs_succeeds_in_one_commit():
    # Every job of the chain hits the cache as soon as the one before it
    # succeeds: the whole cascade of successes runs inside one apply.
    state = ClusterState()
    jobs = [index.to_bytes(16, "big") for index in range(1, 2001)]
    first = submit(jobs[0], 1, cache=True)
    state.apply([first], 1.0)
    run(state, jobs[0], 0, outputs={"o": out(0)})
    state.apply([submit(UNKNOWN, 1)], 2.0)
    commands = [submit(jobs[1], 1, cache=True, after=(UNKNOWN,))]
    commands += [submit(job, 1, cache=True, after=(previous,)) for previous, job in zip(jobs[1:], jobs[2:])]
    state.apply(commands, 3.0)
    assert state.job_view(jobs[-1]).state == JobState.WAITING
    run(state, UNKNOWN, 0, now=4.0)
    assert all(state.job_view(job).state == JobState.SUCCEEDED for job in jobs)
    assert state.job_view(jobs[-1]).chunks_cached == 1


def test_dependents_waiting_on_two_jobs_start_only_when_both_succeed():
    state = ClusterState()
    state.apply([submit(JOB_A, 1), submit(JOB_B, 1), submit(JOB_C, 1, after=(JOB_A, JOB_B, JOB_A))], 1.0)
    assert state.job_view(JOB_C).after == (JOB_A, JOB_B)
    run(state, JOB_B, 0)
    assert state.job_records[JOB_C].waiting_for == (JOB_A,)
    assert state.job_view(JOB_C).state == JobState.WAITING
    run(state, JOB_A, 0)
    assert state.job_view(JOB_C).state == JobState.QUEUED


# -- refs ----------------------------------------------------------------------------

def producer_done(chunk_count=3) -> ClusterState:
    state = ClusterState()
    state.apply([submit(JOB_A, chunk_count)], 1.0)
    succeed_all(state, JOB_A)
    return state


@pytest.mark.parametrize("resolved_at", ["submit", "later"])
def test_refs_resolve_job_wide_into_the_inputs_each_chunk_sees(resolved_at):
    state = ClusterState()
    state.apply([submit(JOB_A, 3)], 1.0)
    if resolved_at == "submit":
        succeed_all(state, JOB_A)
    refs = (ref("part", JOB_A), ref("all", JOB_A, from_chunk=ALL_CHUNKS), ref("one", JOB_A, from_chunk=1))
    assert one(state, submit(JOB_B, 3, refs=refs), now=20.0) == SubmitOutcome(created=True)
    if resolved_at == "later":
        assert phases(state, JOB_B) == ["waiting"] * 3
        assert state.job_spec(JOB_B)["inputs"] == {"data": DATA}
        assert state.chunk_inputs(JOB_B, 0) == {}
        succeed_all(state, JOB_A)
    assert phases(state, JOB_B) == ["queued"] * 3
    assert state.job_spec(JOB_B)["inputs"] == {"data": DATA, "all.0": out(0), "all.1": out(1), "all.2": out(2),
                                               "one": out(1)}
    assert [state.chunk_inputs(JOB_B, index) for index in range(3)] == [{"part": out(index)} for index in range(3)]
    assert [a.inputs for a in state.ready_attempts(3)] == [{"part": out(index)} for index in range(3)]
    # The spec itself keeps the refs: a resubmission is the same job.
    assert one(state, submit(JOB_B, 3, refs=refs)) == SubmitOutcome(created=False)


def test_refs_in_one_chunks_scope_reach_that_chunk_only():
    state = producer_done(3)
    refs = (ref("p", JOB_A, from_chunk=2, chunk=1), ref("all", JOB_A, from_chunk=ALL_CHUNKS, chunk=0),
            ref("same", JOB_A, from_chunk=SAME_CHUNK, chunk=2))
    own = ({"mine": DATA}, {}, {})
    assert one(state, submit(JOB_B, 3, refs=refs, chunk_inputs=own)).ok
    assert state.job_spec(JOB_B)["inputs"] == {"data": DATA}
    assert [state.chunk_inputs(JOB_B, index) for index in range(3)] == [
        {"mine": DATA, "all.0": out(0), "all.1": out(1), "all.2": out(2)}, {"p": out(2)}, {"same": out(2)}]


def refused(state, command, error, code=ErrorCode.INVALID):
    before = copy.deepcopy(state)
    assert one(state, command) == SubmitOutcome(ok=False, error=error, error_code=code)
    assert state == before


def test_every_submit_refusal_names_its_reason_and_changes_nothing():
    state = producer_done(3)
    state.apply([submit(JOB_C, 1)], 11.0)
    end_attempt(state, JOB_C, 0, ChunkState.SUCCEEDED, exit_code=0)
    one(state, ForgetJobs((JOB_C,), 10), now=12.0)
    a, c, u = JOB_A.hex(), JOB_C.hex(), UNKNOWN.hex()
    refused(state, submit(JOB_B, 1, after=(UNKNOWN,)), f"unknown job {u}", ErrorCode.UNKNOWN_JOB)
    refused(state, submit(JOB_B, 1, refs=(ref("x", UNKNOWN, from_chunk=0),)), f"unknown job {u}",
            ErrorCode.UNKNOWN_JOB)
    refused(state, submit(JOB_B, 1, after=(JOB_C,)),
            f"job {c} is past retention: its outputs are no longer known")
    refused(state, submit(JOB_B, 1, after=(JOB_B,)), "a job cannot depend on itself")
    refused(state, submit(JOB_B, 1, refs=(ref("x", JOB_B, from_chunk=0),)), "a job cannot depend on itself")
    refused(state, submit(JOB_B, 2, refs=(ref("x", JOB_A),)),
            f"input 'x' takes each chunk's output of job {a}, which has 3 chunks, not 2")
    refused(state, submit(JOB_B, 1, refs=(ref("x", JOB_A, from_chunk=3),)), f"job {a} has 3 chunks, no chunk 3")
    refused(state, submit(JOB_B, 1, refs=(ref("x", JOB_A, output="nope", from_chunk=2),)),
            f"job {a} chunk 2 has no output 'nope'")
    refused(state, submit(JOB_B, 3, refs=(ref("x", JOB_A, output="nope"),)), f"job {a} chunk 0 has no output 'nope'")
    refused(state, submit(JOB_B, 1, refs=(ref("data", JOB_A, from_chunk=0),)), "input 'data' is named twice")
    refused(state, submit(JOB_B, 1, inputs={"x.1": DATA}, refs=(ref("x", JOB_A, from_chunk=ALL_CHUNKS),)),
            "input 'x.1' is named twice")
    refused(state, submit(JOB_B, 1, refs=(ref("x", JOB_A, from_chunk=0), ref("x", JOB_A, from_chunk=1))),
            "input 'x' is named twice")
    refused(state, submit(JOB_B, 3, refs=(ref("x", JOB_A), ref("x", JOB_A, from_chunk=1, chunk=1))),
            "input 'x' is named twice")
    refused(state, submit(JOB_B, 3, chunk_inputs=({}, {"x": DATA}, {}), refs=(ref("x", JOB_A, from_chunk=1),)),
            "input 'x' is named twice")
    refused(state, submit(JOB_B, 3, inputs={}, refs=(ref("x", JOB_A), ref("x", JOB_A, from_chunk=2, chunk=2))),
            "input 'x' is named twice")
    # Malformed refs never reach the state's checks.
    refused(state, submit(JOB_B, 1, refs=(ref("a/b", JOB_A, from_chunk=0),)),
            "refs must be (name, chunk, job, output, from_chunk) references")
    refused(state, submit(JOB_B, 1, refs=(ref("x", JOB_A, from_chunk=0, chunk=1),)),
            "refs must be (name, chunk, job, output, from_chunk) references")


def test_a_producer_that_ends_without_the_output_fails_the_dependent_naming_it():
    state = ClusterState()
    state.apply([submit(JOB_A, 2), submit(JOB_B, 2, refs=(ref("p", JOB_A),))], 1.0)
    run(state, JOB_A, 0, outputs={"part.txt": out(0)})
    run(state, JOB_A, 1, outputs={"other": out(1)})
    view = state.job_view(JOB_B)
    assert (view.state, view.error) == (JobState.FAILED, f"job {JOB_A.hex()} chunk 1 has no output 'part.txt'")
    assert phases(state, JOB_B) == ["cancelled"] * 2


def test_a_producer_with_the_output_in_the_referenced_chunk_only_is_accepted():
    # chunk_inputs[1] = a.output_ref("part.txt"): only producer chunk 1 matters.
    state = ClusterState()
    state.apply([submit(JOB_A, 2)], 1.0)
    run(state, JOB_A, 0, outputs={})
    run(state, JOB_A, 1, outputs={"part.txt": out(1)})
    assert one(state, submit(JOB_B, 2, refs=(ref("p", JOB_A, chunk=1),))).ok
    assert state.chunk_inputs(JOB_B, 1) == {"p": out(1)}


def test_a_producer_forgotten_while_its_dependent_waits_for_another_job_was_read_already():
    # Retention may forget a succeeded producer while its dependent still
    # waits for another job: its refs were resolved when it succeeded, and
    # gc sees them through the dependent.
    state = ClusterState()
    state.apply([submit(JOB_A, 1), submit(JOB_C, 1)], 1.0)
    run(state, JOB_A, 0, outputs={"part.txt": out(0)})
    one(state, submit(JOB_B, 1, after=(JOB_C,), refs=(ref("p", JOB_A, from_chunk=0),)), now=11.0)
    assert one(state, ForgetJobs((JOB_A,), 10, 1.0), now=12.0).forgotten == 1
    assert reference_snapshot(state, {out(0)[0]}, now=100.0, grace_s=1.0).collectable() == set()
    run(state, JOB_C, 0, now=13.0)
    assert state.job_view(JOB_B).state == JobState.QUEUED
    assert state.job_spec(JOB_B)["inputs"] == {"data": DATA, "p": out(0)}


# -- hold and release --------------------------------------------------------------

def test_a_held_job_waits_for_its_release():
    state = ClusterState()
    state.apply([submit(JOB_A, 2, hold=True)], 1.0)
    view = state.job_view(JOB_A)
    assert (view.state, view.waiting, phases(state, JOB_A)) == (
        JobState.HELD, "held: waiting for a release", ["waiting", "waiting"])
    assert not state.queued
    assert one(state, ReleaseJob(JOB_A)) == ReleaseOutcome(changed=True)
    assert (state.job_view(JOB_A).state, phases(state, JOB_A)) == (JobState.QUEUED, ["queued", "queued"])
    assert one(state, ReleaseJob(JOB_A)) == ReleaseOutcome(changed=False)
    assert one(state, ReleaseJob(UNKNOWN)) == ReleaseOutcome(ok=False, error=f"unknown job {UNKNOWN.hex()}",
                                                             error_code=ErrorCode.UNKNOWN_JOB)
    assert [e.kind for e in state.events_after(0, 10)[0]] == ["job_submitted", "job_released", "job_ready"]


def test_release_of_a_job_never_held_changes_nothing():
    state = ClusterState()
    state.apply([submit(JOB_A, 1)], 1.0)
    before = copy.deepcopy(state)
    assert one(state, ReleaseJob(JOB_A)) == ReleaseOutcome(changed=False)
    assert state == before


def test_a_held_job_with_dependencies_waits_for_both():
    state = ClusterState()
    state.apply([submit(JOB_A, 1), submit(JOB_B, 1, hold=True, after=(JOB_A,))], 1.0)
    run(state, JOB_A, 0)
    assert state.job_view(JOB_B).state == JobState.HELD
    one(state, ReleaseJob(JOB_B))
    assert state.job_view(JOB_B).state == JobState.QUEUED
    # Released first, it waits for its dependency.
    state.apply([submit(JOB_C, 1), submit(JOB_D, 1, hold=True, after=(JOB_C,))], 20.0)
    one(state, ReleaseJob(JOB_D), now=21.0)
    assert state.job_view(JOB_D).state == JobState.WAITING
    run(state, JOB_C, 0, now=22.0)
    assert state.job_view(JOB_D).state == JobState.QUEUED


def test_a_held_job_can_be_cancelled():
    state = ClusterState()
    state.apply([submit(JOB_A, 2, hold=True), submit(JOB_B, 1, after=(JOB_A,))], 1.0)
    assert one(state, CancelJob(JOB_A)) == CancelOutcome(changed=True)
    assert (state.job_view(JOB_A).state, state.job_view(JOB_B).state) == (JobState.CANCELLED, JobState.CANCELLED)
    assert one(state, ReleaseJob(JOB_A)) == ReleaseOutcome(changed=False)
    assert phases(state, JOB_A) == ["cancelled", "cancelled"]


# -- timers: start times, deadlines ----------------------------------------------------

def test_a_job_starts_at_its_time_through_run_timers():
    state = ClusterState()
    state.apply([submit(JOB_A, 2, start_at=100.0), submit(JOB_B, 1, start_at=5.0)], 10.0)
    assert state.job_view(JOB_B).state == JobState.QUEUED          # its time has passed
    view = state.job_view(JOB_A)
    assert (view.state, view.waiting, view.start_at) == (JobState.WAITING, "starts at 1970-01-01T00:01:40+00:00",
                                                         100.0)
    assert state.next_timer_at() == 100.0
    assert one(state, RunTimers(), now=99.5) == TimersOutcome(fired=0)
    assert state.job_view(JOB_A).state == JobState.WAITING
    assert one(state, RunTimers(), now=100.0) == TimersOutcome(fired=1)
    assert (state.job_view(JOB_A).state, phases(state, JOB_A)) == (JobState.QUEUED, ["queued", "queued"])
    assert state.next_timer_at() is None


def test_a_start_time_combines_with_a_hold_and_a_dependency():
    state = ClusterState()
    state.apply([submit(JOB_A, 1), submit(JOB_B, 1, start_at=50.0, hold=True, after=(JOB_A,))], 10.0)
    one(state, RunTimers(), now=60.0)
    assert state.job_view(JOB_B).state == JobState.HELD
    one(state, ReleaseJob(JOB_B), now=61.0)
    assert state.job_view(JOB_B).state == JobState.WAITING
    run(state, JOB_A, 0, now=62.0)
    assert state.job_view(JOB_B).state == JobState.QUEUED


def test_a_deadline_cancels_unfinished_chunks_and_lists_those_in_flight():
    state = ClusterState()
    state.apply([submit(JOB_A, 4, deadline=100.0), submit(JOB_B, 1, after=(JOB_A,))], 1.0)
    assert state.next_timer_at() == 100.0
    run(state, JOB_A, 0)
    state.apply([DispatchAttempts(((JOB_A, 1, 1), (JOB_A, 2, 1))),
                 report(JOB_A, 1, 1, ChunkState.STARTED)], 20.0)
    outcome = one(state, RunTimers(), now=100.0)
    assert outcome == TimersOutcome(cancelled=((JOB_A, ((1, 1, WORKER), (2, 1, None))),), fired=1)
    view = state.job_view(JOB_A)
    assert (view.state, view.error, view.finished_at) == (JobState.FAILED, "deadline exceeded", 100.0)
    assert phases(state, JOB_A) == ["succeeded", "cancelled", "cancelled", "cancelled"]
    assert state.job_view(JOB_B).error == f"dependency {JOB_A.hex()} failed"
    assert tables(state) == (set(), set(), set(), set())
    # A late report of a cancelled attempt changes nothing.
    assert one(state, report(JOB_A, 1, 1, ChunkState.SUCCEEDED, exit_code=0), now=101.0).status == "final"


@pytest.mark.parametrize("waits_for", ["dependency", "hold", "start"])
def test_a_waiting_or_held_job_fails_at_its_deadline(waits_for):
    state = ClusterState()
    state.apply([submit(JOB_A, 1)], 1.0)
    extra = dict(dependency=dict(after=(JOB_A,)), hold=dict(hold=True), start=dict(start_at=500.0))[waits_for]
    state.apply([submit(JOB_B, 2, deadline=50.0, **extra)], 2.0)
    assert one(state, RunTimers(), now=50.0) == TimersOutcome(fired=1)
    view = state.job_view(JOB_B)
    assert (view.state, view.error, phases(state, JOB_B)) == (JobState.FAILED, "deadline exceeded",
                                                              ["cancelled"] * 2)
    # The start timer, or the dependency's success, finds it finished.
    run(state, JOB_A, 0, now=60.0)
    assert one(state, RunTimers(), now=600.0).fired == 0
    assert state.job_view(JOB_B).state == JobState.FAILED


def test_a_deadline_of_a_finished_job_is_stale():
    state = ClusterState()
    state.apply([submit(JOB_A, 1, deadline=50.0)], 1.0)
    run(state, JOB_A, 0)
    assert one(state, RunTimers(), now=60.0) == TimersOutcome(fired=0)
    assert state.job_view(JOB_A).state == JobState.SUCCEEDED and state.next_timer_at() is None


# -- failure classes ------------------------------------------------------------------

def test_application_failures_retry_after_their_backoff():
    state = ClusterState()
    state.apply([submit(JOB_A, 1, max_retries=2, retry_backoff_s=5.0)], 1.0)
    end_attempt(state, JOB_A, 0, ChunkState.FAILED, now=10.0, exit_code=3)
    assert (phases(state, JOB_A), state.job_records[JOB_A].chunks[0].attempt) == (["delayed"], 2)
    assert state.delayed == {(JOB_A, 0): None} and not state.queued and state.next_timer_at() == 15.0
    assert one(state, RunTimers(), now=14.9).fired == 0
    assert one(state, RunTimers(), now=15.0) == TimersOutcome(fired=1)
    assert phases(state, JOB_A) == ["queued"] and not state.delayed
    end_attempt(state, JOB_A, 0, ChunkState.TIMED_OUT, now=20.0)
    one(state, RunTimers(), now=25.0)
    end_attempt(state, JOB_A, 0, ChunkState.FAILED, now=30.0, exit_code=3)
    chunk = state.job_view(JOB_A).chunks[0]
    assert (chunk.phase, chunk.attempt, chunk.retries_used, chunk.failures) == (
        "failed", 3, 2, ("application",) * 3)


def test_a_stale_backoff_timer_does_not_queue_a_newer_attempt():
    state = ClusterState()
    state.apply([submit(JOB_A, 1, max_retries=2, retry_backoff_s=5.0)], 1.0)
    end_attempt(state, JOB_A, 0, ChunkState.FAILED, now=10.0, exit_code=3)
    one(state, CancelJob(JOB_A), now=11.0)
    assert one(state, RunTimers(), now=15.0).fired == 0
    assert phases(state, JOB_A) == ["cancelled"] and not state.queued


def test_lost_workers_k_in_a_row_quarantine_the_chunk_with_the_specs_k():
    state = ClusterState()
    state.apply([submit(JOB_A, 1, max_retries=5, poison_after=2)], 1.0)
    end_attempt(state, JOB_A, 0, ChunkState.LOST)
    assert phases(state, JOB_A) == ["queued"]
    end_attempt(state, JOB_A, 0, ChunkState.LOST)
    view = state.job_view(JOB_A)
    chunk = view.chunks[0]
    assert (chunk.phase, chunk.result.error, chunk.retries_used, chunk.failures) == (
        "failed", "poison: 2 workers lost under it in a row", 0, ("infrastructure",) * 2)
    assert view.error == "chunk 0: poison: 2 workers lost under it in a row"


def test_an_application_failure_resets_the_lost_in_a_row_count():
    state = ClusterState()
    state.apply([submit(JOB_A, 1, max_retries=5, poison_after=3)], 1.0)
    for chunk_state in (ChunkState.LOST, ChunkState.LOST, ChunkState.FAILED, ChunkState.LOST, ChunkState.LOST):
        end_attempt(state, JOB_A, 0, chunk_state, exit_code=1)
    chunk = state.job_view(JOB_A).chunks[0]
    assert (chunk.phase, chunk.lost_count, chunk.retries_used) == ("queued", 2, 1)
    assert chunk.failures == ("infrastructure", "infrastructure", "application", "infrastructure", "infrastructure")
    end_attempt(state, JOB_A, 0, ChunkState.LOST)
    assert state.job_view(JOB_A).chunks[0].phase == "failed"


def test_refusals_back_off_growing_to_thirty_seconds_and_never_poison():
    state = ClusterState()
    state.apply([submit(JOB_A, 1, poison_after=1)], 1.0)
    now = 10.0
    delays = []
    for _ in range(12):
        end_attempt(state, JOB_A, 0, ChunkState.REJECTED, now=now)
        assert phases(state, JOB_A) == ["delayed"]
        delays.append(state.next_timer_at() - now)
        now = state.next_timer_at()
        one(state, RunTimers(), now=now)
        assert phases(state, JOB_A) == ["queued"]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0]
    chunk = state.job_view(JOB_A).chunks[0]
    assert (chunk.lost_count, chunk.retries_used, chunk.attempt) == (0, 0, 13)
    # A success ends the run of refusals.
    run(state, JOB_A, 0, now=now)
    assert state.job_view(JOB_A).state == JobState.SUCCEEDED


def test_a_balancer_take_back_requeues_at_once_without_counting():
    state = ClusterState()
    state.apply([submit(JOB_A, 1, poison_after=1)], 1.0)
    for _ in range(5):
        end_attempt(state, JOB_A, 0, ChunkState.CANCELLED)
        assert phases(state, JOB_A) == ["queued"]
    chunk = state.job_view(JOB_A).chunks[0]
    assert (chunk.lost_count, chunk.retries_used, chunk.failures) == (0, 0, ("infrastructure",) * 5)


# -- the result cache --------------------------------------------------------------------

def test_a_cached_job_reuses_the_results_of_an_identical_earlier_one():
    state = ClusterState()
    state.apply([submit(JOB_A, 2, cache=True)], 1.0)
    succeed_all(state, JOB_A)
    assert state.cache_size() == 2
    last_seq = state.last_seq
    assert one(state, submit(JOB_B, 2, cache=True), now=20.0) == SubmitOutcome(created=True)
    view = state.job_view(JOB_B)
    assert (view.state, view.chunks_succeeded, view.chunks_cached, view.finished_at) == (
        JobState.SUCCEEDED, 2, 2, 20.0)
    assert [chunk.phase for chunk in view.chunks] == ["cached", "cached"]
    assert [chunk.result for chunk in view.chunks] == [chunk.result for chunk in state.job_view(JOB_A).chunks]
    assert [e.kind for e in state.events_after(last_seq, 10)[0]] == [
        "job_submitted", "chunk_cached", "chunk_cached", "job_succeeded"]
    # A job without cache=True neither reads nor writes it.
    one(state, submit(JOB_C, 2), now=21.0)
    assert phases(state, JOB_C) == ["queued", "queued"]
    succeed_all(state, JOB_C, tag=1)
    assert state.cache_size() == 2


def test_a_miss_runs_and_records_the_result():
    state = ClusterState()
    state.apply([submit(JOB_A, 1, cache=True), submit(JOB_B, 1, cache=True, args=("-w",))], 1.0)
    assert phases(state, JOB_B) == ["queued"]
    run(state, JOB_B, 0, outputs={"o": out(0)})
    assert state.cache_size() == 1


def test_a_failed_chunk_is_not_recorded():
    state = ClusterState()
    state.apply([submit(JOB_A, 1, cache=True)], 1.0)
    end_attempt(state, JOB_A, 0, ChunkState.FAILED, exit_code=1)
    assert state.cache_size() == 0 and not state.result_cache.runners
    one(state, submit(JOB_B, 1, cache=True))
    assert phases(state, JOB_B) == ["queued"]


BASE_SPEC = submit(JOB_A, 4, inputs={"data": DATA, "more": (bytes.fromhex("ab" * 16), 3)},
                   limits=ResourceLimits(memory_bytes=1 << 30))


@pytest.mark.parametrize("change", [
    lambda spec, inputs, own, chunk: (replace(spec, program=(b"\x01" * 16, PROGRAM[1])), inputs, own, chunk),
    lambda spec, inputs, own, chunk: (replace(spec, args=("-v", "-x")), inputs, own, chunk),
    lambda spec, inputs, own, chunk: (spec, {**inputs, "data": (b"\x02" * 16, DATA[1])}, own, chunk),
    lambda spec, inputs, own, chunk: (spec, inputs, {"own": (b"\x03" * 16, 1)}, chunk),
    lambda spec, inputs, own, chunk: (spec, {"renamed": inputs["data"], "more": inputs["more"]}, own, chunk),
    lambda spec, inputs, own, chunk: (spec, inputs, own, chunk + 1),
    lambda spec, inputs, own, chunk: (replace(spec, chunk_count=5), inputs, own, chunk),
    lambda spec, inputs, own, chunk: (replace(spec, limits=ResourceLimits(memory_bytes=2 << 30)), inputs, own, chunk),
    lambda spec, inputs, own, chunk: (replace(spec, network=True), inputs, own, chunk),
], ids=["program", "args", "input id", "own input", "input name", "chunk index", "chunk count", "limits",
        "network"])
def test_everything_a_run_depends_on_changes_the_key(change):
    inputs = dict(BASE_SPEC.inputs)
    base = cache_key(BASE_SPEC, inputs, {}, 1)
    assert len(base) == 16
    assert cache_key(*change(BASE_SPEC, inputs, {}, 1)) != base


def test_what_a_run_does_not_depend_on_leaves_the_key():
    inputs = dict(BASE_SPEC.inputs)
    base = cache_key(BASE_SPEC, inputs, {}, 1)
    same = [
        cache_key(BASE_SPEC, {"data": (DATA[0], 999), "more": inputs["more"]}, {}, 1),     # a size
        cache_key(replace(BASE_SPEC, job=JOB_B, name="other", timeout_s=5.0, max_retries=3, cache=True,
                          retry_backoff_s=2.0, poison_after=7, deadline=9e9), inputs, {}, 1),
        cache_key(BASE_SPEC, {"more": inputs["more"]}, {"data": DATA}, 1),                # job-wide or own
    ]
    assert same == [base] * 3


def test_a_changed_input_of_one_chunk_of_a_hundred_runs_that_chunk_only():
    state = ClusterState()
    own = tuple({"part": (bytes([index]) * 16, 100)} for index in range(100))
    state.apply([submit(JOB_A, 100, chunk_inputs=own, cache=True)], 1.0)
    succeed_all(state, JOB_A)
    changed = own[:37] + ({"part": (b"\xfe" * 16, 100)},) + own[38:]
    one(state, submit(JOB_B, 100, chunk_inputs=changed, cache=True), now=20.0)
    view = state.job_view(JOB_B)
    assert (view.chunks_cached, view.chunks_succeeded) == (99, 99)
    assert [(a.job, a.chunk) for a in state.ready_attempts(10)] == [(JOB_B, 37)]


def test_a_cache_hit_of_a_resolved_ref_depends_on_the_producers_output_id():
    state = ClusterState()
    state.apply([submit(JOB_A, 1)], 1.0)
    run(state, JOB_A, 0, outputs={"part.txt": out(0)})
    consumer = dict(refs=(ref("p", JOB_A, from_chunk=0),), cache=True)
    one(state, submit(JOB_B, 1, **consumer))
    run(state, JOB_B, 0, outputs={"o": out(0, 2)})
    # Another producer run with the same output id: a hit; with another: a miss.
    state.apply([submit(JOB_C, 1, args=("-again",))], 20.0)
    run(state, JOB_C, 0, now=21.0, outputs={"part.txt": out(0)})
    one(state, submit(JOB_D, 1, refs=(ref("p", JOB_C, from_chunk=0),), cache=True), now=22.0)
    assert phases(state, JOB_D) == ["cached"]
    state.apply([submit(UNKNOWN, 1, args=("-different",))], 23.0)
    run(state, UNKNOWN, 0, now=24.0, outputs={"part.txt": out(0, 3)})
    twin = bytes.fromhex("99" * 16)
    one(state, submit(twin, 1, refs=(ref("p", UNKNOWN, from_chunk=0),), cache=True), now=25.0)
    assert phases(state, twin) == ["queued"]


def twins_in_flight(count=2) -> ClusterState:
    """Identical cache jobs JOB_A (runner) and JOB_B (twin), and JOB_C
    (second twin) when count is 3."""
    state = ClusterState()
    jobs = (JOB_A, JOB_B, JOB_C)[:count]
    state.apply([submit(job, 2, cache=True) for job in jobs], 1.0)
    assert phases(state, JOB_A) == ["queued", "queued"]
    for job in jobs[1:]:
        assert phases(state, job) == ["waiting", "waiting"]
        assert state.job_view(job).state == JobState.QUEUED
    return state


def test_an_identical_chunk_in_flight_runs_once_and_its_twin_takes_the_result():
    state = twins_in_flight(3)
    assert len(state.result_cache.runners) == 2
    assert all(len(twins) == 2 for twins in state.result_cache.twins.values())
    run(state, JOB_A, 0, outputs={"o": out(0)})
    assert phases(state, JOB_B) == ["cached", "waiting"] and phases(state, JOB_C) == ["cached", "waiting"]
    run(state, JOB_A, 1, outputs={"o": out(1)})
    for job in (JOB_B, JOB_C):
        view = state.job_view(job)
        assert (view.state, view.chunks_cached) == (JobState.SUCCEEDED, 2)
    assert not state.result_cache.runners and not state.result_cache.twins and not state.queued


@pytest.mark.parametrize("ending", ["fail", "poison", "cancel", "deadline"])
def test_a_runner_that_ends_otherwise_hands_on_to_the_first_twin(ending):
    state = twins_in_flight(3)
    if ending == "fail":
        end_attempt(state, JOB_A, 0, ChunkState.FAILED, exit_code=1)
    elif ending == "poison":
        for _ in range(3):
            end_attempt(state, JOB_A, 0, ChunkState.LOST)
    elif ending == "cancel":
        dispatched_all(state, JOB_A)
        one(state, CancelJob(JOB_A))
    else:
        state.apply([submit(JOB_D, 1)], 2.0)
        # JOB_A again, with a deadline: a fourth twin whose job ends at it.
        four = bytes.fromhex("44" * 16)
        state.apply([submit(four, 2, cache=True, deadline=50.0)], 3.0)
        one(state, RunTimers(), now=50.0)
        assert state.job_view(four).state == JobState.FAILED
        dispatched_all(state, JOB_A)
        one(state, CancelJob(JOB_A))
    assert phases(state, JOB_B)[0] == "queued"
    assert phases(state, JOB_C)[0] == "waiting"
    assert state.result_cache.runners[_key(state, JOB_B, 0)] == (JOB_B, 0)
    assert state.result_cache.twins[_key(state, JOB_B, 0)] == [(JOB_C, 0)]
    run(state, JOB_B, 0, outputs={"o": out(0)})
    assert phases(state, JOB_C)[0] == "cached"


def _key(state, job, index):
    return chunk_cache_key(state.job_records[job], index)


def test_a_twins_job_cancelled_waits_no_more():
    state = twins_in_flight(3)
    one(state, CancelJob(JOB_B))
    assert state.result_cache.twins[_key(state, JOB_A, 0)] == [(JOB_C, 0)]
    run(state, JOB_A, 0, outputs={"o": out(0)})
    assert phases(state, JOB_B) == ["cancelled", "cancelled"] and phases(state, JOB_C)[0] == "cached"


def test_prune_cache_drops_by_age_then_count_and_releases_the_files():
    state = ClusterState()
    jobs = [bytes([index]) * 16 for index in range(1, 5)]
    for at, job in enumerate(jobs):
        state.apply([submit(job, 1, cache=True, args=(str(at),))], 100.0 + at)
        run(state, job, 0, now=100.0 + at, outputs={"o": out(at)}, stdout=LOG)
    assert state.cache_size() == 4
    # Reading the oldest makes it the newest.
    one(state, submit(JOB_A, 1, cache=True, args=("0",)), now=110.0)
    assert phases(state, JOB_A) == ["cached"]
    bad = one(state, PruneCache(-1, 1.0, 0.0))
    assert (bad.ok, bad.error_code) == (False, ErrorCode.INVALID)
    assert one(state, PruneCache(10, 7.5, 100.0), now=110.0) == PruneCacheOutcome(dropped=2)   # used at 101, 102
    released = b"".join(packed for _, packed in state.holds.releases)
    assert {out(1)[0], out(2)[0]} <= {released[at:at + 16] for at in range(0, len(released), 16)}
    assert one(state, PruneCache(1, 1e9, 100.0), now=111.0) == PruneCacheOutcome(dropped=1)      # used at 103
    assert [packed for packed in state.result_cache.packed_results()] == [
        state.job_records[JOB_A].chunks[0].packed_result]
    assert one(state, PruneCache(0, 1e9, 100.0), now=112.0) == PruneCacheOutcome(dropped=1)
    assert state.cache_size() == 0
    one(state, submit(JOB_B, 1, cache=True, args=("0",)), now=113.0)
    assert phases(state, JOB_B) == ["queued"]


def test_gc_keeps_cache_entries_files_and_resolved_inputs_of_retained_jobs():
    state = ClusterState()
    state.apply([submit(JOB_A, 1, cache=True)], 1.0)
    run(state, JOB_A, 0, outputs={"part.txt": out(0)}, stdout=LOG)
    one(state, submit(JOB_B, 1, refs=(ref("p", JOB_A, from_chunk=0),)), now=11.0)
    one(state, ForgetJobs((JOB_A,), 10, 5.0), now=12.0)
    asked = {out(0)[0], LOG[0], DATA[0]}
    # Past the release's grace, what keeps them is the cache and JOB_B's inputs.
    assert reference_snapshot(state, asked, now=100.0, grace_s=5.0).collectable() == set()
    one(state, PruneCache(0, 0.0, 5.0), now=100.0)
    assert reference_snapshot(state, asked, now=101.0, grace_s=5.0).collectable() == set()     # released
    assert reference_snapshot(state, asked, now=200.0, grace_s=5.0).collectable() == {LOG[0]}
    one(state, CancelJob(JOB_B), now=201.0)
    one(state, ForgetJobs((JOB_B,), 10, 5.0), now=202.0)
    assert reference_snapshot(state, asked, now=300.0, grace_s=5.0).collectable() == asked


# -- snapshots -------------------------------------------------------------------------

def test_a_state_with_every_workflow_part_survives_pickling():
    state = twins_in_flight(2)
    state.apply([submit(JOB_C, 2), submit(JOB_D, 2, hold=True, after=(JOB_C,), refs=(ref("p", JOB_C),),
                                                  deadline=900.0, start_at=800.0),
                 submit(UNKNOWN, 1, max_retries=1, retry_backoff_s=50.0)], 2.0)
    run(state, JOB_A, 0, outputs={"o": out(0)})
    end_attempt(state, UNKNOWN, 0, ChunkState.FAILED, exit_code=1)
    end_attempt(state, JOB_C, 0, ChunkState.REJECTED)
    assert state.timers and state.delayed and state.dependents and state.result_cache.twins
    assert len(state.result_cache) == 1
    restored = pickle.loads(pickle.dumps(state))
    assert restored == state
    # And it goes on the same way.
    for replica in (state, restored):
        one(replica, ReleaseJob(JOB_D), now=20.0)
        one(replica, RunTimers(), now=60.0)
        succeed_all(replica, JOB_C, now=61.0)
        one(replica, RunTimers(), now=800.0)
        run(replica, JOB_A, 1, now=801.0, outputs={"o": out(1)})
    assert restored == state
    assert phases(state, JOB_D) == ["queued", "queued"] and phases(state, JOB_B) == ["cached", "cached"]


def test_records_pickled_before_workflows_load_with_their_defaults():
    spec = submit(JOB_A, 2)
    chunk = ChunkRecord.__new__(ChunkRecord)
    chunk.__setstate__((ChunkRecord().phase, 3, 1, 2, WORKER, None))
    assert (chunk.attempt, chunk.retries_used, chunk.lost_count, chunk.worker, chunk.failures) == (3, 1, 2, WORKER, "")
    current = JobRecord(spec=spec, submitted_at=1.0, chunks=[ChunkRecord(), ChunkRecord()], chunks_failed=1,
                        first_error="chunk 0: x", held=True, ready=False, waiting_for=(JOB_B,), chunks_cached=1,
                        failed_by="f", resolved=({}, ()))
    old = JobRecord.__new__(JobRecord)
    old.__setstate__(current.__getstate__()[:10])
    assert old == replace(current, held=False, ready=True, waiting_for=(), chunks_cached=0, failed_by="",
                          resolved=None)
    assert pickle.loads(pickle.dumps(current)) == current
    # Chunks packed before failure classes (six fields) load too.
    import msgpack
    from uds.master.records import _unpack_chunks
    packed = msgpack.packb([(1, 2, 0, 1, None, None)], use_bin_type=True)
    assert _unpack_chunks(packed) == [ChunkRecord(attempt=2, lost_count=1)]


# -- the state machine ------------------------------------------------------------------

MACHINE_JOBS = tuple(bytes([0x10 + index]) * 16 for index in range(10))
MACHINE_WORKERS = (WORKER, bytes.fromhex("02" * 16))
JOB_RANKS = {JobState.HELD: 0, JobState.WAITING: 1, JobState.QUEUED: 2, JobState.RUNNING: 3,
             JobState.SUCCEEDED: 4, JobState.FAILED: 4, JobState.CANCELLED: 4}
FINAL_JOB_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
# Phases a chunk may reach only once its job is ready (every dependency succeeded).
READY_PHASES = {ChunkPhase.QUEUED, ChunkPhase.DISPATCHED, ChunkPhase.RUNNING, ChunkPhase.DELAYED,
                ChunkPhase.SUCCEEDED, ChunkPhase.CACHED}
RUNNER_PHASES = {ChunkPhase.QUEUED, ChunkPhase.DISPATCHED, ChunkPhase.RUNNING, ChunkPhase.DELAYED}


# What the current attempt of a chunk in each phase reads as (master/attempts.py).
ATTEMPT_STATE_OF_PHASE = {
    ChunkPhase.WAITING: {"queued"}, ChunkPhase.QUEUED: {"queued"}, ChunkPhase.DELAYED: {"queued"},
    ChunkPhase.DISPATCHED: {"dispatched"}, ChunkPhase.RUNNING: {"running"}, ChunkPhase.SUCCEEDED: {"succeeded"},
    ChunkPhase.CACHED: {"cached"}, ChunkPhase.CANCELLED: {"cancelled"},
    ChunkPhase.FAILED: {"failed", "timed_out", "lost"},
}


class WorkflowMachine(RuleBasedStateMachine):
    """Jobs with dependencies, refs, holds, start times, deadlines and the
    cache (few programs and inputs, so keys collide), driven through every
    report a worker can make and through time; the invariants after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.state = ClusterState()
        self.attempts_checked: dict[tuple[bytes, int], tuple] = {}
        self.now = 0.0
        self.history: list[tuple[list, float]] = []
        self.ranks: dict[bytes, int] = {}
        self.final_views: dict[bytes, object] = {}
        self.released: set[bytes] = set()
        self.user_cancelled: set[bytes] = set()
        self.ever_dropped: set[bytes] = set()
        self.submitted = 0

    def apply(self, commands: list, advance: float = 1.0) -> list:
        self.now += advance
        self.history.append((commands, self.now))
        return self.state.apply(commands, self.now)

    def jobs(self) -> list[bytes]:
        return list(self.state.job_records)

    # -- rules --

    @precondition(lambda self: self.submitted < len(MACHINE_JOBS))
    @rule(data=st.data(), chunk_count=st.sampled_from([1, 2, 2, 3]), args=st.sampled_from([("a",), ("a",), ("b",)]),
          data_id=st.sampled_from([DATA[0], DATA[0], LOG[0]]), cache=st.sampled_from([True, True, False]), hold=st.integers(0, 6),
          start_in=st.sampled_from([None, None, 0.0, 5.0, 20.0]),
          deadline_in=st.sampled_from([None, None, None, 10.0, 60.0, 200.0]),
          max_retries=st.integers(0, 1), backoff=st.sampled_from([0.0, 2.0]), poison_after=st.integers(1, 3))
    def submit(self, data, chunk_count, args, data_id, cache, hold, start_in, deadline_in, max_retries, backoff,
               poison_after):
        job = MACHINE_JOBS[self.submitted]
        existing = self.jobs()
        after = ()
        if existing and data.draw(st.integers(0, 2)) == 0:
            after = tuple(data.draw(st.lists(st.sampled_from(existing), min_size=1, max_size=2)))
        refs = ()
        if existing and data.draw(st.integers(0, 2)) == 0:
            producer = data.draw(st.sampled_from(existing))
            count = self.state.job_records[producer].spec.chunk_count
            from_chunk = data.draw(st.sampled_from([SAME_CHUNK, ALL_CHUNKS, *range(count)]))
            scope = data.draw(st.sampled_from([JOB_WIDE, *range(chunk_count)]))
            refs = (ref("in", producer, output="o", from_chunk=from_chunk, chunk=scope),)
        command = submit(job, chunk_count, args=args, inputs={"data": (data_id, 10)}, cache=cache,
                         hold=hold == 0, after=after, refs=refs, max_retries=max_retries,
                         start_at=None if start_in is None else self.now + 1 + start_in,
                         deadline=None if deadline_in is None else self.now + 1 + deadline_in,
                         retry_backoff_s=backoff, poison_after=poison_after)
        before = copy.deepcopy(self.state)
        [outcome] = self.apply([command])
        if not outcome.ok:
            # Only what a producer's record decides may refuse a well-formed spec.
            assert outcome.error_code == ErrorCode.INVALID and ("has no output" in outcome.error
                                                                or "takes each chunk's" in outcome.error), outcome
            self.state = before
            self.history.pop()
            self.now -= 1.0
            return
        assert outcome == SubmitOutcome(created=True)
        self.submitted += 1

    @precondition(lambda self: self.submitted < len(MACHINE_JOBS)
                  and any(record.spec.cache for record in self.state.job_records.values()))
    @rule(data=st.data(), deadline_in=st.sampled_from([None, 1.0, 10.0]))
    def submit_again(self, data, deadline_in):
        """The same cache job under a new id: a hit, or a twin of a chunk in flight."""
        job = MACHINE_JOBS[self.submitted]
        earlier = data.draw(st.sampled_from([record.spec for record in self.state.job_records.values()
                                             if record.spec.cache]))
        command = replace(earlier, job=job, hold=False, start_at=None,
                          deadline=None if deadline_in is None else self.now + 1 + deadline_in)
        [outcome] = self.apply([command])
        if not outcome.ok:
            # A job it reads has been forgotten, or succeeded without the output, since.
            assert "past retention" in outcome.error or "has no output" in outcome.error, outcome
            return
        assert outcome == SubmitOutcome(created=True), outcome
        self.submitted += 1

    @precondition(lambda self: self.state.job_records)
    @rule(data=st.data())
    def release(self, data):
        job = data.draw(st.sampled_from(self.jobs()))
        record = self.state.job_records[job]
        was_held = record.held and record.finished_at is None
        [outcome] = self.apply([ReleaseJob(job)])
        assert outcome == ReleaseOutcome(changed=was_held)
        if was_held:
            self.released.add(job)

    @precondition(lambda self: self.state.job_records)
    @rule(data=st.data(), really=st.integers(0, 5))
    def cancel(self, data, really):
        if really:
            return
        job = data.draw(st.sampled_from(self.jobs()))
        record = self.state.job_records[job]
        unfinished = record.finished_at is None
        in_flight = {(index, chunk.attempt, chunk.worker) for index, chunk in enumerate(record.chunks)
                     if chunk.phase in (ChunkPhase.DISPATCHED, ChunkPhase.RUNNING)}
        [outcome] = self.apply([CancelJob(job)])
        assert outcome.changed is unfinished and set(outcome.cancelled_attempts) == in_flight
        if unfinished:
            self.user_cancelled.add(job)
            assert self.state.job_records[job].state == JobState.CANCELLED

    @precondition(lambda self: self.state.queued)
    @rule(limit=st.integers(1, 4))
    def dispatch(self, limit):
        ready = [attempt[:3] for attempt in self.state.ready_attempts(limit)]
        [outcome] = self.apply([DispatchAttempts(tuple(ready))])
        assert list(outcome.dispatched) == ready

    @precondition(lambda self: self.state.dispatched or self.state.running)
    @rule(data=st.data(), worker=st.sampled_from(MACHINE_WORKERS), output=st.sampled_from(["o", "o", "o", None]),
          chunk_state=st.sampled_from([ChunkState.STARTED, ChunkState.SUCCEEDED, ChunkState.SUCCEEDED,
                                       ChunkState.SUCCEEDED, ChunkState.FAILED, ChunkState.TIMED_OUT,
                                       ChunkState.LOST, ChunkState.REJECTED, ChunkState.CANCELLED]))
    def work(self, data, worker, output, chunk_state):
        self.report_in_flight(data, worker, output, chunk_state)

    def report_in_flight(self, data, worker, output, chunk_state):
        job, index = data.draw(st.sampled_from(sorted([*self.state.dispatched, *self.state.running])))
        chunk = self.state.job_records[job].chunks[index]
        succeeded = chunk_state == ChunkState.SUCCEEDED
        outputs = {output: out(index, job[0] % 4)} if succeeded and output else {}
        [outcome] = self.apply([ChunkEvent(job=job, chunk=index, attempt=chunk.attempt, state=int(chunk_state),
                                           worker=worker, result=ChunkResult(exit_code=0 if succeeded else 1,
                                                                             outputs=outputs))])
        assert outcome.ok and outcome.status in ("applied", "duplicate"), outcome

    @precondition(lambda self: self.state.queued or self.state.dispatched or self.state.running)
    @rule(data=st.data(), output=st.sampled_from(["o", "o", "o", None]))
    def succeed(self, data, output):
        """Chunks mostly succeed, so that jobs go on and results are reused."""
        if not (self.state.dispatched or self.state.running):
            self.dispatch(1)
        self.report_in_flight(data, MACHINE_WORKERS[0], output, ChunkState.SUCCEEDED)

    @precondition(lambda self: self.state.job_records)
    @rule(data=st.data(), chunk_state=st.sampled_from(list(ChunkState)))
    def report_on_a_chunk_not_in_flight(self, data, chunk_state):
        """Reports on chunks that wait, are delayed, queued or final change nothing."""
        job = data.draw(st.sampled_from(self.jobs()))
        record = self.state.job_records[job]
        index = data.draw(st.integers(0, record.spec.chunk_count - 1))
        chunk = record.chunks[index]
        if chunk.phase in (ChunkPhase.DISPATCHED, ChunkPhase.RUNNING):
            return
        before = copy.deepcopy(self.state)
        [outcome] = self.apply([report(job, index, chunk.attempt, chunk_state, exit_code=0)])
        assert outcome.status == ("final" if chunk.phase in FINAL_PHASES else "invalid"), outcome
        assert self.state == before

    @rule(advance=st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 20.0]))
    def time_passes(self, advance):
        due = self.state.next_timer_at()
        [outcome] = self.apply([RunTimers()], advance)
        assert outcome.ok
        if due is not None and due <= self.now:
            assert self.state.next_timer_at() is None or self.state.next_timer_at() > self.now
        for job, attempts in outcome.cancelled:
            record = self.state.job_records[job]
            # Its error stays a chunk's if one failed before.
            assert (record.state, record.failed_by) == (JobState.FAILED, "deadline exceeded")
            assert record.first_error == "deadline exceeded" or record.chunks_failed
            assert all(record.chunks[index].phase is ChunkPhase.CANCELLED for index, _, _ in attempts)

    @rule(max_entries=st.sampled_from([0, 2, 100]), max_age_s=st.sampled_from([5.0, 50.0, 1e6]),
          really=st.integers(0, 3))
    def prune_cache(self, max_entries, max_age_s, really):
        if really:
            return
        keys = set(self.state.result_cache.entries)
        [outcome] = self.apply([PruneCache(max_entries, max_age_s, 10.0)])
        dropped = keys - set(self.state.result_cache.entries)
        assert outcome.dropped == len(dropped) and len(self.state.result_cache) <= max_entries
        self.ever_dropped |= dropped

    @rule(worker=st.sampled_from(MACHINE_WORKERS), process=st.sampled_from([100.0, 200.0]),
          lost=st.booleans(), really=st.integers(0, 2))
    def worker_comes_and_goes(self, worker, process, lost, really):
        """A worker seen as another process, or lost: what it ran is lost."""
        if really:
            return
        seen = NodeSeen(node=worker, role=int(NodeRole.WORKER), host="w", address="", slots=2, cache_bytes=0,
                        started_at=process)
        [outcome] = self.apply([NodeLost(worker) if lost and worker in self.state.node_records else seen])
        assert outcome.ok
        assert not any(self.state.job_records[job].chunks[index].worker == worker for job, index in self.state.running
                       if lost)

    @precondition(lambda self: self.state.history.finished)
    @rule(data=st.data())
    def forget(self, data):
        """Retention forgets finished jobs, producers of waiting jobs too."""
        jobs = data.draw(st.lists(st.sampled_from(list(self.state.history.finished)), min_size=1, max_size=2,
                                  unique=True))
        [outcome] = self.apply([ForgetJobs(tuple(jobs), 100, 5.0)])
        assert outcome.forgotten == len(jobs)
        for job in jobs:
            self.final_views.pop(job, None)

    # -- invariants --

    @invariant()
    def jobs_never_go_backwards(self):
        for job, record in self.state.job_records.items():
            rank = JOB_RANKS[record.state]
            assert rank >= self.ranks.get(job, 0), (job, record.state)
            self.ranks[job] = rank
            view = self.state.job_view(job)
            if job in self.final_views:
                assert view == self.final_views[job]
            elif record.state in FINAL_JOB_STATES:
                assert record.finished_at is not None
                self.final_views[job] = view
            else:
                assert record.finished_at is None

    @invariant()
    def nothing_runs_before_its_job_may(self):
        records = self.state.job_records
        for job, record in records.items():
            spec = record.spec
            active = [index for index, chunk in enumerate(record.chunks) if chunk.phase in READY_PHASES]
            dependency_states = {dependency: self.state.job_state(dependency) for dependency in dependencies(spec)}
            if active:
                assert record.ready
                assert all(state is JobState.SUCCEEDED for state in dependency_states.values()), (job, active)
                assert not spec.hold or job in self.released
                assert spec.start_at is None or spec.start_at <= self.now
            if record.state is JobState.SUCCEEDED:
                assert all(state is JobState.SUCCEEDED for state in dependency_states.values())
            ended_badly = [dependency for dependency, state in dependency_states.items()
                           if state in (JobState.FAILED, JobState.CANCELLED)]
            if ended_badly:
                assert record.state in (JobState.FAILED, JobState.CANCELLED)
            if record.failed_by.startswith("dependency"):
                named = bytes.fromhex(record.failed_by.split()[1])
                assert dependency_states[named] is JobState.FAILED and record.failed_by.endswith("failed")
            if record.cancelled and job not in self.user_cancelled:
                assert any(state is JobState.CANCELLED for state in dependency_states.values())
            if record.finished_at is None and not record.ready:
                assert set(record.waiting_for) == {dependency for dependency, state in dependency_states.items()
                                                   if state is not JobState.SUCCEEDED}
                for dependency in record.waiting_for:
                    assert job in self.state.dependents[dependency]

    @invariant()
    def tables_and_timers_agree_with_phases(self):
        state = self.state
        found = {phase: set() for phase in ChunkPhase}
        for job, record in state.job_records.items():
            for index, chunk in enumerate(record.chunks):
                found[chunk.phase].add((job, index))
        assert set(state.queued) == found[ChunkPhase.QUEUED]
        assert set(state.dispatched) == found[ChunkPhase.DISPATCHED]
        assert set(state.running) == found[ChunkPhase.RUNNING]
        assert set(state.delayed) == found[ChunkPhase.DELAYED]
        timers = set(state.timers)
        for job, index in state.delayed:
            chunk = state.job_records[job].chunks[index]
            assert any(kind == BACKOFF and (timer_job, timer_index, attempt) == (job, index, chunk.attempt)
                       for _, kind, timer_job, timer_index, attempt in timers)
        for job, record in state.job_records.items():
            if record.finished_at is not None:
                continue
            if record.spec.deadline is not None:
                assert (record.spec.deadline, DEADLINE, job, 0, 0) in timers
            if not record.ready and record.spec.start_at is not None and record.spec.start_at > self.now:
                assert (record.spec.start_at, START, job, 0, 0) in timers
        if state.timers:
            assert state.next_timer_at() == min(timers)[0]

    @invariant()
    def runners_and_twins_agree_with_phases(self):
        state = self.state
        cache = state.result_cache
        expected_runners, expected_twins = {}, set()
        for job, record in state.job_records.items():
            if not (record.spec.cache and record.ready):
                continue
            for index, chunk in enumerate(record.chunks):
                if chunk.phase in RUNNER_PHASES:
                    key = chunk_cache_key(record, index)
                    assert key not in expected_runners, "two runners for one key"
                    expected_runners[key] = (job, index)
                elif chunk.phase is ChunkPhase.WAITING:
                    expected_twins.add((chunk_cache_key(record, index), (job, index)))
        assert cache.runners == expected_runners
        twins = [(key, chunk) for key, chunks in cache.twins.items() for chunk in chunks]
        assert len(twins) == len(set(twins)) and set(twins) == expected_twins
        assert all(cache.twins.values()) and set(cache.twins) <= set(cache.runners)

    @invariant()
    def counts_and_cache_agree_with_phases(self):
        state = self.state
        for job, record in state.job_records.items():
            labels = [chunk.phase for chunk in record.chunks]
            cached = labels.count(ChunkPhase.CACHED)
            assert (record.chunks_succeeded, record.chunks_cached, record.chunks_failed, record.chunks_cancelled) == (
                labels.count(ChunkPhase.SUCCEEDED) + cached, cached, labels.count(ChunkPhase.FAILED),
                labels.count(ChunkPhase.CANCELLED))
            assert not cached or record.spec.cache
            if record.spec.cache:
                for index, chunk in enumerate(record.chunks):
                    if chunk.phase is ChunkPhase.SUCCEEDED:
                        key = chunk_cache_key(record, index)
                        assert key in state.result_cache.entries or key in self.ever_dropped
                    if chunk.phase is ChunkPhase.CACHED:
                        assert chunk.attempt == 1 and chunk.worker is None

    @invariant()
    def each_success_is_committed_once(self):
        events, last_seq = self.state.events_after(0, 1_000_000)
        assert [e.seq for e in events] == list(range(1, last_seq + 1))
        for kind, phase in (("chunk_succeeded", ChunkPhase.SUCCEEDED), ("chunk_cached", ChunkPhase.CACHED)):
            logged = [(e.job, e.chunk) for e in events if e.kind == kind]
            assert len(logged) == len(set(logged))
            assert {(job, index) for job, index in logged if job in self.state.job_records} == {(job, index) for job, record in self.state.job_records.items()
                                   for index, chunk in enumerate(record.chunks) if chunk.phase is phase}

    @invariant()
    def every_attempt_is_kept_once_and_reads_as_its_chunk_ended(self):
        for job, record in self.state.job_records.items():
            for index, chunk in enumerate(record.chunks):
                # Checked again only when the chunk changed since the last step.
                signature = (chunk.phase, chunk.attempt, chunk.past, chunk.dispatched_at, chunk.running_at,
                             chunk.committed_at, chunk.ended)
                if self.attempts_checked.get((job, index)) == signature:
                    continue
                self.attempts_checked[(job, index)] = signature
                views, dropped = chunk_attempts(chunk)
                assert dropped == 0 and [view.attempt for view in views] == list(range(1, chunk.attempt + 1))
                assert all(view.committed_at is not None for view in views[:-1])
                current = views[-1]
                if current.committed_at is not None or self.history[0][1] > 0.0:
                    # (A chunk that ended at time 0.0 reads as not committed: 0.0 is "not yet".)
                    assert (current.committed_at is not None) == (chunk.phase in FINAL_PHASES), (job, index, chunk)
                assert current.state in ATTEMPT_STATE_OF_PHASE[chunk.phase], (current, chunk.phase)

    def teardown(self):
        replica = ClusterState()
        for commands, now in self.history:
            replica.apply(commands, now)
        assert replica == self.state
        assert pickle.loads(pickle.dumps(self.state)) == self.state


WorkflowMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
test_workflow_machine = WorkflowMachine.TestCase


def blank(cls):
    return cls.__new__(cls)


class PickledAs:
    """Pickles as `cls` with `state`: what an older version wrote."""

    def __init__(self, cls, state) -> None:
        self.cls, self.state = cls, state

    def __reduce__(self):
        return blank, (self.cls,), self.state


def test_a_snapshot_and_log_entries_from_before_workflows_load_and_apply():
    state = ClusterState()
    state.apply([submit(JOB_A, 2)], 1.0)
    run(state, JOB_A, 0)
    # A state without the workflow tables, and a SubmitJob of eleven fields.
    _, slots = state.__reduce_ex__(4)[2]
    old_slots = {name: value for name, value in slots.items()
                 if name not in ("delayed", "dependents", "timers", "result_cache", "finished_jobs")}
    old_spec = list(submit(JOB_B, 1).__getstate__())[:11]
    assert old_spec[-1] is False       # network, the last field then
    restored = pickle.loads(pickle.dumps(PickledAs(ClusterState, (None, old_slots))))
    spec = pickle.loads(pickle.dumps(PickledAs(SubmitJob, old_spec)))
    assert restored == state
    assert spec == submit(JOB_B, 1)
    assert one(restored, spec) == SubmitOutcome(created=True)
    run(restored, JOB_A, 1)
    assert restored.job_view(JOB_A).state == JobState.SUCCEEDED
    assert pickle.loads(pickle.dumps(restored)) == restored


def test_a_retry_keeps_its_note_in_the_event_however_long_the_workers_text():
    state = ClusterState()
    state.apply([submit(JOB_A, 1, max_retries=1)], 1.0)
    end_attempt(state, JOB_A, 0, ChunkState.FAILED, error="x" * 500)
    [retried] = [e for e in state.events_after(0, 100)[0] if e.kind == "chunk_retried"]
    assert retried.detail.endswith("...; retry 1 of 1") and len(retried.detail) == 200


def test_job_wide_refs_keep_no_empty_input_map_per_chunk():
    state = producer_done(3)
    state.apply([submit(JOB_C, 3)], 11.0)
    assert one(state, submit(JOB_B, 3, refs=(ref("all", JOB_A, from_chunk=ALL_CHUNKS),
                                             ref("same", JOB_C, chunk=2)))).ok
    assert state.job_records[JOB_B].resolved[1] == ()
    assert state.job_spec(JOB_B)["inputs"]["all.2"] == out(2)
    succeed_all(state, JOB_C, now=12.0, tag=1)
    assert state.job_records[JOB_B].resolved[1] == ({}, {}, {"same": out(2, 1)})
    assert [a.inputs for a in state.ready_attempts(3)] == [{}, {}, {"same": out(2, 1)}]
