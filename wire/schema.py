"""Shapes of msgpack bodies, checked on encode and on decode.

Every body field is described by a `Schema`; `check(value, path)` returns the
value (normalised: tuples become lists) or raises `WireError` naming the path
of the offending element. Schemas are plain data so that tests can derive
hypothesis strategies from them and doc/wire.md can describe them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from uds.wire.errors import WireError
from uds.wire.limits import MAX_BODY_ITEMS, MAX_STRING_BYTES

U8_MAX = 2**8 - 1
U16_MAX = 2**16 - 1
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1


class Schema:
    """A rule for one value in a body."""

    def check(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Int(Schema):
    low: int = 0
    high: int = U64_MAX

    def check(self, value: Any, path: str) -> int:
        # bool is an int in Python, but not on the wire.
        if type(value) is not int:
            raise WireError(f"{path}: expected integer, got {type(value).__name__}")
        if not self.low <= value <= self.high:
            raise WireError(f"{path}: {value} outside {self.low}..{self.high}")
        return value

    def describe(self) -> str:
        for bits in (8, 16, 32, 64):
            if (self.low, self.high) == (0, 2**bits - 1):
                return f"uint{bits}"
        if (self.low, self.high) == (I64_MIN, I64_MAX):
            return "int64"
        return f"int {self.low}..{self.high}"


@dataclass(frozen=True, slots=True)
class Float(Schema):
    low: float = 0.0
    high: float = 1e12

    def check(self, value: Any, path: str) -> float:
        if type(value) is int:
            value = float(value)
        if type(value) is not float:
            raise WireError(f"{path}: expected number, got {type(value).__name__}")
        if math.isnan(value) or not self.low <= value <= self.high:
            raise WireError(f"{path}: {value} outside {self.low}..{self.high}")
        return value

    def describe(self) -> str:
        return f"float {self.low:g}..{self.high:g}"


@dataclass(frozen=True, slots=True)
class Bool(Schema):
    def check(self, value: Any, path: str) -> bool:
        if type(value) is not bool:
            raise WireError(f"{path}: expected bool, got {type(value).__name__}")
        return value

    def describe(self) -> str:
        return "bool"


@dataclass(frozen=True, slots=True)
class Str(Schema):
    max_bytes: int = MAX_STRING_BYTES

    def check(self, value: Any, path: str) -> str:
        if type(value) is not str:
            raise WireError(f"{path}: expected string, got {type(value).__name__}")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise WireError(f"{path}: string is not valid UTF-8") from None
        if size > self.max_bytes:
            raise WireError(f"{path}: string of {size} bytes exceeds {self.max_bytes}")
        return value

    def describe(self) -> str:
        return f"str (at most {self.max_bytes} bytes)"


# The longest file name Linux accepts.
NAME_MAX_BYTES = 255


@dataclass(frozen=True, slots=True)
class FileName(Schema):
    """A single path component: what a program sees under $UDS_INPUTS."""

    def check(self, value: Any, path: str) -> str:
        Str(NAME_MAX_BYTES).check(value, path)
        if value in ("", ".", "..") or "/" in value or "\0" in value:
            raise WireError(f"{path}: {value!r} is not a plain file name")
        return value

    def describe(self) -> str:
        return "file name (no '/', NUL, '.' or '..'; at most 255 bytes)"


# The longest relative path an output may have.
PATH_MAX_BYTES = 4096


@dataclass(frozen=True, slots=True)
class RelPath(Schema):
    """A relative path of plain names joined by '/': an output's place
    under $UDS_OUTPUT."""

    def check(self, value: Any, path: str) -> str:
        Str(PATH_MAX_BYTES).check(value, path)
        for part in value.split("/"):
            if part in ("", ".", "..") or "\0" in part or len(part.encode()) > NAME_MAX_BYTES:
                raise WireError(f"{path}: {value!r} is not a relative path of plain names")
        return value

    def describe(self) -> str:
        return "relative path (plain names joined by '/')"


@dataclass(frozen=True, slots=True)
class Choice(Schema):
    """One of a fixed set of strings."""

    values: tuple[str, ...]

    def check(self, value: Any, path: str) -> str:
        if type(value) is not str or value not in self.values:
            raise WireError(f"{path}: {value!r} is not one of {', '.join(self.values)}")
        return value

    def describe(self) -> str:
        return " | ".join(repr(value) for value in self.values)


@dataclass(frozen=True, slots=True)
class Bin(Schema):
    """Raw bytes; `size` fixes the length (ids are 16 bytes)."""

    size: int | None = None
    max_bytes: int = MAX_STRING_BYTES

    def check(self, value: Any, path: str) -> bytes:
        if type(value) is not bytes:
            raise WireError(f"{path}: expected bytes, got {type(value).__name__}")
        if self.size is not None and len(value) != self.size:
            raise WireError(f"{path}: {len(value)} bytes, expected {self.size}")
        if len(value) > self.max_bytes:
            raise WireError(f"{path}: {len(value)} bytes exceeds {self.max_bytes}")
        return value

    def describe(self) -> str:
        return f"bin{self.size * 8}" if self.size else f"bin (at most {self.max_bytes})"


@dataclass(frozen=True, slots=True)
class Nullable(Schema):
    inner: Schema

    def check(self, value: Any, path: str) -> Any:
        return None if value is None else self.inner.check(value, path)

    def describe(self) -> str:
        return f"{self.inner.describe()} or nil"


@dataclass(frozen=True, slots=True)
class List(Schema):
    item: Schema
    max_items: int = MAX_BODY_ITEMS

    def check(self, value: Any, path: str) -> list:
        if type(value) not in (list, tuple):
            raise WireError(f"{path}: expected array, got {type(value).__name__}")
        if len(value) > self.max_items:
            raise WireError(f"{path}: {len(value)} items exceeds {self.max_items}")
        item = self.item
        return [item.check(element, f"{path}[{index}]") for index, element in enumerate(value)]

    def describe(self) -> str:
        return f"[{self.item.describe()}, ...]"


@dataclass(frozen=True, slots=True)
class Tuple(Schema):
    """A fixed-length array whose positions have their own schemas."""

    items: tuple[Schema, ...]

    def check(self, value: Any, path: str) -> list:
        if type(value) not in (list, tuple):
            raise WireError(f"{path}: expected array, got {type(value).__name__}")
        if len(value) != len(self.items):
            raise WireError(f"{path}: {len(value)} items, expected {len(self.items)}")
        return [
            schema.check(element, f"{path}[{index}]")
            for index, (schema, element) in enumerate(zip(self.items, value))
        ]

    def describe(self) -> str:
        return "[" + ", ".join(item.describe() for item in self.items) + "]"


@dataclass(frozen=True, slots=True)
class Map(Schema):
    key: Schema
    value: Schema
    max_items: int = MAX_BODY_ITEMS

    def check(self, value: Any, path: str) -> dict:
        if type(value) is not dict:
            raise WireError(f"{path}: expected map, got {type(value).__name__}")
        if len(value) > self.max_items:
            raise WireError(f"{path}: {len(value)} entries exceeds {self.max_items}")
        checked = {}
        for key, element in value.items():
            checked[self.key.check(key, f"{path} key")] = self.value.check(
                element, f"{path}[{key!r}]"
            )
        return checked

    def describe(self) -> str:
        return f"{{{self.key.describe()}: {self.value.describe()}}}"


@dataclass(frozen=True, slots=True)
class Record(Schema):
    """A map with exactly these string keys (no more, no fewer)."""

    fields: tuple[tuple[str, Schema], ...]

    def check(self, value: Any, path: str) -> dict:
        if type(value) is not dict:
            raise WireError(f"{path}: expected map, got {type(value).__name__}")
        return check_fields(self.fields, value, path)

    def describe(self) -> str:
        return "{" + ", ".join(f"{name}: {schema.describe()}" for name, schema in self.fields) + "}"


def record(**fields: Schema) -> Record:
    return Record(tuple(fields.items()))


def check_fields(fields: tuple[tuple[str, Schema], ...], value: dict, path: str) -> dict:
    """Check a map against named fields: every one present, nothing else."""
    if len(value) != len(fields):
        expected = {name for name, _ in fields}
        missing = sorted(expected - value.keys())
        extra = sorted(str(key) for key in value.keys() - expected)
        problems = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
        raise WireError(f"{path}: " + ", ".join(problems))
    checked = {}
    for name, schema in fields:
        if name not in value:
            raise WireError(f"{path}: missing field {name!r}")
        checked[name] = schema.check(value[name], f"{path}.{name}")
    return checked


# Shapes that recur across messages.
U8 = Int(0, U8_MAX)
U16 = Int(0, U16_MAX)
U32 = Int(0, U32_MAX)
U64 = Int(0, U64_MAX)
I64 = Int(I64_MIN, I64_MAX)
ID = Bin(16)
SECONDS = Float(0.0, 1e10)
# A file reference: [file id, size in bytes].
FILE_REF = Tuple((ID, U64))
FILE_MAP = Map(FileName(), FILE_REF)
OUTPUT_MAP = Map(RelPath(), FILE_REF)
