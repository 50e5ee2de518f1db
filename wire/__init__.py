"""uds wire protocol: the only package that knows bytes.

    frames = wire.encode(wire.FileRequest.make(node_id, file=file_id))
    message = wire.decode(frames)       # raises wire.WireError on any fault

Structs are defined once in csrc/wire.h; see doc/wire.md.
"""
from uds.wire.codec import decode, encode, items_that_fit, packed_size
from uds.wire.enums import (
    FINAL_CHUNK_STATES, ChunkState, ErrorCode, JobState, MessageType, NodeRole, PutStatus,
)
from uds.wire.errors import EncodeError, WireError
from uds.wire.leader_hint import leader_hint, not_leader_reason
from uds.wire.messages import *  # noqa: F401,F403  (one class per message type)
from uds.wire.file_messages import *  # noqa: F401,F403
from uds.wire.storage_messages import *  # noqa: F401,F403
from uds.wire.message_class import REGISTRY, Message, check_every_type_declared
from uds.wire.records import NO_RESULT, NO_WORKER, ChunkEvent, ChunkResult

__all__ = [
    "decode", "encode", "items_that_fit", "packed_size", "WireError", "EncodeError", "Message", "REGISTRY",
    "ChunkState", "ErrorCode", "JobState", "MessageType", "NodeRole", "PutStatus",
    "FINAL_CHUNK_STATES", "ChunkEvent", "ChunkResult", "NO_RESULT", "NO_WORKER",
    "leader_hint", "not_leader_reason",
] + [cls.__name__ for cls in REGISTRY.values()]

check_every_type_declared()
