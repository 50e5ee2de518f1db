"""Every attempt of a chunk, as a client sees it (`Connection.attempts`,
`Job.attempts`, `uds logs --attempt`, `uds status --chunk`).

The masters keep each attempt of a chunk: the ones retried, lost, refused
or taken back, and the one that ended it (or runs now), with its failure
class, its worker, what its worker reported (exit code, outputs, logs,
usage) and its timeline. Times are unix seconds: dispatched, running and
committed on the masters' clock; assigned, started, first read (of an
input), ended and uploaded (outputs and logs stored) on the worker's. A chunk keeps its newest 64 attempts; `AttemptList.dropped` counts
the older ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from uds.client.results import ResultFields
from uds.client.status_view import chunk_line, status_lines, usage_text
from uds.wire.records import ChunkResult

# The timeline's steps, in the order they happen.
TIMELINE_STEPS = ("dispatched", "assigned", "started", "first_read", "ended", "uploaded", "committed")


@dataclass(frozen=True, slots=True)
class Attempt(ResultFields):
    """One attempt of a chunk."""

    number: int
    state: str                      # queued, dispatched, running, succeeded, failed, timed_out,
                                    #   lost, rejected, cancelled, cached
    failure: str                    # "", "application" or "infrastructure"
    worker: str | None              # hex id of its worker; None: none took it
    result: ChunkResult             # what its worker reported (empty while it runs)
    timeline: dict[str, float | None] = field(default_factory=dict)   # TIMELINE_STEPS -> unix seconds or None

    @classmethod
    def from_record(cls, record: dict) -> Attempt:
        """From an ATTEMPT record of an attempts_reply."""
        result = ChunkResult.from_body(record)
        timeline = dict(dispatched=record["dispatched_at"], assigned=result.assigned_at or None,
                        started=result.started_at or None, first_read=result.first_read_at or None,
                        ended=result.ended_at or None, uploaded=result.uploaded_at or None,
                        committed=record["committed_at"])
        return cls(number=record["attempt"], state=record["state"], failure=record["failure"],
                   worker=record["worker"].hex() if record["worker"] else None, result=result,
                   timeline=timeline)


class AttemptList(list):
    """A chunk's attempts, oldest first; `dropped`: older ones no longer kept."""

    def __init__(self, attempts: list[Attempt], dropped: int = 0) -> None:
        super().__init__(attempts)
        self.dropped = dropped


def attempt_lines(attempts: AttemptList) -> list[str]:
    """The attempts for people: one line each, then its timeline."""
    lines = []
    if attempts.dropped:
        lines.append(f"  ({attempts.dropped} older attempts no longer kept)")
    for attempt in attempts:
        failure = f" ({attempt.failure})" if attempt.failure else ""
        worker = attempt.worker[:12] if attempt.worker else "-"
        exit_code = "-" if attempt.exit_code is None else str(attempt.exit_code)
        line = f"  attempt {attempt.number:>3}  {attempt.state}{failure}  worker {worker}  exit {exit_code}"
        if attempt.result.elapsed_s:
            line += f"  {attempt.result.elapsed_s:.2f}s  {usage_text(attempt.usage)}"
        if attempt.stdout or attempt.stderr:
            line += f"  stdout {attempt.stdout or '-'} stderr {attempt.stderr or '-'}"
        if attempt.error:
            line += f"  ({attempt.error})"
        lines.append(line)
        lines.append("      " + "  ".join(f"{step} {_clock(attempt.timeline.get(step))}" for step in TIMELINE_STEPS))
    return lines


def print_chunk_attempts(status: Any, job: Any, index: int) -> None:
    """`uds status JOB --chunk I`: the job's line of counts, the chunk's
    report and every attempt it kept."""
    lines = status_lines(status)
    lines.append(chunk_line(job.chunk(index)))
    lines.extend(attempt_lines(job.attempts(index)))
    print("\n".join(lines))


def _clock(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, timezone.utc).strftime("%H:%M:%S.%f")[:-3]
