"""Pins: how long the masters keep a stored file from collection even when
no job refers to it (`c.put(..., pin="1d")`, `uds put --pin 1d`).

A duration is a whole number and a unit: 30s, 10m, 2h, 1d. Pure.
"""
from __future__ import annotations

import re

from uds.errors import ClientError
from uds.wire.message_class import MAX_TIME_MS

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([0-9]+)([smhd])")


class BadPinError(ClientError):
    """A pin that is not a duration such as 30s, 10m, 2h or 1d."""


def pin_seconds(text: str) -> int:
    """The seconds a pin such as "1d" lasts; BadPinError for anything else."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise BadPinError(f"pin {text!r} is not a duration: give a whole number and a unit, "
                          f"s, m, h or d (30s, 10m, 2h, 1d)")
    seconds = int(match.group(1)) * UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise BadPinError(f"pin {text!r} must last more than zero seconds")
    return seconds


def pin_until_ms(text: str, now_s: float) -> int:
    """When a pin of `text` made at `now_s` (seconds since the epoch) ends,
    in milliseconds since the epoch."""
    until_ms = int(now_s * 1000) + pin_seconds(text) * 1000
    if until_ms > MAX_TIME_MS:
        raise BadPinError(f"pin {text!r} lasts beyond what the masters can keep ({MAX_TIME_MS} ms)")
    return until_ms
