"""The worker's brain: the life of every chunk attempt on this worker, from
assignment to the load balancer's confirmation, and the worker's liveness.

Rules of this module (the contract for worker/node.py and tests/sim/):
- Pure. Nothing here imports zmq, threading, socket, time, os or llfuse, or
  touches a file. Time comes in as `now` (seconds on the caller's monotonic
  clock). `Attempts.handle(event, now)` returns a list of effects and is
  deterministic: the same events at the same `now`s give the same effects
  in the same order.
- Every effect that asks for work is answered by exactly one event naming
  the same attempt, at once or after any delay:
      FetchProgram -> ProgramFetched | ProgramUnavailable
      Mount        -> Mounted | MountFailed
      Start        -> ProcessStarted, then ProcessExited (or ProcessExited
                      alone: the program could not be executed)
      Upload       -> Uploaded | UploadFailed (the working folder is removed
                      either way)
  Signal, Unmount, Clean, Report, Resend, SayHello and SendHeartbeat are
  fire and forget. A process's end always arrives as ProcessExited, however
  it was stopped. No attempt is forgotten while one of its requests is
  unanswered, so every answer finds its attempt.
- Messages from the balancer (Assigned, CancelReceived, StatusAcknowledged,
  HelloAnswered, HelloRequired) may be lost, repeated or reordered: a repeat
  of an attempt already held (or recently finished) is ignored, and a cancel
  or an acknowledgement naming an attempt not held is ignored.
- Epochs. The worker says hello and heartbeats to every balancer of the
  cluster (each event names its balancer, each message effect the one it
  goes to), and follows the highest epoch it has seen: an order (Assigned,
  CancelReceived, StatusAcknowledged) of a lower epoch is dropped and counted
  (`stale_epoch_dropped`), and the balancer that last sent the highest epoch
  is followed: reports go to it. A higher epoch resends every unacknowledged
  report to its balancer at once; it never stops an attempt.
- An answer that is not allowed in its attempt's phase (TRANSITIONS) raises
  InvalidTransition: that is a bug of the shell or the simulation, never a
  peer's doing.
- `Tick` fires the timers (timeouts, the SIGKILL after a grace, the STARTED
  report, resends, hello and heartbeat). The shell sends it once `now`
  reaches `next_wakeup()`; more often is harmless. No event but
  HelloAnswered (which ticks itself) sets a timer that is already due. The
  shell also reports the size of a running attempt's logs (LogSize) as often
  as it likes, and the first read of an input by its program (FirstRead),
  once: a notice, not an answer, ignored unless its program runs.
- Timeline. A final report's result carries when the worker accepted the
  assignment, when the program's process started, when it first read an
  input, when it ended (or, with no process, when the attempt ended) and
  when its outputs and logs were stored, in unix seconds: the caller's
  `now` plus `wall_clock_offset_s`, which the shell measures once. Without
  that offset the core knows no wall clock and leaves them 0.0 (not known);
  so are a first read that never came and an upload there was no need of.
- An attempt takes a slot from assignment to its final report. Its final
  report is sent once, then resent every RESEND_STATUS_S while registered,
  until a status_ack confirms the masters committed it.

What an ending is reported as (state, error text, result, which outputs can
be named) is worker/exit_reports.py.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Callable

# The events and effects are re-exported: callers use them as attempts.X.
from uds.worker.attempt_events import (  # noqa: F401
    AttemptKey, Assigned, Balancer, CancelReceived, ChunkAssignment, ChunkResult, Clean, DeadlinePassed, Effect,
    Event, FetchProgram, FileRef, FirstRead, GraceOver, HelloAnswered, HelloRequired, JobSpec, LogSize, Mount,
    Mounted, MountFailed, ProcessExited, ProcessStarted, ProgramFetched, ProgramUnavailable, Report,
    Resend, SayHello, SendHeartbeat, Signal, SignalName, Start, StatusAcknowledged, Tick, Unmount,
    Upload, Uploaded, UploadFailed,
)
from uds.wire.enums import ChunkState
from uds.worker.exit_reports import LOG_KILL_BYTES, StopReason, exit_report, with_uploads

# The first epoch a balancer holds; a worker that has heard from none
# holds epoch 0, below every balancer's.
EPOCH = 1
HELLO_RETRY_S = 1.0
RESEND_STATUS_S = 2.0
# STARTED is reported only for chunks still running this long after launch:
# a chunk that ends sooner is reported once, final, which halves the messages
# for short chunks. Heartbeats acknowledge assignments meanwhile.
STARTED_DELAY_S = 0.05
# SIGTERM first; SIGKILL this long after, if the group is still there.
KILL_GRACE_S = 2.0
# Finished attempts remembered so that a repeated assignment is not run again.
MAX_REMEMBERED_FINISHED = 10_000


class Phase(Enum):
    FETCHING = "fetching"       # FetchProgram sent
    MOUNTING = "mounting"       # Mount sent
    STARTING = "starting"       # Start sent
    RUNNING = "running"
    STOPPING = "stopping"       # SIGTERM sent; SIGKILL at kill_at
    UPLOADING = "uploading"     # Upload sent
    REPORTED = "reported"       # final report sent, resent until acknowledged
    DONE = "done"               # acknowledged: forgotten

    # Members are singletons compared by identity: hash them as objects (a C
    # slot), not by name, since the table is looked up on every event.
    __hash__ = object.__hash__


class InvalidTransition(Exception):
    """An event arrived in a phase that does not allow it."""

    def __init__(self, event: Any, phase: Phase | None, key: AttemptKey) -> None:
        where = f"phase {phase.name}" if phase is not None else "no phase (not held)"
        super().__init__(f"{type(event).__name__} in {where} for attempt {_name(key)}")
        self.event, self.phase, self.key = event, phase, key


class UnknownEventError(Exception):
    """Something that is not an event of this core."""


P = Phase
# Which phases an event may move an attempt from, and to which; the handler
# picks one of the targets from what the event says.
TRANSITIONS: dict[tuple[Phase, type], frozenset[Phase]] = {
    (P.FETCHING, ProgramFetched): frozenset({P.MOUNTING, P.REPORTED}),   # REPORTED: cancelled meanwhile
    (P.FETCHING, ProgramUnavailable): frozenset({P.REPORTED}),
    (P.MOUNTING, Mounted): frozenset({P.STARTING, P.REPORTED}),
    (P.MOUNTING, MountFailed): frozenset({P.REPORTED}),
    (P.STARTING, ProcessStarted): frozenset({P.RUNNING, P.STOPPING}),
    (P.STARTING, ProcessExited): frozenset({P.UPLOADING, P.REPORTED}),
    (P.RUNNING, ProcessExited): frozenset({P.UPLOADING, P.REPORTED}),
    (P.RUNNING, LogSize): frozenset({P.RUNNING, P.STOPPING}),
    (P.RUNNING, DeadlinePassed): frozenset({P.STOPPING}),
    (P.STOPPING, ProcessExited): frozenset({P.UPLOADING, P.REPORTED}),
    (P.STOPPING, LogSize): frozenset({P.STOPPING}),
    (P.STOPPING, GraceOver): frozenset({P.STOPPING}),
    (P.UPLOADING, Uploaded): frozenset({P.REPORTED}),
    (P.UPLOADING, UploadFailed): frozenset({P.REPORTED}),
    (P.REPORTED, StatusAcknowledged): frozenset({P.DONE}),
    # A cancel is remembered until the pending step answers, acted on while
    # running, and changes nothing once the program has ended.
    **{(phase, CancelReceived): frozenset({phase}) for phase in
       (P.FETCHING, P.MOUNTING, P.STARTING, P.STOPPING, P.UPLOADING, P.REPORTED)},
    (P.RUNNING, CancelReceived): frozenset({P.STOPPING}),
    # The masters gave up on an attempt still in hand: it runs to its end.
    **{(phase, StatusAcknowledged): frozenset({phase}) for phase in
       (P.FETCHING, P.MOUNTING, P.STARTING, P.RUNNING, P.STOPPING, P.UPLOADING)},
}
del P

# Attempts in these phases have a process group that a Signal reaches.
_SIGNALLABLE = frozenset({Phase.RUNNING, Phase.STOPPING})


@dataclass(slots=True)
class _Attempt:
    key: AttemptKey
    job: JobSpec
    inputs: dict[str, FileRef]
    phase: Phase = Phase.FETCHING
    cancel_requested: bool = False
    program: str = ""
    started_at: float = 0.0
    started_report_at: float | None = None   # STARTED is sent then, if it still runs
    deadline: float = 0.0
    stop_reason: StopReason | None = None
    kill_at: float | None = None
    final: Report | None = None
    resend_at: float = 0.0
    exit_state: ChunkState | None = None       # set at exit, before the upload
    exit_result: ChunkResult | None = None
    assigned_at: float = 0.0                   # the timeline, on the caller's clock; 0.0: not yet
    process_started_at: float = 0.0
    first_read_at: float = 0.0
    ended_at: float = 0.0
    uploaded_at: float = 0.0


@dataclass(slots=True)
class _Link:
    """The worker's liveness with one balancer."""

    registered: bool = False
    last_hello: float | None = None
    next_heartbeat: float = 0.0
    full_cache_next: bool = True


class Attempts:
    """The chunk attempts of one worker. `handle(event, now) -> effects`.
    `balancers` is how many load balancers the cluster has; events and
    effects name them 0..balancers-1. `wall_clock_offset_s`: unix seconds
    at the caller's clock zero (None: the reports carry no timeline)."""

    def __init__(self, slots: int, heartbeat_interval_s: float, balancers: int = 1,
                 wall_clock_offset_s: float | None = None) -> None:
        if balancers < 1:
            raise ValueError("a worker needs at least one load balancer")
        self.slots = slots
        self.heartbeat_interval_s = heartbeat_interval_s
        self.wall_clock_offset_s = wall_clock_offset_s
        self.epoch = 0                  # the highest seen
        self.followed: Balancer = 0     # the balancer that last sent it; reports go there
        self.counters: dict[str, int] = {}
        self._links = [_Link() for _ in range(balancers)]
        self._attempts: dict[AttemptKey, _Attempt] = {}
        self._finished: OrderedDict[AttemptKey, None] = OrderedDict()
        self._handlers: dict[type, Callable[[Any, float], list[Effect]]] = {
            Assigned: self._on_assigned,
            CancelReceived: self._on_cancel,
            StatusAcknowledged: self._on_acknowledged,
            HelloAnswered: self._on_hello_answered,
            HelloRequired: self._on_hello_required,
            Tick: self._on_tick,
            ProgramFetched: self._on_program_fetched,
            ProgramUnavailable: self._on_program_unavailable,
            Mounted: self._on_mounted,
            MountFailed: self._on_mount_failed,
            ProcessStarted: self._on_process_started,
            ProcessExited: self._on_process_exited,
            FirstRead: self._on_first_read,
            LogSize: self._on_log_size,
            Uploaded: self._on_uploaded,
            UploadFailed: self._on_upload_failed,
        }

    # ---- public ----------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        handler = self._handlers.get(type(event))
        if handler is None:
            raise UnknownEventError(f"{type(event).__name__} is not an event of the worker's attempts")
        balancer = getattr(event, "balancer", 0)
        if not 0 <= balancer < len(self._links):
            raise UnknownEventError(f"{type(event).__name__} from balancer {balancer}, "
                                    f"of {len(self._links)}")
        return handler(event, now)

    @property
    def registered(self) -> bool:
        """Whether the followed balancer has answered our hello."""
        return self._links[self.followed].registered

    def registered_with(self, balancer: Balancer) -> bool:
        return self._links[balancer].registered

    def phase(self, key: AttemptKey) -> Phase | None:
        attempt = self._attempts.get(key)
        return attempt.phase if attempt is not None else None

    def phases(self) -> dict[AttemptKey, Phase]:
        return {key: attempt.phase for key, attempt in self._attempts.items()}

    def busy_slots(self) -> int:
        """Attempts not yet reported final: each holds a slot."""
        return sum(1 for attempt in self._attempts.values() if attempt.phase is not Phase.REPORTED)

    def free_slots(self) -> int:
        return max(0, self.slots - self.busy_slots())

    def in_phase(self, *phases: Phase) -> list[AttemptKey]:
        return [key for key, attempt in self._attempts.items() if attempt.phase in phases]

    def unacknowledged(self) -> dict[AttemptKey, Report]:
        return {key: attempt.final for key, attempt in self._attempts.items() if attempt.final is not None}

    def next_wakeup(self) -> float | None:
        """The earliest time a Tick has something to do, or None."""
        times: list[float] = []
        for link in self._links:
            if not link.registered:
                times.append(link.last_hello + HELLO_RETRY_S if link.last_hello is not None else 0.0)
            else:
                times.append(link.next_heartbeat)
        registered = self.registered
        for attempt in self._attempts.values():
            phase = attempt.phase
            if phase is Phase.RUNNING or phase is Phase.STOPPING:
                if phase is Phase.RUNNING:
                    times.append(attempt.deadline)
                elif attempt.kill_at is not None:
                    times.append(attempt.kill_at)
                if attempt.started_report_at is not None:
                    times.append(attempt.started_report_at)
            elif phase is Phase.REPORTED and registered:
                times.append(attempt.resend_at)
        return min(times) if times else None

    # ---- messages from the load balancer -----------------------------------

    def _obeys(self, epoch: int, balancer: Balancer, now: float) -> bool:
        """Whether an order (Assigned, CancelReceived, StatusAcknowledged) of
        this epoch is obeyed: not when an epoch above it has been seen, since
        its balancer has lost the lease. Its balancer is followed from now."""
        if epoch < self.epoch:
            self._count("stale_epoch_dropped")
            return False
        self._follow(epoch, balancer, now)
        return True

    def _follow(self, epoch: int, balancer: Balancer, now: float) -> None:
        """`balancer` sent `epoch`, the highest seen: it is followed, and
        when that is news, every unacknowledged report goes to it at once."""
        if epoch > self.epoch:
            if self.epoch:                          # a failover, not the first epoch heard
                self._count("epoch_changes")
            self.epoch = epoch
        elif balancer == self.followed:
            return
        self.followed = balancer
        for attempt in self._attempts.values():
            attempt.resend_at = now
            if attempt.final is not None:
                # Sent again under the epoch it goes to: the new active takes
                # no report of an epoch it has fenced off.
                attempt.final = replace(attempt.final, epoch=self.epoch, to=balancer)

    def _on_assigned(self, event: Assigned, now: float) -> list[Effect]:
        if not self._obeys(event.epoch, event.balancer, now):
            return []
        effects: list[Effect] = []
        for chunk in event.chunks:
            key = AttemptKey(event.job.job, chunk.chunk, chunk.attempt)
            if key in self._attempts or key in self._finished:
                continue                                # a repeated assignment
            inputs = dict(event.job.inputs)
            inputs.update(chunk.inputs)
            self._attempts[key] = _Attempt(key=key, job=event.job, inputs=inputs, assigned_at=now)
            self._count("attempts_accepted")
            effects.append(FetchProgram(key, event.job.program))
        return effects

    def _on_cancel(self, event: CancelReceived, now: float) -> list[Effect]:
        if not self._obeys(event.epoch, event.balancer, now):
            return []
        wanted = set(event.attempts)
        effects: list[Effect] = []
        for key, attempt in list(self._attempts.items()):
            if key.job != event.job or (wanted and (key.chunk, key.attempt) not in wanted):
                continue
            self._check(attempt, event)
            if attempt.phase is Phase.RUNNING:
                effects.extend(self._stop(attempt, StopReason.CANCELLED, now, event))
            elif attempt.phase in (Phase.FETCHING, Phase.MOUNTING, Phase.STARTING):
                attempt.cancel_requested = True
        return effects

    def _on_acknowledged(self, event: StatusAcknowledged, now: float) -> list[Effect]:
        # A balancer of an old epoch may pass on acknowledgements the masters
        # refused it: dropped, the report is resent to the new one.
        if not self._obeys(event.epoch, event.balancer, now):
            return []
        for key in event.attempts:
            attempt = self._attempts.get(key)
            if attempt is None:
                continue                                # a repeated ack
            self._check(attempt, event)
            if attempt.phase is Phase.REPORTED:
                self._move(attempt, Phase.DONE, event)
                del self._attempts[key]
                self._finished[key] = None
                if len(self._finished) > MAX_REMEMBERED_FINISHED:
                    self._finished.popitem(last=False)
        return []

    def _on_hello_answered(self, event: HelloAnswered, now: float) -> list[Effect]:
        # Every balancer is told our slots and cache, whatever its epoch: a
        # standby needs them the moment it takes over. Only a higher epoch
        # than seen moves who is followed (a standby answers with a lower one).
        link = self._links[event.balancer]
        link.registered = True
        link.full_cache_next = True
        link.next_heartbeat = now
        if event.epoch > self.epoch:
            self._follow(event.epoch, event.balancer, now)
        elif event.balancer == self.followed:
            for attempt in self._attempts.values():
                attempt.resend_at = now     # to the (maybe restarted) balancer at once
        return self._on_tick(Tick(), now)

    def _on_hello_required(self, event: HelloRequired, now: float) -> list[Effect]:
        self._links[event.balancer].registered = False
        return []

    # ---- timers ------------------------------------------------------------

    def _on_tick(self, event: Tick, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for attempt in list(self._attempts.values()):
            if attempt.phase is Phase.RUNNING and now >= attempt.deadline:
                effects.extend(self._step(attempt, DeadlinePassed(attempt.key), now))
            if attempt.phase is Phase.STOPPING and attempt.kill_at is not None and now >= attempt.kill_at:
                effects.extend(self._step(attempt, GraceOver(attempt.key), now))
            if (attempt.started_report_at is not None and attempt.phase in _SIGNALLABLE
                    and now >= attempt.started_report_at):
                attempt.started_report_at = None
                effects.append(Report(attempt.key, ChunkState.STARTED, self.epoch, ChunkResult(),
                                      self.followed))
        for balancer, link in enumerate(self._links):
            if not link.registered:
                if link.last_hello is None or now >= link.last_hello + HELLO_RETRY_S:
                    link.last_hello = now
                    effects.append(SayHello(balancer))
            elif now >= link.next_heartbeat:
                link.next_heartbeat = now + self.heartbeat_interval_s
                effects.append(self._heartbeat(balancer, link))
        if not self.registered:
            return effects
        for attempt in self._attempts.values():
            if attempt.final is not None and now >= attempt.resend_at:
                attempt.resend_at = now + RESEND_STATUS_S
                self._count("statuses_resent")
                effects.append(Resend(attempt.final, self.followed))
        return effects

    def _heartbeat(self, balancer: Balancer, link: _Link) -> SendHeartbeat:
        running = tuple(key for key, attempt in self._attempts.items() if attempt.phase is not Phase.REPORTED)
        full_cache, link.full_cache_next = link.full_cache_next, False
        return SendHeartbeat(self.epoch, max(0, self.slots - len(running)), running, full_cache, balancer)

    # ---- answers to effects ------------------------------------------------

    def _step(self, attempt: _Attempt, event: Any, now: float) -> list[Effect]:
        """Internal events (timers) go through the same table."""
        self._check(attempt, event)
        if isinstance(event, DeadlinePassed):
            return self._stop(attempt, StopReason.TIMED_OUT, now, event)
        attempt.kill_at = None                          # GraceOver: SIGKILL once
        return [Signal(attempt.key, SignalName.KILL)]

    def _held(self, event: Any) -> _Attempt:
        attempt = self._attempts.get(event.key)
        if attempt is None:
            raise InvalidTransition(event, None, event.key)
        self._check(attempt, event)
        return attempt

    def _on_program_fetched(self, event: ProgramFetched, now: float) -> list[Effect]:
        attempt = self._held(event)
        if attempt.cancel_requested:
            return self._finish(attempt, ChunkState.CANCELLED, ChunkResult(error="cancelled"), now, event)
        attempt.program = event.program
        self._move(attempt, Phase.MOUNTING, event)
        return [Mount(attempt.key, dict(attempt.inputs))]

    def _on_program_unavailable(self, event: ProgramUnavailable, now: float) -> list[Effect]:
        attempt = self._held(event)
        # Not the program's fault: the masters will have it run again.
        return self._finish(attempt, ChunkState.REJECTED, ChunkResult(error=event.reason), now, event)

    def _on_mounted(self, event: Mounted, now: float) -> list[Effect]:
        attempt = self._held(event)
        if attempt.cancel_requested:
            return [Unmount(attempt.key), *self._finish(attempt, ChunkState.CANCELLED,
                                                        ChunkResult(error="cancelled"), now, event)]
        self._move(attempt, Phase.STARTING, event)
        attempt.started_at = now
        return [Start(attempt.key, attempt.program, attempt.job.args, event.inputs_dir, attempt.job.chunk_count,
                      attempt.job.limits, attempt.job.network)]

    def _on_mount_failed(self, event: MountFailed, now: float) -> list[Effect]:
        attempt = self._held(event)
        return self._finish(attempt, ChunkState.REJECTED,
                            ChunkResult(error=f"worker could not prepare the chunk: {event.reason}"), now, event)

    def _on_process_started(self, event: ProcessStarted, now: float) -> list[Effect]:
        attempt = self._held(event)
        self._count("attempts_started")
        attempt.started_at = attempt.process_started_at = now
        attempt.deadline = now + attempt.job.timeout_s
        attempt.started_report_at = now + STARTED_DELAY_S
        if attempt.cancel_requested:
            return self._stop(attempt, StopReason.CANCELLED, now, event)
        self._move(attempt, Phase.RUNNING, event)
        return []

    def _on_first_read(self, event: FirstRead, now: float) -> list[Effect]:
        # A read seen after the end (a straggler of the process group) is
        # not the running program's: the timeline keeps its order.
        attempt = self._attempts.get(event.key)
        if attempt is not None and attempt.phase in _SIGNALLABLE and not attempt.first_read_at:
            attempt.first_read_at = now
        return []

    def _on_log_size(self, event: LogSize, now: float) -> list[Effect]:
        attempt = self._held(event)
        if attempt.phase is Phase.RUNNING and event.size_bytes > LOG_KILL_BYTES:
            return self._stop(attempt, StopReason.LOG_TOO_LARGE, now, event)
        return []

    def _on_process_exited(self, event: ProcessExited, now: float) -> list[Effect]:
        attempt = self._held(event)
        attempt.ended_at = now
        state, result, outputs = exit_report(event, attempt.stop_reason, attempt.job.timeout_s,
                                             elapsed_s=max(0.0, now - attempt.started_at))
        if not outputs and not event.stdout_bytes and not event.stderr_bytes:
            # Nothing to store: report straight away (the common case for tiny
            # chunks), and tidy up after the report is on its way.
            return [*self._finish(attempt, state, result, now, event), Unmount(attempt.key), Clean(attempt.key)]
        attempt.exit_state, attempt.exit_result = state, result
        self._move(attempt, Phase.UPLOADING, event)
        return [Unmount(attempt.key), Upload(attempt.key, outputs, event.stdout_bytes > 0, event.stderr_bytes > 0)]

    def _on_uploaded(self, event: Uploaded, now: float) -> list[Effect]:
        attempt = self._held(event)
        assert attempt.exit_state is not None and attempt.exit_result is not None
        attempt.uploaded_at = now
        return self._finish(attempt, attempt.exit_state, with_uploads(attempt.exit_result, event), now, event)

    def _on_upload_failed(self, event: UploadFailed, now: float) -> list[Effect]:
        attempt = self._held(event)
        assert attempt.exit_result is not None
        # Storage trouble is not the program's fault.
        result = replace(attempt.exit_result, exit_code=None, error=f"could not store results: {event.reason}")
        return self._finish(attempt, ChunkState.REJECTED, result, now, event)

    # ---- moves -------------------------------------------------------------

    def _stop(self, attempt: _Attempt, reason: StopReason, now: float, event: Any) -> list[Effect]:
        """SIGTERM the group now, SIGKILL it after the grace."""
        self._move(attempt, Phase.STOPPING, event)
        attempt.stop_reason = reason
        attempt.kill_at = now + KILL_GRACE_S
        return [Signal(attempt.key, SignalName.TERM)]

    def _finish(self, attempt: _Attempt, state: ChunkState, result: ChunkResult, now: float,
                event: Any) -> list[Effect]:
        self._move(attempt, Phase.REPORTED, event)
        attempt.final = Report(attempt.key, state, self.epoch, self._timed(attempt, result, now), self.followed)
        attempt.resend_at = now + RESEND_STATUS_S
        self._count(f"attempts_{state.name.lower()}")
        return [attempt.final]

    def _timed(self, attempt: _Attempt, result: ChunkResult, now: float) -> ChunkResult:
        """`result` with the attempt's timeline in unix seconds, when the core knows the wall clock."""
        offset = self.wall_clock_offset_s
        if offset is None:
            return result
        def wall(at: float) -> float:
            return at + offset if at else 0.0
        return replace(result, assigned_at=attempt.assigned_at + offset,
                       started_at=wall(attempt.process_started_at), first_read_at=wall(attempt.first_read_at),
                       ended_at=(attempt.ended_at or now) + offset, uploaded_at=wall(attempt.uploaded_at))

    def _check(self, attempt: _Attempt, event: Any) -> None:
        if (attempt.phase, type(event)) not in TRANSITIONS:
            raise InvalidTransition(event, attempt.phase, attempt.key)

    @staticmethod
    def _move(attempt: _Attempt, phase: Phase, event: Any) -> None:
        allowed = TRANSITIONS.get((attempt.phase, type(event)), frozenset())
        if phase not in allowed:
            raise InvalidTransition(event, attempt.phase, attempt.key)
        attempt.phase = phase

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount


def _name(key: AttemptKey) -> str:
    return f"{key.job.hex()}/{key.chunk}/{key.attempt}"
