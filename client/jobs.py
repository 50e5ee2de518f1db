"""Job handles and the results a client sees.

A chunk's result is the wire's own record, `ChunkResult`, whose file
references are `(id bytes, size)`; the client names files by hex id, so
`ChunkStatus` also gives the result's files that way. A `Job` asks its
questions through any object with the `JobQueries` methods (a `Connection`).

An `OutputRef` names an output of a job that may not have run yet; it is
given as an input of another job (`inputs` or `chunk_inputs[i]` of
`submit_job`), which the masters hold as waiting until the producer has
succeeded (doc/client.md, "Pipelines").
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from uds import wire
from uds.client.events import Event, job_events
from uds.client.results import ResultFields
from uds.errors import InvalidJobError, JobFailed, JobTimeout
from uds.wire.ids import ID_BYTES
from uds.wire.messages import ALL_CHUNKS, SAME_CHUNK
from uds.wire.records import ChunkResult
from uds.wire.resources import NO_LIMITS, ResourceLimits
from uds.wire.errors import WireError
from uds.wire.schema import U32_MAX, RelPath

if TYPE_CHECKING:
    from uds.client.attempts import AttemptList

# Held and waiting jobs are not final: they go on once released, once what
# they wait for has succeeded, or at their start time.
FINAL_JOB_STATES = ("succeeded", "failed", "cancelled")
# Job.wait hears of progress at least this often.
PROGRESS_INTERVAL_S = 0.5


def is_job_id(value: object) -> bool:
    """32 hex characters: how a client names a job or a file."""
    return isinstance(value, str) and len(value) == 2 * ID_BYTES and \
        all(c in "0123456789abcdef" for c in value.lower())


@dataclass(frozen=True, slots=True)
class OutputRef:
    """An output of job `job` (hex id), named by its path under the
    producer's $UDS_OUTPUT, as another job's input.

    `from_chunk` is the producing chunk, or SAME_CHUNK (the consuming
    chunk i gets the producer's chunk i: a map after a map), or ALL_CHUNKS
    (every chunk's output, as inputs NAME.0, NAME.1, ...: a reduce). A bad
    field raises InvalidJobError here, before anything is sent; whether the
    job exists and has that output the masters check."""

    job: str
    output: str
    from_chunk: int = SAME_CHUNK

    def __post_init__(self) -> None:
        if not is_job_id(self.job):
            raise InvalidJobError(f"output ref: job must be a job id of 32 hex characters, got {self.job!r}")
        object.__setattr__(self, "job", self.job.lower())
        try:
            RelPath().check(self.output, "output ref")
        except WireError as fault:
            raise InvalidJobError(f"{fault} (an output is named by its path under $UDS_OUTPUT)") from None
        chunk = self.from_chunk
        if type(chunk) is not int or not (chunk in (SAME_CHUNK, ALL_CHUNKS) or 0 <= chunk <= U32_MAX):
            raise InvalidJobError(f"output ref: chunk must be a chunk index (an integer from 0), "
                                  f"got {chunk!r}")

    def as_body(self, name: str, chunk: int) -> dict:
        """The wire's INPUT_REF for input `name` of chunk `chunk` (-1: of every chunk)."""
        return dict(name=name, chunk=chunk, job=bytes.fromhex(self.job), output=self.output,
                    from_chunk=self.from_chunk)

    def __str__(self) -> str:
        """As `uds submit --input NAME=...` takes it: JOB:OUTPUT[:CHUNK|*]."""
        if self.from_chunk == SAME_CHUNK:
            return f"{self.job}:{self.output}"
        return f"{self.job}:{self.output}:{'*' if self.from_chunk == ALL_CHUNKS else self.from_chunk}"


@dataclass(frozen=True, slots=True)
class ChunkStatus(ResultFields):
    """One chunk as a client sees it: where it stands and, once it is
    final, the result of its last attempt."""

    chunk: int
    state: str                       # waiting, queued, dispatched, running, delayed,
                                     #   succeeded, cached, failed, cancelled
    attempt: int
    worker: str | None               # hex id of the worker that ran it last
    result: ChunkResult              # exit code, outputs, logs, error, time, what it used
    # The class of each failed attempt, oldest first: "application" (its
    # program failed: uses max_retries) or "infrastructure" (the cluster's
    # fault: retried without using them). The newest 64 at most.
    failures: tuple[str, ...] = ()

    @classmethod
    def from_report(cls, report: dict) -> ChunkStatus:
        """From a CHUNK_REPORT of a job_status reply."""
        return cls(chunk=report["chunk"], state=report["state"], attempt=report["attempt"],
                   worker=report["worker"].hex() if report["worker"] else None,
                   result=ChunkResult.from_body(report), failures=tuple(report.get("failures", ())))


@dataclass(frozen=True)
class JobStatus:
    id: str
    name: str
    state: str                       # held, waiting, queued, running, succeeded, failed, cancelled
    chunk_count: int
    succeeded: int                   # cached ones included
    failed: int
    submitted_at: float
    finished_at: float | None
    error: str
    chunks: list[ChunkStatus] = field(default_factory=list)
    limits: ResourceLimits = NO_LIMITS   # per attempt, the cluster's defaults filled in
    network: bool = False
    waiting: str = ""                    # why its chunks cannot run now, or ""
    # The masters keep only the job's history line: state, times and counts
    # are known, its chunk reports, limits and network are not.
    past_retention: bool = False
    cached: int = 0                      # of `succeeded`: results reused from the cache
    after: tuple[str, ...] = ()          # hex ids of the jobs it waits for (after= and its refs)
    start_at: float | None = None        # unix seconds: it starts no earlier
    deadline: float | None = None        # unix seconds: what is unfinished then fails
    cache: bool = False                  # submitted with cache=True

    @property
    def done(self) -> bool:
        return self.state in FINAL_JOB_STATES

    @property
    def finished(self) -> int:
        """Chunks that succeeded or failed for good."""
        return self.succeeded + self.failed

    @classmethod
    def from_reply(cls, reply: wire.JobStatusReply) -> "JobStatus":
        return cls(
            id=reply.job_uuid.hex(), name=reply.name, state=wire.JobState(reply.state).name.lower(),
            chunk_count=reply.chunk_count, succeeded=reply.chunks_succeeded, failed=reply.chunks_failed,
            submitted_at=reply.submitted_at, finished_at=reply.finished_at, error=reply.error,
            chunks=[ChunkStatus.from_report(report) for report in reply.chunks],
            limits=ResourceLimits.from_body(reply.limits), network=reply.network, waiting=reply.waiting,
            past_retention=bool(reply.past_retention), cached=reply.chunks_cached,
            after=tuple(job.hex() for job in reply.after), start_at=reply.start_at, deadline=reply.deadline,
            cache=bool(reply.cache),
        )


@dataclass(frozen=True)
class JobSpec:
    """What a job was submitted with (`Connection.job_spec`): its program
    and args, its job-wide inputs (refs to other jobs' outputs once those
    succeeded) and the jobs it waits for. File references are (id bytes,
    size), as in ChunkResult."""

    id: str
    name: str
    program: tuple[bytes, int]
    args: tuple[str, ...]
    inputs: dict[str, tuple[bytes, int]]
    after: tuple[str, ...] = ()         # hex ids
    inputs_dropped: int = 0             # left out of a map too large for one reply

    @classmethod
    def from_reply(cls, reply: wire.JobSpecReply) -> JobSpec:
        return cls(id=reply.job_uuid.hex(), name=reply.name, program=(bytes(reply.program[0]), reply.program[1]),
                   args=tuple(reply.args),
                   inputs={name: (bytes(ref[0]), ref[1]) for name, ref in reply.inputs.items()},
                   after=tuple(bytes(job).hex() for job in reply.after), inputs_dropped=reply.inputs_dropped)


class JobQueries(Protocol):
    """What a Job asks of its connection."""

    def job_status(self, job_id: str, detail: bool = True, wait: float = 0.0,
                   first_chunk: int = 0, max_chunks: int | None = None) -> JobStatus: ...

    def cancel_job(self, job_id: str) -> JobStatus: ...

    def release_job(self, job_id: str) -> JobStatus: ...

    def get(self, file_id: str | bytes) -> bytes: ...

    def attempts(self, job_id: str, chunk: int) -> AttemptList: ...


class Job:
    """A submitted job. Every method asks the masters afresh."""

    def __init__(self, connection: JobQueries, job_id: str) -> None:
        self.connection = connection
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id})"

    def status(self, detail: bool = True) -> JobStatus:
        """The job's state; with detail=False only the counts (cheap to poll)."""
        return self.connection.job_status(self.id, detail=detail)

    def wait(self, timeout: float | None = None,
             progress: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Block until the job is final; its full status. Raises JobTimeout.

        Each request asks the master to answer as soon as the job ends (or
        after PROGRESS_INTERVAL_S, for the progress callback), so the end is
        seen at once; every chunk's report is fetched once, at the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = PROGRESS_INTERVAL_S if deadline is None else deadline - time.monotonic()
            status = self.connection.job_status(self.id, detail=False,
                                                wait=max(0.0, min(remaining, PROGRESS_INTERVAL_S)))
            if progress is not None:
                progress(status)
            if status.done:
                return self.status()
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(f"job {self.id} still {status.state} after {timeout:g}s "
                                 f"({status.finished}/{status.chunk_count} chunks done)")

    def result(self, check: bool = False) -> list[ChunkStatus]:
        """Per chunk: state, exit code, outputs, log ids, error.

        With check=True, raise JobFailed unless every chunk succeeded."""
        status = self.status()
        if check and status.state != "succeeded":
            raise JobFailed(f"job {self.id} {status.state}: {status.error or 'not finished'}")
        return status.chunks

    def chunk(self, index: int) -> ChunkStatus:
        """One chunk's report, without reading the others."""
        status = self.connection.job_status(self.id, first_chunk=index, max_chunks=1)
        if not status.chunks:
            if status.past_retention:
                raise IndexError(f"job {self.id} is past retention: its chunk reports are no longer kept")
            raise IndexError(f"job {self.id} has {status.chunk_count} chunks, no chunk {index}")
        return status.chunks[0]

    def outputs(self, chunk: int = 0) -> dict[str, str]:
        return self.chunk(chunk).outputs

    def output(self, name: str, chunk: int = 0) -> bytes:
        return self.connection.get(self.outputs(chunk)[name])

    def attempts(self, chunk: int = 0) -> AttemptList:
        """Every attempt of the chunk the masters keep, oldest first, with its
        state, failure class, worker, result, usage and timeline
        (client/attempts.py)."""
        return self.connection.attempts(self.id, chunk)

    def logs(self, chunk: int = 0, attempt: int | None = None) -> tuple[bytes, bytes]:
        """The chunk's captured (stdout, stderr); empty if not yet stored.
        `attempt`: that attempt's (its number, from 1); None: the chunk's
        current or final attempt's. Raises IndexError for an attempt not kept."""
        if attempt is not None:
            return self._attempt_logs(chunk, attempt)
        result = self.chunk(chunk)
        stdout = self.connection.get(result.stdout) if result.stdout else b""
        stderr = self.connection.get(result.stderr) if result.stderr else b""
        return stdout, stderr

    def events(self, after: int = 0, follow: bool = True) -> Iterator[Event]:
        """Its events after seq `after`, oldest first: with `follow`, as they
        commit, ending after its job_succeeded, job_failed or job_cancelled
        event; otherwise those the masters' log holds now (client/events.py)."""
        return job_events(self.connection, self.id, after, follow)

    def _attempt_logs(self, chunk: int, number: int) -> tuple[bytes, bytes]:
        attempts = self.attempts(chunk)
        found = next((attempt for attempt in attempts if attempt.number == number), None)
        if found is None:
            kept = f"{attempts[0].number}..{attempts[-1].number}" if attempts else "none"
            raise IndexError(f"job {self.id} chunk {chunk} has no attempt {number} kept (attempts kept: {kept})")
        stdout = self.connection.get(found.stdout) if found.stdout else b""
        stderr = self.connection.get(found.stderr) if found.stderr else b""
        return stdout, stderr

    def cancel(self) -> JobStatus:
        """Cancel it, whatever it waits for (held and waiting jobs too)."""
        return self.connection.cancel_job(self.id)

    def release(self) -> JobStatus:
        """Let a job submitted with hold=True go on (to wait for its
        dependencies and start time, if it has any); a job not held is
        left as it is. Its status after."""
        return self.connection.release_job(self.id)

    def output_ref(self, name: str, chunk: int | None = None) -> OutputRef:
        """Its output `name` as another job's input: chunk `chunk`'s, or
        without `chunk` the consuming chunk i gets this job's chunk i
        (the two jobs then need as many chunks)."""
        if chunk is not None and (type(chunk) is not int or chunk < 0):
            raise InvalidJobError(f"output_ref: chunk must be a chunk index (an integer from 0) or None, "
                                  f"got {chunk!r}")
        return OutputRef(self.id, name, SAME_CHUNK if chunk is None else chunk)

    def outputs_ref(self, name: str) -> OutputRef:
        """Its output `name` of every chunk, as inputs NAME.0, NAME.1, ... of
        each consuming chunk: a reduce."""
        return OutputRef(self.id, name, ALL_CHUNKS)
