"""Job handles and the results a client sees.

A chunk's result is the wire's own record, `ChunkResult`, whose file
references are `(id bytes, size)`; the client names files by hex id, so
`ChunkStatus` also gives the result's files that way. A `Job` asks its
questions through any object with the `JobQueries` methods (a `Connection`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from uds import wire
from uds.errors import JobFailed, JobTimeout
from uds.wire.records import ChunkResult
from uds.wire.resources import NO_LIMITS, ResourceLimits, Usage

FINAL_JOB_STATES = ("succeeded", "failed", "cancelled")
# Job.wait hears of progress at least this often.
PROGRESS_INTERVAL_S = 0.5


@dataclass(frozen=True, slots=True)
class ChunkStatus:
    """One chunk as a client sees it: where it stands and, once it is
    final, the result of its last attempt."""

    chunk: int
    state: str                       # queued, dispatched, running, succeeded, failed, cancelled
    attempt: int
    worker: str | None               # hex id of the worker that ran it last
    result: ChunkResult              # exit code, outputs, logs, error, time, what it used

    @classmethod
    def from_report(cls, report: dict) -> ChunkStatus:
        """From a CHUNK_REPORT of a job_status reply."""
        return cls(chunk=report["chunk"], state=report["state"], attempt=report["attempt"],
                   worker=report["worker"].hex() if report["worker"] else None,
                   result=ChunkResult.from_body(report))

    @property
    def outputs(self) -> dict[str, str]:
        """The result's outputs: name under $UDS_OUTPUT -> hex file id."""
        return {name: ref[0].hex() for name, ref in self.result.outputs.items()}

    @property
    def usage(self) -> Usage:
        """What its last attempt used: cpu time, peak memory, bytes read
        (from the cache, from storage) and stored, wall time; 0: not measured."""
        return self.result.usage

    @property
    def stdout(self) -> str | None:
        """Hex file id of the captured stdout; None if there was none."""
        return self.result.stdout[0].hex() if self.result.stdout else None

    @property
    def stderr(self) -> str | None:
        return self.result.stderr[0].hex() if self.result.stderr else None


@dataclass(frozen=True)
class JobStatus:
    id: str
    name: str
    state: str                       # queued, running, succeeded, failed, cancelled
    chunk_count: int
    succeeded: int
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
            past_retention=bool(reply.past_retention),
        )


class JobQueries(Protocol):
    """What a Job asks of its connection."""

    def job_status(self, job_id: str, detail: bool = True, wait: float = 0.0,
                   first_chunk: int = 0, max_chunks: int | None = None) -> JobStatus: ...

    def cancel_job(self, job_id: str) -> JobStatus: ...

    def get(self, file_id: str | bytes) -> bytes: ...


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

    def logs(self, chunk: int = 0) -> tuple[bytes, bytes]:
        """The chunk's captured (stdout, stderr); empty if not yet stored."""
        result = self.chunk(chunk)
        stdout = self.connection.get(result.stdout) if result.stdout else b""
        stderr = self.connection.get(result.stderr) if result.stderr else b""
        return stdout, stderr

    def cancel(self) -> JobStatus:
        return self.connection.cancel_job(self.id)
