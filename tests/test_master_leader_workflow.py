"""The leader's side of workflows (master/client_requests.py,
master/housekeeping.py): what a submission carries into the log, releases,
the state's timers and the result cache's pruning. Exact effects over a
ClusterState whose timer, cache size and answers to the workflow commands
each test sets, then a few scenarios over the real state (whose own
semantics are test_master_state's)."""
from __future__ import annotations

from collections import deque

import pytest

from uds import wire
from uds.master.commands import (
    DispatchAttempts, InputRef, Outcome, PruneCache, PruneCacheOutcome, ReleaseJob, ReleaseOutcome, RunTimers,
    SubmitJob, TimersOutcome,
)
from uds.master.housekeeping import CACHE_PRUNE_INTERVAL_S, TIMERS_RETRY_S
from uds.master.leader import (
    ACCEPTED_MESSAGES, PROPOSAL_TIMEOUT_S, DirectReader, Leader, Note, ProposalFailed, Propose, RaftStatus,
    Send, Tick, Wake,
)
from uds.master.links import MIN_CREDIT
from uds.master.state import ClusterState
from uds.wire.cluster import Scheduling, StoragePolicy
from uds.wire.enums import ChunkState, ErrorCode, JobState

from test_master_leader import (
    BALANCER_PEER, CLIENT, JOB, JOB_B, LEADING, MASTER, PROGRAM, WORKER, Cluster, chunk_events, error,
    event_record, heartbeat, hello, proposed, received, status_reply, submit, submit_command, with_balancer,
    without,
)

JOB_C = b"L" * 16


class ScriptedState(ClusterState):
    """A ClusterState whose next timer and cache size are the test's, and
    whose outcome for a command of a scripted type is the test's (each
    applied command of such a type is kept in `applied`)."""

    def __init__(self) -> None:
        super().__init__()
        self.timer_at: float | None = None
        self.cache_entries = 0
        self.answers: dict[type, Outcome] = {}
        self.applied: list = []

    def next_timer_at(self) -> float | None:
        return self.timer_at

    def cache_size(self) -> int:
        return self.cache_entries

    def apply(self, commands, now: float) -> list:
        outcomes = []
        for command in commands:
            if type(command) in self.answers:
                self.applied.append(command)
                outcomes.append(self.answers[type(command)])
            else:
                outcomes.extend(super().apply([command], now))
        return outcomes


class Harness(Cluster):
    """test_master_leader's Cluster over a ScriptedState, with settings."""

    def __init__(self, **settings) -> None:
        self.state = ScriptedState()
        self.leader = Leader(MASTER, DirectReader(self.state), host="m", address="tcp://m", started_at=1.0,
                             **settings)
        self.log: deque[Propose] = deque()


def leading(balancer: bool = False, **settings) -> Harness:
    """A leader since time 0 that announced itself; with `balancer`, one
    holding the lease with 1 free slot (credit MIN_CREDIT) until
    LOADBALANCER_LEASE_S."""
    harness = Harness(**settings)
    harness.handle(LEADING, 0.0)
    harness.settle(0.0)
    if balancer:
        harness.handle(received(hello(), BALANCER_PEER), 0.0)
        harness.settle(0.0)
        harness.handle(received(heartbeat(1), BALANCER_PEER), 0.0)
        harness.settle(0.0)
    return harness


def workflow_submit(request_id: int = 1, chunks: int = 2, **fields) -> wire.JobSubmit:
    return wire.JobSubmit.make(CLIENT, request_id=request_id, job=JOB, chunk_count=chunks, program=list(PROGRAM),
                               args=[], inputs={}, chunk_inputs=[], timeout_s=60.0, max_retries=0, name="",
                               **fields)


def release(request_id: int = 5, job: bytes = JOB) -> wire.JobRelease:
    return wire.JobRelease.make(CLIENT, request_id=request_id, job=job)


# ---- submissions --------------------------------------------------------------

def test_a_submission_carries_its_workflow_fields_and_the_clusters_poison_limit():
    harness = leading(scheduling=Scheduling(poison_after=5))
    refs = [dict(name="part", chunk=-1, job=JOB_B, output="out/part.txt", from_chunk=wire.SAME_CHUNK),
            dict(name="all", chunk=1, job=JOB_C, output="words", from_chunk=wire.ALL_CHUNKS),
            dict(name="one", chunk=-1, job=JOB_B, output="out/part.txt", from_chunk=3)]
    harness.handle(received(workflow_submit(
        refs=refs, after=[JOB_C], start_at=1000.5, deadline=2000.0, hold=True, cache=True,
        retry_backoff_s=2.5)), 0.5)
    [proposal] = proposed(harness.handle(Tick(), 0.5))
    assert proposal.commands == (SubmitJob(
        job=JOB, name="", program=PROGRAM, args=(), inputs={}, chunk_inputs=(), chunk_count=2, timeout_s=60.0,
        max_retries=0,
        refs=(InputRef("part", -1, JOB_B, "out/part.txt", -1), InputRef("all", 1, JOB_C, "words", -2),
              InputRef("one", -1, JOB_B, "out/part.txt", 3)),
        after=(JOB_C,), start_at=1000.5, deadline=2000.0, hold=True, cache=True, retry_backoff_s=2.5,
        poison_after=5),)
    [ref] = proposal.commands[0].refs[:1]
    assert type(ref) is InputRef and type(ref.job) is bytes


def test_a_plain_submission_takes_the_default_poison_limit_and_no_workflow_fields():
    harness = leading()
    harness.handle(received(submit()), 0.5)
    [proposal] = proposed(harness.handle(Tick(), 0.5))
    assert proposal.commands == (submit_command(),)
    assert proposal.commands[0].poison_after == Scheduling().poison_after == 3


@pytest.mark.parametrize("fields", [
    dict(after=[JOB_B]), dict(hold=True), dict(start_at=0.25), dict(cache=True),
    dict(refs=[dict(name="x", chunk=-1, job=JOB_B, output="x", from_chunk=0)]),
], ids=["after", "hold", "start_at", "cache", "refs"])
def test_a_job_that_may_wait_is_not_dispatched_with_its_submission(fields):
    harness = leading(balancer=True)
    harness.handle(received(workflow_submit(**fields)), 0.5)
    [proposal] = proposed(harness.handle(Tick(), 0.5))
    assert [type(command) for command in proposal.commands] == [SubmitJob]


@pytest.mark.parametrize("fields", [dict(deadline=100.0), dict(retry_backoff_s=1.0), {}],
                         ids=["deadline", "retry_backoff", "plain"])
def test_a_job_that_starts_at_once_rides_with_its_first_dispatch(fields):
    harness = leading(balancer=True)
    harness.handle(received(workflow_submit(**fields)), 0.5)
    [proposal] = proposed(harness.handle(Tick(), 0.5))
    assert proposal.commands[1:] == (DispatchAttempts(((JOB, 0, 1), (JOB, 1, 1))),)
    assert len(proposal.commands[1].attempts) <= MIN_CREDIT


# ---- releases -----------------------------------------------------------------

def test_job_release_is_accepted_by_the_masters():
    assert wire.JobRelease in ACCEPTED_MESSAGES


def test_a_release_is_answered_with_the_jobs_status_after_its_commit():
    harness = leading()
    harness.handle(received(submit()), 0.2)
    harness.settle(0.2)
    harness.state.answers[ReleaseJob] = ReleaseOutcome(changed=True)
    asked = release(request_id=9)
    assert harness.handle(received(asked), 0.5) == []
    assert proposed(harness.handle(Tick(), 0.5)) == [Propose((ReleaseJob(JOB),), 3)]
    assert harness.commit(0.6) == [status_reply(asked, harness.state)]
    assert harness.state.applied == [ReleaseJob(JOB)]
    assert harness.leader.counters["jobs_released"] == 1


def test_releasing_a_job_not_held_answers_its_status_too():
    harness = leading()
    harness.handle(received(submit()), 0.2)
    harness.settle(0.2)
    harness.state.answers[ReleaseJob] = ReleaseOutcome(changed=False)
    asked = release(request_id=10)
    harness.handle(received(asked), 0.5)
    assert without((Propose, Wake), harness.settle(0.5)) == [status_reply(asked, harness.state)]
    assert harness.leader.counters["jobs_released_again"] == 1


def test_a_refused_release_is_answered_with_the_states_reason():
    harness = leading()
    harness.state.answers[ReleaseJob] = ReleaseOutcome(ok=False, error=f"unknown job {JOB.hex()}",
                                                       error_code=int(ErrorCode.UNKNOWN_JOB))
    asked = release(request_id=11)
    harness.handle(received(asked), 0.5)
    assert without((Propose, Wake), harness.settle(0.5)) == [
        error(asked, ErrorCode.UNKNOWN_JOB, f"unknown job {JOB.hex()}")]


def test_a_release_whose_proposal_fails_is_answered_busy():
    harness = leading()
    asked = release(request_id=12)
    harness.handle(received(asked), 0.5)
    [proposal] = proposed(harness.handle(Tick(), 0.5))
    harness.log.clear()
    assert harness.handle(ProposalFailed(proposal.tag, "raft: not_leader"), 0.6) == [
        Note("proposal of 1 commands failed: raft: not_leader", warning=True),
        error(asked, ErrorCode.BUSY, "raft: not_leader")]


def test_a_follower_points_a_release_at_the_leader():
    harness = Harness()
    harness.handle(RaftStatus(ready=True, leader=False, leader_address="tcp://m2:7000"), 0.0)
    asked = release()
    assert harness.handle(received(asked), 0.5) == [
        error(asked, ErrorCode.NOT_LEADER, "not the leader; the leader is at tcp://m2:7000")]


# ---- timers -------------------------------------------------------------------

def test_the_leader_wakes_for_the_states_next_timer_and_runs_it_once_due():
    harness = leading()
    harness.state.timer_at = 5.0
    assert harness.handle(Tick(), 4.0) == [Wake(5.0)]
    assert harness.handle(Tick(), 4.999) == [Wake(5.0)]
    assert harness.handle(Tick(), 5.0) == [Propose((RunTimers(),), 2), Wake(5.0 + PROPOSAL_TIMEOUT_S)]
    # One at a time: while it awaits its commit, no other is queued.
    assert harness.handle(Tick(), 5.5) == [Wake(5.0 + PROPOSAL_TIMEOUT_S)]
    assert harness.leader.queued_commands == 0


def test_timers_that_fired_are_counted_and_the_next_one_waited_for():
    harness = leading()
    harness.state.timer_at = 1.0
    harness.state.answers[RunTimers] = TimersOutcome(fired=3)
    harness.handle(Tick(), 1.0)
    harness.state.timer_at = 9.0          # what the apply left as the next
    assert harness.commit(1.1) == []
    assert harness.handle(Tick(), 1.1) == [Wake(9.0)]
    assert harness.leader.counters["timers_fired"] == 3
    assert harness.state.applied == [RunTimers()]


def test_attempts_a_deadline_ended_are_cancelled_at_the_balancer():
    harness = leading(balancer=True)
    harness.state.timer_at = 0.5
    harness.state.answers[RunTimers] = TimersOutcome(
        fired=2, cancelled=((JOB, ((0, 1, WORKER), (3, 2, None))), (JOB_B, ())))
    assert [effect.commands for effect in proposed(harness.handle(Tick(), 0.5))] == [(RunTimers(),)]
    harness.state.timer_at = None
    assert without((Wake,), harness.commit(0.6)) == [
        Send(BALANCER_PEER, wire.ChunkCancel.make(MASTER, epoch=1, job=JOB, attempts=[[0, 1], [3, 2]]))]
    assert harness.leader.counters["jobs_past_deadline"] == 2


def test_without_a_balancer_a_deadline_sends_nothing():
    harness = leading()
    harness.state.timer_at = 0.5
    harness.state.answers[RunTimers] = TimersOutcome(fired=1, cancelled=((JOB, ((0, 1, WORKER),)),))
    harness.handle(Tick(), 0.5)
    harness.state.timer_at = None
    assert harness.commit(0.6) == []


def test_a_refused_run_of_the_timers_waits_before_the_next():
    harness = leading()
    harness.state.timer_at = 1.0
    harness.state.answers[RunTimers] = Outcome(ok=False, error="no", error_code=int(ErrorCode.INVALID))
    harness.handle(Tick(), 1.0)
    assert harness.commit(1.0) == [Note("timers did not run: no", warning=True)]
    assert harness.handle(Tick(), 1.0) == [Wake(1.0 + TIMERS_RETRY_S)]
    assert proposed(harness.handle(Tick(), 1.0 + TIMERS_RETRY_S)) == [Propose((RunTimers(),), 3)]


def test_a_run_of_the_timers_whose_proposal_failed_is_proposed_again_at_once():
    harness = leading()
    harness.state.timer_at = 1.0
    [proposal] = proposed(harness.handle(Tick(), 1.0))
    harness.log.clear()
    harness.handle(ProposalFailed(proposal.tag, "raft: not_leader"), 1.1)
    assert proposed(harness.handle(Tick(), 1.1)) == [Propose((RunTimers(),), proposal.tag + 1)]


def test_a_follower_runs_no_timers():
    harness = Harness()
    harness.handle(RaftStatus(ready=True, leader=False, leader_address="tcp://m2:7000"), 0.0)
    harness.state.timer_at = 1.0
    assert harness.handle(Tick(), 2.0) == []


# ---- the result cache ---------------------------------------------------------

SCHEDULING = Scheduling(cache_max_entries=7, cache_max_age_s=30.0)
POLICY = StoragePolicy(gc_grace_s=12.0)
PRUNE = PruneCache(max_entries=7, max_age_s=30.0, gc_grace_s=12.0)


def test_an_empty_cache_is_never_pruned_and_wakes_nobody():
    harness = leading(scheduling=SCHEDULING, storage_policy=POLICY)
    for now in (1.0, CACHE_PRUNE_INTERVAL_S, 3 * CACHE_PRUNE_INTERVAL_S):
        assert harness.handle(Tick(), now) == []


def test_the_cache_is_pruned_on_the_clusters_settings_a_minute_after_it_fills():
    harness = leading(scheduling=SCHEDULING, storage_policy=POLICY)
    harness.handle(Tick(), 10.0)
    harness.state.cache_entries = 20
    harness.state.answers[PruneCache] = PruneCacheOutcome(dropped=13)
    first = 10.0 + CACHE_PRUNE_INTERVAL_S       # an interval after the last Tick that found it empty
    assert harness.handle(Tick(), 11.0) == [Wake(first)]
    assert harness.handle(Tick(), first - 0.001) == [Wake(first)]
    assert harness.handle(Tick(), first) == [Propose((PRUNE,), 2), Wake(first + PROPOSAL_TIMEOUT_S)]
    assert harness.commit(first) == []
    assert harness.leader.counters["cache_entries_pruned"] == 13
    assert harness.handle(Tick(), first + 1.0) == [Wake(first + CACHE_PRUNE_INTERVAL_S)]
    assert proposed(harness.handle(Tick(), first + CACHE_PRUNE_INTERVAL_S)) == [Propose((PRUNE,), 3)]
    assert harness.state.applied == [PRUNE]


def test_one_prune_at_a_time():
    harness = leading(scheduling=SCHEDULING, storage_policy=POLICY)
    harness.state.cache_entries = 5
    harness.handle(Tick(), 1.0)
    assert proposed(harness.handle(Tick(), 1.0 + CACHE_PRUNE_INTERVAL_S)) == [Propose((PRUNE,), 2)]
    # Its commit is slow; a minute later there is still only the one.
    assert proposed(harness.handle(Tick(), 1.0 + 2 * CACHE_PRUNE_INTERVAL_S - 0.5)) == []
    assert harness.leader.queued_commands == 0


def test_a_new_leader_waits_a_full_interval_before_its_first_prune():
    harness = Harness(scheduling=SCHEDULING, storage_policy=POLICY)
    harness.state.cache_entries = 5
    harness.handle(LEADING, 100.0)
    harness.settle(100.0)
    assert proposed(harness.handle(Tick(), 100.0 + CACHE_PRUNE_INTERVAL_S - 0.001)) == []
    assert proposed(harness.handle(Tick(), 100.0 + CACHE_PRUNE_INTERVAL_S)) == [Propose((PRUNE,), 2)]


# ---- status replies -----------------------------------------------------------

def test_a_status_reply_carries_the_workflow_fields_and_each_attempts_failure_class():
    from uds.master.commands import ChunkView, JobView
    from uds.master.views import job_status_reply

    chunks = (ChunkView(chunk=0, phase="cached", attempt=0, worker=None, result=wire.NO_RESULT, retries_used=0,
                        lost_count=0),
              ChunkView(chunk=1, phase="delayed", attempt=2, worker=None, result=wire.NO_RESULT, retries_used=1,
                        lost_count=1, failures=("infrastructure", "application")),
              ChunkView(chunk=2, phase="waiting", attempt=0, worker=None, result=wire.NO_RESULT, retries_used=0,
                        lost_count=0))
    view = JobView(job=JOB, state=JobState.RUNNING, chunk_count=3, chunks_succeeded=1, chunks_failed=0, name="map",
                   submitted_at=1.0, finished_at=None, error="", first_chunk=0, chunks=chunks,
                   waiting="waiting for job " + JOB_B.hex(), chunks_cached=1, after=(JOB_B, JOB_C),
                   start_at=5.0, deadline=60.0, cache=True)
    reply = wire.decode(wire.encode(job_status_reply(MASTER, 4, JOB, view)))
    assert (reply.chunks_cached, reply.after, reply.start_at, reply.deadline, reply.cache, reply.waiting) == (
        1, [JOB_B, JOB_C], 5.0, 60.0, True, "waiting for job " + JOB_B.hex())
    assert [(report["state"], report["failures"]) for report in reply.chunks] == [
        ("cached", []), ("delayed", ["infrastructure", "application"]), ("waiting", [])]


# ---- over the real state ------------------------------------------------------
# The same scenarios through ClusterState's own semantics (doc/states.md):
# what the leader proposes and sends as a workflow job goes on.

def dispatched_jobs(effects: list) -> list[bytes]:
    """The jobs of the attempts dispatched in these effects, in order."""
    return [attempt["job"] for effect in effects if isinstance(effect, Send)
            and isinstance(effect.message, wire.ChunkDispatch) for attempt in effect.message.attempts]


def test_a_held_job_is_dispatched_once_released():
    cluster = with_balancer()
    cluster.handle(received(workflow_submit(hold=True)), 0.2)
    assert dispatched_jobs(cluster.settle(0.2)) == []
    assert cluster.state.job_state(JOB) is JobState.HELD
    asked = release(request_id=20)
    cluster.handle(received(asked), 0.4)
    cluster.handle(Tick(), 0.4)
    [answer] = cluster.commit(0.4)
    assert answer == status_reply(asked, cluster.state)
    assert answer.message.state == JobState.QUEUED
    assert dispatched_jobs(cluster.settle(0.4)) == [JOB, JOB]


def test_a_job_that_starts_later_is_dispatched_at_its_time():
    cluster = with_balancer()
    cluster.handle(received(workflow_submit(start_at=1.0)), 0.2)
    assert dispatched_jobs(cluster.settle(0.2)) == []
    assert cluster.state.next_timer_at() == 1.0
    assert Wake(1.0) in cluster.handle(Tick(), 0.5)
    cluster.renew(0.9)
    effects = cluster.settle(1.0)
    assert proposed(effects)[0].commands == (RunTimers(),)
    assert dispatched_jobs(effects) == [JOB, JOB]
    assert cluster.leader.counters["timers_fired"] == 1


def test_a_deadline_cancels_what_runs_at_the_balancer_and_answers_the_waiters():
    cluster = with_balancer()
    cluster.handle(received(workflow_submit(deadline=1.0)), 0.2)
    assert dispatched_jobs(cluster.settle(0.2)) == [JOB, JOB]
    waiting = wire.JobStatus.make(CLIENT, request_id=21, job=JOB, detail=0, wait_ms=20_000, first_chunk=0,
                                  max_chunks=0)
    assert cluster.handle(received(waiting), 0.5) == []
    cluster.renew(0.9)
    effects = without((Propose, Wake), cluster.settle(1.0))
    assert effects == [
        Send(BALANCER_PEER, wire.ChunkCancel.make(MASTER, epoch=1, job=JOB, attempts=[[0, 1], [1, 1]])),
        status_reply(waiting, cluster.state)]
    assert cluster.state.job_state(JOB) is JobState.FAILED
    assert cluster.state.job_view(JOB, 0, 0).error == "deadline exceeded"


def test_a_dependent_job_is_dispatched_once_its_dependency_succeeded():
    cluster = with_balancer()
    cluster.handle(received(submit(JOB_B)), 0.1)
    cluster.settle(0.1)
    cluster.handle(received(workflow_submit(after=[JOB_B], request_id=2)), 0.2)
    assert dispatched_jobs(cluster.settle(0.2)) == []
    assert cluster.state.job_state(JOB) is JobState.WAITING
    cluster.renew(0.3)
    cluster.handle(received(chunk_events(1, event_record(JOB_B, 0, 1, ChunkState.STARTED),
                                         event_record(JOB_B, 0, 1, ChunkState.SUCCEEDED)), BALANCER_PEER), 0.4)
    assert dispatched_jobs(cluster.settle(0.4)) == [JOB, JOB]
