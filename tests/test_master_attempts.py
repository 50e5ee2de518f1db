"""master/attempts.py: every attempt of a chunk kept with its class, worker,
result and timeline, through the state's transitions; the attempts query
of the leader; old records; what the kept attempts hold from collection."""
import pickle
from dataclasses import replace

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from uds import wire
from uds.master import attempts
from uds.master.attempts import MAX_PAST_ATTEMPTS, chunk_attempts
from uds.master.collection import reference_snapshot
from uds.master.commands import (
    CancelJob, ChunkPhase, DispatchAttempts, ForgetJobs, NodeLost, RunTimers, SubmitJob, pack_result,
)
from uds.master.records import ChunkRecord, JobRecord, _unpack_chunks
from uds.master.state import ClusterState
from uds.wire.enums import ChunkState, ErrorCode
from uds.wire.records import NO_RESULT, NO_WORKER, ChunkEvent, ChunkResult

from test_master_leader import CLIENT, MASTER, error, leading, received, request
from test_master_state import JOB_A, PROGRAM, WORKER_1, WORKER_2, worker_seen

LOGS = [bytes([0x40 + index]) * 16 for index in range(8)]


def spec(chunks: int = 1, max_retries: int = 2, **changes) -> SubmitJob:
    return replace(SubmitJob(job=JOB_A, name="a", program=PROGRAM, args=(), inputs={}, chunk_inputs=(),
                             chunk_count=chunks, timeout_s=60.0, max_retries=max_retries), **changes)


def report(state: ClusterState, chunk: int, ending: ChunkState, now: float, worker: bytes = WORKER_1,
           started: bool = True, **result) -> None:
    """The current attempt of `chunk` is dispatched, maybe started, and ends as `ending`."""
    attempt = state.job_records[JOB_A].chunks[chunk].attempt
    if state.job_records[JOB_A].chunks[chunk].phase is ChunkPhase.QUEUED:
        state.apply([DispatchAttempts(((JOB_A, chunk, attempt),))], now)
    if started:
        state.apply([ChunkEvent(JOB_A, chunk, attempt, int(ChunkState.STARTED), worker)], now + 0.25)
    [outcome] = state.apply([ChunkEvent(JOB_A, chunk, attempt, int(ending), worker,
                                        result=ChunkResult(**result))], now + 1.0)
    assert outcome.ok, outcome


def attempts_of(state: ClusterState, chunk: int = 0):
    return chunk_attempts(state.job_records[JOB_A].chunks[chunk])


def test_a_chunk_retried_twice_keeps_its_three_attempts_with_class_worker_result_and_timeline():
    state = ClusterState()
    state.apply([spec()], 1.0)
    for number, worker in enumerate((WORKER_1, WORKER_2, WORKER_1)):
        report(state, 0, ChunkState.FAILED, 10.0 * (number + 1), worker=worker, exit_code=3,
               stderr=(LOGS[number], 9), ended_at=100.0 + number)
    views, dropped = attempts_of(state)
    assert dropped == 0
    assert [(v.attempt, v.state, v.failure, v.worker) for v in views] == [
        (1, "failed", "application", WORKER_1), (2, "failed", "application", WORKER_2),
        (3, "failed", "application", WORKER_1)]
    assert [(v.dispatched_at, v.running_at, v.committed_at) for v in views] == [
        (10.0, 10.25, 11.0), (20.0, 20.25, 21.0), (30.0, 30.25, 31.0)]
    assert [v.result.stderr for v in views] == [(log, 9) for log in LOGS[:3]]
    assert [v.result.ended_at for v in views] == [100.0, 101.0, 102.0]
    assert pickle.loads(pickle.dumps(state)) == state


def test_infrastructure_endings_are_kept_with_their_class_and_state():
    state = ClusterState()
    state.apply([spec(max_retries=0), worker_seen(worker=WORKER_1)], 1.0)
    report(state, 0, ChunkState.REJECTED, 10.0, error="no disk")
    state.apply([RunTimers()], 20.0)                         # the refusal's backoff passes
    report(state, 0, ChunkState.CANCELLED, 30.0, worker=NO_WORKER, started=False)   # taken back
    report(state, 0, ChunkState.STARTED, 40.0, started=False)
    state.apply([NodeLost(WORKER_1)], 50.0)
    report(state, 0, ChunkState.SUCCEEDED, 60.0, worker=WORKER_2, exit_code=0)
    views, _ = attempts_of(state)
    assert [(v.attempt, v.state, v.failure, v.worker) for v in views] == [
        (1, "rejected", "infrastructure", WORKER_1), (2, "cancelled", "infrastructure", None),
        (3, "lost", "infrastructure", WORKER_1), (4, "succeeded", "", WORKER_2)]
    assert views[1].running_at is None and views[1].dispatched_at == 30.0
    assert (views[2].running_at, views[2].committed_at) == (41.0, 50.0)
    assert views[0].result.error == "no disk" and views[2].result.error == "worker lost"


def test_final_endings_read_as_what_ended_them():
    state = ClusterState()
    state.apply([spec(chunks=4, max_retries=0, poison_after=1)], 1.0)
    report(state, 0, ChunkState.TIMED_OUT, 10.0)
    report(state, 1, ChunkState.LOST, 10.0)
    report(state, 2, ChunkState.STARTED, 10.0, started=False)
    state.apply([CancelJob(JOB_A)], 20.0)
    current = [attempts_of(state, chunk)[0][-1] for chunk in range(4)]
    assert [(v.state, v.failure, v.committed_at is not None) for v in current] == [
        ("timed_out", "application", True), ("lost", "infrastructure", True),
        ("cancelled", "", True), ("cancelled", "", True)]
    assert current[2].worker == WORKER_1 and current[2].running_at == 11.0 and current[2].result == NO_RESULT
    assert current[3].dispatched_at is None and current[3].worker is None and current[3].committed_at == 20.0


def test_open_attempts_read_as_queued_dispatched_or_running():
    state = ClusterState()
    state.apply([spec(chunks=3)], 1.0)
    state.apply([DispatchAttempts(((JOB_A, 1, 1), (JOB_A, 2, 1)))], 2.0)
    state.apply([ChunkEvent(JOB_A, 2, 1, int(ChunkState.STARTED), WORKER_1)], 3.0)
    assert [attempts_of(state, chunk)[0][-1].state for chunk in range(3)] == ["queued", "dispatched", "running"]
    assert attempts_of(state, 2)[0][-1].running_at == 3.0


def test_a_cached_result_is_an_attempt_of_its_own():
    state = ClusterState()
    state.apply([spec(max_retries=0, cache=True)], 1.0)
    report(state, 0, ChunkState.SUCCEEDED, 10.0, exit_code=0, stdout=(LOGS[0], 1))
    state.apply([spec(max_retries=0, cache=True, job=b"B" * 16)], 20.0)
    [cached], dropped = chunk_attempts(state.job_records[b"B" * 16].chunks[0])
    assert (cached.attempt, cached.state, cached.committed_at, cached.result.stdout) == (
        1, "cached", 20.0, (LOGS[0], 1))


def test_only_the_newest_attempts_are_kept_and_the_rest_counted():
    state = ClusterState()
    state.apply([spec(max_retries=0), worker_seen(worker=WORKER_1)], 1.0)
    for number in range(MAX_PAST_ATTEMPTS + 5):
        report(state, 0, ChunkState.STARTED, 10.0 * number, started=False)
        state.apply([NodeLost(WORKER_1), worker_seen(worker=WORKER_1)], 10.0 * number + 5)
        state.job_records[JOB_A].chunks[0].lost_count = 0        # never poison, for this count
    views, dropped = attempts_of(state)
    assert dropped == 5 and len(views) == MAX_PAST_ATTEMPTS + 1
    assert [v.attempt for v in views] == list(range(6, MAX_PAST_ATTEMPTS + 7))
    assert pickle.loads(pickle.dumps(state)) == state


def test_records_pickled_before_attempts_load_with_an_empty_timeline():
    result = pack_result(ChunkResult(exit_code=0))
    chunk = ChunkRecord.__new__(ChunkRecord)
    chunk.__setstate__((ChunkPhase.SUCCEEDED, 2, 1, 0, WORKER_1, result, "a"))
    assert chunk == ChunkRecord(ChunkPhase.SUCCEEDED, 2, 1, 0, WORKER_1, result, "a")
    old = msgpack.packb([(4, 2, 1, 0, WORKER_1, result, "a")], use_bin_type=True)
    [unpacked] = _unpack_chunks(old)
    assert unpacked == chunk
    views, dropped = chunk_attempts(unpacked)
    assert dropped == 0 and [(v.attempt, v.state, v.dispatched_at, v.committed_at) for v in views] == [
        (2, "succeeded", None, None)]


def test_a_record_with_its_timeline_and_past_pickles_back_equal():
    state = ClusterState()
    state.apply([spec(chunks=2, max_retries=1)], 1.0)
    report(state, 0, ChunkState.FAILED, 1_764_500_000.1234567, stderr=(LOGS[0], 3))
    report(state, 0, ChunkState.SUCCEEDED, 1_764_500_100.987654, exit_code=0)
    record = state.job_records[JOB_A]
    restored = pickle.loads(pickle.dumps(record))
    assert restored == record
    assert chunk_attempts(restored.chunks[0]) == chunk_attempts(record.chunks[0])
    unchanged = ChunkRecord()
    assert pickle.loads(pickle.dumps(unchanged)) == unchanged


TIMES = st.floats(0.0, 4e9, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(TIMES, TIMES, TIMES, st.booleans(), st.booleans()), min_size=1, max_size=10))
def test_any_timeline_reads_back_exactly_from_a_snapshot(timelines):
    chunks = []
    for dispatched, running, ended, started, retried in timelines:
        chunk = ChunkRecord()
        attempts.dispatched(chunk, dispatched)
        if started:
            attempts.started(chunk, running)
        if retried:
            attempts.requeued(chunk, ChunkEvent(JOB_A, 0, 1, int(ChunkState.LOST), WORKER_1), ended)
            chunk.attempt += 1
            attempts.dispatched(chunk, running)
        attempts.ended(chunk, int(ChunkState.SUCCEEDED), ended)
        chunks.append(chunk)
    record = JobRecord(spec=spec(chunks=len(chunks)), submitted_at=1.0, chunks=chunks)
    restored = pickle.loads(pickle.dumps(record))
    assert restored == record
    assert [chunk_attempts(chunk) for chunk in restored.chunks] == [chunk_attempts(chunk) for chunk in chunks]


def test_files_of_past_attempts_are_referenced_while_the_job_is_kept_and_released_with_it():
    state = ClusterState()
    state.apply([spec(max_retries=1)], 1.0)
    report(state, 0, ChunkState.FAILED, 10.0, stdout=(LOGS[0], 1), stderr=(LOGS[1], 1),
           outputs={"partial": (LOGS[2], 1)})
    report(state, 0, ChunkState.SUCCEEDED, 20.0, exit_code=0, stdout=(LOGS[3], 1))
    asked = LOGS[:5]
    assert reference_snapshot(state, asked, 30.0, 60.0).collectable() == {LOGS[4]}
    state.apply([ForgetJobs((JOB_A,), 10, 60.0)], 40.0)
    assert not state.job_records
    assert reference_snapshot(state, asked, 50.0, 60.0).collectable() == {LOGS[4]}
    assert reference_snapshot(state, asked, 101.0, 60.0).collectable() == set(asked)


# ---- the leader's attempts query ---------------------------------------------------

def ask(job: bytes = JOB_A, chunk: int = 0, request_id: int = 9) -> wire.AttemptsQuery:
    return wire.AttemptsQuery.make(CLIENT, request_id=request_id, job=job, chunk=chunk)


def test_the_leader_answers_a_chunks_attempts():
    cluster = leading()
    cluster.state.apply([spec()], 1.0)
    report(cluster.state, 0, ChunkState.FAILED, 10.0, stderr=(LOGS[0], 2), exit_code=1)
    asked = ask()
    [answer] = cluster.handle(received(asked), 20.0)
    assert answer.request == request(asked)
    reply = wire.decode(wire.encode(answer.message))
    assert isinstance(reply, wire.AttemptsReply) and reply.job_uuid == JOB_A and reply.chunk == 0
    assert reply.attempts_dropped == 0
    assert [(a["attempt"], a["state"], a["failure"], a["worker"], a["dispatched_at"], a["committed_at"])
            for a in reply.attempts] == [(1, "failed", "application", WORKER_1, 10.0, 11.0),
                                         (2, "queued", "", None, None, None)]
    assert reply.attempts[0]["stderr"] == [LOGS[0], 2]


def test_an_attempts_query_names_what_it_cannot_find():
    cluster = leading()
    cluster.state.apply([spec(chunks=2, max_retries=0)], 1.0)
    for chunk in range(2):
        report(cluster.state, chunk, ChunkState.SUCCEEDED, 5.0, exit_code=0)
    other = b"O" * 16
    for asked, code, reason in (
            (ask(other), ErrorCode.UNKNOWN_JOB, f"unknown job {other.hex()}"),
            (ask(chunk=2), ErrorCode.INVALID, f"job {JOB_A.hex()} has 2 chunks, no chunk 2")):
        assert cluster.handle(received(asked), 10.0) == [error(asked, code, reason)]
    cluster.state.apply([ForgetJobs((JOB_A,), 10, 0.0)], 20.0)
    asked = ask()
    assert cluster.handle(received(asked), 30.0) == [error(
        asked, ErrorCode.UNKNOWN_JOB, f"job {JOB_A.hex()} is past retention: its attempts are no longer kept")]


def test_only_the_leader_answers_an_attempts_query():
    from uds.master.leader import RaftStatus
    from test_master_leader import Cluster
    follower = Cluster()
    follower.handle(RaftStatus(ready=True, leader=False, leader_address="tcp://m2"), 0.0)
    [refused] = follower.handle(received(ask()), 1.0)
    assert refused.message.error_code == ErrorCode.NOT_LEADER


def test_an_attempt_a_balancer_ends_keeps_the_worker_that_started_it():
    state = ClusterState()
    state.apply([spec(max_retries=0)], 1.0)
    state.apply([DispatchAttempts(((JOB_A, 0, 1),))], 20.0)
    state.apply([ChunkEvent(JOB_A, 0, 1, int(ChunkState.STARTED), WORKER_2)], 21.0)
    state.apply([ChunkEvent(JOB_A, 0, 1, int(ChunkState.LOST), NO_WORKER)], 22.0)   # the balancer's report
    views, _ = attempts_of(state)
    assert [(v.attempt, v.state, v.worker) for v in views] == [(1, "lost", WORKER_2), (2, "queued", None)]


def test_a_reply_holds_the_newest_attempts_that_fit_one_body_and_counts_the_rest():
    from uds.master.attempts import AttemptView
    from uds.master.views import attempts_reply
    outputs = {f"{'o' * 100}/{index}": (index.to_bytes(16, "big"), 1) for index in range(1000)}
    views = [AttemptView(attempt=number, state="failed", failure="application", worker=WORKER_1,
                         dispatched_at=1.0, running_at=2.0, committed_at=3.0,
                         result=ChunkResult(exit_code=1, outputs=outputs))
             for number in range(1, MAX_PAST_ATTEMPTS + 2)]
    reply = wire.decode(wire.encode(attempts_reply(MASTER, 5, JOB_A, 0, views, dropped=7)))
    kept = [record["attempt"] for record in reply.attempts]
    assert 0 < len(kept) < len(views)
    assert kept == list(range(len(views) - len(kept) + 1, len(views) + 1))
    assert reply.attempts_dropped == 7 + len(views) - len(kept)
