"""What `uds status`, `uds submit --wait`, `uds cancel` and `uds release`
print about a job: one line of counts, then what it runs under and what it
waits for, then a line per chunk with its result, its usage and the class
of each failed attempt (doc/client.md).
"""
from __future__ import annotations

from typing import Any, Sequence

from uds.client.workflow import iso_time
from uds.units import size_text

# Chunk states whose result is an attempt's end, with usage to show.
ENDED_CHUNK_STATES = ("succeeded", "cached", "failed")


def status_lines(status: Any) -> list[str]:
    """The lines that describe a JobStatus, in the order printed."""
    cached = f" ({status.cached} cached)" if status.cached else ""
    lines = [f"job {status.id} {status.name!r}: {status.state}, {status.succeeded} succeeded{cached}, "
             f"{status.failed} failed of {status.chunk_count} chunks"]
    if status.past_retention:
        lines.append("details: past retention (the masters keep only the job's state, times and counts)")
    else:
        lines.append(f"limits: {status.limits.describe()}; network {'on' if status.network else 'off'}")
    if status.cache:
        lines.append(f"cache: on, {status.cached} of {status.chunk_count} chunks reused")
    if status.after:
        lines.append(f"after: {', '.join(status.after)}")
    if status.start_at is not None:
        lines.append(f"starts at: {iso_time(status.start_at)}")
    if status.deadline is not None:
        lines.append(f"deadline: {iso_time(status.deadline)}")
    if status.state == "held":
        lines.append(f"held: it goes on once released (`uds release {status.id}`)")
    if status.waiting:
        lines.append(f"waiting: {status.waiting}")
    if status.error:
        lines.append(f"error: {status.error}")
    lines.extend(chunk_line(chunk) for chunk in status.chunks)
    return lines


def print_status(status: Any) -> None:
    print("\n".join(status_lines(status)))


def chunk_line(chunk: Any) -> str:
    result = chunk.result
    exit_text = "-" if result.exit_code is None else str(result.exit_code)
    line = f"  chunk {chunk.chunk:>4}  {chunk.state:<10} attempt {chunk.attempt}  exit {exit_text:>4}"
    if result.elapsed_s:
        line += f"  {result.elapsed_s:.2f}s"
    if chunk.state in ENDED_CHUNK_STATES:
        line += f"  {usage_text(chunk.usage)}"
    if chunk.outputs:
        line += "  outputs: " + ", ".join(f"{name}={fid}" for name, fid in sorted(chunk.outputs.items()))
    if chunk.failures:
        line += f"  failed attempts: {failures_text(chunk.failures)}"
    if result.error:
        line += f"  ({result.error})"
    return line


def failures_text(failures: Sequence[str]) -> str:
    """The classes of a chunk's failed attempts, oldest first, a run of the
    same class counted: "infrastructure x2, application"."""
    runs: list[list[Any]] = []
    for failure in failures:
        if runs and runs[-1][0] == failure:
            runs[-1][1] += 1
        else:
            runs.append([failure, 1])
    return ", ".join(name if count == 1 else f"{name} x{count}" for name, count in runs)


def usage_text(usage: Any) -> str:
    """"cpu 0.12s user 0.03s sys, peak 12.0 MiB, read 1.0 MiB (0 B from cache), wrote 5 B"."""
    return (f"cpu {usage.cpu_user_s:.2f}s user {usage.cpu_system_s:.2f}s sys, "
            f"peak {size_text(usage.peak_memory_bytes)}, "
            f"read {size_text(usage.bytes_from_cache + usage.bytes_from_storage)} "
            f"({size_text(usage.bytes_from_cache)} from cache), wrote {size_text(usage.output_bytes)}")
