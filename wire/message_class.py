"""How a message type is declared: the `@message` decorator, the `Message`
base every message class extends, and the one REGISTRY from type number to
class that wire/codec reads.

`@message("NAME", body=..., data=...)` turns a class into a frozen, slotted
dataclass and checks its fields against `struct NAME` of csrc/wire.h (the
generic header's fields, then the struct's, then the body's keys, then the
raw frames), so the C header and the declarations cannot drift apart. The
declarations themselves are wire/messages.py (the control messages) and
wire/file_messages.py (the storage nodes' file messages).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from uds.wire._wire_cffi import ffi
from uds.wire.enums import MessageType
from uds.wire.errors import WireError
from uds.wire.ids import join_id, split_id
from uds.wire.schema import SECONDS, Schema

GENERIC_FIELDS = ("node_uuid_upper", "node_uuid_lower")
# Timestamps in structs (milliseconds) share the range of those in bodies.
MAX_TIME_MS = int(SECONDS.high * 1000)
GENERIC_HEADER_BYTES = ffi.sizeof("struct generic_message")


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """What the codec needs to know about one message type."""

    number: int
    name: str                                # the C struct's name
    pointer_type: Any                        # cffi type "struct NAME *"
    size: int                                # sizeof(struct NAME)
    struct_fields: tuple[str, ...]           # after the generic header
    body: tuple[tuple[str, Schema], ...]     # msgpack map in frame 1
    data: tuple[str, ...]                    # raw frames after the body

    @property
    def frame_count(self) -> int:
        return 1 + (1 if self.body else 0) + len(self.data)


REGISTRY: dict[int, type["Message"]] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    node_uuid_upper: int
    node_uuid_lower: int

    SPEC: ClassVar[MessageSpec]
    message_type: ClassVar[int]

    @property
    def header_length(self) -> int:
        return self.SPEC.size

    @classmethod
    def make(cls, sender: bytes, /, **values: Any) -> "Message":
        """Build from 16-byte ids: `FileRead.make(node_id, file=fid, ...)`."""
        node_upper, node_lower = split_id(sender)
        expanded = {"node_uuid_upper": node_upper, "node_uuid_lower": node_lower}
        for name, value in values.items():
            if f"{name}_uuid_upper" in cls.SPEC.struct_fields:
                expanded[f"{name}_uuid_upper"], expanded[f"{name}_uuid_lower"] = split_id(value)
            else:
                expanded[name] = value
        return cls(**expanded)

    def check(self) -> None:
        """Rules that span fields; raise WireError. Most types have none."""


def _id_property(prefix: str) -> property:
    def get(message: Message) -> bytes:
        return join_id(getattr(message, f"{prefix}_upper"), getattr(message, f"{prefix}_lower"))

    get.__doc__ = f"{prefix} as 16 bytes"
    return property(get)


def message(name: str, body: dict[str, Schema] | None = None, data: tuple[str, ...] = ()):
    """Register a message class for `struct NAME` of csrc/wire.h."""

    def register(cls: type) -> type[Message]:
        cls = dataclass(frozen=True, slots=True, kw_only=True)(cls)
        number = int(MessageType[name.upper()])
        c_type = ffi.typeof(f"struct {name}")
        c_fields = [field_name for field_name, _ in c_type.fields]
        if c_fields[0] != "header" or ffi.typeof(f"struct {name}").fields[0][1].offset != 0:
            raise TypeError(f"struct {name} must begin with struct generic_message header")
        struct_fields = tuple(c_fields[1:])
        body_fields = tuple((body or {}).items())
        declared = [field.name for field in fields(cls)]
        expected = [*GENERIC_FIELDS, *struct_fields, *(n for n, _ in body_fields), *data]
        if declared != expected:
            raise TypeError(f"{cls.__name__} fields {declared} do not match struct {name}: {expected}")
        cls.SPEC = MessageSpec(
            number=number, name=name, pointer_type=ffi.typeof(f"struct {name} *"),
            size=ffi.sizeof(c_type), struct_fields=struct_fields, body=body_fields, data=data,
        )
        cls.message_type = number
        for prefix in {field[: -len("_upper")] for field in expected if field.endswith("_uuid_upper")}:
            setattr(cls, prefix, _id_property(prefix))
        REGISTRY[number] = cls
        return cls

    return register


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise WireError(reason)


def check_member(enum: type, value: int, where: str) -> None:
    require(value in enum._value2member_map_, f"{where}: {value} is not a known {enum.__name__}")


def check_every_type_declared() -> None:
    """Raise TypeError unless every MessageType has its class; run once the
    declaring modules are imported (wire/__init__.py does)."""
    missing = set(MessageType) - {MessageType(number) for number in REGISTRY}
    if missing:
        raise TypeError(f"message types without a class: {sorted(t.name for t in missing)}")
