"""Every attempt of a chunk kept, on a real phase-1 cluster: a chunk retried
twice leaves three attempts, each one's stdout and stderr readable through
the library and `uds logs --attempt`, with its class, worker and timeline;
`uds status --chunk` lists them, each with its phases drawn. A chunk that
reads an input and stores an output has every step of its timeline, in
order."""
import pytest

from test_cli import uds as run_uds
from uds.errors import InvalidJobError, UnknownJobError

WAIT_S = 60.0
# The masters keep running_at and committed_at on a millisecond grid.
GRID_S = 0.001
# The worker's steps are on its clock, the others on the masters': one machine here.
CLOCKS_S = 0.005
# Each attempt prints what no other attempt prints, so each log blob differs.
PROGRAM = (b'#!/bin/sh\necho "out of $UDS_JOB attempt $UDS_ATTEMPT"\n'
           b'echo "err of attempt $UDS_ATTEMPT" >&2\nexit 3\n')


def uds(cluster, *args, check=True):
    return run_uds(*args, cluster_dir=cluster.layout.path, check=check)


@pytest.fixture(scope="module")
def retried(shared_cluster):
    """A one-chunk job whose every attempt fails, retried twice."""
    job = shared_cluster.connection.submit_job(PROGRAM, max_retries=2, timeout=WAIT_S)
    status = job.wait(timeout=WAIT_S)
    assert status.state == "failed" and status.chunks[0].attempt == 3, status
    return job


def expected_logs(job, number):
    return f"out of {job.id} attempt {number}\n".encode(), f"err of attempt {number}\n".encode()


def test_each_attempt_is_kept_with_its_class_worker_result_and_timeline(shared_cluster, retried):
    workers = {node["node"].hex() for node in shared_cluster.connection.nodes() if node["role"] == 5}
    attempts = retried.attempts(0)
    assert attempts.dropped == 0
    assert [(a.number, a.state, a.failure, a.exit_code) for a in attempts] == [
        (number, "failed", "application", 3) for number in (1, 2, 3)]
    assert all(a.worker in workers for a in attempts), (attempts, workers)
    assert len({a.stdout for a in attempts}) == len({a.stderr for a in attempts}) == 3
    steps = []
    for attempt in attempts:
        timeline = attempt.timeline
        assert list(timeline) == ["dispatched", "assigned", "started", "first_read", "ended", "uploaded",
                                  "committed"]
        assert timeline["first_read"] is None, attempt            # it reads no input
        del timeline["first_read"]
        assert None not in timeline.values(), attempt             # its logs were stored
        steps.extend(timeline.values())
        assert attempt.usage.wall_s > 0 and attempt.result.elapsed_s > 0
    assert all(later >= earlier - GRID_S for earlier, later in zip(steps, steps[1:])), steps


def test_each_attempts_logs_are_readable_through_the_library(shared_cluster, retried):
    for number in (1, 2, 3):
        assert retried.logs(0, attempt=number) == expected_logs(retried, number)
    assert retried.logs(0) == expected_logs(retried, 3)
    with pytest.raises(IndexError, match="no attempt 4 kept"):
        retried.logs(0, attempt=4)


def test_each_attempts_logs_are_readable_through_uds_logs(shared_cluster, retried):
    for number in (1, 2, 3):
        stdout, stderr = expected_logs(retried, number)
        shown = uds(shared_cluster, "logs", retried.id, "--chunk", "0", "--attempt", str(number), "--stream", "stdout")
        assert shown.stdout == stdout
        shown = uds(shared_cluster, "logs", retried.id, "--chunk", "0", "--attempt", str(number), "--stream", "stderr")
        assert shown.stdout == stderr
    missing = uds(shared_cluster, "logs", retried.id, "--attempt", "7", check=False)
    assert missing.returncode == 1
    assert missing.stderr.decode() == f"uds: job {retried.id} chunk 0 has no attempt 7 kept (attempts kept: 1..3)\n"


def test_uds_status_of_a_chunk_lists_its_attempts(shared_cluster, retried):
    shown = uds(shared_cluster, "status", retried.id, "--chunk", "0", check=False)
    assert shown.returncode == 1            # the job failed
    lines = shown.stdout.decode().splitlines()
    attempt_lines = [line.split() for line in lines if line.lstrip().startswith("attempt ")]
    assert [words[:4] for words in attempt_lines] == [
        ["attempt", str(number), "failed", "(application)"] for number in (1, 2, 3)]
    timelines = [line.split() for line in lines if line.lstrip().startswith("dispatched ")]
    assert len(timelines) == 3 and all(
        words[::2] == ["dispatched", "assigned", "started", "ended", "uploaded", "committed"] for words in timelines)
    phases = [line.strip() for line in lines if line.lstrip().startswith("dispatch ")]
    assert len(phases) == 3 and all(" | start " in line and " | run " in line and " | commit " in line
                                    for line in phases), lines
    bars = [line.strip() for line in lines if line.lstrip().startswith("[")]
    assert len(bars) == 3 and all(len(bar) == 62 and "r" in bar for bar in bars), lines


def test_a_chunk_that_reads_an_input_has_its_whole_timeline_in_order(shared_cluster):
    program = b'#!/bin/sh\ncat "$UDS_INPUTS/data" > "$UDS_OUTPUT/copy"\n'
    job = shared_cluster.connection.submit_job(program, inputs={"data": b"read me\n"}, timeout=WAIT_S)
    status = job.wait(timeout=WAIT_S)
    assert status.state == "succeeded", status
    [attempt] = job.attempts(0)
    timeline = attempt.timeline
    assert None not in timeline.values(), timeline
    steps = [timeline[step] for step in ("dispatched", "assigned", "started", "first_read", "ended", "uploaded",
                                         "committed")]
    assert all(later >= earlier - CLOCKS_S for earlier, later in zip(steps, steps[1:])), timeline
    assert [name for name, _, _ in attempt.phases()] == ["dispatch", "start", "first read", "run", "upload",
                                                         "commit"]


def test_an_attempts_question_names_what_is_not_there(shared_cluster, retried):
    connection = shared_cluster.connection
    unknown = "5a" * 16
    with pytest.raises(UnknownJobError, match=f"unknown job {unknown}"):
        connection.attempts(unknown, 0)
    with pytest.raises(InvalidJobError, match=f"job {retried.id} has 1 chunks, no chunk 5"):
        connection.attempts(retried.id, 5)


def test_uds_status_of_a_chunk_that_is_not_there_is_one_line(shared_cluster, retried):
    shown = uds(shared_cluster, "status", retried.id, "--chunk", "4", check=False)
    assert (shown.returncode, shown.stderr.decode()) == (1, f"uds: job {retried.id} has 1 chunks, no chunk 4\n")
