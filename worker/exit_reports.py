"""What an attempt's ending is reported as: the chunk state, the error text
and the result a finished process earns, and whether its outputs can be
named in one result message at all.

Pure functions of what the worker's attempts core (worker/attempts.py) knows
when a process exits or its outputs are stored; nothing here reads the clock
or touches a file.
"""
from __future__ import annotations

from dataclasses import replace
from enum import Enum
from typing import Sequence

from uds.worker.attempt_events import ChunkResult, ProcessExited, Uploaded
from uds.wire.enums import ChunkState
from uds.wire.errors import WireError
from uds.wire.limits import LIST_BUDGET_BYTES
from uds.wire.schema import RelPath

# A log this large stops the program (only LOG_CAP_BYTES of it is stored).
LOG_KILL_BYTES = 1024 * 1024 * 1024
# A chunk's outputs are named in its one result message; a chunk that leaves
# more than this, or names too long to fit there together, fails instead.
MAX_OUTPUT_FILES = 10_000
# Per output in the result: its file id, its size and msgpack's framing.
OUTPUT_RECORD_BYTES = 40


class StopReason(Enum):
    """Why the worker stopped a running program."""

    CANCELLED = "cancelled"
    TIMED_OUT = "timed out"
    LOG_TOO_LARGE = "log too large"


def exit_report(event: ProcessExited, stop_reason: StopReason | None, timeout_s: float,
                elapsed_s: float) -> tuple[ChunkState, ChunkResult, Sequence[str]]:
    """The state and result a process's exit is reported with, and the
    outputs to store (none when they could never be reported)."""
    state, error = exit_outcome(event, stop_reason, timeout_s)
    outputs = event.outputs
    refusal = event.outputs_refused or outputs_refusal(outputs)
    if refusal is not None:
        # Storing them could never be reported: fail the chunk, keep the logs.
        state, error, outputs = ChunkState.FAILED, refusal, ()
    usage = event.usage
    result = ChunkResult(exit_code=event.exit_code, error=error, elapsed_s=elapsed_s,
                         bytes_from_cache=max(0, event.bytes_read - event.bytes_fetched),
                         bytes_from_storage=event.bytes_fetched, cpu_user_s=max(0.0, usage.cpu_user_s),
                         cpu_system_s=max(0.0, usage.cpu_system_s),
                         peak_memory_bytes=max(0, usage.peak_memory_bytes))
    return state, result, outputs


def exit_outcome(event: ProcessExited, stop_reason: StopReason | None,
                 timeout_s: float) -> tuple[ChunkState, str]:
    """The chunk state and error text of a process's exit, before its outputs are looked at."""
    if stop_reason is StopReason.CANCELLED:
        return ChunkState.CANCELLED, "cancelled"
    if event.infrastructure_error:
        # Not the program's fault: the masters will have it run again.
        return ChunkState.REJECTED, event.infrastructure_error
    if stop_reason is StopReason.TIMED_OUT:
        return ChunkState.TIMED_OUT, f"timed out after {timeout_s:g}s"
    if stop_reason is StopReason.LOG_TOO_LARGE:
        return ChunkState.FAILED, f"stopped: stdout or stderr passed {LOG_KILL_BYTES} bytes"
    if event.limit_exceeded:
        return ChunkState.FAILED, event.limit_exceeded
    if event.exit_code == 0:
        return ChunkState.SUCCEEDED, ""
    if event.launch_error:
        return ChunkState.FAILED, event.launch_error
    if event.exit_code < 0:
        return ChunkState.FAILED, f"killed by signal {-event.exit_code}"
    return ChunkState.FAILED, f"exit code {event.exit_code}"


def with_uploads(result: ChunkResult, event: Uploaded) -> ChunkResult:
    """The exit's result with the files its outputs and logs were stored as."""
    stored = [*event.outputs.values(), *(ref for ref in (event.stdout, event.stderr) if ref is not None)]
    return replace(result, outputs=dict(event.outputs), stdout=event.stdout,
                   stderr=event.stderr, output_bytes=sum(size for _file_id, size in stored))


def outputs_refusal(names: Sequence[str]) -> str | None:
    """Why these outputs (relative paths) cannot be reported, or None if they can."""
    if len(names) > MAX_OUTPUT_FILES:
        return f"left {len(names)} files in $UDS_OUTPUT; at most {MAX_OUTPUT_FILES} are allowed"
    total = 0
    for name in names:
        try:
            RelPath().check(name, "output")
            total += len(name.encode()) + OUTPUT_RECORD_BYTES
        except (WireError, UnicodeEncodeError):
            return f"output {name!r} is not a usable name (UTF-8 path of at most 255-byte names)"
    if total > LIST_BUDGET_BYTES:
        return f"the names of the {len(names)} output files take {total} bytes; at most {LIST_BUDGET_BYTES}"
    return None
