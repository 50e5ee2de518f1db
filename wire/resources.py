"""What a chunk may use and what it did use: `ResourceLimits` and `Usage`.

Rules of this module:
- Both are frozen plain data, carried in job records, assignments and
  results; their wire form is a msgpack map of integers (`as_body`,
  `from_body`), so a field added later does not change any C struct.
- A limit of 0 means "none asked": the worker applies the cluster's default
  in its place (`with_defaults`).
- People write sizes as "512M" or "2G" (binary units) and times as "90s",
  "10m" or "1h"; `parse_size` and `parse_duration` read them and raise
  `ResourceSpecError` saying what was wrong.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping


# The most disk one attempt may fill when the cluster file's [limits] do not
# say: a sandboxed worker's slot filesystems have this size, so it is also
# the most a job may ask for.
DEFAULT_CHUNK_DISK_BYTES = 4 << 30


def chunk_disk_cap(defaults: "ResourceLimits") -> int:
    """The most disk one attempt may ask for: the cluster's default disk
    limit, which sizes every worker's slot filesystems."""
    return defaults.disk_bytes or DEFAULT_CHUNK_DISK_BYTES


class ResourceSpecError(ValueError):
    """A limit that cannot be understood or is out of range."""


_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION_UNITS = {"": 1, "S": 1, "M": 60, "H": 3600, "D": 86400}
_NUMBER_WITH_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes in "512M", "1.5G", "4096" or 4096; K, M, G and T are powers of 1024
    (an "i" or "iB" after the letter is allowed)."""
    if isinstance(text, bool):
        raise ResourceSpecError(f"{what}: expected a size such as 512M, got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ResourceSpecError(f"{what}: a size cannot be negative, got {text}")
        return text
    match = _NUMBER_WITH_UNIT.match(str(text))
    unit = match.group(2).upper().removesuffix("IB").removesuffix("B") if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ResourceSpecError(f"{what}: expected a size such as 512M or 2G, got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str | int | float, what: str = "duration") -> float:
    """Seconds in "90s", "10m", "1.5h", "2d" or a plain number of seconds."""
    if isinstance(text, bool):
        raise ResourceSpecError(f"{what}: expected a duration such as 10m, got {text!r}")
    if isinstance(text, (int, float)):
        if text < 0 or not math.isfinite(text):
            raise ResourceSpecError(f"{what}: expected a duration of 0 seconds or more, got {text}")
        return float(text)
    match = _NUMBER_WITH_UNIT.match(str(text))
    unit = match.group(2).upper() if match else ""
    unit = {"SEC": "S", "MIN": "M", "HOUR": "H", "DAY": "D"}.get(unit, unit)
    if match is None or unit not in _DURATION_UNITS:
        raise ResourceSpecError(f"{what}: expected a duration such as 90s, 10m or 1h, got {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[unit]


def _known_fields(record: type, body: Mapping[str, Any], what: str) -> Mapping[str, Any]:
    """The body, after checking that it names only the record's fields."""
    names = {item.name for item in fields(record)}
    unknown = sorted(str(key) for key in body if key not in names)
    if unknown:
        raise ResourceSpecError(f"{what}: unknown field {', '.join(unknown)}")
    return body


def format_bytes(count: int) -> str:
    """"512 MiB", "1.5 GiB": for people."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            value = count / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{count} B"


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    """What one attempt of a job may use; 0 in a field: the cluster's default."""

    memory_bytes: int = 0
    millicpus: int = 0          # 1500: one and a half cpus of time per second
    disk_bytes: int = 0         # the working folder, the output folder and /tmp together
    pids: int = 0               # processes and threads at once
    cpu_time_s: int = 0         # user + system time over the whole attempt

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> ResourceLimits:
        """From what people write: {"memory": "512M", "cpus": 1.5, "disk": "2G",
        "pids": 256, "cpu_time": "10m"}. Unknown keys are errors."""
        if not spec:
            return NO_LIMITS
        if not isinstance(spec, Mapping):
            raise ResourceSpecError(f"limits: expected a mapping such as {{'memory': '512M'}}, got {spec!r}")
        known = {"memory", "cpus", "disk", "pids", "cpu_time"}
        unknown = sorted(str(key) for key in spec if key not in known)
        if unknown:
            raise ResourceSpecError(f"limits: unknown limit {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        cpus = spec.get("cpus", 0)
        if isinstance(cpus, str):
            try:
                cpus = float(cpus)
            except ValueError:
                raise ResourceSpecError(f"cpus: expected a number such as 1.5, got {cpus!r}") from None
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not 0 <= cpus <= 4096 \
                or not math.isfinite(cpus):
            raise ResourceSpecError(f"cpus: expected a number from 0 to 4096 such as 1.5, got {cpus!r}")
        pids = spec.get("pids", 0)
        if isinstance(pids, bool) or not isinstance(pids, int) or not 0 <= pids < 1 << 31:
            raise ResourceSpecError(f"pids: expected a whole number such as 256, got {pids!r}")
        limits = cls(memory_bytes=parse_size(spec.get("memory", 0), "memory"),
                     millicpus=int(round(cpus * 1000)),
                     disk_bytes=parse_size(spec.get("disk", 0), "disk"),
                     pids=pids,
                     cpu_time_s=int(math.ceil(parse_duration(spec.get("cpu_time", 0), "cpu_time"))))
        limits.check()
        return limits

    def check(self) -> ResourceLimits:
        """This, after checking that every field is a whole number in range."""
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
                raise ResourceSpecError(f"{item.name}: expected a whole number from 0, got {value!r}")
        return self

    def with_defaults(self, defaults: ResourceLimits) -> ResourceLimits:
        """Each field not asked for (0) taken from `defaults`."""
        return replace(self, **{item.name: getattr(defaults, item.name) for item in fields(self)
                                if getattr(self, item.name) == 0})

    def as_body(self) -> dict[str, int]:
        return {item.name: getattr(self, item.name) for item in fields(self) if getattr(self, item.name)}

    @classmethod
    def from_body(cls, body: Mapping[str, Any] | None) -> ResourceLimits:
        """From `as_body`; raises ResourceSpecError on unknown keys or bad values."""
        return cls(**_known_fields(cls, body, "limits")).check() if body else NO_LIMITS

    def describe(self) -> str:
        """"memory 512 MiB, cpus 1.5, ...": for people; "none" when nothing is asked."""
        parts = []
        if self.memory_bytes:
            parts.append(f"memory {format_bytes(self.memory_bytes)}")
        if self.millicpus:
            parts.append(f"cpus {self.millicpus / 1000:g}")
        if self.disk_bytes:
            parts.append(f"disk {format_bytes(self.disk_bytes)}")
        if self.pids:
            parts.append(f"pids {self.pids}")
        if self.cpu_time_s:
            parts.append(f"cpu time {self.cpu_time_s} s")
        return ", ".join(parts) or "none"


NO_LIMITS = ResourceLimits()


@dataclass(frozen=True, slots=True)
class Usage:
    """What one attempt used, as its worker measured it (0: not measured)."""

    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0
    peak_memory_bytes: int = 0
    bytes_from_cache: int = 0       # read through the mount and found in the block cache
    bytes_from_storage: int = 0     # read through the mount and fetched from storage
    output_bytes: int = 0           # outputs and logs stored
    wall_s: float = 0.0

    def as_body(self) -> dict[str, int | float]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_body(cls, body: Mapping[str, Any] | None) -> Usage:
        return cls(**_known_fields(cls, body, "usage")) if body else NO_USAGE


NO_USAGE = Usage()
