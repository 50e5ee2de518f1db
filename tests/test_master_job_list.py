"""master/job_list.py: the job list, newest first by (submitted_at, job),
across the jobs kept and the history lines of those forgotten, filtered and
paged; the leader's answer to jobs_query; and the history line's cached
count, which older snapshots lack."""
import pickle
from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from uds import wire
from uds.master.commands import CancelJob, DispatchAttempts, ForgetJobs, SubmitJob
from uds.master.job_list import MAX_JOBS_PER_PAGE, JobFilter, JobLine, job_page
from uds.master.leader import DirectReader, Leader, RaftStatus, Received, Reply, Request
from uds.master.retention import HistoryLine
from uds.master.state import ClusterState
from uds.wire.enums import ChunkState, ErrorCode, JobState
from uds.wire.records import ChunkEvent, ChunkResult

from test_master_retention import CLIENT, CLIENT_PEER, LEADING, MASTER, PROGRAM, WORKER, job_id

FOLLOWING = RaftStatus(ready=True, leader=False, leader_address="tcp://10.0.0.2:5000")


def submit(job: bytes, chunk_count: int = 1, hold: bool = False) -> SubmitJob:
    return SubmitJob(job=job, name=f"job {int.from_bytes(job, 'big')}", program=PROGRAM, args=(), inputs={},
                     chunk_inputs=(), chunk_count=chunk_count, timeout_s=60.0, max_retries=0, hold=hold)


def finish(state: ClusterState, job: bytes, at: float, failed: bool = False) -> None:
    """Dispatch and end the single chunk of a job."""
    state.apply([DispatchAttempts(((job, 0, 1),))], at)
    outcome = ChunkState.FAILED if failed else ChunkState.SUCCEEDED
    state.apply([ChunkEvent(job=job, chunk=0, attempt=1, state=int(outcome), worker=WORKER,
                            result=ChunkResult(exit_code=1 if failed else 0))], at)


def page(state: ClusterState, limit: int = 100, **wanted) -> tuple[list[bytes], bool]:
    found = job_page(state.job_records, state.history, JobFilter(**wanted), limit)
    return [line.job for line in found.lines], found.more


def every_page(state: ClusterState, limit: int, **wanted) -> list[bytes]:
    """Page through the whole list, as a client does."""
    jobs, before = [], None
    for _ in range(len(state.job_records) + len(state.history.lines) + 1):
        found = job_page(state.job_records, state.history, JobFilter(before=before, **wanted), limit)
        assert len(found.lines) <= limit
        jobs += [line.job for line in found.lines]
        if not found.more:
            return jobs
        assert found.lines, "a page says more follow but holds none"
        last = found.lines[-1]
        before = (last.submitted_at, last.job)
    raise AssertionError(f"paging does not end: {jobs}")


def history_state() -> ClusterState:
    """Jobs 1..3 finished and forgotten, 4 and 5 finished and kept, 6 held,
    7 queued; submitted at 1.0 .. 7.0. Job 2 failed, job 5 too."""
    state = ClusterState()
    for number in range(1, 8):
        state.apply([submit(job_id(number), hold=number == 6)], float(number))
    for number in range(1, 6):
        finish(state, job_id(number), 10.0 + number, failed=number in (2, 5))
    state.apply([ForgetJobs((job_id(1), job_id(2), job_id(3)), 100)], 20.0)
    return state


# ---- the list ----------------------------------------------------------------------

def test_kept_and_forgotten_jobs_are_listed_together_newest_first():
    state = history_state()
    assert page(state) == ([job_id(number) for number in range(7, 0, -1)], False)
    found = job_page(state.job_records, state.history, JobFilter(), 100)
    by_job = {line.job: line for line in found.lines}
    assert by_job[job_id(2)] == JobLine(
        job=job_id(2), name="job 2", state=JobState.FAILED, submitted_at=2.0, started_at=12.0, finished_at=12.0,
        chunk_count=1, chunks_succeeded=0, chunks_failed=1, chunks_cancelled=0, chunks_cached=0,
        past_retention=True, error="chunk 0: exit code 1")
    assert by_job[job_id(4)] == JobLine(
        job=job_id(4), name="job 4", state=JobState.SUCCEEDED, submitted_at=4.0, started_at=14.0,
        finished_at=14.0, chunk_count=1, chunks_succeeded=1, chunks_failed=0, chunks_cancelled=0,
        chunks_cached=0, past_retention=False, error="")
    assert (by_job[job_id(6)].state, by_job[job_id(6)].started_at, by_job[job_id(6)].finished_at) == (
        JobState.HELD, None, None)
    assert by_job[job_id(7)].state is JobState.QUEUED
    record = by_job[job_id(3)].as_record()
    assert wire.decode(wire.encode(wire.JobsReply.make(MASTER, request_id=1, jobs=[record]))).jobs == [record]


def test_states_and_since_filter_both_tables():
    state = history_state()
    assert page(state, states=frozenset({JobState.FAILED})) == ([job_id(5), job_id(2)], False)
    assert page(state, states=frozenset({JobState.HELD, JobState.SUCCEEDED})) == (
        [job_id(6), job_id(4), job_id(3), job_id(1)], False)
    assert page(state, states=frozenset({JobState.RUNNING})) == ([], False)
    # since is inclusive: submitted at or after.
    assert page(state, since=3.0) == ([job_id(number) for number in range(7, 2, -1)], False)
    assert page(state, since=3.0, states=frozenset({JobState.SUCCEEDED})) == ([job_id(4), job_id(3)], False)
    assert page(state, since=8.0) == ([], False)


def test_limit_cuts_a_page_and_says_more_follow_and_the_cursor_crosses_the_retention_boundary():
    state = history_state()
    assert page(state, limit=3) == ([job_id(7), job_id(6), job_id(5)], True)
    assert page(state, limit=3, before=(5.0, job_id(5))) == ([job_id(4), job_id(3), job_id(2)], True)
    assert page(state, limit=3, before=(2.0, job_id(2))) == ([job_id(1)], False)
    assert page(state, limit=1, before=(1.0, job_id(1))) == ([], False)
    assert page(state, limit=7) == ([job_id(number) for number in range(7, 0, -1)], False)
    for limit in range(1, 9):
        assert every_page(state, limit) == [job_id(number) for number in range(7, 0, -1)]
    assert every_page(state, 1, states=frozenset({JobState.FAILED})) == [job_id(5), job_id(2)]


def test_jobs_submitted_at_the_same_time_are_ordered_by_id_and_paged_without_loss():
    state = ClusterState()
    state.apply([submit(job_id(number)) for number in (3, 1, 4, 2)], 5.0)
    state.apply([submit(job_id(9))], 6.0)
    for number in (1, 4):
        finish(state, job_id(number), 7.0)
    state.apply([ForgetJobs((job_id(4),), 10)], 8.0)
    expected = [job_id(9), job_id(4), job_id(3), job_id(2), job_id(1)]
    assert page(state) == (expected, False)
    assert page(state, limit=2, before=(5.0, job_id(4))) == ([job_id(3), job_id(2)], True)
    for limit in range(1, 6):
        assert every_page(state, limit) == expected


def test_a_leader_whose_clock_is_behind_does_not_break_the_order():
    # Job 2 was submitted after job 1 by a leader whose clock is 50 s behind;
    # job 3 finished first, so it was forgotten before job 1.
    state = ClusterState()
    state.apply([submit(job_id(1))], 100.0)
    state.apply([submit(job_id(3))], 120.0)
    state.apply([submit(job_id(2))], 50.0)
    state.apply([submit(job_id(4))], 60.0)
    finish(state, job_id(3), 121.0)
    finish(state, job_id(1), 130.0)
    state.apply([ForgetJobs((job_id(3), job_id(1)), 10)], 140.0)
    expected = [job_id(3), job_id(1), job_id(4), job_id(2)]
    assert page(state) == (expected, False)
    for limit in range(1, 5):
        assert every_page(state, limit) == expected


class Unread(OrderedDict):
    """History lines that must not be read."""

    def items(self):
        raise AssertionError("the history lines were read")


def test_history_lines_older_than_a_full_page_or_than_since_are_not_read():
    state = history_state()
    assert state.history.lines_submitted_by == 3.0
    state.history.lines = Unread(state.history.lines)
    assert page(state, limit=3) == ([job_id(7), job_id(6), job_id(5)], True)
    assert page(state, since=3.5) == ([job_id(7), job_id(6), job_id(5), job_id(4)], False)


def test_the_bound_on_the_lines_is_worked_out_again_when_a_snapshot_loads():
    state = history_state()
    restored = pickle.loads(pickle.dumps(state))
    assert restored == state and restored.history.lines_submitted_by == 3.0
    # Lines dropped leave the bound where it was: still above every line.
    state.apply([ForgetJobs((job_id(4), job_id(5)), 2)], 30.0)
    assert list(state.history.lines) == [job_id(4), job_id(5)] and state.history.lines_submitted_by == 5.0
    state.history.lines.popitem()
    assert pickle.loads(pickle.dumps(state)).history.lines_submitted_by == 4.0
    # The pickled form is the one before the bound existed.
    assert set(state.history.__getstate__()[1]) == {"finished", "finished_chunks", "lines"}


# A job: when submitted (not in order), whether it is held, whether it
# ends (failing or not), whether it is cancelled, whether it is forgotten.
JOBS = st.lists(st.tuples(st.integers(0, 6).map(float), st.booleans(), st.sampled_from(
    ("open", "succeeded", "failed", "cancelled")), st.booleans()), max_size=14)


@settings(max_examples=150, deadline=None)
@given(JOBS, st.integers(1, 6), st.sets(st.sampled_from(list(JobState)), max_size=3),
       st.none() | st.integers(0, 6).map(float))
def test_paging_lists_exactly_the_matching_jobs_newest_first(jobs, limit, states, since):
    state = ClusterState()
    forget = []
    for number, (submitted_at, hold, ending, forgotten) in enumerate(jobs, start=1):
        job = job_id(number)
        state.apply([submit(job, hold=hold and ending == "open")], submitted_at)
        if ending == "cancelled":
            state.apply([CancelJob(job)], 50.0)
        elif ending != "open":
            finish(state, job, 50.0, failed=ending == "failed")
        if forgotten and ending != "open":
            forget.append(job)
    state.apply([ForgetJobs(tuple(forget), 100)], 60.0)
    assert len(state.history.lines) == len(forget)
    every = [(record.submitted_at, job, record.state) for job, record in state.job_records.items()]
    every += [(line.submitted_at, job, JobState(line.state)) for job, line in state.history.lines.items()]
    expected = [job for at, job, job_state in sorted(every, reverse=True)
                if (not states or job_state in states) and (since is None or at >= since)]
    assert every_page(state, limit, states=frozenset(states), since=since) == expected


# ---- the history line --------------------------------------------------------------

def test_a_history_line_pickled_before_chunks_cached_existed_loads_with_none_cached():
    line = HistoryLine(job=job_id(1), name="old", state=int(JobState.SUCCEEDED), submitted_at=1.0,
                       started_at=2.0, finished_at=3.0, chunk_count=4, chunks_succeeded=4, chunks_failed=0,
                       chunks_cancelled=0, error="", output_ids=b"", output_count=0, chunks_cached=3)
    assert pickle.loads(pickle.dumps(line)) == line
    old = HistoryLine.__new__(HistoryLine)
    old.__setstate__(line.__getstate__()[:-1])
    assert old == HistoryLine(**{**{name: getattr(line, name) for name in HistoryLine.__slots__},
                                 "chunks_cached": 0})
    assert line.job_view().chunks_cached == 3


# ---- the leader ---------------------------------------------------------------------

def jobs_query(request_id: int, limit: int, **fields) -> Received:
    message = wire.JobsQuery.make(CLIENT, request_id=request_id, limit=limit, **fields)
    return Received(CLIENT_PEER, wire.decode(wire.encode(message)))


def answer(leader: Leader, query: Received) -> wire.JobsReply:
    [reply] = leader.handle(query, 30.0)
    assert isinstance(reply, Reply) and reply.request == Request(CLIENT_PEER, query.message.request_id,
                                                                 wire.MessageType.JOBS_QUERY)
    return wire.decode(wire.encode(reply.message))


def test_the_leader_answers_a_page_and_the_next_from_its_cursor():
    state = history_state()
    leader = Leader(MASTER, DirectReader(state))
    leader.handle(LEADING, 30.0)
    first = answer(leader, jobs_query(1, 4))
    assert ([line["job"] for line in first.jobs], first.more) == ([job_id(7), job_id(6), job_id(5), job_id(4)], True)
    last = first.jobs[-1]
    second = answer(leader, jobs_query(2, 4, before=[last["submitted_at"], last["job"]]))
    assert ([line["job"] for line in second.jobs], second.more) == ([job_id(3), job_id(2), job_id(1)], False)
    assert [line["past_retention"] for line in second.jobs] == [True] * 3
    failed = answer(leader, jobs_query(3, 10, states=[int(JobState.FAILED)], since=2.0))
    assert [(line["job"], line["state"], line["error"]) for line in failed.jobs] == [
        (job_id(5), int(JobState.FAILED), "chunk 0: exit code 1"), (job_id(2), int(JobState.FAILED),
                                                                   "chunk 0: exit code 1")]


def test_the_leader_caps_a_page_and_a_follower_refuses():
    state = ClusterState()
    state.apply([submit(job_id(number)) for number in range(1, MAX_JOBS_PER_PAGE + 3)], 1.0)
    leader = Leader(MASTER, DirectReader(state))
    leader.handle(LEADING, 30.0)
    capped = answer(leader, jobs_query(1, 100_000))
    assert (len(capped.jobs), capped.more) == (MAX_JOBS_PER_PAGE, True)
    assert capped.jobs[0]["job"] == job_id(MAX_JOBS_PER_PAGE + 2)
    assert len(answer(leader, jobs_query(2, 0)).jobs) == 1
    leader.handle(FOLLOWING, 31.0)
    [refused] = leader.handle(jobs_query(3, 10), 31.0)
    assert refused.message.error_code == ErrorCode.NOT_LEADER


def test_a_page_too_long_for_one_body_is_cut_and_says_more_follow(monkeypatch):
    state = history_state()
    leader = Leader(MASTER, DirectReader(state))
    leader.handle(LEADING, 30.0)
    monkeypatch.setattr(wire, "items_that_fit", lambda items: 2)
    cut = answer(leader, jobs_query(1, 100))
    assert ([line["job"] for line in cut.jobs], cut.more) == ([job_id(7), job_id(6)], True)
