"""Every attempt of a chunk, as a client sees it (`Connection.attempts`,
`Job.attempts`, `uds logs --attempt`, `uds status --chunk`).

The masters keep each attempt of a chunk: the ones retried, lost, refused
or taken back, and the one that ended it (or runs now), with its failure
class, its worker, what its worker reported (exit code, outputs, logs,
usage) and its timeline. Times are unix seconds: dispatched, running and
committed on the masters' clock; assigned, started, first read (of an
input), ended and uploaded (outputs and logs stored) on the worker's. A
chunk keeps its newest 64 attempts; `AttemptList.dropped` counts the older
ones.

Between the steps lie the phases where an attempt spends its time
(`timeline_phases`): dispatch (the balancer's queue and the way to the
worker), start (the program fetched, the inputs mounted, the process
launched), first read, run, upload and commit. A step not known (a program
that read no input, an attempt that stored nothing, one still running) is
skipped: the phase before it runs on to the next known step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from uds.client.results import ResultFields
from uds.client.status_view import chunk_line, status_lines, usage_text
from uds.wire.records import ChunkResult

# The timeline's steps, in the order they happen.
TIMELINE_STEPS = ("dispatched", "assigned", "started", "first_read", "ended", "uploaded", "committed")
# The phase that ends at each step (the first step ends none), and the letter
# that draws it in the bar of `uds status --chunk`.
PHASE_OF_STEP = {"assigned": "dispatch", "started": "start", "first_read": "first read", "ended": "run",
                 "uploaded": "upload", "committed": "commit"}
PHASE_LETTERS = {"dispatch": "d", "start": "s", "first read": "f", "run": "r", "upload": "u", "commit": "c",
                 "prepare": "p"}
# An attempt whose program never started ends preparing, not running.
PHASE_WITHOUT_START = "prepare"
TIMELINE_BAR_COLUMNS = 60

Phase = tuple[str, float, float]            # (name, start, end) in unix seconds


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

    def phases(self) -> list[Phase]:
        """Where the attempt spent its time: see `timeline_phases`."""
        return timeline_phases(self.timeline)


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
        known = [step for step in TIMELINE_STEPS if attempt.timeline.get(step) is not None]
        if known:
            lines.append("      " + "  ".join(f"{step} {_clock(attempt.timeline[step])}" for step in known))
        lines.extend("      " + line for line in timeline_drawing(attempt.phases()))
    return lines


def timeline_phases(timeline: Mapping[str, float | None]) -> list[Phase]:
    """The phases between an attempt's known steps, in order, as (name,
    start, end): each runs from the known step before to the step it is
    named for (PHASE_OF_STEP), unknown steps skipped. The steps come from two
    clocks (masters' and worker's): a step a skew puts before the one before
    it counts as taking no time, so the phases stay contiguous and forward."""
    phases: list[Phase] = []
    cursor: float | None = None
    for step in TIMELINE_STEPS:
        at = timeline.get(step)
        if at is None:
            continue
        if cursor is not None:
            name = PHASE_OF_STEP[step]
            if step == "ended" and timeline.get("started") is None:
                name = PHASE_WITHOUT_START
            end = max(at, cursor)
            phases.append((name, cursor, end))
            cursor = end
        else:
            cursor = at
    return phases


def timeline_drawing(phases: list[Phase], columns: int = TIMELINE_BAR_COLUMNS) -> list[str]:
    """Two lines for people: each phase with how long it took,
    "dispatch 3ms | start 40ms | run 1.20s | upload 15ms | commit 4ms  (1.26s)",
    then a bar of `columns` letters (PHASE_LETTERS), each phase as wide as
    its share of the whole; none without phases."""
    if not phases:
        return []
    total = phases[-1][2] - phases[0][1]
    text = " | ".join(f"{name} {duration_text(end - start)}" for name, start, end in phases)
    lines = [f"{text}  ({duration_text(total)})"]
    if total > 0:
        widths = _shares([end - start for _, start, end in phases], total, columns)
        lines.append("[" + "".join(PHASE_LETTERS[name] * width
                                   for (name, _, _), width in zip(phases, widths)) + "]")
    return lines


def _shares(durations: list[float], total: float, columns: int) -> list[int]:
    """Columns for each duration, summing to `columns`: in proportion, at
    least one for any that took time (so a short phase is still seen), the
    largest remainders rounded up."""
    exact = [duration / total * columns for duration in durations]
    widths = [max(1, math.floor(share)) if duration > 0 else 0 for share, duration in zip(exact, durations)]
    while sum(widths) > columns:
        widths[widths.index(max(widths))] -= 1
    by_remainder = sorted(range(len(exact)), key=lambda i: widths[i] - exact[i])
    for index in by_remainder[:columns - sum(widths)]:
        widths[index] += 1
    return widths


def duration_text(seconds: float) -> str:
    """"3ms", "1.20s", "2m05s", "1h02m"."""
    if seconds < 1.0:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60.0:
        return f"{seconds:.2f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m{int(seconds % 60):02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


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
