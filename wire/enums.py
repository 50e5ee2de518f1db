"""Python views of the enums in csrc/wire.h, read from the compiled module
so that the header stays the one definition."""
from __future__ import annotations

from enum import IntEnum

from uds.wire._wire_cffi import ffi


def _from_header(class_name: str, c_enum: str, prefix: str) -> type[IntEnum]:
    elements = ffi.typeof(c_enum).relements
    members = {name.removeprefix(prefix): value for name, value in elements.items()}
    return IntEnum(class_name, sorted(members.items(), key=lambda item: item[1]))


MessageType = _from_header("MessageType", "enum message_type", "MSG_")
NodeRole = _from_header("NodeRole", "enum node_role", "ROLE_")
ChunkState = _from_header("ChunkState", "enum chunk_state", "CHUNK_")
JobState = _from_header("JobState", "enum job_state", "JOB_")
ErrorCode = _from_header("ErrorCode", "enum error_code", "ERR_")
PutStatus = _from_header("PutStatus", "enum put_status", "PUT_")

# Attempt states after which nothing more happens to that attempt.
FINAL_CHUNK_STATES = frozenset(
    {ChunkState.SUCCEEDED, ChunkState.FAILED, ChunkState.CANCELLED,
     ChunkState.TIMED_OUT, ChunkState.LOST, ChunkState.REJECTED}
)
# Job states after which nothing more happens to that job.
FINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
