"""master/retention.py: finished jobs leave the replicated state for a
compact history line, chosen by the leader and applied alike everywhere;
then a hypothesis state machine that checks no unfinished job is ever
forgotten and the caps hold."""
import copy
import pathlib
import pickle
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from uds import wire
from uds.master.commands import (
    CancelJob, CancelOutcome, DispatchAttempts, ForgetJobs, ForgetOutcome, SubmitJob, SubmitOutcome,
)
from uds.master.leader import (
    PROPOSAL_TIMEOUT_S, Committed, DirectReader, Leader, Propose, RaftStatus, Received, Reply,
    Request, Tick, Wake,
)
from uds.master.retention import (
    HISTORY_OUTPUT_IDS, HistoryLine, jobs_to_forget, next_due_at,
)
from uds.master.state import ClusterState
from uds.wire import cluster as cluster_file
from uds.wire.cluster import Retention, StoragePolicy
from uds.wire.enums import ChunkState, ErrorCode, JobState
from uds.wire.records import ChunkEvent, ChunkResult

WORKER = bytes.fromhex("01" * 16)
PROGRAM = (bytes.fromhex("f0" * 16), 1234)
MASTER = b"M" * 16
CLIENT = b"C" * 16
CLIENT_PEER = b"client-peer"
LEADING = RaftStatus(ready=True, leader=True, leader_address=None)
DAY_S = 24 * 3600.0


def job_id(number: int) -> bytes:
    return number.to_bytes(16, "big")


def output_id(job: bytes, chunk: int) -> bytes:
    return bytes([chunk % 256]) + job[1:]


def submit(job: bytes, chunk_count: int = 2, name: str = "demo", max_retries: int = 0) -> SubmitJob:
    return SubmitJob(job=job, name=name, program=PROGRAM, args=(), inputs={}, chunk_inputs=(),
                     chunk_count=chunk_count, timeout_s=60.0, max_retries=max_retries)


def ended(job: bytes, chunk: int, state: ChunkState = ChunkState.SUCCEEDED, attempt: int = 1) -> ChunkEvent:
    succeeded = state == ChunkState.SUCCEEDED
    return ChunkEvent(job=job, chunk=chunk, attempt=attempt, state=int(state), worker=WORKER,
                      result=ChunkResult(exit_code=0 if succeeded else 1,
                                         outputs={"out": (output_id(job, chunk), 5)} if succeeded else {}))


def run(state: ClusterState, job: bytes, chunk_count: int, submitted_at: float, finished_at: float,
        failed_chunks: tuple[int, ...] = ()) -> None:
    """Submit, dispatch and end every chunk of a job."""
    state.apply([submit(job, chunk_count)], submitted_at)
    state.apply([DispatchAttempts(tuple((job, chunk, 1) for chunk in range(chunk_count)))], submitted_at + 1)
    state.apply([ended(job, chunk, ChunkState.FAILED if chunk in failed_chunks else ChunkState.SUCCEEDED)
                 for chunk in range(chunk_count)], finished_at)


# ---- the state ------------------------------------------------------------------

def test_a_forgotten_job_leaves_a_history_line_with_its_times_counts_and_outputs():
    state = ClusterState()
    run(state, job_id(1), 3, submitted_at=10.0, finished_at=20.0, failed_chunks=(1,))
    [outcome] = state.apply([ForgetJobs((job_id(1),), 100)], 30.0)
    assert outcome == ForgetOutcome(forgotten=1)
    assert state.job_view(job_id(1)) is None and not state.job_records
    line = state.history_line(job_id(1))
    assert line == HistoryLine(
        job=job_id(1), name="demo", state=int(JobState.FAILED), submitted_at=10.0, started_at=11.0,
        finished_at=20.0, chunk_count=3, chunks_succeeded=2, chunks_failed=1, chunks_cancelled=0,
        error="chunk 1: exit code 1", output_ids=output_id(job_id(1), 0) + output_id(job_id(1), 2),
        output_count=2)
    assert line.outputs == [output_id(job_id(1), 0), output_id(job_id(1), 2)]
    assert state.job_state(job_id(1)) is JobState.FAILED
    assert state.forgotten_jobs(10) == [line]
    assert state.events_after(0, 1000)[0][-1][2:5] == ("job_forgotten", job_id(1), None)


def test_a_history_line_keeps_a_bounded_number_of_output_ids():
    state = ClusterState()
    run(state, job_id(1), HISTORY_OUTPUT_IDS + 10, 1.0, 2.0)
    state.apply([ForgetJobs((job_id(1),), 100)], 3.0)
    line = state.history_line(job_id(1))
    assert len(line.outputs) == HISTORY_OUTPUT_IDS
    assert line.output_count == HISTORY_OUTPUT_IDS + 10


def test_a_job_not_finished_is_never_forgotten_whatever_the_command_lists():
    state = ClusterState()
    state.apply([submit(job_id(1)), submit(job_id(2))], 1.0)
    state.apply([DispatchAttempts(((job_id(2), 0, 1),))], 2.0)
    before = copy.deepcopy(state)
    [outcome] = state.apply([ForgetJobs((job_id(1), job_id(2), job_id(3)), 100)], 3.0)
    assert outcome == ForgetOutcome(forgotten=0, skipped=3)
    assert state == before


def test_malformed_forget_commands_are_refused_and_change_nothing():
    state = ClusterState()
    run(state, job_id(1), 1, 1.0, 2.0)
    before = copy.deepcopy(state)
    for command in (ForgetJobs((b"short",), 10), ForgetJobs((job_id(1),), -1), ForgetJobs(job_id(1), 10),
                    ForgetJobs((job_id(1),), 1.5), ForgetJobs(([job_id(1)],), 10)):
        [outcome] = state.apply([command], 3.0)
        assert (outcome.ok, outcome.error_code) == (False, ErrorCode.INVALID)
        assert state == before


def test_history_lines_beyond_the_cap_are_dropped_oldest_forgotten_first():
    state = ClusterState()
    for number in range(1, 5):
        run(state, job_id(number), 1, float(number), float(number) + 0.5)
    state.apply([ForgetJobs((job_id(2), job_id(1)), 3)], 10.0)
    state.apply([ForgetJobs((job_id(4), job_id(3)), 3)], 11.0)
    assert [line.job for line in state.forgotten_jobs(10)] == [job_id(3), job_id(4), job_id(1)]
    assert state.history_line(job_id(2)) is None and state.job_state(job_id(2)) is None
    assert state.status_view(job_id(2)) is None


def test_a_forgotten_job_is_not_run_again_nor_cancelled():
    state = ClusterState()
    run(state, job_id(1), 2, 1.0, 2.0)
    state.apply([ForgetJobs((job_id(1),), 10)], 3.0)
    before = copy.deepcopy(state)
    assert state.apply([submit(job_id(1)), CancelJob(job_id(1))], 4.0) == [
        SubmitOutcome(created=False), CancelOutcome(changed=False)]
    assert state == before
    assert state.ready_attempts(10) == []


def test_jobs_fall_due_by_age_then_by_the_caps_oldest_finished_first():
    state = ClusterState()
    run(state, job_id(2), 5, 1.0, 50.0)     # finished first
    run(state, job_id(1), 1, 1.0, 100.0)
    run(state, job_id(3), 1, 1.0, 200.0)
    policy = Retention(period_s=DAY_S, max_finished_jobs=10, max_finished_chunks=100)
    assert next_due_at(state, policy) == 50.0 + DAY_S
    assert jobs_to_forget(state, policy, 50.0 + DAY_S - 0.001) == []
    assert jobs_to_forget(state, policy, 50.0 + DAY_S) == [job_id(2)]
    assert jobs_to_forget(state, policy, 200.0 + DAY_S) == [job_id(2), job_id(1), job_id(3)]
    assert jobs_to_forget(state, replace(policy, max_finished_jobs=1), 300.0) == [job_id(2), job_id(1)]
    assert jobs_to_forget(state, replace(policy, max_finished_chunks=2), 300.0) == [job_id(2)]
    assert jobs_to_forget(state, replace(policy, max_finished_chunks=1), 300.0) == [job_id(2), job_id(1)]
    assert jobs_to_forget(state, replace(policy, max_finished_jobs=0), 300.0, limit=2) == [job_id(2), job_id(1)]
    assert next_due_at(ClusterState(), policy) is None


def test_the_history_pickles_with_the_state_and_carries_on_identically():
    state = ClusterState()
    run(state, job_id(1), 2, 1.0, 2.0)
    run(state, job_id(2), 1, 1.0, 3.0)
    state.apply([ForgetJobs((job_id(1),), 10)], 4.0)
    restored = pickle.loads(pickle.dumps(state))
    assert restored == state
    assert restored.history.finished_chunks == state.history.finished_chunks == 1
    follow_up = [ForgetJobs((job_id(2),), 1), submit(job_id(1)), submit(job_id(3))]
    assert restored.apply(follow_up, 5.0) == state.apply(follow_up, 5.0)
    assert restored == state


# ---- the cluster file -------------------------------------------------------------

def cluster_with(tmp_path, table: str) -> pathlib.Path:
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_file.render(
        keys="keys", masters=[{"address": "tcp://127.0.0.1:1", "raft": "127.0.0.1:2", "data": "m"}],
        loadbalancers=[{"address": "tcp://127.0.0.1:3", "data": "l"}],
        storage=[{"address": "tcp://127.0.0.1:4", "data": "s"}], workers={"slots": 2}) + table)
    return path


def test_the_retention_table_has_defaults_and_is_checked_at_load(tmp_path):
    assert cluster_file.retention(cluster_file.load(cluster_with(tmp_path, ""))) == Retention(
        period_s=7 * DAY_S, max_finished_jobs=10_000, max_finished_chunks=250_000, history_lines=100_000)
    loaded = cluster_file.load(cluster_with(tmp_path, "\n[retention]\nperiod_s = 60\nmax_finished_jobs = 5\n"))
    assert cluster_file.retention(loaded) == Retention(period_s=60.0, max_finished_jobs=5)
    for table, why in (("period_s = -1", "zero or more"), ("max_finished_jobs = 1.5", "expected int"),
                       ("history = 3", "unknown key"), ("history_lines = true", "expected int")):
        with pytest.raises(cluster_file.ClusterFileError, match=why):
            cluster_file.load(cluster_with(tmp_path, f"\n[retention]\n{table}\n"))


# ---- the leader ---------------------------------------------------------------------

def status(job: bytes, request_id: int, wait_ms: int = 0, detail: int = 0) -> Received:
    message = wire.JobStatus.make(CLIENT, request_id=request_id, job=job, detail=detail, wait_ms=wait_ms,
                                  first_chunk=0, max_chunks=0)
    return Received(CLIENT_PEER, wire.decode(wire.encode(message)))


def test_the_leader_forgets_what_falls_due_and_answers_status_from_the_history_line():
    state = ClusterState()
    run(state, job_id(1), 2, 1.0, 5.0)
    run(state, job_id(2), 1, 2.0, 6.0)
    state.apply([submit(job_id(3))], 7.0)
    leader = Leader(MASTER, DirectReader(state), retention=Retention(period_s=100.0, max_finished_jobs=1,
                                                                     history_lines=1))
    leader.handle(LEADING, 10.0)
    effects = leader.handle(Tick(), 10.0)
    announce, forget = [effect for effect in effects if isinstance(effect, Propose)][0].commands
    # The forgotten job's files stay out of collection for the grace period.
    assert forget == ForgetJobs((job_id(1),), 1, StoragePolicy().gc_grace_s)
    assert effects[-1] == Wake(10.0 + PROPOSAL_TIMEOUT_S)
    assert leader.handle(Tick(), 10.5) == [Wake(10.0 + PROPOSAL_TIMEOUT_S)]    # one at a time
    leader.handle(Committed(1, state.apply([announce, forget], 11.0)), 11.0)
    assert leader.counters["jobs_forgotten"] == 1
    # Job 2 falls due by age: the leader wakes for it.
    assert leader.handle(Tick(), 12.0) == [Wake(6.0 + 100.0)]

    [reply] = leader.handle(status(job_id(1), 7), 12.0)
    message = wire.decode(wire.encode(reply.message))
    assert (reply.request, type(message)) == (Request(CLIENT_PEER, 7, wire.MessageType.JOB_STATUS),
                                              wire.JobStatusReply)
    assert (message.job_uuid, message.state, message.chunk_count, message.chunks_succeeded,
            message.chunks_failed, message.submitted_at, message.finished_at) == (
        job_id(1), int(JobState.SUCCEEDED), 2, 2, 0, 1.0, 5.0)
    assert (message.first_chunk, message.next_chunk, message.chunks) == (2, 2, [])
    assert (message.past_retention, message.waiting) == (1, "")
    # A detailed or waiting status is answered at once, from the line too.
    [waited] = leader.handle(status(job_id(1), 8, wait_ms=5000, detail=1), 12.0)
    assert wire.decode(wire.encode(waited.message)).past_retention == 1
    # A job still kept is not past retention.
    [kept] = leader.handle(status(job_id(2), 10), 12.0)
    assert wire.decode(wire.encode(kept.message)).past_retention == 0

    effects = leader.handle(Tick(), 106.0)
    [proposal] = [effect for effect in effects if isinstance(effect, Propose)]
    assert proposal.commands == (ForgetJobs((job_id(2),), 1, StoragePolicy().gc_grace_s),)
    leader.handle(Committed(proposal.tag, state.apply(list(proposal.commands), 106.0)), 106.0)
    # Job 1's line made way for job 2's: job 1 is now unknown; job 3 never finished.
    [unknown] = leader.handle(status(job_id(1), 9), 107.0)
    assert isinstance(unknown, Reply) and unknown.message.error_code == ErrorCode.UNKNOWN_JOB
    assert state.job_state(job_id(2)) is JobState.SUCCEEDED and state.job_state(job_id(3)) is JobState.QUEUED
    assert leader.handle(Tick(), 200.0) == []


# ---- the state machine ---------------------------------------------------------------

JOB_IDS = [job_id(number) for number in range(1, 9)]


class RetentionMachine(RuleBasedStateMachine):
    """Jobs run, end and are forgotten under random settings, by what the
    leader would choose and by commands listing any job at all."""

    def __init__(self) -> None:
        super().__init__()
        self.state = ClusterState()
        self.now = 0.0
        self.history: list[tuple[list, float]] = []
        self.submitted: set[bytes] = set()
        self.forgotten: set[bytes] = set()
        self.finished: dict[bytes, JobState] = {}

    def apply(self, commands: list, advance: float = 1.0) -> list:
        self.now += advance
        self.history.append((commands, self.now))
        return self.state.apply(commands, self.now)

    @rule(job=st.sampled_from(JOB_IDS), chunk_count=st.integers(1, 3))
    def submit(self, job, chunk_count):
        line = self.state.history_line(job)
        [outcome] = self.apply([submit(job, chunk_count, max_retries=1)])
        if line is not None:
            assert outcome == SubmitOutcome(created=False)     # not run again
        elif outcome.created:
            # Never known, or forgotten so long ago that its line is gone: a new job.
            self.forgotten.discard(job)
            self.finished.pop(job, None)
        self.submitted.add(job)

    @precondition(lambda self: self.state.ready_attempts(1))
    @rule(limit=st.integers(1, 4))
    def dispatch(self, limit):
        self.apply([DispatchAttempts(tuple(attempt[:3] for attempt in self.state.ready_attempts(limit)))])

    @precondition(lambda self: self.state.in_flight_count())
    @rule(data=st.data(), state=st.sampled_from([ChunkState.SUCCEEDED, ChunkState.FAILED, ChunkState.LOST]))
    def end(self, data, state):
        in_flight = sorted(self.state.dispatched) + sorted(self.state.running)
        job, chunk = data.draw(st.sampled_from(in_flight))
        attempt = self.state.job_records[job].chunks[chunk].attempt
        self.apply([ended(job, chunk, state, attempt)])

    @rule(job=st.sampled_from(JOB_IDS))
    def cancel(self, job):
        self.apply([CancelJob(job)])

    @rule(advance=st.sampled_from([0.0, 1.0, 50.0]), period_s=st.sampled_from([0.0, 30.0, 1e9]),
          max_jobs=st.integers(0, 4), max_chunks=st.integers(0, 8), lines=st.integers(0, 5),
          limit=st.integers(1, 8))
    def forget_as_the_leader_would(self, advance, period_s, max_jobs, max_chunks, lines, limit):
        self.note_finished()
        policy = Retention(period_s=period_s, max_finished_jobs=max_jobs, max_finished_chunks=max_chunks,
                           history_lines=lines)
        chosen = jobs_to_forget(self.state, policy, self.now + advance, limit)
        [outcome] = self.apply([ForgetJobs(tuple(chosen), lines)], advance)
        assert outcome == ForgetOutcome(forgotten=len(chosen))
        self.forgotten.update(chosen)
        if len(chosen) < limit:
            # The caps hold, and nothing kept is past the period.
            assert len(self.state.history.finished) <= max_jobs
            assert self.state.history.finished_chunks <= max_chunks
            assert jobs_to_forget(self.state, policy, self.now) == []
        assert len(self.state.history.lines) <= lines

    @rule(jobs=st.lists(st.sampled_from(JOB_IDS), max_size=4))
    def forget_any(self, jobs):
        """A command listing jobs in any state: only finished ones go."""
        self.note_finished()
        finished = {job for job, record in self.state.job_records.items() if record.finished_at is not None}
        [outcome] = self.apply([ForgetJobs(tuple(jobs), 100)])
        assert outcome.forgotten == len(finished & set(jobs))
        self.forgotten.update(finished & set(jobs))

    def note_finished(self):
        for job, record in self.state.job_records.items():
            if record.finished_at is not None:
                self.finished[job] = record.state

    @invariant()
    def no_unfinished_job_is_ever_forgotten(self):
        state = self.state
        for job in self.submitted:
            record = state.job_records.get(job)
            if record is None:
                assert job in self.forgotten and job in self.finished
                line = state.history_line(job)
                assert line is None or JobState(line.state) is self.finished[job]
            else:
                assert job not in self.forgotten
        finished = [job for job, record in state.job_records.items() if record.finished_at is not None]
        assert sorted(state.history.finished) == sorted(finished)
        assert state.history.finished_chunks == sum(state.job_records[job].spec.chunk_count for job in finished)
        assert not set(state.history.lines) & set(state.job_records)
        for table in (state.queued, state.dispatched, state.running):
            assert all(job in state.job_records for job, _ in table)

    def teardown(self):
        replica = ClusterState()
        for commands, now in self.history:
            replica.apply(commands, now)
        assert replica == self.state
        assert pickle.loads(pickle.dumps(self.state)) == self.state


RetentionMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_retention_machine = RetentionMachine.TestCase
