"""Where the leader is, as a follower says it: the reason of an `error`
with ERR_NOT_LEADER.

The reason stays a sentence a person can read, and its form is fixed so a
program can read the address back out of it:

    "not the leader; the leader is at tcp://10.0.0.2:7000"
    "no leader elected yet"

`not_leader_reason` writes it (the masters), `leader_hint` reads it (the
client and the load balancer). Pure: no sockets.
"""
from __future__ import annotations

from typing import Any

from uds.wire.enums import ErrorCode

LEADER_AT = "not the leader; the leader is at "
NO_LEADER_YET = "no leader elected yet"


def not_leader_reason(leader_address: str | None) -> str:
    """The reason of an ERR_NOT_LEADER: it names the leader's client
    address when the follower knows it."""
    return f"{LEADER_AT}{leader_address}" if leader_address else NO_LEADER_YET


def leader_hint(error: Any) -> str | None:
    """The leader's address named by an ERR_NOT_LEADER `error`; None for
    any other error, and when it names none."""
    if getattr(error, "error_code", None) != ErrorCode.NOT_LEADER:
        return None
    reason = getattr(error, "reason", "")
    if not reason.startswith(LEADER_AT):
        return None
    address = reason[len(LEADER_AT):].strip()
    return address or None


__all__ = ["LEADER_AT", "NO_LEADER_YET", "not_leader_reason", "leader_hint"]
