"""The one request dispatcher of every daemon, and the one error reply.

    dispatcher = Dispatcher("storage", node_id, handlers, send, count, log, refusals=ERROR_CODES)
    dispatcher.handle(received, now)

A message is decoded, checked against the roles allowed to send it
(wire/senders.py), and handed to `handlers[type](message, peer, now)`.
Rules, in the order they apply:

- bytes that do not decode: ERR_MALFORMED (counted `malformed`);
- a type this node does not serve: ERR_UNEXPECTED (`unexpected`);
- a type the sender's role may not send: ERR_FORBIDDEN (`forbidden`);
- a handler's return value, if not None, is the reply;
- a handler's exception of a class in `refusals` (or a RequestRefused)
  becomes an error with that code; any other is logged and answered with
  ERR_INTERNAL (`internal_errors`).

Nothing a peer sends ends the loop, and an `error` is never answered with
an `error`, so two nodes that misunderstand each other cannot start an
endless exchange. Frames stay the views the transport received: no copy.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from uds import wire
from uds.wire.enums import ErrorCode
from uds.wire.senders import refusal as forbidden_reason

Handler = Callable[[Any, "bytes | None", float], "wire.Message | None"]
SendError = Callable[["bytes | None", int, int, int, str], None]


class RequestRefused(Exception):
    """A request a handler will not serve as asked, with its error code."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def _code_of(fault: Exception, refusals: Mapping[type[Exception], ErrorCode]) -> ErrorCode | None:
    if isinstance(fault, RequestRefused):
        return fault.code
    for cls in type(fault).__mro__:
        if cls in refusals:
            return refusals[cls]
    return None


def _type_byte(frames: list) -> int:
    """The message_type a malformed message claimed, for error.failed_type."""
    return frames[0][0] if frames and len(frames[0]) else 0


def handle_request(received: Any, handlers: Mapping[type, Handler], now: float, who: str,
                   send_error: SendError, count: Callable[[str], None], log: logging.Logger,
                   reply: Callable[["bytes | None", wire.Message], None] | None = None,
                   refusals: Mapping[type[Exception], ErrorCode] | None = None) -> None:
    """Decode `received` and hand it to its handler, by the rules above.
    `who` names this node in reasons ("a master"); `send_error(peer,
    request_id, failed_type, code, reason)` sends an error; `reply(peer,
    message)` sends a handler's return value (without it, handlers reply
    themselves)."""
    peer = received.peer
    try:
        message = wire.decode(received.frames)
    except wire.WireError as fault:
        count("malformed")
        log.debug("malformed message: %s", fault)
        send_error(peer, 0, _type_byte(received.frames), ErrorCode.MALFORMED, str(fault))
        return
    answerable = not isinstance(message, wire.Error)
    request_id = getattr(message, "request_id", 0)
    handler = handlers.get(type(message))
    if handler is None:
        count("unexpected")
        if answerable:
            send_error(peer, request_id, message.message_type, ErrorCode.UNEXPECTED,
                       f"{who} does not accept {type(message).SPEC.name}")
        return
    reason = forbidden_reason(received.role, message)
    if reason is not None:
        count("forbidden")
        log.warning("refused: %s", reason)
        if answerable:
            send_error(peer, request_id, message.message_type, ErrorCode.FORBIDDEN, f"{who} refuses {reason}")
        return
    try:
        answer = handler(message, peer, now)
        if answer is not None and reply is not None:
            reply(peer, answer)
    except Exception as fault:  # one bad request must not stop the daemon
        code = _code_of(fault, refusals or {})
        reason = str(fault)
        if code is None:
            log.exception("handling %s", type(message).SPEC.name)
            count("internal_errors")
            code = ErrorCode.INTERNAL
            reason = f"internal error in {who}: {type(fault).__name__}: {fault} (see its log)"
        if answerable:
            send_error(peer, request_id, message.message_type, code, reason)


class Dispatcher:
    """handle_request with its arguments bound, for a shell that owns one
    socket: `send(peer, message)` sends on it, errors included."""

    def __init__(self, who: str, node_id: bytes, handlers: Mapping[type, Handler],
                 send: Callable[["bytes | None", wire.Message], Any], count: Callable[[str], None],
                 log: logging.Logger, refusals: Mapping[type[Exception], ErrorCode] | None = None) -> None:
        self.who = who
        self.node_id = node_id
        self.handlers = handlers
        self.send = send
        self.count = count
        self.log = log
        self.refusals = refusals or {}

    def handle(self, received: Any, now: float) -> None:
        handle_request(received, self.handlers, now, self.who, self.send_error, self.count, self.log,
                       self.send, self.refusals)

    def send_error(self, peer: bytes | None, request_id: int, failed_type: int, code: int, reason: str) -> None:
        self.count("errors_sent")
        self.send(peer, wire.Error.replying(self.node_id, request_id, failed_type, code, reason))
