"""What a job waits for and when it may run: the checks of submit_job's
workflow arguments (inputs that are other jobs' outputs, `after`,
`start_at`, `deadline`, `hold`, `cache`, `retry_backoff`), and the words
the `uds` command takes for them (`NAME=JOB:OUTPUT[:CHUNK]`, `+10m`).

Pure: the time is passed in. Everything here is checked on the client,
before anything is sent; what only the masters know (whether a job exists,
has succeeded, has that output, has as many chunks) they check at submit.
"""
from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from uds.client.jobs import Job, OutputRef, is_job_id
from uds.errors import InvalidJobError
from uds.wire.messages import ALL_CHUNKS, SAME_CHUNK
from uds.wire.schema import SECONDS

# The chunk of a job-wide input ref (INPUT_REF.chunk).
EVERY_CHUNK = -1
# The longest pause before retrying a failed chunk: a day. A longer one is
# surely a unit mistake (ms for s), and the deadline is the way to give up.
MAX_RETRY_BACKOFF_S = 86_400.0
UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RELATIVE_TIME = re.compile(r"\+([0-9]+(?:\.[0-9]*)?)([smhd])")
_OUTPUT_OF_JOB = re.compile(r"([0-9a-fA-F]{32}):(.+)", re.DOTALL)
_CHUNK_SUFFIX = re.compile(r"(.*):([0-9]+|\*)", re.DOTALL)
TIME_FORMS = ("an ISO 8601 time (2026-11-30T15:00, 2026-11-30T15:00:00+01:00, ...Z) "
              "or +DURATION (+90s, +10m, +2h, +1d)")


@dataclass(frozen=True)
class Workflow:
    """A job's place in a workflow, as job_submit carries it."""

    refs: tuple[dict, ...] = ()          # INPUT_REF bodies
    after: tuple[bytes, ...] = ()
    start_at: float | None = None
    deadline: float | None = None
    hold: bool = False
    cache: bool = False
    retry_backoff_s: float = 0.0

    def as_body(self) -> dict[str, Any]:
        """The JobSubmit fields."""
        return dict(refs=list(self.refs), after=list(self.after), start_at=self.start_at,
                    deadline=self.deadline, hold=self.hold, cache=self.cache,
                    retry_backoff_s=self.retry_backoff_s)


def split_refs(inputs: Mapping[str, Any], chunk_inputs: Sequence[Mapping[str, Any]]
               ) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict]]:
    """The inputs and chunk inputs that are files (ids, paths, bytes), and
    the OutputRefs among them as INPUT_REF bodies: chunk -1 for a job-wide
    input, i for one of chunk_inputs[i]."""
    refs = [ref.as_body(name, EVERY_CHUNK) for name, ref in inputs.items() if isinstance(ref, OutputRef)]
    files = {name: value for name, value in inputs.items() if not isinstance(value, OutputRef)}
    chunk_files = []
    for index, per_chunk in enumerate(chunk_inputs):
        refs.extend(ref.as_body(name, index) for name, ref in per_chunk.items() if isinstance(ref, OutputRef))
        chunk_files.append({name: value for name, value in per_chunk.items() if not isinstance(value, OutputRef)})
    return files, chunk_files, refs


def job_id_bytes(value: Any, what: str) -> bytes:
    """A Job's id, or a job id of 32 hex characters, as bytes."""
    if isinstance(value, Job):
        value = value.id
    if not is_job_id(value):
        raise InvalidJobError(f"{what}: expected a Job or a job id of 32 hex characters, got {value!r}")
    return bytes.fromhex(value)


def after_ids(after: Any, own: bytes) -> tuple[bytes, ...]:
    """The jobs of `after`, each once, in order; not the job itself."""
    if isinstance(after, (str, bytes, Job)) or not isinstance(after, Iterable):
        raise InvalidJobError(f"after must be a list of jobs or job ids, got {type(after).__name__}")
    ids = tuple(dict.fromkeys(job_id_bytes(value, f"after[{index}]") for index, value in enumerate(after)))
    if own in ids:
        raise InvalidJobError(f"after: job {own.hex()} cannot wait for itself")
    return ids


def unix_seconds(value: Any, what: str) -> float | None:
    """None, unix seconds (int or float), or a datetime (naive: local
    time) as unix seconds."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        seconds = value.timestamp()      # a naive datetime is taken as local time
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidJobError(f"{what} must be unix seconds or a datetime, got {type(value).__name__}")
    if not math.isfinite(seconds) or not SECONDS.low <= seconds <= SECONDS.high:
        raise InvalidJobError(f"{what} must be a time between 1970 and 2286, got {value!r}")
    return seconds


def iso_time(seconds: float) -> str:
    """Unix seconds as a local ISO 8601 time with its offset, to the second."""
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def check_flag(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise InvalidJobError(f"{what} must be True or False, got {value!r}")
    return value


def check_workflow(refs: Sequence[dict], after: Any, start_at: Any, deadline: Any, hold: Any, cache: Any,
                   retry_backoff: Any, job: bytes, now: float) -> Workflow:
    """The workflow arguments of submit_job for job `job`, checked at `now`
    (unix seconds); InvalidJobError saying what is wrong."""
    for ref in refs:
        if ref["job"] == job:
            raise InvalidJobError(f"input {ref['name']!r}: job {job.hex()} cannot take its own output")
    start = unix_seconds(start_at, "start_at")
    end = unix_seconds(deadline, "deadline")
    if end is not None:
        if end <= now:
            raise InvalidJobError(f"deadline {iso_time(end)} has already passed (it is {iso_time(now)})")
        if start is not None and end <= start:
            raise InvalidJobError(f"deadline {iso_time(end)} is not after start_at {iso_time(start)}")
    if isinstance(retry_backoff, bool) or not isinstance(retry_backoff, (int, float)) \
            or not 0 <= retry_backoff <= MAX_RETRY_BACKOFF_S:
        raise InvalidJobError(f"retry_backoff must be a number of seconds from 0 to {MAX_RETRY_BACKOFF_S:g}, "
                              f"got {retry_backoff!r}")
    return Workflow(refs=tuple(refs), after=after_ids(after, job), start_at=start, deadline=end,
                    hold=check_flag(hold, "hold"), cache=check_flag(cache, "cache"),
                    retry_backoff_s=float(retry_backoff))


# -- the command's words --------------------------------------------------------

def time_from_text(text: str, now: float, what: str) -> float:
    """`--start-at` and `--deadline`: an ISO 8601 time (naive: local
    time) or +DURATION from `now`, as unix seconds."""
    relative = _RELATIVE_TIME.fullmatch(text.strip())
    if relative is not None:
        return now + float(relative.group(1)) * UNIT_SECONDS[relative.group(2)]
    try:
        return datetime.datetime.fromisoformat(text.strip()).timestamp()
    except (ValueError, OverflowError, OSError):
        raise InvalidJobError(f"{what} {text!r}: expected {TIME_FORMS}") from None


def input_from_text(value: str) -> str | OutputRef:
    """What follows NAME= in `--input` and `--chunk-input`: JOB:OUTPUT
    (the consuming chunk's own chunk of JOB), JOB:OUTPUT:CHUNK (that
    chunk's), JOB:OUTPUT:* (every chunk's, as NAME.0, NAME.1, ...), with JOB
    32 hex characters; anything else is a path or a file id, as given."""
    output_of_job = _OUTPUT_OF_JOB.fullmatch(value)
    if output_of_job is None:
        return value
    job, output = output_of_job.groups()
    from_chunk = SAME_CHUNK
    suffix = _CHUNK_SUFFIX.fullmatch(output)
    if suffix is not None:
        output, chunk = suffix.groups()
        from_chunk = ALL_CHUNKS if chunk == "*" else int(chunk)
    return OutputRef(job, output, from_chunk)
