"""The job list as a client sees it: `c.jobs(state=..., since=..., limit=...)`
and `uds jobs`, newest first, the jobs the masters keep and those past
retention (from their history lines) alike.

Pure apart from the one function that asks (`list_jobs` is given the asking
function): the arguments are checked here before anything is sent, and the
time is passed in.
"""
from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from uds.client.workflow import UNIT_SECONDS, iso_time, unix_seconds
from uds.errors import ClientError, InvalidJobError
from uds.wire.enums import JobState
from uds.wire.schema import SECONDS

# Job states by the names a client uses, in the order a job goes through them.
STATE_NAMES = ("held", "waiting", "queued", "running", "succeeded", "failed", "cancelled")
# The most lines the masters put in one page (master/job_list.py MAX_JOBS_PER_PAGE).
PAGE_LINES = 1000
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?)([smhd])")
SINCE_FORMS = ("a duration back from now (90s, 30m, 2h, 1d), an ISO 8601 time (2026-11-30T15:00, local "
               "unless it has an offset or Z) or unix seconds")


class BadJobQueryError(ClientError, ValueError):
    """A state, since or limit that the job list cannot take; nothing was sent."""


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One job of the list: its state, times and counts. A job past retention
    (`past_retention`) is known only by its history line: `c.job(id).status()`
    gives the same counts and no chunks."""

    id: str                          # 32 hex characters
    name: str
    state: str                       # held, waiting, queued, running, succeeded, failed, cancelled
    submitted_at: float              # unix seconds, the masters' clock
    started_at: float | None         # its first dispatch; None: none yet
    finished_at: float | None        # None: not final
    chunk_count: int
    succeeded: int                   # cached ones included
    failed: int
    cancelled: int
    cached: int                      # of `succeeded`: results reused
    past_retention: bool
    error: str                       # the first chunk failure, or ""

    @classmethod
    def from_line(cls, line: dict) -> JobSummary:
        """From a JOB_LINE record of a jobs_reply."""
        return cls(id=bytes(line["job"]).hex(), name=line["name"], state=JobState(line["state"]).name.lower(),
                   submitted_at=line["submitted_at"], started_at=line["started_at"],
                   finished_at=line["finished_at"], chunk_count=line["chunk_count"],
                   succeeded=line["chunks_succeeded"], failed=line["chunks_failed"],
                   cancelled=line["chunks_cancelled"], cached=line["chunks_cached"],
                   past_retention=bool(line["past_retention"]), error=line["error"])

    @property
    def duration_s(self) -> float | None:
        """From its first dispatch (else its submission) to its end; None until it ends."""
        if self.finished_at is None:
            return None
        return max(0.0, self.finished_at - (self.submitted_at if self.started_at is None else self.started_at))


# -- the arguments -----------------------------------------------------------------

def state_values(state: str | Iterable[str] | None) -> list[int]:
    """The JobState values of `state`: None (any state), a name, or names."""
    if state is None:
        return []
    names = [state] if isinstance(state, str) else state
    try:
        names = list(names)
    except TypeError:
        raise BadJobQueryError(f"state must be a job state's name or a list of them, got {state!r}") from None
    values = []
    for name in names:
        if not isinstance(name, str) or name.strip().lower() not in STATE_NAMES:
            raise BadJobQueryError(f"state {name!r} is not a job state: expected one of {', '.join(STATE_NAMES)}")
        values.append(int(JobState[name.strip().upper()]))
    return list(dict.fromkeys(values))


def since_seconds(since: Any, now: float) -> float | None:
    """`since` as unix seconds: None, unix seconds, a datetime (naive: local
    time), or text: a duration back from `now` ("2h": the last two hours),
    an ISO 8601 time or unix seconds."""
    if since is None:
        return None
    if isinstance(since, str):
        return _since_from_text(since, now)
    if not isinstance(since, (datetime.datetime, int, float)) or isinstance(since, bool):
        raise BadJobQueryError(f"since must be unix seconds, a datetime or text ({SINCE_FORMS}), "
                               f"got {type(since).__name__}")
    try:
        return unix_seconds(since, "since")
    except InvalidJobError as fault:
        raise BadJobQueryError(str(fault)) from None


def _since_from_text(text: str, now: float) -> float:
    words = text.strip()
    duration = _DURATION.fullmatch(words)
    try:
        if duration is not None:
            seconds = now - float(duration.group(1)) * UNIT_SECONDS[duration.group(2)]
        elif re.fullmatch(r"[0-9]+(?:\.[0-9]*)?", words):
            seconds = float(words)
        else:
            seconds = datetime.datetime.fromisoformat(words).timestamp()
    except (ValueError, OverflowError, OSError):
        raise BadJobQueryError(f"since {text!r}: expected {SINCE_FORMS}") from None
    # Long ago is still a time: the list starts with the masters' oldest.
    seconds = max(seconds, SECONDS.low)
    if not math.isfinite(seconds) or seconds > SECONDS.high:
        raise BadJobQueryError(f"since {text!r}: expected a time between 1970 and 2286")
    return seconds


def check_limit(limit: Any) -> int | None:
    if limit is None:
        return None
    if type(limit) is not int or limit < 1:
        raise BadJobQueryError(f"limit must be a positive integer or None (every job), got {limit!r}")
    return limit


# -- asking ------------------------------------------------------------------------

# ask_page(limit, states, since, before) -> the jobs_reply.
AskPage = Callable[[int, list[int], "float | None", "list | None"], Any]


def list_jobs(ask_page: AskPage, states: list[int], since: float | None, limit: int | None) -> list[JobSummary]:
    """Up to `limit` jobs (None: all), newest first, page after page: each
    page asks for the lines older than the last one of the page before."""
    jobs: list[JobSummary] = []
    before = None
    while limit is None or len(jobs) < limit:
        wanted = PAGE_LINES if limit is None else min(PAGE_LINES, limit - len(jobs))
        reply = ask_page(wanted, states, since, before)
        jobs.extend(JobSummary.from_line(line) for line in reply.jobs[:wanted])
        if not reply.more or not reply.jobs:
            break
        last = reply.jobs[-1]
        before = [last["submitted_at"], bytes(last["job"])]
    return jobs


# -- the table `uds jobs` prints ---------------------------------------------------------

# Marks a job past retention in the table.
PAST_RETENTION_MARK = "*"


def job_table(jobs: list[JobSummary]) -> list[str]:
    """The lines `uds jobs` prints: a header, a line per job, and a note on
    the mark of jobs past retention if any is listed."""
    if not jobs:
        return ["no jobs"]
    width = max(len("name"), *(len(_short(job.name)) for job in jobs)) + 2
    # The whole id: it is what `uds status`, `logs` and `cancel` take.
    lines = [f"{'job':<34}{'name':<{width}}{'state':<11}{'submitted':<21}{'started':<10}{'finished':<10}"
             f"{'duration':>9}  chunks ok/failed/cancelled/cached"]
    for job in jobs:
        mark = PAST_RETENTION_MARK if job.past_retention else ""
        lines.append(f"{job.id + mark:<34}{_short(job.name):<{width}}{job.state:<11}"
                     f"{_local(job.submitted_at, True):<21}{_local(job.started_at):<10}"
                     f"{_local(job.finished_at):<10}{_duration(job.duration_s):>9}  "
                     f"{job.succeeded}/{job.failed}/{job.cancelled}/{job.cached} of {job.chunk_count}")
    if any(job.past_retention for job in jobs):
        lines.append(f"{PAST_RETENTION_MARK} past retention: the masters keep only its state, times and counts")
    return lines


def _short(name: str, width: int = 24) -> str:
    return name if len(name) <= width else name[:width - 1] + "~"


def _local(seconds: float | None, with_date: bool = False) -> str:
    if seconds is None:
        return "-"
    text = iso_time(seconds)        # 2026-11-30T15:00:01+01:00
    return text[:19].replace("T", " ") if with_date else text[11:19]


def _duration(seconds: float | None) -> str:
    """"0.4s", "12s", "4m05s", "2h03m", "3d04h"; "-" when not ended."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
