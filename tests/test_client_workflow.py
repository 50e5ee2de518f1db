"""The client's side of workflows, without a cluster: OutputRef, the
checks of submit_job's workflow arguments and the job_submit they build
(caught where the connection would send it), release_job, the new status
fields, the `uds` command's words for them and what `uds status` prints."""
from __future__ import annotations

import datetime
import pathlib
import time

import pytest

from uds import wire
from uds.client import cli, devcluster
from uds.client.api import Connection
from uds.client.jobs import Job, JobStatus, OutputRef
from uds.client.status_view import failures_text, status_lines
from uds.client.workflow import input_from_text, iso_time, time_from_text
from uds.errors import InvalidJobError, UnknownJobError
from uds.wire.messages import ALL_CHUNKS, SAME_CHUNK

PRODUCER = "ab" * 16
OTHER = "cd" * 16
PROGRAM = b"#!/bin/sh\ntrue\n"
NOW = time.time()      # the tests ask for times hours from it, so a slow run cannot pass them


@pytest.fixture(scope="module")
def cluster_path(tmp_path_factory):
    return devcluster.write_cluster_file(tmp_path_factory.mktemp("cluster"), workers=1, slots=1)


class Leader:
    """Stands for the masters: records each request, encoded and decoded as
    the wire would carry it, and answers it."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.sent: list[wire.Message] = []
        self.stored: list[bytes] = []
        self.status = dict(state=int(wire.JobState.HELD))    # the job's fields in status replies
        self.refuse: Exception | None = None

    def ask(self, make, expected, patience_s=0.0):
        message = wire.decode(wire.encode(make(7)))
        self.sent.append(message)
        if self.refuse is not None:
            raise self.refuse
        if expected is wire.JobSubmitReply:
            return wire.JobSubmitReply.make(self.connection.node_id, request_id=7, job=message.job_uuid, created=1)
        if isinstance(message, wire.JobStatus):    # a status asked with detail gets every chunk's report
            reports = [chunk_report(0, "waiting"), chunk_report(1, "waiting")]
            return status_reply(job=message.job_uuid, chunks=reports, **self.status)
        return status_reply(job=message.job_uuid, **self.status)

    def put(self, source, progress=None):
        data = bytes(source) if isinstance(source, (bytes, bytearray)) else pathlib.Path(source).read_bytes()
        self.stored.append(data)
        return len(self.stored).to_bytes(16, "big"), len(data)


def status_reply(job=bytes(range(16)), chunks=(), **fields):
    values = dict(state=int(wire.JobState.RUNNING), chunk_count=2, chunks_succeeded=0, chunks_failed=0,
                  first_chunk=0, next_chunk=len(chunks), name="count", submitted_at=1.0, finished_at=None,
                  error="", chunks=list(chunks))
    values.update(fields)
    return wire.decode(wire.encode(wire.JobStatusReply.make(bytes(16), request_id=7, job=job, **values)))


def chunk_report(chunk, state, failures=(), **fields):
    report = dict(chunk=chunk, state=state, attempt=len(failures) + 1, worker=None, failures=list(failures),
                  exit_code=None, outputs={}, stdout=None, stderr=None, error="", elapsed_s=0.0,
                  bytes_from_cache=0, bytes_from_storage=0, cpu_user_s=0.0, cpu_system_s=0.0,
                  peak_memory_bytes=0, output_bytes=0, assigned_at=0.0, started_at=0.0, first_read_at=0.0, ended_at=0.0,
                  uploaded_at=0.0)
    report.update(fields)
    return report


@pytest.fixture
def leader(cluster_path, monkeypatch):
    connection = Connection(cluster_path)
    fake = Leader(connection)
    monkeypatch.setattr(connection, "_ask", fake.ask)
    monkeypatch.setattr(connection, "_put", fake.put)
    monkeypatch.setattr(connection, "_touch", lambda refs: None)
    try:
        yield fake
    finally:
        connection.close()


# -- OutputRef -------------------------------------------------------------------

def test_output_refs_name_one_chunk_the_same_chunk_or_every_chunk():
    producer = Job(None, PRODUCER)
    assert producer.output_ref("part.txt") == OutputRef(PRODUCER, "part.txt", SAME_CHUNK)
    assert producer.output_ref("a/b/part.txt", chunk=3) == OutputRef(PRODUCER, "a/b/part.txt", 3)
    assert producer.outputs_ref("part.txt") == OutputRef(PRODUCER, "part.txt", ALL_CHUNKS)
    assert OutputRef(PRODUCER.upper(), "x").job == PRODUCER
    refs = (producer.output_ref("o"), producer.output_ref("o", 2), producer.outputs_ref("o"))
    assert [str(ref) for ref in refs] == [f"{PRODUCER}:o", f"{PRODUCER}:o:2", f"{PRODUCER}:o:*"]
    assert OutputRef(PRODUCER, "o", 4).as_body("in", 1) == dict(
        name="in", chunk=1, job=bytes.fromhex(PRODUCER), output="o", from_chunk=4)


@pytest.mark.parametrize("make, message", [
    (lambda: Job(None, PRODUCER).output_ref("../part"), "not a relative path"),
    (lambda: Job(None, PRODUCER).output_ref("a//b"), "not a relative path"),
    (lambda: Job(None, PRODUCER).output_ref(""), "not a relative path"),
    (lambda: Job(None, PRODUCER).output_ref("/abs"), "not a relative path"),
    (lambda: Job(None, PRODUCER).output_ref(7), "expected string"),
    (lambda: Job(None, PRODUCER).output_ref("x", chunk=-1), "chunk must be a chunk index"),
    (lambda: Job(None, PRODUCER).output_ref("x", chunk=True), "chunk must be a chunk index"),
    (lambda: Job(None, PRODUCER).output_ref("x", chunk="3"), "chunk must be a chunk index"),
    (lambda: OutputRef(PRODUCER, "x", -3), "chunk must be a chunk index"),
    (lambda: OutputRef("nothex", "x"), "job id of 32 hex"),
    (lambda: OutputRef(bytes(16), "x"), "job id of 32 hex"),
])
def test_a_bad_output_ref_is_refused_when_made(make, message):
    with pytest.raises(InvalidJobError, match=message):
        make()


# -- submit_job ------------------------------------------------------------------

def test_output_refs_go_to_refs_and_files_to_inputs(leader):
    producer = Job(leader.connection, PRODUCER)
    job = leader.connection.submit_job(
        PROGRAM, chunks=2, inputs={"part.txt": producer.output_ref("part.txt"), "data": b"data"},
        chunk_inputs=[{"all": producer.outputs_ref("o"), "own": b"zero"}, {"one": producer.output_ref("o", 1)}])
    [message] = leader.sent
    assert isinstance(message, wire.JobSubmit) and message.job_uuid.hex() == job.id
    assert set(message.inputs) == {"data"}
    assert [set(per_chunk) for per_chunk in message.chunk_inputs] == [{"own"}, set()]
    producer_id = bytes.fromhex(PRODUCER)
    assert message.refs == [
        dict(name="part.txt", chunk=-1, job=producer_id, output="part.txt", from_chunk=SAME_CHUNK),
        dict(name="all", chunk=0, job=producer_id, output="o", from_chunk=ALL_CHUNKS),
        dict(name="one", chunk=1, job=producer_id, output="o", from_chunk=1),
    ]
    assert leader.stored == [PROGRAM, b"data", b"zero"]       # refs are not uploaded
    assert (message.after, message.start_at, message.deadline, message.hold, message.cache,
            message.retry_backoff_s) == ([], None, None, False, False, 0.0)


def test_after_times_hold_cache_and_backoff_are_sent(leader, monkeypatch):
    monkeypatch.setenv("TZ", "JST-9")               # naive datetimes are local time
    time.tzset()
    try:
        naive_start = datetime.datetime(2030, 1, 1, 9, 0, 0)
        aware_deadline = datetime.datetime(2030, 1, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)
        leader.connection.submit_job(PROGRAM, after=[Job(None, PRODUCER), OTHER.upper(), PRODUCER],
                                     start_at=naive_start, deadline=aware_deadline, hold=True, cache=True,
                                     retry_backoff=2.5)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    [message] = leader.sent
    assert message.after == [bytes.fromhex(PRODUCER), bytes.fromhex(OTHER)]     # each once, in order
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    assert (message.start_at, message.deadline) == (start, start + 3600)
    assert (message.hold, message.cache, message.retry_backoff_s, message.refs) == (True, True, 2.5, [])
    leader.connection.submit_job(PROGRAM, start_at=NOW - 60, deadline=NOW + 86400)   # a start past is now
    assert (leader.sent[1].start_at, leader.sent[1].deadline) == (NOW - 60, NOW + 86400)


OWN = "ef" * 16


@pytest.mark.parametrize("arguments, message", [
    (dict(after=PRODUCER), "after must be a list of jobs"),
    (dict(after=7), "after must be a list of jobs"),
    (dict(after=["nothex"]), r"after\[0\]: expected a Job or a job id of 32 hex"),
    (dict(after=[bytes(16)]), r"after\[0\]: expected a Job or a job id"),
    (dict(after=[OWN], job_id=OWN), "cannot wait for itself"),
    (dict(inputs={"x": Job(None, OWN).output_ref("o")}, job_id=OWN), "input 'x': job .* its own output"),
    (dict(inputs={"a/b": Job(None, PRODUCER).output_ref("o")}), "plain file name"),
    (dict(inputs={"x": Job(None, PRODUCER).output_ref("o")}, chunk_inputs=[{"x": b"y"}]), "also a job input"),
    (dict(start_at="tomorrow"), "start_at must be unix seconds or a datetime, got str"),
    (dict(start_at=True), "start_at must be unix seconds or a datetime, got bool"),
    (dict(start_at=-5), "start_at must be a time between 1970 and 2286"),
    (dict(start_at=float("nan")), "start_at must be a time between"),
    (dict(deadline=float("inf")), "deadline must be a time between"),
    (dict(deadline=datetime.date(2030, 1, 1)), "deadline must be unix seconds or a datetime, got date"),
    (dict(deadline=NOW - 1), "has already passed"),
    (dict(start_at=NOW + 86400, deadline=NOW + 3600), "is not after start_at"),
    (dict(start_at=NOW + 86400, deadline=NOW + 86400), "is not after start_at"),
    (dict(retry_backoff=-1), "retry_backoff must be a number of seconds from 0"),
    (dict(retry_backoff=True), "retry_backoff must be a number"),
    (dict(retry_backoff="5s"), "retry_backoff must be a number"),
    (dict(retry_backoff=1e9), "retry_backoff must be a number of seconds from 0 to 86400"),
    (dict(hold="yes"), "hold must be True or False"),
    (dict(cache=1), "cache must be True or False"),
])
def test_bad_workflow_arguments_are_refused_before_anything_is_sent(leader, arguments, message):
    with pytest.raises(InvalidJobError, match=message):
        leader.connection.submit_job(PROGRAM, **arguments)
    assert leader.sent == [] and leader.stored == []


def test_a_job_refused_by_the_masters_says_why(leader):
    leader.refuse = UnknownJobError(wire.ErrorCode.UNKNOWN_JOB, f"unknown job {PRODUCER}")
    with pytest.raises(UnknownJobError, match=f"unknown job {PRODUCER}"):
        leader.connection.submit_job(PROGRAM, after=[PRODUCER])
    assert len(leader.sent) == 1


# -- release and status ------------------------------------------------------------

def test_release_asks_the_masters_and_gives_the_status_after(leader):
    leader.status = dict(state=int(wire.JobState.WAITING), waiting=f"waiting for job {PRODUCER}",
                         after=[bytes.fromhex(PRODUCER)])
    status = Job(leader.connection, OTHER).release()
    [message] = leader.sent
    assert isinstance(message, wire.JobRelease) and message.job_uuid.hex() == OTHER
    assert (status.id, status.state, status.waiting, status.after) == (
        OTHER, "waiting", f"waiting for job {PRODUCER}", (PRODUCER,))
    with pytest.raises(Exception, match="32 hex"):
        leader.connection.release_job("nothex")


def test_status_carries_cached_counts_times_dependencies_and_failure_classes():
    reply = status_reply(state=int(wire.JobState.SUCCEEDED), chunks_succeeded=2, chunks_cached=1, cache=True,
                         after=[bytes.fromhex(PRODUCER)], start_at=100.0, deadline=200.0, finished_at=150.0,
                         chunks=[chunk_report(0, "cached", exit_code=0),
                                 chunk_report(1, "succeeded", ["infrastructure", "application"], exit_code=0)])
    status = JobStatus.from_reply(reply)
    assert (status.state, status.succeeded, status.cached, status.cache) == ("succeeded", 2, 1, True)
    assert (status.after, status.start_at, status.deadline, status.done) == ((PRODUCER,), 100.0, 200.0, True)
    assert [(chunk.state, chunk.failures) for chunk in status.chunks] == [
        ("cached", ()), ("succeeded", ("infrastructure", "application"))]
    for state, name in ((wire.JobState.HELD, "held"), (wire.JobState.WAITING, "waiting")):
        status = JobStatus.from_reply(status_reply(state=int(state)))
        assert status.state == name and not status.done


def test_wait_goes_on_through_held_and_waiting():
    class Answers:
        def __init__(self):
            self.states = ["held", "held", "waiting", "queued", "succeeded"]
            self.asked = 0

        def job_status(self, job_id, detail=True, wait=0.0, **_asked):
            self.asked += 1
            state = self.states[0] if len(self.states) == 1 else self.states.pop(0)
            return JobStatus(id=job_id, name="", state=state, chunk_count=1, succeeded=int(state == "succeeded"),
                             failed=0, submitted_at=1.0, finished_at=None, error="")

    answers = Answers()
    seen = []
    final = Job(answers, OTHER).wait(timeout=10, progress=lambda status: seen.append(status.state))
    assert final.state == "succeeded"
    assert seen == ["held", "held", "waiting", "queued", "succeeded"]


# -- what `uds status` prints ----------------------------------------------------------

def test_status_lines_show_waiting_held_cached_times_dependencies_and_failures():
    reply = status_reply(
        state=int(wire.JobState.RUNNING), chunk_count=4, chunks_succeeded=2, chunks_cached=1, cache=True,
        after=[bytes.fromhex(PRODUCER), bytes.fromhex(OTHER)], start_at=1_900_000_000.0,
        deadline=1_900_003_600.0,
        chunks=[chunk_report(0, "cached", exit_code=0, outputs={"o": (bytes(16), 3)}),
                chunk_report(1, "succeeded", ["infrastructure", "infrastructure", "application"], exit_code=0),
                chunk_report(2, "delayed", ["application"], exit_code=1, error="exit code 1"),
                chunk_report(3, "waiting")])
    lines = status_lines(JobStatus.from_reply(reply))
    assert lines[0].endswith("'count': running, 2 succeeded (1 cached), 0 failed of 4 chunks"), lines
    assert "cache: on, 1 of 4 chunks reused" in lines
    assert f"after: {PRODUCER}, {OTHER}" in lines
    assert f"starts at: {iso_time(1_900_000_000.0)}" in lines
    assert f"deadline: {iso_time(1_900_003_600.0)}" in lines
    chunks = {int(line.split()[1]): line for line in lines if line.startswith("  chunk")}
    assert "cached" in chunks[0] and "cpu " in chunks[0] and f"o={'00' * 16}" in chunks[0]
    assert "failed attempts: infrastructure x2, application" in chunks[1]
    assert "delayed" in chunks[2] and "failed attempts: application" in chunks[2] and "(exit code 1)" in chunks[2]
    assert "waiting" in chunks[3] and "failed attempts" not in chunks[3] and "cpu " not in chunks[3]

    held = status_lines(JobStatus.from_reply(status_reply(
        state=int(wire.JobState.HELD), waiting="held", job=bytes.fromhex(OTHER))))
    assert f"held: it goes on once released (`uds release {OTHER}`)" in held and "waiting: held" in held
    assert not any(line.startswith(("cache:", "after:", "starts at:", "deadline:")) for line in held), held
    waiting = status_lines(JobStatus.from_reply(status_reply(
        state=int(wire.JobState.WAITING), waiting=f"waiting for job {PRODUCER}")))
    assert f"waiting: waiting for job {PRODUCER}" in waiting and not any("held" in line for line in waiting)


def test_failure_runs_are_counted_in_order():
    assert failures_text([]) == ""
    assert failures_text(["application"]) == "application"
    assert failures_text(["application", "infrastructure", "infrastructure", "application"]) == \
        "application, infrastructure x2, application"


# -- the command's words ---------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    (f"{PRODUCER}:part.txt", OutputRef(PRODUCER, "part.txt", SAME_CHUNK)),
    (f"{PRODUCER.upper()}:a/b.txt:3", OutputRef(PRODUCER, "a/b.txt", 3)),
    (f"{PRODUCER}:part.txt:*", OutputRef(PRODUCER, "part.txt", ALL_CHUNKS)),
    (f"{PRODUCER}:odd:name:0", OutputRef(PRODUCER, "odd:name", 0)),
    ("data.txt", "data.txt"),
    (PRODUCER, PRODUCER),                          # a file id, as today
    ("/some/path:3", "/some/path:3"),
    (f"{PRODUCER[:-1]}:x", f"{PRODUCER[:-1]}:x"),  # 31 hex: a path
])
def test_an_input_value_is_a_file_or_another_jobs_output(text, expected):
    assert input_from_text(text) == expected


@pytest.mark.parametrize("text", [f"{PRODUCER}:../x", f"{PRODUCER}::3", f"{PRODUCER}:a//b:*"])
def test_an_output_of_a_job_that_is_no_relative_path_is_refused(text):
    with pytest.raises(InvalidJobError, match="not a relative path"):
        input_from_text(text)


def test_times_are_iso_8601_or_a_duration_from_now(monkeypatch):
    now = 1_800_000_000.0
    assert [time_from_text(text, now, "--start-at") for text in ("+90s", "+10m", "+2h", "+1d", "+1.5h", " +0s")] \
        == [now + 90, now + 600, now + 7200, now + 86400, now + 5400, now]
    utc = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    assert time_from_text("2030-01-01T00:00:00Z", now, "--deadline") == utc
    assert time_from_text("2030-01-01T01:00+01:00", now, "--deadline") == utc
    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    try:
        assert time_from_text("2030-01-01T09:00", now, "--deadline") == utc    # naive: local time
        assert time_from_text("2030-01-01 09:00:00", now, "--deadline") == utc
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize("text", ["tomorrow", "+10", "+m", "10m", "+10 minutes", "-10m", "2030-13-01", ""])
def test_a_time_that_is_neither_is_refused_saying_what_is_taken(text):
    with pytest.raises(InvalidJobError, match=r"--start-at .*: expected an ISO 8601 time .* or \+DURATION"):
        time_from_text(text, 0.0, "--start-at")


def run_command(leader, monkeypatch, capsys, *words):
    monkeypatch.setattr(cli, "_connect", lambda options: leader.connection)
    code = cli.main(list(words))
    return code, capsys.readouterr()


def test_uds_submit_sends_refs_after_times_hold_cache_and_backoff(leader, monkeypatch, capsys, tmp_path):
    program = tmp_path / "reduce.sh"
    program.write_bytes(PROGRAM)
    before = time.time()
    code, shown = run_command(
        leader, monkeypatch, capsys, "submit", str(program), "--chunks", "2",
        "--input", f"part={PRODUCER}:out/part.txt", "--input", f"all={PRODUCER}:out/part.txt:*",
        "--chunk-input", f"1:one={OTHER}:o:0", "--after", OTHER, "--after", PRODUCER,
        "--start-at", "+10m", "--deadline", "2286-01-01T00:00:00Z", "--hold", "--cache", "--retry-backoff", "2.5")
    assert code == 0, shown.err
    [message] = leader.sent
    assert shown.out.strip() == message.job_uuid.hex()
    assert message.refs == [
        dict(name="part", chunk=-1, job=bytes.fromhex(PRODUCER), output="out/part.txt", from_chunk=SAME_CHUNK),
        dict(name="all", chunk=-1, job=bytes.fromhex(PRODUCER), output="out/part.txt", from_chunk=ALL_CHUNKS),
        dict(name="one", chunk=1, job=bytes.fromhex(OTHER), output="o", from_chunk=0)]
    assert message.inputs == {} and message.chunk_inputs == [{}, {}]
    assert message.after == [bytes.fromhex(OTHER), bytes.fromhex(PRODUCER)]
    assert before + 600 <= message.start_at <= time.time() + 600
    assert message.deadline == datetime.datetime(2286, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
    assert (message.hold, message.cache, message.retry_backoff_s) == (True, True, 2.5)


def test_uds_submit_without_workflow_options_sends_none(leader, monkeypatch, capsys, tmp_path):
    program = tmp_path / "map.sh"
    program.write_bytes(PROGRAM)
    data = tmp_path / "data.txt"
    data.write_bytes(b"words")
    code, shown = run_command(leader, monkeypatch, capsys, "submit", str(program), "--input", f"data.txt={data}")
    assert code == 0, shown.err
    [message] = leader.sent
    assert list(message.inputs) == ["data.txt"] and leader.stored == [PROGRAM, b"words"]
    assert (message.refs, message.after, message.start_at, message.deadline, message.hold, message.cache,
            message.retry_backoff_s) == ([], [], None, None, False, False, 0.0)


@pytest.mark.parametrize("words, error", [
    (("--start-at", "soon"), "uds: --start-at 'soon': expected an ISO 8601 time"),
    (("--deadline", "+5"), "uds: --deadline '+5': expected an ISO 8601 time"),
    (("--deadline", "2001-01-01T00:00Z"), "has already passed"),
    (("--start-at", "+2h", "--deadline", "+1h"), "is not after start_at"),
    (("--after", "nothex"), "after[0]: expected a Job or a job id of 32 hex"),
    (("--retry-backoff", "-1"), "retry_backoff must be a number of seconds from 0"),
    (("--input", f"x={PRODUCER}:../o"), "is not a relative path"),
])
def test_uds_submit_refuses_bad_workflow_words_in_one_line_sending_nothing(leader, monkeypatch, capsys, tmp_path,
                                                                          words, error):
    program = tmp_path / "p.sh"
    program.write_bytes(PROGRAM)
    code, shown = run_command(leader, monkeypatch, capsys, "submit", str(program), *words)
    assert code == cli.EXIT_FAILED
    assert len(shown.err.strip().splitlines()) == 1 and error in shown.err, shown.err
    assert leader.sent == [] and leader.stored == []


def test_uds_release_prints_the_status_and_an_unknown_job_is_one_line(leader, monkeypatch, capsys):
    leader.status = dict(state=int(wire.JobState.QUEUED))
    code, shown = run_command(leader, monkeypatch, capsys, "release", OTHER)
    assert code == 0
    assert isinstance(leader.sent[0], wire.JobRelease) and leader.sent[0].job_uuid.hex() == OTHER
    assert f"job {OTHER} 'count': queued, 0 succeeded, 0 failed of 2 chunks" in shown.out
    leader.refuse = UnknownJobError(wire.ErrorCode.UNKNOWN_JOB, f"unknown job {OTHER}")
    code, shown = run_command(leader, monkeypatch, capsys, "release", OTHER)
    assert code == cli.EXIT_FAILED and shown.err.strip() == f"uds: unknown job {OTHER}"


@pytest.mark.parametrize("state, code", [(wire.JobState.HELD, 0), (wire.JobState.WAITING, 0),
                                         (wire.JobState.FAILED, cli.EXIT_FAILED)])
def test_uds_status_of_a_held_or_waiting_job_is_no_failure(leader, monkeypatch, capsys, state, code):
    leader.status = dict(state=int(state), waiting="held" if state == wire.JobState.HELD else "")
    exit_code, shown = run_command(leader, monkeypatch, capsys, "status", OTHER)
    assert exit_code == code, shown
    assert f": {state.name.lower()}, " in shown.out
