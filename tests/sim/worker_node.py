"""A worker process as the simulation runs it: the real attempts core
(worker/attempts.py) in a shell that drives it the way worker/node.py does.
Messages from the balancer become core events, the core's effects become
messages (the worker_status is built by worker/node.py's own
`status_message`) or go to the simulated machine (worker_host.py), whose
answers come back as events, and a Tick is sent whenever `next_wakeup()`
comes due.

Nothing here decides anything about an attempt. A crash loses the core, the
processes and the fetched programs; the restarted worker is a new process
(a new `started_at`) with a fresh, empty core.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

from uds import wire
from uds.wire.enums import ErrorCode, NodeRole
from uds.worker import attempts as core
from uds.worker.attempts import AttemptKey
from uds.worker.node import status_message

from .host import Host
from .loop import Simulation
from .storage import ContentStore
from .worker_host import SimAttemptHost

CACHE_BYTES = 1 << 30


class WakeupStaysDue(AssertionError):
    """The core asks for a Tick that it has just been given: it would spin."""


def _assigned(message: wire.WorkerRequest) -> core.Assigned:
    job = core.JobSpec(message.job_uuid, (message.program[0], message.program[1]), tuple(message.args),
                       {name: (ref[0], ref[1]) for name, ref in message.inputs.items()},
                       message.chunk_count, message.timeout_s)
    return core.Assigned(message.epoch, job, tuple(
        core.ChunkAssignment(item["chunk"], item["attempt"],
                             {name: (ref[0], ref[1]) for name, ref in item["inputs"].items()})
        for item in message.assignments))


# The balancer's messages as core events, as worker/node.py translates them.
_EVENT_OF: dict[type, Callable[[Any], Any]] = {
    wire.HelloReply: lambda m: core.HelloAnswered(m.epoch),
    wire.WorkerRequest: _assigned,
    wire.ChunkCancel: lambda m: core.CancelReceived(m.epoch, m.job_uuid, tuple(
        (chunk, attempt) for chunk, attempt in m.attempts)),
    wire.StatusAck: lambda m: core.StatusAcknowledged(m.epoch, tuple(
        AttemptKey(job, chunk, attempt) for job, chunk, attempt, _ in m.attempts)),
    # "hello first": the balancer restarted or forgot us.
    wire.Error: lambda m: core.HelloRequired() if m.error_code == ErrorCode.UNEXPECTED else None,
}


class SimWorker(Host):
    def __init__(self, sim: Simulation, name: str, node_id: bytes, balancer: str, store: ContentStore,
                 slots: int, heartbeat_interval_s: float, faults_until: float) -> None:
        super().__init__(sim, name)
        self.node_id = node_id
        self.balancer = balancer
        self.slots = slots
        self.start_time_ms = int(round(sim.now, 3) * 1000)     # of this process, in its hello and reports
        self.core = core.Attempts(slots, heartbeat_interval_s)
        self.host = SimAttemptHost(sim, name, node_id, store, self.later, self._apply, faults_until)
        self.effects: dict[type, Callable[[Any], Any]] = {
            **self.host.handlers,
            core.Report: lambda effect: self.send(
                self.balancer, status_message(self.node_id, self.start_time_ms, effect)),
            core.Resend: lambda effect: self.send(
                self.balancer, status_message(self.node_id, self.start_time_ms, effect.report)),
            core.SayHello: self._hello,
            core.SendHeartbeat: self._heartbeat,
        }
        self.next_request_id = 1
        self.wake_at: float | None = None
        self._schedule_wakeup()

    def on_message(self, source: str, message: wire.Message) -> None:
        translate = _EVENT_OF.get(type(message))
        event = translate(message) if translate is not None else None
        if event is not None:
            self._apply(event)

    def _apply(self, event: Any) -> None:
        """Hand an event to the core and carry out its effects; an effect
        answered at once feeds its answer back in, in order. Then a Tick,
        if a timer came due."""
        now = self.sim.now
        events = deque([event])
        while events:
            for effect in self.core.handle(events.popleft(), now):
                answer = self.effects[type(effect)](effect)
                if answer is not None:
                    events.append(answer)
        wakeup = self.core.next_wakeup()
        if wakeup is not None and wakeup <= now and not isinstance(event, core.Tick):
            self._apply(core.Tick())
            return
        if wakeup is not None and wakeup <= now:
            raise WakeupStaysDue(f"{self.name}: next_wakeup {wakeup} after a Tick at {now}")
        self._schedule_wakeup()

    # -- timers --------------------------------------------------------------

    def _schedule_wakeup(self) -> None:
        wakeup = self.core.next_wakeup()
        if wakeup is None or (self.wake_at is not None and self.wake_at <= wakeup):
            return
        self.wake_at = wakeup
        self.sim.at(wakeup, self._run, self._on_wakeup, (wakeup,))

    def _on_wakeup(self, at: float) -> None:
        if self.wake_at == at:
            self.wake_at = None
        wakeup = self.core.next_wakeup()
        if wakeup is not None and wakeup <= self.sim.now:
            self._apply(core.Tick())
        else:
            self._schedule_wakeup()

    # -- messages out ----------------------------------------------------------

    def _hello(self, effect: core.SayHello) -> None:
        self.next_request_id += 1
        self.send(self.balancer, wire.Hello.make(
            self.node_id, request_id=self.next_request_id, role=int(NodeRole.WORKER), slots=self.slots,
            cache_bytes=CACHE_BYTES, start_time_ms=self.start_time_ms, host="", address="", version=1))

    def _heartbeat(self, effect: core.SendHeartbeat) -> None:
        self.send(self.balancer, wire.Heartbeat.make(
            self.node_id, epoch=effect.epoch, free_slots=effect.free_slots, running_count=len(effect.running),
            running=[list(key) for key in effect.running], cache_added=[], cache_removed=[]))
