"""The master leader's core: exact effects for small scenarios, and a
hypothesis state machine that drives it together with a real ClusterState
(the Raft log modelled as a list of proposals committed in order)."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
from collections import Counter, deque
from itertools import count

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from uds import wire
from uds.master import proposals
from uds.master.commands import (
    CancelJob, ChunkPhase, ChunkEvent, DispatchAttempts, NodeLost, NodeSeen, SubmitJob,
)
from uds.master.leader import (
    LOADBALANCER_LEASE_S, MAX_OUTSTANDING_PROPOSALS, MAX_STATUS_WAIT_S, PROPOSAL_TIMEOUT_S,
    RESEND_DISPATCHED_S, Committed, DirectReader, Leader, Note, ProposalFailed, Propose,
    RaftStatus, Received, Reply, Request, Send, Tick, UnknownEventError, Wake,
)
from uds.master.links import CREDIT_PER_SLOT, MIN_CREDIT
from uds.master.state import ClusterState
from uds.wire.records import NodeFacts
from uds.wire.resources import ResourceLimits
from uds.wire import ChunkState, ErrorCode, JobState, MessageType, NodeRole

ROOT = pathlib.Path(__file__).resolve().parent.parent
MASTER = b"M" * 16
CLIENT = b"C" * 16
BALANCER = b"B" * 16
WORKER = b"W" * 16
CLIENT_PEER = b"client-peer"
BALANCER_PEER = b"balancer-peer"
JOB, JOB_B = b"J" * 16, b"K" * 16
PROGRAM = (b"p" * 16, 100)
LEADING = RaftStatus(ready=True, leader=True, leader_address=None)


# ---- helpers ------------------------------------------------------------------

def decoded(message: wire.Message) -> wire.Message:
    """What the shell hands over: the message as it comes off the wire."""
    return wire.decode(wire.encode(message))


def received(message: wire.Message, peer: bytes = CLIENT_PEER) -> Received:
    return Received(peer, decoded(message))


def request(message: wire.Message, peer: bytes = CLIENT_PEER) -> Request:
    return Request(peer, getattr(message, "request_id", 0), message.message_type)


def submit(job: bytes = JOB, chunks: int = 1, request_id: int = 1) -> wire.JobSubmit:
    return wire.JobSubmit.make(CLIENT, request_id=request_id, job=job, chunk_count=chunks,
                               program=list(PROGRAM), args=[], inputs={}, chunk_inputs=[],
                               timeout_s=60.0, max_retries=0, name="")


def submit_command(job: bytes = JOB, chunks: int = 1) -> SubmitJob:
    return SubmitJob(job=job, name="", program=PROGRAM, args=(), inputs={}, chunk_inputs=(),
                     chunk_count=chunks, timeout_s=60.0, max_retries=0)


def status(job: bytes = JOB, request_id: int = 2, wait_ms: int = 0) -> wire.JobStatus:
    return wire.JobStatus.make(CLIENT, request_id=request_id, job=job, detail=0, wait_ms=wait_ms,
                               first_chunk=0, max_chunks=0)


def hello(request_id: int = 1) -> wire.Hello:
    return wire.Hello.make(BALANCER, request_id=request_id, role=int(NodeRole.LOADBALANCER), slots=0,
                           cache_bytes=0, start_time_ms=5000, host="lb", address="tcp://lb", version=1)


def heartbeat(free_slots: int, running: int = 0) -> wire.Heartbeat:
    return wire.Heartbeat.make(BALANCER, epoch=1, free_slots=free_slots, running_count=running,
                               running=[], cache_added=[], cache_removed=[])


def event_record(job: bytes, chunk: int, attempt: int, state: ChunkState) -> dict:
    return dict(job=job, chunk=chunk, attempt=attempt, state=int(state), worker=WORKER, worker_started_at=0.0,
                exit_code=0 if state == ChunkState.SUCCEEDED else None, outputs={}, stdout=None,
                stderr=None, error="", elapsed_s=0.5, bytes_from_cache=0, bytes_from_storage=0,
                cpu_user_s=0.25, cpu_system_s=0.0, peak_memory_bytes=1 << 20, output_bytes=0,
                assigned_at=0.0, started_at=0.0, first_read_at=0.0, ended_at=0.0,
                  uploaded_at=0.0)


def chunk_events(batch_id: int, *records: dict) -> wire.ChunkEvents:
    return wire.ChunkEvents.make(BALANCER, epoch=1, batch_id=batch_id, event_count=len(records),
                                 events=list(records))


def error(asked: wire.Message, code: ErrorCode, reason: str, peer: bytes = CLIENT_PEER) -> Reply:
    return Reply(request(asked, peer), wire.Error.make(
        MASTER, request_id=getattr(asked, "request_id", 0), error_code=int(code),
        failed_type=asked.message_type, reason=reason))


def status_reply(asked: wire.JobStatus | wire.JobCancel, state: ClusterState, job: bytes = JOB) -> Reply:
    view = state.job_view(job, 0, 0)
    return Reply(request(asked), wire.JobStatusReply.make(MASTER, request_id=asked.request_id,
                                                          **view.reply_fields()))


def dispatch(*attempts: tuple[bytes, int, int], state: ClusterState) -> Send:
    jobs = list(dict.fromkeys(job for job, _, _ in attempts))
    return Send(BALANCER_PEER, wire.ChunkDispatch.make(
        MASTER, epoch=1, attempt_count=len(attempts), jobs=[state.job_spec(job) for job in jobs],
        attempts=[{"job": job, "chunk": chunk, "attempt": attempt, "inputs": {}}
                  for job, chunk, attempt in attempts]))


def proposed(effects: list) -> list[Propose]:
    return [effect for effect in effects if isinstance(effect, Propose)]


def without(kinds: tuple, effects: list) -> list:
    return [effect for effect in effects if not isinstance(effect, kinds)]


class Cluster:
    """A leader over a ClusterState, with its proposals committed on demand."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.leader = Leader(MASTER, DirectReader(self.state), host="m", address="tcp://m", started_at=1.0)
        self.log: deque[Propose] = deque()

    def handle(self, event, now: float) -> list:
        effects = self.leader.handle(event, now)
        self.log.extend(proposed(effects))
        return effects

    def commit(self, now: float) -> list:
        """Commit the oldest proposal and feed its outcomes back."""
        proposal = self.log.popleft()
        outcomes = self.state.apply(list(proposal.commands), now)
        return self.handle(Committed(proposal.tag, outcomes), now)

    def renew(self, now: float) -> None:
        """The balancer's hello at `now` (a renewal), committed, and its heartbeat."""
        link = self.leader.loadbalancer
        self.handle(received(hello(), BALANCER_PEER), now)
        self.settle(now)
        self.handle(received(heartbeat(link.free_slots, link.running), BALANCER_PEER), now)
        self.settle(now)

    def settle(self, now: float) -> list:
        """Tick and commit until nothing is proposed any more; all effects."""
        effects = self.handle(Tick(), now)
        while self.log:
            effects += self.commit(now)
            effects += self.handle(Tick(), now)
        return effects


def leading(now: float = 0.0) -> Cluster:
    """A leader that has announced itself."""
    cluster = Cluster()
    cluster.handle(LEADING, now)
    effects = cluster.handle(Tick(), now)
    assert effects == [Propose((NodeSeen(node=MASTER, role=int(NodeRole.MASTER), host="m", address="tcp://m",
                                         slots=0, cache_bytes=0, started_at=1.0),), 1),
                       Wake(now + PROPOSAL_TIMEOUT_S)]
    cluster.commit(now)
    return cluster


def with_balancer(free_slots: int = 2, now: float = 0.0) -> Cluster:
    cluster = leading(now)
    cluster.handle(received(hello(), BALANCER_PEER), now)
    cluster.settle(now)                            # the lease is granted by a commit
    cluster.handle(received(heartbeat(free_slots), BALANCER_PEER), now)
    cluster.settle(now)
    return cluster


# ---- submissions and proposals ------------------------------------------------

def test_a_submission_is_proposed_at_the_tick_and_answered_after_its_commit():
    cluster = leading()
    asked = submit(request_id=7)
    assert cluster.handle(received(asked), 1.0) == []
    assert cluster.handle(Tick(), 1.0) == [Propose((submit_command(),), 2), Wake(1.0 + PROPOSAL_TIMEOUT_S)]
    assert cluster.commit(1.5) == [Reply(request(asked), wire.JobSubmitReply.make(
        MASTER, request_id=7, job=JOB, created=1))]
    again = submit(request_id=8)
    cluster.handle(received(again), 2.0)
    assert cluster.settle(2.0) == [Propose((submit_command(),), 3), Wake(2.0 + PROPOSAL_TIMEOUT_S),
                                   Reply(request(again), wire.JobSubmitReply.make(
                                       MASTER, request_id=8, job=JOB, created=0))]
    assert cluster.leader.counters["jobs_submitted"] == 1
    assert cluster.leader.counters["jobs_resubmitted"] == 1


def test_a_refused_submission_is_answered_with_the_states_reason():
    cluster = leading()
    cluster.handle(received(submit(chunks=2)), 1.0)
    cluster.settle(1.0)
    different = submit(chunks=3, request_id=9)
    cluster.handle(received(different), 2.0)
    effects = cluster.settle(2.0)
    assert without((Propose, Wake), effects) == [
        error(different, ErrorCode.INVALID, "job id reused with a different spec")]


def test_the_cluster_defaults_fill_in_the_limits_a_job_does_not_ask_for():
    cluster = leading()
    cluster.leader.default_limits = ResourceLimits(memory_bytes=1 << 30, millicpus=1000, pids=100)
    asked = wire.JobSubmit.make(CLIENT, request_id=4, job=JOB, chunk_count=1, program=list(PROGRAM), args=[],
                                inputs={}, chunk_inputs=[], timeout_s=60.0, max_retries=0, name="",
                                limits={"memory_bytes": 2 << 30}, network=True)
    cluster.handle(received(asked), 1.0)
    [proposal] = proposed(cluster.handle(Tick(), 1.0))
    [command] = proposal.commands
    assert (command.limits, command.network) == (
        ResourceLimits(memory_bytes=2 << 30, millicpus=1000, pids=100), True)


def test_a_job_no_worker_could_hold_is_refused_with_the_reason():
    cluster = leading()
    cluster.state.apply([NodeSeen(node=WORKER, role=int(NodeRole.WORKER), host="w", address="", slots=2,
                                  cache_bytes=0, started_at=3.0, memory_bytes=2 << 30)], 0.5)
    asked = wire.JobSubmit.make(CLIENT, request_id=5, job=JOB, chunk_count=1, program=list(PROGRAM), args=[],
                                inputs={}, chunk_inputs=[], timeout_s=60.0, max_retries=0, name="",
                                limits={"memory_bytes": 3 << 30}, network=False)
    cluster.handle(received(asked), 1.0)
    assert without((Propose, Wake), cluster.settle(1.0)) == [error(
        asked, ErrorCode.INVALID, "no worker can run this job: no worker has 3 GiB of memory: the largest has 2 GiB")]


def test_commands_of_one_burst_ride_in_one_proposal_and_the_next_waits_for_its_commit():
    cluster = leading()
    cluster.handle(received(submit(JOB, request_id=1)), 1.0)
    cluster.handle(received(submit(JOB_B, request_id=2)), 1.0)
    assert proposed(cluster.handle(Tick(), 1.0)) == [Propose((submit_command(JOB), submit_command(JOB_B)), 2)]
    cluster.handle(received(wire.JobCancel.make(CLIENT, request_id=3, job=JOB)), 1.1)
    assert proposed(cluster.handle(Tick(), 1.1)) == []
    assert cluster.leader.outstanding_proposals == MAX_OUTSTANDING_PROPOSALS
    assert cluster.leader.queued_commands == 1
    cluster.commit(1.2)
    assert proposed(cluster.handle(Tick(), 1.2)) == [Propose((CancelJob(JOB),), 3)]


def test_a_burst_larger_than_one_proposal_is_cut(monkeypatch):
    monkeypatch.setattr(proposals, "MAX_COMMANDS_PER_PROPOSAL", 2)
    cluster = leading()
    for index in range(3):
        cluster.handle(received(submit(bytes([index]) * 16, request_id=index + 1)), 1.0)
    assert proposed(cluster.handle(Tick(), 1.0)) == [
        Propose((submit_command(bytes([0]) * 16), submit_command(bytes([1]) * 16)), 2)]
    cluster.commit(1.0)
    assert proposed(cluster.handle(Tick(), 1.0)) == [Propose((submit_command(bytes([2]) * 16),), 3)]


def test_a_proposal_with_no_commit_is_given_up_with_busy_and_its_late_commit_ignored():
    cluster = leading()
    asked = submit(request_id=4)
    cluster.handle(received(asked), 1.0)
    cluster.handle(Tick(), 1.0)
    assert cluster.handle(Tick(), 1.0 + PROPOSAL_TIMEOUT_S - 0.001) == [Wake(1.0 + PROPOSAL_TIMEOUT_S)]
    assert cluster.handle(Tick(), 1.0 + PROPOSAL_TIMEOUT_S) == [
        error(asked, ErrorCode.BUSY, "raft: no commit in time")]
    assert cluster.leader.counters["proposals_timed_out"] == 1
    assert cluster.commit(12.0) == []


def test_a_failed_proposal_answers_busy():
    cluster = leading()
    asked = wire.JobCancel.make(CLIENT, request_id=5, job=JOB)
    cluster.handle(received(asked), 1.0)
    tag = proposed(cluster.handle(Tick(), 1.0))[0].tag
    assert cluster.handle(ProposalFailed(tag, "raft: not_leader"), 1.1) == [
        Note("proposal of 1 commands failed: raft: not_leader", warning=True),
        error(asked, ErrorCode.BUSY, "raft: not_leader")]
    assert cluster.leader.counters["proposals_failed"] == 1


# ---- followers ------------------------------------------------------------------

@pytest.mark.parametrize("raft, code, reason", [
    (RaftStatus(ready=False, leader=False, leader_address=None), ErrorCode.BUSY, "master is starting"),
    (RaftStatus(ready=True, leader=False, leader_address="tcp://m2:7000"), ErrorCode.NOT_LEADER,
     "not the leader; the leader is at tcp://m2:7000"),
    (RaftStatus(ready=True, leader=False, leader_address=None), ErrorCode.NOT_LEADER, "no leader elected yet"),
])
def test_a_follower_points_clients_at_the_leader(raft, code, reason):
    cluster = Cluster()
    cluster.handle(raft, 0.0)
    for asked in (submit(), status(), wire.JobCancel.make(CLIENT, request_id=3, job=JOB)):
        assert cluster.handle(received(asked), 1.0) == [error(asked, code, reason)]
    assert cluster.handle(received(hello(), BALANCER_PEER), 1.0) == [error(hello(), code, reason, BALANCER_PEER)]
    assert proposed(cluster.handle(Tick(), 1.0)) == []


def test_only_the_leader_answers_nodes_and_events_queries_and_a_follower_names_it():
    follower = Cluster()
    follower.handle(RaftStatus(ready=True, leader=False, leader_address="tcp://m2"), 0.0)
    leader = leading()
    for asked, answer in ((wire.EventsQuery.make(CLIENT, request_id=6, after_seq=0, limit=10), wire.EventsReply),
                          (wire.NodesQuery.make(CLIENT, request_id=7), wire.NodesReply)):
        [refused] = follower.handle(received(asked), 1.0)
        assert refused.message.error_code == ErrorCode.NOT_LEADER and "tcp://m2" in refused.message.reason
        [answered] = leader.handle(received(asked), 1.0)
        assert isinstance(answered.message, answer) and answered.request == request(asked)


def test_stepping_down_forgets_the_balancer_and_what_it_meant_to_dispatch():
    cluster = with_balancer()
    asked = submit(chunks=2)
    cluster.handle(received(asked), 1.0)
    assert cluster.leader.dispatching == {(JOB, 0, 1), (JOB, 1, 1)}
    # What it queued and never proposed is dropped: the client is told to ask again.
    assert cluster.handle(RaftStatus(ready=True, leader=False, leader_address="tcp://m2"), 1.0) == [
        Note("no longer the leader"), error(asked, ErrorCode.BUSY, "no longer the leader")]
    assert cluster.leader.dispatching == frozenset() and cluster.leader.loadbalancer is None
    assert cluster.leader.queued_commands == 0 and proposed(cluster.handle(Tick(), 1.1)) == []
    assert cluster.handle(received(heartbeat(2), BALANCER_PEER), 1.1) == [
        error(heartbeat(2), ErrorCode.UNEXPECTED, "hello first", BALANCER_PEER)]


def test_a_master_that_lost_office_never_proposes_what_it_had_queued_behind_its_last_proposal():
    # The simulation's seed 4814: a lease grant queued while the leader was cut
    # off, proposed after it healed as a follower, committed through the new
    # leader, made two balancers believe they held the lease at once.
    cluster = leading()
    cluster.handle(received(submit(JOB, request_id=1)), 1.0)
    assert len(proposed(cluster.handle(Tick(), 1.0))) == 1
    cluster.handle(received(hello(), BALANCER_PEER), 1.1)   # a GrantLease queues behind it
    assert cluster.leader.queued_commands >= 1
    cluster.handle(RaftStatus(ready=True, leader=False, leader_address="tcp://m2"), 1.2)
    cluster.commit(1.3)
    assert proposed(cluster.handle(Tick(), 1.4)) == []
    assert cluster.state.lease() == (None, 0)


# ---- dispatching ---------------------------------------------------------------

def test_a_new_jobs_first_chunks_ride_with_it_within_the_credit():
    cluster = with_balancer(free_slots=1)          # credit: MIN_CREDIT
    asked = submit(chunks=MIN_CREDIT + 2, request_id=3)
    cluster.handle(received(asked), 1.0)
    first = tuple((JOB, chunk, 1) for chunk in range(MIN_CREDIT))
    assert proposed(cluster.handle(Tick(), 1.0)) == [
        Propose((submit_command(chunks=MIN_CREDIT + 2), DispatchAttempts(first)), 3)]
    assert cluster.commit(1.0) == [
        Reply(request(asked), wire.JobSubmitReply.make(MASTER, request_id=3, job=JOB, created=1)),
        dispatch(*first, state=cluster.state)]
    assert proposed(cluster.handle(Tick(), 1.0)) == []    # no credit left
    assert cluster.leader.counters["attempts_dispatched"] == MIN_CREDIT


def test_credit_grows_with_the_balancers_slots_and_frees_as_chunks_end():
    cluster = with_balancer(free_slots=3)          # credit: 3 * CREDIT_PER_SLOT = 6
    credit = 3 * CREDIT_PER_SLOT
    cluster.handle(received(submit(chunks=credit + 2)), 1.0)
    cluster.settle(1.0)
    assert cluster.state.in_flight_count() == credit
    cluster.renew(1.2)
    cluster.renew(2.0)
    cluster.handle(received(chunk_events(1, event_record(JOB, 0, 1, ChunkState.STARTED),
                                         event_record(JOB, 0, 1, ChunkState.SUCCEEDED)), BALANCER_PEER), 2.0)
    effects = cluster.settle(2.0)
    assert Send(BALANCER_PEER, wire.ChunkEventsAck.make(MASTER, epoch=1, batch_id=1)) in effects
    assert proposed(effects)[-1].commands == (DispatchAttempts(((JOB, credit, 1),)),)
    assert dispatch((JOB, credit, 1), state=cluster.state) in effects
    assert cluster.state.in_flight_count() == credit


def test_dispatched_attempts_that_have_not_started_are_sent_again():
    cluster = with_balancer(free_slots=1)
    cluster.handle(received(submit(chunks=2)), 0.5)
    cluster.settle(0.5)
    cluster.handle(received(chunk_events(1, event_record(JOB, 0, 1, ChunkState.STARTED)), BALANCER_PEER), 1.0)
    cluster.settle(1.0)
    for now in (1.4, 2.0, 2.5):
        cluster.renew(now)
    assert cluster.handle(Tick(), RESEND_DISPATCHED_S - 0.01) == [Wake(RESEND_DISPATCHED_S)]
    assert cluster.handle(Tick(), RESEND_DISPATCHED_S) == [
        dispatch((JOB, 1, 1), state=cluster.state), Wake(2.5 + LOADBALANCER_LEASE_S)]


def test_a_silent_balancer_loses_its_lease_and_gets_nothing_more():
    cluster = with_balancer(free_slots=2)
    assert cluster.handle(Tick(), LOADBALANCER_LEASE_S - 0.01)[-1] == Wake(LOADBALANCER_LEASE_S)
    assert cluster.handle(Tick(), LOADBALANCER_LEASE_S) == [
        Note(f"load balancer {BALANCER.hex()} unrenewed for {LOADBALANCER_LEASE_S:.1f}s: "
             "its lease at epoch 1 is over", warning=True)]
    assert cluster.leader.loadbalancer is None
    cluster.handle(received(submit(chunks=2)), 3.5)
    assert proposed(cluster.handle(Tick(), 3.5)) == [Propose((submit_command(chunks=2),), 3)]
    assert cluster.handle(received(heartbeat(2), BALANCER_PEER), 3.6) == [
        error(heartbeat(2), ErrorCode.UNEXPECTED, "hello first", BALANCER_PEER)]


def test_a_balancers_hello_is_answered_and_gets_what_was_dispatched():
    cluster = with_balancer(free_slots=1)
    cluster.handle(received(submit(chunks=1)), 1.0)
    cluster.settle(1.0)
    asked = hello(request_id=9)
    assert cluster.handle(received(asked, b"new-peer"), 1.2) == []     # a renewal: answered after its commit
    cluster.handle(Tick(), 1.2)
    assert without((Wake,), cluster.commit(1.2)) == [
        Reply(request(asked, b"new-peer"), wire.HelloReply.make(MASTER, request_id=9, epoch=1,
                                                                 heartbeat_interval_ms=250,
                                                                 lease_ms=int(LOADBALANCER_LEASE_S * 1000)))]
    assert cluster.leader.loadbalancer.peer == b"new-peer"


def test_cancel_is_forwarded_to_the_balancer_and_answered_with_the_status():
    cluster = with_balancer(free_slots=1)
    cluster.handle(received(submit(chunks=2)), 1.0)
    cluster.settle(1.0)
    asked = wire.JobCancel.make(CLIENT, request_id=11, job=JOB)
    cluster.handle(received(asked), 1.2)
    effects = without((Propose, Wake), cluster.settle(1.2))
    assert effects == [
        Send(BALANCER_PEER, wire.ChunkCancel.make(MASTER, epoch=1, job=JOB, attempts=[[0, 1], [1, 1]])),
        status_reply(asked, cluster.state)]
    assert cluster.state.job_state(JOB) is JobState.CANCELLED


# ---- chunk events and node reports ------------------------------------------

def test_chunk_events_are_acknowledged_after_their_commit_and_stale_ones_noted():
    cluster = with_balancer(free_slots=1)
    cluster.handle(received(submit(chunks=1)), 1.0)
    cluster.settle(1.0)
    batch = chunk_events(5, event_record(JOB, 0, 7, ChunkState.SUCCEEDED),
                         event_record(JOB, 0, 1, ChunkState.STARTED))
    assert cluster.handle(received(batch, BALANCER_PEER), 2.0) == []
    commands = proposed(cluster.handle(Tick(), 2.0))[0].commands
    assert [type(command) for command in commands] == [ChunkEvent, ChunkEvent]
    assert without((Wake,), cluster.commit(2.0)) == [
        Note(f"ignored SUCCEEDED event for job {JOB.hex()} chunk 0 attempt 7 from worker {WORKER.hex()}: stale"),
        Send(BALANCER_PEER, wire.ChunkEventsAck.make(MASTER, epoch=1, batch_id=5))]
    assert cluster.leader.counters["chunk_events_stale"] == 1
    assert cluster.leader.counters["chunk_events"] == 2


def test_an_empty_batch_is_acknowledged_at_once_and_a_failed_one_not_at_all():
    cluster = with_balancer()
    assert cluster.handle(received(chunk_events(6), BALANCER_PEER), 1.0) == [
        Send(BALANCER_PEER, wire.ChunkEventsAck.make(MASTER, epoch=1, batch_id=6))]
    cluster.handle(received(chunk_events(7, event_record(JOB, 0, 1, ChunkState.STARTED)), BALANCER_PEER), 1.0)
    tag = proposed(cluster.handle(Tick(), 1.0))[0].tag
    assert without((Note,), cluster.handle(ProposalFailed(tag, "raft: not_leader"), 1.1)) == []


def test_node_reports_become_node_seen_and_node_lost():
    cluster = with_balancer()
    node = dict(node=WORKER, role=int(NodeRole.WORKER), host="w", address="tcp://w", slots=2, free_slots=2,
                running=0, cache_bytes=10, started_at=3.0, last_seen_s=0.1, state="alive",
                millicpus=4000, memory_bytes=8 << 30, disk_bytes=50 << 30, sandbox="bubblewrap", lease_epoch=0, figures={},
                software="0.12.0", cpus=4, machine_memory_bytes=8 << 30, machine_disk_bytes=60 << 30,
                addresses=["10.0.0.9"])
    report = wire.NodeReport.make(BALANCER, epoch=1, nodes=[node])
    cluster.handle(received(report, BALANCER_PEER), 1.0)
    seen = NodeSeen(node=WORKER, role=int(NodeRole.WORKER), host="w", address="tcp://w", slots=2,
                    cache_bytes=10, started_at=3.0, millicpus=4000, memory_bytes=8 << 30,
                    disk_bytes=50 << 30, sandbox="bubblewrap",
                    facts=NodeFacts("0.12.0", 4, 8 << 30, 60 << 30, ("10.0.0.9",)))
    assert proposed(cluster.settle(1.0))[0].commands == (seen,)
    cluster.handle(received(report, BALANCER_PEER), 1.2)
    assert proposed(cluster.settle(1.2)) == []          # nothing new
    lost = wire.NodeReport.make(BALANCER, epoch=1, nodes=[{**node, "state": "lost"}])
    cluster.handle(received(lost, BALANCER_PEER), 1.3)
    assert proposed(cluster.settle(1.3))[0].commands == (NodeLost(WORKER),)


# ---- held status requests --------------------------------------------------------

def test_a_waiting_status_is_answered_when_its_job_ends():
    cluster = with_balancer(free_slots=1)
    cluster.handle(received(submit(chunks=1)), 1.0)
    cluster.settle(1.0)
    asked = status(wait_ms=5000, request_id=12)
    assert cluster.handle(received(asked), 2.0) == []
    assert cluster.leader.status_waiters == 1
    cluster.handle(received(chunk_events(1, event_record(JOB, 0, 1, ChunkState.STARTED),
                                         event_record(JOB, 0, 1, ChunkState.SUCCEEDED)), BALANCER_PEER), 2.5)
    effects = cluster.settle(2.5)
    assert cluster.state.job_state(JOB) is JobState.SUCCEEDED
    assert [effect for effect in effects if isinstance(effect, Reply)] == [status_reply(asked, cluster.state)]
    assert cluster.leader.status_waiters == 0


def test_a_waiting_status_is_answered_at_its_deadline_and_waits_are_capped():
    cluster = leading()
    cluster.handle(received(submit(chunks=1)), 1.0)
    cluster.settle(1.0)
    short, long = status(wait_ms=500, request_id=13), status(wait_ms=10**9, request_id=14)
    cluster.handle(received(short), 2.0)
    cluster.handle(received(long), 2.0)
    assert cluster.handle(Tick(), 2.0) == [Wake(2.5)]
    assert cluster.handle(Tick(), 2.499) == [Wake(2.5)]
    assert cluster.handle(Tick(), 2.5) == [status_reply(short, cluster.state), Wake(2.0 + MAX_STATUS_WAIT_S)]
    assert cluster.handle(Tick(), 2.0 + MAX_STATUS_WAIT_S) == [status_reply(long, cluster.state)]


def test_a_status_of_an_ended_or_unknown_job_is_answered_at_once():
    cluster = leading()
    asked = status(JOB_B, wait_ms=5000, request_id=15)
    assert cluster.handle(received(asked), 1.0) == [
        error(asked, ErrorCode.UNKNOWN_JOB, f"unknown job {JOB_B.hex()}")]


# ---- the contract ----------------------------------------------------------------

def test_anything_but_an_event_is_refused_loudly():
    with pytest.raises(UnknownEventError):
        Leader(MASTER, DirectReader(ClusterState())).handle("tick", 0.0)


def test_a_message_type_it_does_not_serve_is_answered_unexpected():
    cluster = leading()
    asked = wire.StatsQuery.make(CLIENT, request_id=3)
    assert cluster.handle(received(asked), 1.0) == [
        error(asked, ErrorCode.UNEXPECTED, "a master does not accept stats_query")]


CORE_MODULES = ("master/leader.py", "master/client_requests.py", "master/leader_events.py",
                "master/proposals.py", "master/waiters.py", "master/links.py", "master/views.py",
                "master/state.py", "master/queries.py", "master/commands.py", "master/retention.py",
                "master/storage_requests.py", "master/storage_nodes.py", "master/collection.py",
                "master/event_log.py", "master/event_waiters.py")
FORBIDDEN = {"zmq", "threading", "socket", "time", "os", "llfuse", "random"}


@pytest.mark.parametrize("path", CORE_MODULES)
def test_the_core_imports_no_io(path):
    tree = ast.parse((ROOT / path).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & FORBIDDEN


def test_importing_the_core_loads_no_io_module():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, master.leader; print(' '.join(sorted(sys.modules)))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert not {"zmq", "threading", "socket", "llfuse", "pysyncobj"} & set(loaded)


# ---- a leader and a real state, driven by hypothesis --------------------------------

JOB_IDS = [bytes([n]) * 16 for n in range(1, 5)]
MAX_PROGRESS_ROUNDS = 200


class LeaderMachine(RuleBasedStateMachine):
    """Clients, a load balancer and a Raft log around one Leader.

    Checks: every request with a request id gets exactly one reply; the
    leader never lets dispatched-but-unfinished attempts exceed the credit;
    never more proposals outstanding than allowed; a Tick's Wake is in the
    future; chunk-event batches are acknowledged once."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.cluster = Cluster()
        self.request_ids = count(1)
        self.batch_ids = count(1)
        self.asked: dict[Request, int] = {}       # request -> replies seen
        self.acknowledged: Counter[int] = Counter()
        self.dispatched_sent: set[tuple[bytes, int, int]] = set()
        self.leading = True
        self.feed(LEADING)
        self.tick()

    # ---- driving ----------------------------------------------------------

    def feed(self, event) -> list:
        before = self.cluster.leader.dispatching
        effects = self.cluster.handle(event, self.now)
        for effect in effects:
            if isinstance(effect, Reply):
                if effect.request.request_id:
                    assert effect.request in self.asked, f"reply to a request never made: {effect}"
                    self.asked[effect.request] += 1
                    assert self.asked[effect.request] == 1, f"second reply to {effect.request}"
            elif isinstance(effect, Send) and isinstance(effect.message, wire.ChunkEventsAck):
                self.acknowledged[effect.message.batch_id] += 1
                assert self.acknowledged[effect.message.batch_id] == 1
            elif isinstance(effect, Send) and isinstance(effect.message, wire.ChunkDispatch):
                self.dispatched_sent.update((a["job"], a["chunk"], a["attempt"]) for a in effect.message.attempts)
            elif isinstance(effect, Wake):
                assert isinstance(event, Tick) and effect.at > self.now
        link = self.cluster.leader.loadbalancer
        added = self.cluster.leader.dispatching - before
        if added:
            assert link is not None
            assert self.cluster.state.in_flight_count() + len(self.cluster.leader.dispatching) <= link.credit()
        return effects

    def ask(self, message: wire.Message, peer: bytes = CLIENT_PEER) -> None:
        asked = request(message, peer)
        if asked.request_id:
            self.asked[asked] = 0
        self.feed(received(message, peer))

    def tick(self) -> None:
        self.feed(Tick())

    def commit_oldest(self) -> None:
        proposal = self.cluster.log.popleft()
        outcomes = self.cluster.state.apply(list(proposal.commands), self.now)
        self.feed(Committed(proposal.tag, outcomes))

    # ---- rules ------------------------------------------------------------

    @rule(job=st.sampled_from(JOB_IDS), chunks=st.integers(1, 4))
    def submit(self, job, chunks):
        self.ask(submit(job, chunks, next(self.request_ids)))
        self.tick()

    @rule(job=st.sampled_from(JOB_IDS), wait_ms=st.sampled_from([0, 300, 5000, 60_000]))
    def status(self, job, wait_ms):
        self.ask(status(job, next(self.request_ids), wait_ms))
        self.tick()

    @rule(job=st.sampled_from(JOB_IDS))
    def cancel(self, job):
        self.ask(wire.JobCancel.make(CLIENT, request_id=next(self.request_ids), job=job))
        self.tick()

    @rule()
    def query(self):
        self.ask(wire.EventsQuery.make(CLIENT, request_id=next(self.request_ids), after_seq=0, limit=5))
        self.tick()

    @rule()
    def balancer_hello(self):
        self.ask(hello(next(self.request_ids)), BALANCER_PEER)
        self.tick()

    @rule(free=st.integers(0, 4), running=st.integers(0, 4))
    def balancer_heartbeat(self, free, running):
        self.ask(heartbeat(free, running), BALANCER_PEER)
        self.tick()

    @rule(data=st.data(), size=st.integers(0, 3))
    def chunk_events(self, data, size):
        in_flight = sorted((job, chunk, self.cluster.state.job_records[job].chunks[chunk].attempt)
                           for job, chunk in (*self.cluster.state.dispatched, *self.cluster.state.running))
        records = []
        for _ in range(size if in_flight else 0):
            job, chunk, attempt = data.draw(st.sampled_from(in_flight))
            stale = data.draw(st.booleans())
            state = data.draw(st.sampled_from([ChunkState.STARTED, ChunkState.SUCCEEDED, ChunkState.FAILED,
                                               ChunkState.LOST]))
            records.append(event_record(job, chunk, attempt - 1 if stale and attempt > 1 else attempt, state))
        self.ask(chunk_events(next(self.batch_ids), *records), BALANCER_PEER)
        self.tick()

    @precondition(lambda self: self.cluster.log)
    @rule()
    def commit(self):
        self.commit_oldest()
        self.tick()

    @precondition(lambda self: self.cluster.log)
    @rule()
    def fail(self):
        proposal = self.cluster.log.popleft()
        self.feed(ProposalFailed(proposal.tag, "raft: not_leader"))
        self.tick()

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 2.9, 3.0, 5.0, 11.0]))
    def time_passes(self, seconds):
        self.now += seconds
        self.tick()

    @rule()
    def leadership_flips(self):
        self.leading = not self.leading
        self.feed(RaftStatus(ready=True, leader=self.leading, leader_address=None if self.leading else "tcp://m2"))
        self.tick()

    # ---- invariants -------------------------------------------------------

    @invariant()
    def proposals_within_the_limit(self):
        assert self.cluster.leader.outstanding_proposals <= MAX_OUTSTANDING_PROPOSALS

    @invariant()
    def only_attempts_committed_as_dispatched_are_sent(self):
        for job, chunk, attempt in self.dispatched_sent:
            record = self.cluster.state.job_records[job].chunks[chunk]
            assert attempt < record.attempt or (
                attempt == record.attempt and record.phase is not ChunkPhase.QUEUED)

    def teardown(self):
        """Raft commits everything and time runs out: every request is answered."""
        for _ in range(MAX_PROGRESS_ROUNDS):
            if self.cluster.log:
                self.commit_oldest()
            elif self.cluster.leader.outstanding_proposals or self.cluster.leader.queued_commands or \
                    self.cluster.leader.status_waiters:
                self.now += max(PROPOSAL_TIMEOUT_S, MAX_STATUS_WAIT_S)
            else:
                break
            self.tick()
        unanswered = [asked for asked, replies in self.asked.items() if replies != 1]
        assert not unanswered


LeaderMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_leader_state_machine = LeaderMachine.TestCase
