"""Upload sessions of the put protocol, as a pure state machine.

Rules: nothing here does I/O, imports zmq or reads the clock; time comes in
as `now` (seconds, any monotonic origin). The shell owns the temporary files
and acts on what these methods return or raise.

A session is keyed by (peer, request_id, file_id). `peer` is the ROUTER
routing id of the connection, not the ZAP user id: every client of a cluster
shares one key, so the user id cannot tell two uploads apart, while a routing
id names one connection, which is where the pieces arrive in order.

    begin(key, length, now)           -> opens a session
    data(key, offset, length, now)    -> PieceDecision.WRITE or .DROP
    end(key, now)                     -> the session's length, session closed
    expire(now)                       -> keys of sessions idle too long

A piece that breaks a session (wrong offset, past the length) raises an
`UploadFault` once; the session is then *broken*: later pieces of it are
dropped without a word (the sender has a window of them in flight and learns
of the fault from that one error), and its `end` raises the same fault again.
`fail(key, fault)` breaks a session in the same way for a fault of the shell
(the disk refused a piece).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

# A session that receives nothing for this long is abandoned: the uploader
# died or gave up. Long enough for a slow link to deliver one 1 MiB piece.
UPLOAD_IDLE_TIMEOUT_S = 60.0

# Open sessions at once, over all peers. Each holds a temporary file and a
# descriptor; beyond this a new upload is refused as busy.
MAX_OPEN_UPLOADS = 256


@dataclass(frozen=True, slots=True)
class UploadKey:
    peer: bytes
    request_id: int
    file_id: bytes

    def __str__(self) -> str:
        return f"upload {self.file_id.hex()} (request {self.request_id}, peer {self.peer.hex()})"


class PieceDecision(enum.Enum):
    WRITE = "write"   # append the piece to the session's file
    DROP = "drop"     # the session is broken: ignore the piece, say nothing


class UploadFault(Exception):
    """A peer broke the put protocol. `key` names the session."""

    def __init__(self, key: UploadKey, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class UnknownUpload(UploadFault):
    """Data or end for a session that was never begun, or has expired."""


class UploadAlreadyOpen(UploadFault):
    """A second begin with the key of an open session."""


class TooManyUploads(UploadFault):
    """MAX_OPEN_UPLOADS sessions are open already."""


class PieceOutOfOrder(UploadFault):
    """A piece whose offset is not the number of bytes received so far."""


class PieceBeyondLength(UploadFault):
    """A piece that would make the file longer than announced."""


class IncompleteUpload(UploadFault):
    """An end before all announced bytes arrived."""


class UploadFailed(UploadFault):
    """This node could not keep the session's bytes (a disk fault, say)."""


@dataclass(slots=True)
class UploadSession:
    length: int
    received: int
    last_active: float
    fault: UploadFault | None = None


class UploadTracker:
    """Every open upload session of one storage node."""

    def __init__(self, idle_timeout_s: float = UPLOAD_IDLE_TIMEOUT_S,
                 max_open: int = MAX_OPEN_UPLOADS) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.max_open = max_open
        self._sessions: dict[UploadKey, UploadSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, key: UploadKey) -> bool:
        return key in self._sessions

    def keys(self) -> list[UploadKey]:
        return list(self._sessions)

    def received(self, key: UploadKey) -> int:
        return self._sessions[key].received

    def begin(self, key: UploadKey, length: int, now: float) -> None:
        if length < 0:
            raise ValueError(f"{key}: negative length {length}")  # the codec makes this impossible
        if key in self._sessions:
            raise UploadAlreadyOpen(key, "a put with this request id is already open")
        if len(self._sessions) >= self.max_open:
            raise TooManyUploads(key, f"{self.max_open} uploads are open already; retry later")
        self._sessions[key] = UploadSession(length=length, received=0, last_active=now)

    def data(self, key: UploadKey, offset: int, length: int, now: float) -> PieceDecision:
        session = self._session(key)
        session.last_active = now
        if session.fault is not None:
            return PieceDecision.DROP
        if offset != session.received:
            session.fault = PieceOutOfOrder(
                key, f"piece at offset {offset}, expected offset {session.received}")
            raise session.fault
        if offset + length > session.length:
            session.fault = PieceBeyondLength(
                key, f"piece of {length} bytes at offset {offset} goes past the announced "
                     f"length {session.length}")
            raise session.fault
        session.received += length
        return PieceDecision.WRITE

    def end(self, key: UploadKey, now: float) -> int:
        """Close the session; its length if every byte arrived, else raise."""
        session = self._session(key)
        del self._sessions[key]
        if session.fault is not None:
            raise session.fault
        if session.received != session.length:
            raise IncompleteUpload(
                key, f"ended after {session.received} of {session.length} announced bytes")
        return session.length

    def fail(self, key: UploadKey, fault: UploadFault) -> None:
        """Break a session for a reason of the shell's: later pieces are
        dropped and `end` raises `fault`."""
        self._session(key).fault = fault

    def abort(self, key: UploadKey) -> None:
        """Forget a session whose file the shell had to give up on."""
        self._sessions.pop(key, None)

    def expire(self, now: float) -> list[UploadKey]:
        """Close and return every session idle for longer than the timeout."""
        idle = [key for key, session in self._sessions.items()
                if now - session.last_active > self.idle_timeout_s]
        for key in idle:
            del self._sessions[key]
        return idle

    def _session(self, key: UploadKey) -> UploadSession:
        try:
            return self._sessions[key]
        except KeyError:
            raise UnknownUpload(key, "no open put with this request id (never begun, "
                                     "already ended, or idle too long)") from None
