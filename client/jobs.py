"""Job handles and the results a client sees."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import wire
from client.errors import JobFailed, JobTimeout

if TYPE_CHECKING:
    from client.api import Connection

FINAL_JOB_STATES = ("succeeded", "failed", "cancelled")
# Job.wait hears of progress at least this often.
PROGRESS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class ChunkResult:
    chunk: int
    state: str                       # queued, dispatched, running, succeeded, failed, cancelled
    attempt: int
    exit_code: int | None
    outputs: dict[str, str]          # name under $UDS_OUTPUT -> file id
    stdout: str | None               # file id of the captured stdout
    stderr: str | None
    error: str
    worker: str | None
    elapsed_s: float
    bytes_from_cache: int
    bytes_from_storage: int

    @classmethod
    def from_report(cls, report: dict) -> "ChunkResult":
        return cls(
            chunk=report["chunk"], state=report["state"], attempt=report["attempt"],
            exit_code=report["exit_code"],
            outputs={name: ref[0].hex() for name, ref in report["outputs"].items()},
            stdout=report["stdout"][0].hex() if report["stdout"] else None,
            stderr=report["stderr"][0].hex() if report["stderr"] else None,
            error=report["error"], worker=report["worker"].hex() if report["worker"] else None,
            elapsed_s=report["elapsed_s"], bytes_from_cache=report["bytes_from_cache"],
            bytes_from_storage=report["bytes_from_storage"],
        )


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
    chunks: list[ChunkResult] = field(default_factory=list)

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
            chunks=[ChunkResult.from_report(report) for report in reply.chunks],
        )


class Job:
    """A submitted job. Every method asks the masters afresh."""

    def __init__(self, connection: "Connection", job_id: str) -> None:
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

    def result(self, check: bool = False) -> list[ChunkResult]:
        """Per chunk: state, exit code, outputs, log ids, error.

        With check=True, raise JobFailed unless every chunk succeeded."""
        status = self.status()
        if check and status.state != "succeeded":
            raise JobFailed(f"job {self.id} {status.state}: {status.error or 'not finished'}")
        return status.chunks

    def chunk(self, index: int) -> ChunkResult:
        """One chunk's report, without reading the others."""
        status = self.connection.job_status(self.id, first_chunk=index, max_chunks=1)
        if not status.chunks:
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
