"""client/job_list.py: the arguments of c.jobs() and `uds jobs`, checked
before anything is sent; paging until the limit; the table printed."""
import datetime

import pytest

from uds import wire
from uds.client import cli
from uds.client.job_list import (
    PAGE_LINES, BadJobQueryError, JobSummary, check_limit, job_table, list_jobs, since_seconds, state_values,
)
from uds.wire.enums import JobState

NOW = 1_764_500_000.0


def line(number: int, submitted_at: float, state: JobState = JobState.SUCCEEDED, past: bool = False,
         started_at: float | None = None, finished_at: float | None = None) -> dict:
    return dict(job=number.to_bytes(16, "big"), name=f"job {number}", state=int(state), submitted_at=submitted_at,
                started_at=started_at, finished_at=finished_at, chunk_count=4, chunks_succeeded=2, chunks_failed=1,
                chunks_cancelled=1, chunks_cached=1, past_retention=past, error="")


def test_states_are_names_one_or_many_and_a_bad_one_names_the_allowed_states():
    assert state_values(None) == []
    assert state_values("failed") == [int(JobState.FAILED)]
    assert state_values(["Held", "running", "held"]) == [int(JobState.HELD), int(JobState.RUNNING)]
    for bad in ("finished", ["failed", 3], 7):
        with pytest.raises(BadJobQueryError, match="held, waiting, queued, running, succeeded, failed, cancelled"
                           if not isinstance(bad, int) else "state must be"):
            state_values(bad)
    assert issubclass(BadJobQueryError, ValueError)


def test_since_is_unix_seconds_a_datetime_a_duration_back_or_an_iso_time():
    assert since_seconds(None, NOW) is None
    assert since_seconds(NOW - 5, NOW) == NOW - 5
    assert since_seconds("2h", NOW) == NOW - 7200
    assert since_seconds(" 30m ", NOW) == NOW - 1800
    assert since_seconds("1d", NOW) == NOW - 86400
    assert since_seconds("1.5s", NOW) == NOW - 1.5
    assert since_seconds("1764400000", NOW) == 1_764_400_000.0
    assert since_seconds("2026-11-30T15:00:00+00:00", NOW) == datetime.datetime(
        2026, 11, 30, 15, tzinfo=datetime.timezone.utc).timestamp()
    moment = datetime.datetime(2026, 11, 30, 15, 0, 0)
    assert since_seconds(moment, NOW) == moment.timestamp()
    assert since_seconds(moment.isoformat(), NOW) == moment.timestamp()
    assert since_seconds("100000d", NOW) == 0.0        # before any job: all of them
    for bad in ("2 hours", "-2h", "+2h", "yesterday", "", "2w"):
        with pytest.raises(BadJobQueryError, match="a duration back from now"):
            since_seconds(bad, NOW)
    for bad in (True, [1], b"2h"):
        with pytest.raises(BadJobQueryError, match="since must be"):
            since_seconds(bad, NOW)
    with pytest.raises(BadJobQueryError, match="between 1970 and 2286"):
        since_seconds(-5.0, NOW)


def test_limit_is_positive_or_none():
    assert check_limit(None) is None and check_limit(3) == 3
    for bad in (0, -1, 2.0, "5", True):
        with pytest.raises(BadJobQueryError, match="limit must be"):
            check_limit(bad)


class Pages:
    """A fake master: answers each page from a list of lines, newest first."""

    def __init__(self, lines: list[dict], page_cap: int = PAGE_LINES) -> None:
        self.lines = lines
        self.page_cap = page_cap
        self.asked: list[tuple] = []

    def __call__(self, limit, states, since, before):
        self.asked.append((limit, states, since, before))
        start = 0
        if before is not None:
            start = next(index for index, line in enumerate(self.lines)
                         if (line["submitted_at"], line["job"]) < tuple(before))
        taken = self.lines[start:start + min(limit, self.page_cap)]
        return wire.JobsReply.make(b"M" * 16, request_id=1, jobs=taken,
                                   more=start + len(taken) < len(self.lines))


def test_the_client_pages_with_the_last_line_as_cursor_until_the_limit():
    lines = [line(number, float(number // 2)) for number in range(9, 0, -1)]
    master = Pages(lines, page_cap=2)
    got = list_jobs(master, [3], 5.0, 5)
    assert [job.id for job in got] == [number.to_bytes(16, "big").hex() for number in range(9, 4, -1)]
    assert [asked[0] for asked in master.asked] == [5, 3, 1]
    assert master.asked[1][1:] == ([3], 5.0, [4.0, (8).to_bytes(16, "big")])
    everything = list_jobs(Pages(lines, page_cap=4), [], None, None)
    assert len(everything) == 9
    assert list_jobs(Pages([]), [], None, 10) == []


def test_a_summary_reads_a_job_line():
    summary = JobSummary.from_line(line(5, 100.0, JobState.FAILED, past=True, started_at=101.0, finished_at=131.5))
    assert summary == JobSummary(id=(5).to_bytes(16, "big").hex(), name="job 5", state="failed",
                                 submitted_at=100.0, started_at=101.0, finished_at=131.5, chunk_count=4,
                                 succeeded=2, failed=1, cancelled=1, cached=1, past_retention=True, error="")
    assert summary.duration_s == 30.5
    assert JobSummary.from_line(line(6, 100.0, finished_at=102.0)).duration_s == 2.0     # never started: cancelled
    assert JobSummary.from_line(line(7, 100.0, JobState.RUNNING, started_at=101.0)).duration_s is None


def test_the_table_marks_jobs_past_retention_and_an_empty_list_says_so():
    assert job_table([]) == ["no jobs"]
    jobs = [JobSummary.from_line(line(2, NOW, JobState.RUNNING, started_at=NOW + 1)),
            JobSummary.from_line(line(1, NOW - 4000, past=True, started_at=NOW - 3990, finished_at=NOW - 3000))]
    header, running, past, note = job_table(jobs)
    assert header.split()[:7] == ["job", "name", "state", "submitted", "started", "finished", "duration"]
    assert running.startswith((2).to_bytes(16, "big").hex() + " ")
    assert "running" in running and running.rstrip().endswith("2/1/1/1 of 4")
    assert past.startswith((1).to_bytes(16, "big").hex() + "*")
    assert " 16m30s " in past
    assert note.startswith("* past retention")


@pytest.mark.parametrize("args, message", [
    (["--state", "finished"], "expected one of held, waiting, queued, running, succeeded, failed, cancelled"),
    (["--state", "failed,bogus"], "state 'bogus' is not a job state"),
    (["--since", "yesterday"], "a duration back from now"),
    (["--limit", "0"], "--limit must be 1 or more"),
])
def test_bad_words_are_refused_in_one_line_before_connecting(tmp_path, capsys, args, message):
    assert cli.main(["--cluster", str(tmp_path / "none.toml"), "jobs", *args]) == cli.EXIT_FAILED
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1, error
