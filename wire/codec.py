"""encode(message) -> frames and decode(frames) -> message.

Rules: nothing here imports zmq; `decode` raises `WireError` and nothing
else, whatever the bytes; raw data frames pass through without copies (a
decoded data field is a memoryview of the received frame).
"""
from __future__ import annotations

from typing import Any, Sequence

import msgpack

from uds.wire._wire_cffi import ffi
from uds.wire.errors import EncodeError, WireError
from uds.wire.limits import (
    LIST_BUDGET_BYTES, MAX_BODY_BYTES, MAX_BODY_ITEMS, MAX_DATA_FRAME_BYTES, MAX_FRAMES_PER_MESSAGE,
    MAX_STRING_BYTES,
)
from uds.wire.message_class import GENERIC_HEADER_BYTES, REGISTRY, Message
from uds.wire.schema import check_fields

_GENERIC_POINTER = ffi.typeof("struct generic_message *")


def _reject_extension(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack extension type {code} is not allowed")


def packed_size(value: Any) -> int:
    """Bytes that `value` takes inside a msgpack body."""
    return len(msgpack.packb(value, use_bin_type=True))


def items_that_fit(items: Sequence[Any], budget_bytes: int = LIST_BUDGET_BYTES) -> int:
    """How many leading `items` of a body list fit in `budget_bytes` once
    packed: a sender cuts a long list (chunk reports, events, results) there
    and sends the rest in a later message or page. At least one item is
    always allowed; a single item too big for a body fails at encode."""
    used = 0
    for count, item in enumerate(items):
        used += packed_size(item)
        if used > budget_bytes and count > 0:
            return count
    return len(items)


def encode(message: Message) -> list[Any]:
    """Frames for `message`: packed struct, msgpack body if any, raw frames.

    Raw frames are returned as given (bytes, memoryview, ...), uncopied.
    Raises EncodeError if a value does not fit its field.
    """
    spec = type(message).SPEC
    try:
        message.check()
        struct = ffi.new(spec.pointer_type)
        header = struct.header
        header.message_type = spec.number
        header.node_uuid_upper = message.node_uuid_upper
        header.node_uuid_lower = message.node_uuid_lower
        header.header_length = spec.size
        for name in spec.struct_fields:
            setattr(struct, name, getattr(message, name))
        frames: list[Any] = [ffi.buffer(struct)[:]]
        if spec.body:
            body = {name: schema.check(getattr(message, name), f"{spec.name}.{name}")
                    for name, schema in spec.body}
            packed = msgpack.packb(body, use_bin_type=True)
            if len(packed) > MAX_BODY_BYTES:
                raise EncodeError(f"{spec.name}: body of {len(packed)} bytes exceeds {MAX_BODY_BYTES}")
            frames.append(packed)
    except (OverflowError, TypeError) as fault:
        raise EncodeError(f"{spec.name}: {fault}") from None
    except WireError as fault:
        raise EncodeError(str(fault)) from None
    for name in spec.data:
        data = getattr(message, name)
        if len(data) > MAX_DATA_FRAME_BYTES:
            raise EncodeError(f"{spec.name}.{name}: {len(data)} bytes exceeds {MAX_DATA_FRAME_BYTES}")
        frames.append(data)
    return frames


def _as_view(frame: Any, what: str) -> memoryview:
    try:
        view = memoryview(frame)
    except TypeError:
        raise WireError(f"{what} is a {type(frame).__name__}, not bytes") from None
    if not view.c_contiguous:
        raise WireError(f"{what} is not contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _unpack_body(frame: Any, name: str) -> dict:
    view = _as_view(frame, f"{name}: body frame")
    if view.nbytes > MAX_BODY_BYTES:
        raise WireError(f"{name}: body of {view.nbytes} bytes exceeds {MAX_BODY_BYTES}")
    try:
        body = msgpack.unpackb(
            view, raw=False, strict_map_key=True, use_list=True,
            max_str_len=MAX_STRING_BYTES, max_bin_len=MAX_STRING_BYTES,
            max_array_len=MAX_BODY_ITEMS, max_map_len=MAX_BODY_ITEMS,
            max_ext_len=0, ext_hook=_reject_extension,
        )
    except WireError as fault:
        raise WireError(f"{name}: {fault}") from None
    except Exception as fault:  # msgpack raises many kinds; all mean a bad body
        raise WireError(f"{name}: body is not valid msgpack ({type(fault).__name__}: {fault})") from None
    if type(body) is not dict:
        raise WireError(f"{name}: body is a {type(body).__name__}, not a map")
    return body


def decode(frames: Sequence[Any]) -> Message:
    """Parse and validate one message. Raises WireError, and only that."""
    try:
        return _decode(frames)
    except WireError:
        raise
    except Exception as fault:  # a bug here must not take a daemon down
        raise WireError(f"undecodable message ({type(fault).__name__}: {fault})") from None


def _decode(frames: Sequence[Any]) -> Message:
    if not isinstance(frames, (list, tuple)):
        raise WireError(f"frames must be a list, got {type(frames).__name__}")
    if not frames:
        raise WireError("empty message: no frames")
    if len(frames) > MAX_FRAMES_PER_MESSAGE:
        raise WireError(f"{len(frames)} frames exceeds {MAX_FRAMES_PER_MESSAGE}")
    head = _as_view(frames[0], "frame 0")
    if head.nbytes < GENERIC_HEADER_BYTES:
        raise WireError(f"frame 0 is {head.nbytes} bytes, shorter than the "
                        f"{GENERIC_HEADER_BYTES}-byte generic header")
    generic = ffi.from_buffer(_GENERIC_POINTER, head)
    cls = REGISTRY.get(generic.message_type)
    if cls is None:
        raise WireError(f"unknown message_type {generic.message_type}")
    spec = cls.SPEC
    if generic.header_length != spec.size:
        raise WireError(f"{spec.name}: header_length {generic.header_length} != {spec.size}")
    if head.nbytes != spec.size:
        raise WireError(f"{spec.name}: frame 0 is {head.nbytes} bytes, expected {spec.size}")
    if len(frames) != spec.frame_count:
        raise WireError(f"{spec.name}: {len(frames)} frames, expected {spec.frame_count}")

    struct = ffi.from_buffer(spec.pointer_type, head)
    values: dict[str, Any] = {
        "node_uuid_upper": generic.node_uuid_upper,
        "node_uuid_lower": generic.node_uuid_lower,
    }
    for name in spec.struct_fields:
        values[name] = getattr(struct, name)
    position = 1
    if spec.body:
        body = _unpack_body(frames[1], spec.name)
        values.update(check_fields(spec.body, body, f"{spec.name} body"))
        position = 2
    for name in spec.data:
        data = _as_view(frames[position], f"{spec.name}.{name}")
        if data.nbytes > MAX_DATA_FRAME_BYTES:
            raise WireError(f"{spec.name}.{name}: {data.nbytes} bytes exceeds {MAX_DATA_FRAME_BYTES}")
        values[name] = data
        position += 1
    message = cls(**values)
    message.check()
    return message
