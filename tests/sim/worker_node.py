"""A worker's decisions about its chunk attempts, as a core the simulation
can drive: `SimWorkerCore.handle(event, now) -> effects`.

This follows today's rules in worker/node.py (which will move into the
worker's attempt core, worker/attempts.py): an attempt is preparing (its
program is fetched once per worker), running, finishing (outputs uploaded)
and reported; STARTED is sent only for an attempt still running
STARTED_DELAY_S after launch; a final status is resent every RESEND_STATUS_S
until the load balancer confirms the masters committed it (status_ack);
hello until answered, and again after "hello first"; a heartbeat lists
every attempt not yet reported. Swapping in the real core means mapping its
events and effects onto the classes below.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from uds import wire
from uds.wire.enums import ChunkState, ErrorCode, NodeRole
from uds.loadbalancer.events import AttemptKey as ChunkKey

from .today import HELLO_RETRY_S, RESEND_STATUS_S, STARTED_DELAY_S


# ---- events in -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Received:
    message: wire.Message


@dataclass(frozen=True, slots=True)
class Fetched:
    key: ChunkKey
    error: str = ""                 # "": the program is here


@dataclass(frozen=True, slots=True)
class Exited:
    key: ChunkKey
    exit_code: int
    stopped: bool = False           # ended by a Signal (cancelled)


@dataclass(frozen=True, slots=True)
class Uploaded:
    key: ChunkKey
    outputs: dict


@dataclass(frozen=True, slots=True)
class Tick:
    pass


# ---- effects out -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Send:
    message: wire.Message


@dataclass(frozen=True, slots=True)
class FetchProgram:
    key: ChunkKey
    program: tuple


@dataclass(frozen=True, slots=True)
class Start:
    key: ChunkKey


@dataclass(frozen=True, slots=True)
class Signal:
    key: ChunkKey


@dataclass(frozen=True, slots=True)
class Upload:
    key: ChunkKey


@dataclass(frozen=True, slots=True)
class Wake:
    at: float


class Phase(Enum):
    PREPARING = "preparing"
    RUNNING = "running"
    FINISHING = "finishing"
    REPORTED = "reported"


@dataclass
class _Attempt:
    key: ChunkKey
    program: tuple
    phase: Phase = Phase.PREPARING
    cancelled: bool = False
    started_at: float = 0.0
    report_started_at: float | None = None
    state: int = 0
    exit_code: int | None = None
    error: str = ""
    final: wire.WorkerStatus | None = None
    final_sent_at: float = 0.0


@dataclass
class SimWorkerCore:
    node_id: bytes
    slots: int
    started_at: float
    heartbeat_interval_s: float
    registered: bool = False
    last_hello: float = -HELLO_RETRY_S
    last_heartbeat: float = 0.0
    next_request_id: int = 1
    programs: set = field(default_factory=set)
    attempts: dict[ChunkKey, _Attempt] = field(default_factory=dict)
    _effects: list = field(default_factory=list)

    def handle(self, event: Any, now: float) -> list:
        self._effects = []
        if isinstance(event, Received):
            handler = _MESSAGE_HANDLERS.get(type(event.message))
            if handler is not None:
                handler(self, event.message, now)
        elif not isinstance(event, Tick):
            _EVENT_HANDLERS[type(event)](self, event, now)
        self._on_timers(now)
        effects, self._effects = self._effects, []
        return effects

    def _send(self, message: wire.Message) -> None:
        self._effects.append(Send(message))

    # -- messages ------------------------------------------------------------

    def _on_hello_reply(self, message: wire.HelloReply, now: float) -> None:
        self.registered = True
        self.last_heartbeat = -self.heartbeat_interval_s
        for attempt in self.attempts.values():
            attempt.final_sent_at = -RESEND_STATUS_S   # resend to a (maybe new) balancer

    def _on_error(self, message: wire.Error, now: float) -> None:
        if message.error_code == ErrorCode.UNEXPECTED:
            self.registered = False

    def _on_worker_request(self, message: wire.WorkerRequest, now: float) -> None:
        program = tuple(message.program)
        for assignment in message.assignments:
            key = ChunkKey(message.job_uuid, assignment["chunk"], assignment["attempt"])
            if key in self.attempts:
                continue                            # a repeated assignment
            attempt = self.attempts[key] = _Attempt(key, program)
            if program in self.programs:
                self._launch(attempt, "", now)
            else:
                self._effects.append(FetchProgram(key, program))

    def _on_chunk_cancel(self, message: wire.ChunkCancel, now: float) -> None:
        wanted = {(chunk, attempt) for chunk, attempt in message.attempts}
        for key, attempt in self.attempts.items():
            if key.job != message.job_uuid or (wanted and (key.chunk, key.attempt) not in wanted):
                continue
            if attempt.phase is Phase.PREPARING:
                attempt.cancelled = True
            elif attempt.phase is Phase.RUNNING:
                self._effects.append(Signal(key))

    def _on_status_ack(self, message: wire.StatusAck, now: float) -> None:
        for job, chunk, number, _state in message.attempts:
            key = ChunkKey(job, chunk, number)
            attempt = self.attempts.get(key)
            if attempt is not None and attempt.phase is Phase.REPORTED:
                del self.attempts[key]

    # -- attempts --------------------------------------------------------------

    def _on_fetched(self, event: Fetched, now: float) -> None:
        attempt = self.attempts.get(event.key)
        if attempt is not None:
            if not event.error:
                self.programs.add(attempt.program)
            self._launch(attempt, event.error, now)

    def _launch(self, attempt: _Attempt, error: str, now: float) -> None:
        if attempt.cancelled:
            self._report_final(attempt, ChunkState.CANCELLED, None, "cancelled", now)
        elif error:
            self._report_final(attempt, ChunkState.REJECTED, None, error, now)
        else:
            attempt.phase = Phase.RUNNING
            attempt.started_at = now
            attempt.report_started_at = now + STARTED_DELAY_S
            self._effects.append(Start(attempt.key))
            self._effects.append(Wake(attempt.report_started_at))

    def _on_exited(self, event: Exited, now: float) -> None:
        attempt = self.attempts.get(event.key)
        if attempt is None or attempt.phase is not Phase.RUNNING:
            return
        attempt.phase = Phase.FINISHING
        attempt.exit_code = event.exit_code
        if event.stopped:
            attempt.state, attempt.error = ChunkState.CANCELLED, "cancelled"
        elif event.exit_code == 0:
            attempt.state, attempt.error = ChunkState.SUCCEEDED, ""
        else:
            attempt.state, attempt.error = ChunkState.FAILED, f"exit code {event.exit_code}"
        self._effects.append(Upload(event.key))

    def _on_uploaded(self, event: Uploaded, now: float) -> None:
        attempt = self.attempts.get(event.key)
        if attempt is not None and attempt.phase is Phase.FINISHING:
            self._report_final(attempt, attempt.state, attempt.exit_code, attempt.error, now,
                               outputs=event.outputs, elapsed_s=now - attempt.started_at)

    def _status(self, key: ChunkKey, state: int, exit_code: int | None = None, error: str = "",
                outputs: dict | None = None, elapsed_s: float = 0.0) -> wire.WorkerStatus:
        return wire.WorkerStatus.make(
            self.node_id, job=key.job, state=int(state), epoch=1, chunk=key.chunk, attempt=key.attempt,
            exit_code=exit_code, outputs=outputs or {}, stdout=None, stderr=None, error=error,
            elapsed_s=elapsed_s, bytes_from_cache=0, bytes_from_storage=0)

    def _report_final(self, attempt: _Attempt, state: int, exit_code: int | None, error: str, now: float,
                      outputs: dict | None = None, elapsed_s: float = 0.0) -> None:
        attempt.phase = Phase.REPORTED
        attempt.final = self._status(attempt.key, state, exit_code, error, outputs, elapsed_s)
        attempt.final_sent_at = now
        self._send(attempt.final)

    # -- timers ------------------------------------------------------------------

    def _on_timers(self, now: float) -> None:
        for attempt in self.attempts.values():
            if (attempt.phase is Phase.RUNNING and attempt.report_started_at is not None
                    and now >= attempt.report_started_at):
                attempt.report_started_at = None
                self._send(self._status(attempt.key, ChunkState.STARTED))
        if not self.registered:
            if now - self.last_hello > HELLO_RETRY_S:
                self.last_hello = now
                self.next_request_id += 1
                self._send(wire.Hello.make(
                    self.node_id, request_id=self.next_request_id, role=int(NodeRole.WORKER), slots=self.slots,
                    cache_bytes=1 << 30, start_time_ms=int(self.started_at * 1000), host="", address="",
                    version=1))
            return
        if now - self.last_heartbeat >= self.heartbeat_interval_s:
            self.last_heartbeat = now
            running = [[key.job, key.chunk, key.attempt] for key, attempt in self.attempts.items()
                       if attempt.phase is not Phase.REPORTED]
            self._send(wire.Heartbeat.make(
                self.node_id, epoch=1, free_slots=max(0, self.slots - len(running)), running_count=len(running),
                running=running, cache_added=[], cache_removed=[]))
        for attempt in self.attempts.values():
            if attempt.phase is Phase.REPORTED and now - attempt.final_sent_at > RESEND_STATUS_S:
                attempt.final_sent_at = now
                self._send(attempt.final)


_MESSAGE_HANDLERS: dict[type, Callable[..., None]] = {
    wire.HelloReply: SimWorkerCore._on_hello_reply,
    wire.Error: SimWorkerCore._on_error,
    wire.WorkerRequest: SimWorkerCore._on_worker_request,
    wire.ChunkCancel: SimWorkerCore._on_chunk_cancel,
    wire.StatusAck: SimWorkerCore._on_status_ack,
}

_EVENT_HANDLERS: dict[type, Callable[..., None]] = {
    Fetched: SimWorkerCore._on_fetched,
    Exited: SimWorkerCore._on_exited,
    Uploaded: SimWorkerCore._on_uploaded,
}
