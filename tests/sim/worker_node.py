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

It talks to every balancer and obeys the highest epoch it has seen: a
message carrying a lower one is dropped and counted (`stale_epoch`), the
rule of the worker's own shell.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

from uds import wire
from uds.wire.capacity import NO_CAPACITY, Capacity
from uds.worker import attempts as core
from uds.worker.messages import (
    BALANCER_MESSAGES, event_of, heartbeat_message, hello_message, status_message,
)

from .host import Host
from .loop import Simulation
from .storage import StorageCluster
from .worker_host import SimAttemptHost

CACHE_BYTES = 1 << 30


class WakeupStaysDue(AssertionError):
    """The core asks for a Tick that it has just been given: it would spin."""


class SimWorker(Host):
    def __init__(self, sim: Simulation, name: str, node_id: bytes, balancers: list[str], store: StorageCluster,
                 slots: int, heartbeat_interval_s: float, faults_until: float,
                 capacity: Capacity = NO_CAPACITY) -> None:
        super().__init__(sim, name)
        self.node_id = node_id
        self.balancers = list(balancers)
        self.epoch = 0                  # the highest seen
        self.stale_epoch = 0            # messages dropped for a lower one
        self.slots = slots
        self.capacity = capacity
        self.start_time_ms = int(round(sim.now, 3) * 1000)     # of this process, in its hello and reports
        # The simulated clock is the wall clock too: reports carry the timeline.
        self.core = core.Attempts(slots, heartbeat_interval_s, wall_clock_offset_s=0.0)
        self.host = SimAttemptHost(sim, name, node_id, store, self.later, self._apply, faults_until)
        self.effects: dict[type, Callable[[Any], Any]] = {
            **self.host.handlers,
            core.Report: lambda effect: self._to_balancers(
                status_message(self.node_id, self.start_time_ms, effect)),
            core.Resend: lambda effect: self._to_balancers(
                status_message(self.node_id, self.start_time_ms, effect.report)),
            core.SayHello: self._hello,
            core.SendHeartbeat: self._heartbeat,
        }
        self.next_request_id = 1
        self.wake_at: float | None = None
        self._schedule_wakeup()

    def _to_balancers(self, message: wire.Message) -> None:
        for balancer in self.balancers:
            self.send(balancer, message)

    def on_message(self, source: str, message: wire.Message) -> None:
        epoch = getattr(message, "epoch", None)
        if epoch is not None:
            if epoch < self.epoch:
                self.stale_epoch += 1
                return
            self.epoch = epoch
        event = event_of(message) if isinstance(message, BALANCER_MESSAGES) else None
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
        self._to_balancers(hello_message(self.node_id, self.next_request_id, self.slots,
                                               CACHE_BYTES, self.start_time_ms, host="", capacity=self.capacity,
                                               sandbox="simulated"))

    def _heartbeat(self, effect: core.SendHeartbeat) -> None:
        self._to_balancers(heartbeat_message(self.node_id, effect, cache_added=[], cache_removed=[]))
