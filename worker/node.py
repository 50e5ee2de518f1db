"""The worker's shell: a DEALER to the load balancer, pidfds and a wake-up
pipe in one poll loop, which turns messages, process ends and helper
threads' answers into events for the attempts core (worker/attempts.py) and
carries out the effects it returns. Every decision is the core's; the
effects that touch this machine (programs, the FUSE mount, processes,
uploads) are worker/host.py's.

Rules: the loop never blocks on the network or a program. An effect with an
answer at hand is answered at once, before the next event; helper threads
hand their answers back through a queue and the wake-up pipe.
"""
from __future__ import annotations

import logging
import pathlib
import queue
import socket as socket_module
import time
from collections import deque
from dataclasses import replace
from typing import Any, Callable

import zmq

from uds import wire
from uds.daemon.dispatch import handle_request
from uds.daemon.runtime import drain, guarded, wake
from uds.wire.capacity import Capacity
from uds.wire.transport import Transport, recv_messages, send_message
from uds.worker import attempts as core
from uds.worker.attempts import AttemptKey
from uds.worker.capacity import worker_capacity
from uds.worker.host import AttemptHost, SandboxSettings
from uds.worker.messages import (
    BALANCER_MESSAGES, event_of, heartbeat_message, hello_message, status_message,
)

log = logging.getLogger("worker")

MESSAGES_PER_WAKEUP = 1000
# How often the logs of running programs are measured for the core's limit.
LOG_CHECK_S = 0.1


class WorkerNode:
    def __init__(self, node_id: bytes, data: pathlib.Path, loadbalancer_address: str, storage_address: str,
                 transport: Transport, slots: int, cache_bytes: int, heartbeat_interval_s: float,
                 wake_read: int, wake_write: int, sandbox: SandboxSettings = SandboxSettings(enabled=False),
                 capacity: Capacity | None = None) -> None:
        self.node_id, self.transport = node_id, transport
        self.slots, self.cache_bytes = slots, cache_bytes
        self.capacity = capacity if capacity is not None else worker_capacity(data)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.hostname = socket_module.gethostname()
        self.start_time_ms = int(time.time() * 1000)     # of this process, in its hello and reports
        self.wake_read, self.wake_write = wake_read, wake_write
        self.core = core.Attempts(slots, heartbeat_interval_s)
        self.answers: queue.SimpleQueue[Any] = queue.SimpleQueue()     # core events from helper threads
        self.counters: dict[str, int] = {}
        self.next_request_id = 1
        self.last_log_check = 0.0
        self.host = AttemptHost(node_id, data, storage_address, transport, cache_bytes, self._hand_back, sandbox)
        if self.host.sandbox is not None:
            # Chunks write only into their slot filesystems: that is the disk there is to offer.
            self.capacity = replace(self.capacity, disk_bytes=min(
                self.capacity.disk_bytes or self.host.sandbox.slot_disk_bytes * slots,
                self.host.sandbox.slot_disk_bytes * slots))
        self.socket = transport.client_socket(zmq.DEALER, loadbalancer_address)
        self.handlers: dict[type, Callable[[Any, Any, float], None]] = {
            message_type: self.on_message for message_type in BALANCER_MESSAGES}
        self.effects: dict[type, Callable[[Any], Any]] = {
            **self.host.handlers,
            core.Report: lambda effect: self._send(status_message(self.node_id, self.start_time_ms, effect)),
            core.Resend: lambda effect: self._send(status_message(self.node_id, self.start_time_ms, effect.report)),
            core.SayHello: self.do_hello, core.SendHeartbeat: self.do_heartbeat,
        }

    def stats(self) -> dict[str, int]:
        return {**self.counters, **self.core.counters}

    # -- loop -----------------------------------------------------------------

    def run(self, stop: Callable[[], bool], on_serving: Callable[[], None]) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.wake_read, zmq.POLLIN)
        on_serving()
        watched: dict[int, AttemptKey] = {}
        wakeup = self.core.next_wakeup()
        while not stop():
            pidfds = self.host.pidfds()
            for descriptor in watched.keys() - pidfds.keys():
                poller.unregister(descriptor)
            for descriptor in pidfds.keys() - watched.keys():
                poller.register(descriptor, zmq.POLLIN)
            watched = pidfds
            timeout_s = self.heartbeat_interval_s / 2
            if wakeup is not None:
                timeout_s = min(timeout_s, max(0.0, wakeup - time.monotonic()))
            ready = dict(poller.poll(int(timeout_s * 1000) + 1))
            now = time.monotonic()
            if self.wake_read in ready:
                drain(self.wake_read)
            while not self.answers.empty():
                guarded(log, self._count, self._apply, self.answers.get(), now)
            for descriptor, key in pidfds.items():
                if descriptor in ready:
                    guarded(log, self._count, self._on_exit, key, now)
            if self.socket in ready:
                for received in recv_messages(self.socket, self.transport, MESSAGES_PER_WAKEUP):
                    handle_request(received, self.handlers, now, "a worker", self._refuse, self._count, log)
            if now - self.last_log_check >= LOG_CHECK_S:
                self.last_log_check = now
                for key in self.core.in_phase(core.Phase.RUNNING):
                    guarded(log, self._count, self._on_log_size, key, now)
            wakeup = self.core.next_wakeup()
            if wakeup is not None and now >= wakeup:
                guarded(log, self._count, self._apply, core.Tick(), now)
                wakeup = self.core.next_wakeup()

    def _apply(self, event: Any, now: float) -> None:
        """Hand an event to the core and carry out its effects; an effect
        answered at once feeds its answer back in, in order."""
        events = deque([event])
        while events:
            for effect in self.core.handle(events.popleft(), now):
                try:
                    answer = self.effects[type(effect)](effect)
                except Exception:  # the effects after it still happen
                    log.exception("carrying out %s", type(effect).__name__)
                    self._count("internal_errors")
                    continue
                if answer is not None:
                    events.append(answer)

    def _on_exit(self, key: AttemptKey, now: float) -> None:
        self._apply(self.host.exited(key), now)

    def _on_log_size(self, key: AttemptKey, now: float) -> None:
        self._apply(self.host.log_size(key), now)

    def _hand_back(self, answer: Any) -> None:
        """From a helper thread: queue the answer and wake the loop."""
        self.answers.put(answer)
        wake(self.wake_write)

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def _send(self, message: wire.Message) -> None:
        send_message(self.socket, wire.encode(message), counters=self.transport)

    def _refuse(self, peer: Any, request_id: int, failed_type: int, code: int, reason: str) -> None:
        # Not answered: the balancer would take an error for a request of ours.
        log.warning("dropped a message from the load balancer (error %d): %s", code, reason)

    # -- the load balancer ----------------------------------------------------

    def on_message(self, message: wire.Message, peer: Any, now: float) -> None:
        event = event_of(message)
        if event is not None:
            self._apply(event, now)
        else:
            log.warning("load balancer error %d: %s", message.error_code, message.reason)

    def do_hello(self, effect: core.SayHello) -> None:
        self.next_request_id += 1
        self._send(hello_message(self.node_id, self.next_request_id, self.slots, self.cache_bytes,
                                 self.start_time_ms, self.hostname, self.capacity,
                                 getattr(self.host, "sandbox_label", "none")))

    def do_heartbeat(self, effect: core.SendHeartbeat) -> None:
        added, removed = self.host.cache.drain_changes()
        if effect.full_cache:
            added, removed = self.host.cache.complete_files(), []
        self._send(heartbeat_message(self.node_id, effect, added, removed))

    def close(self) -> None:
        self.host.close(core.KILL_GRACE_S)
