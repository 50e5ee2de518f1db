"""The worker's shell: a DEALER to each load balancer of the cluster, pidfds
and a wake-up pipe in one poll loop, which turns messages, process ends and helper
threads' answers into events for the attempts core (worker/attempts.py) and
carries out the effects it returns. Every decision is the core's; the
effects that touch this machine (programs, the FUSE mount, processes,
uploads) are worker/host.py's.

Rules: the loop never blocks on the network or a program. An effect with an
answer at hand is answered at once, before the next event; helper threads
hand their answers back through a queue and the wake-up pipe. Balancers are
known to the core by their place in the list of addresses; which one a
report goes to is the core's choice (the one of the highest epoch).
"""
from __future__ import annotations

import logging
import pathlib
import queue
import socket as socket_module
import time
from collections import deque
from dataclasses import replace
from typing import Any, Callable, Sequence

import zmq

from uds import wire
from uds.daemon.dispatch import handle_request
from uds.daemon.metrics import DaemonMetrics, prefixed
from uds.client.leader import LeaderLink
from uds.daemon.runtime import drain, guarded, wake
from uds.storage.directory import DirectoryRefresher, StorageDirectory
from uds.storage.replicas import ReplicatedStorage
from uds.wire.capacity import Capacity
from uds.wire.records import NO_FACTS, NodeFacts
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
# The storage membership is asked of the masters with this timeout, from a
# thread of its own (storage/directory.py): a worker runs on without them.
MEMBERSHIP_TIMEOUT_S = 2.0
# How often the logs of running programs are measured for the core's limit.
LOG_CHECK_S = 0.1
# How often the loop copies its gauges (running chunks, free slots) for /metrics.
FIGURES_REFRESH_S = 1.0


GAUGE_DOCS = {
    "chunks_running": "Chunk attempts whose program runs now.",
    "slots": "Chunks this worker runs at once.",
    "slots_free": "Slots no attempt holds.",
    "cached_bytes": "Bytes of input blocks in the block cache.",
    "cache_capacity_bytes": "The block cache's size cap.",
}


class WorkerNode:
    def __init__(self, node_id: bytes, data: pathlib.Path, loadbalancer_addresses: Sequence[str] | str,
                 storage: str | ReplicatedStorage,
                 transport: Transport, slots: int, cache_bytes: int, heartbeat_interval_s: float,
                 wake_read: int, wake_write: int, sandbox: SandboxSettings = SandboxSettings(enabled=False),
                 capacity: Capacity | None = None, masters: Sequence[str] = (),
                 facts: NodeFacts = NO_FACTS, metrics: DaemonMetrics | None = None) -> None:
        """`storage`: the cluster's storage nodes as one, or one node's
        address. With `masters`, a thread keeps the storage membership fresh
        from them. `facts`: what it says of itself in every hello.
        `metrics`: where its figures are exported (daemon/metrics.py)."""
        self.node_id, self.transport = node_id, transport
        self.facts = facts
        self.slots, self.cache_bytes = slots, cache_bytes
        self.capacity = capacity if capacity is not None else worker_capacity(data)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.hostname = socket_module.gethostname()
        self.start_time_ms = int(time.time() * 1000)     # of this process, in its hello and reports
        self.wake_read, self.wake_write = wake_read, wake_write
        if isinstance(loadbalancer_addresses, str):
            loadbalancer_addresses = [loadbalancer_addresses]
        self.core = core.Attempts(slots, heartbeat_interval_s, balancers=len(loadbalancer_addresses),
                                  wall_clock_offset_s=time.time() - time.monotonic())
        self.answers: queue.SimpleQueue[Any] = queue.SimpleQueue()     # core events from helper threads
        self.counters: dict[str, int] = {}
        self.next_request_id = 1
        self.last_log_check = 0.0
        if isinstance(storage, str):
            storage = ReplicatedStorage(transport, node_id, StorageDirectory([storage]), replicas=1)
        self.storage = storage
        self.metrics = metrics if metrics is not None else DaemonMetrics("worker")
        self.chunk_run_seconds = self.metrics.histogram(
            "chunk_run_seconds", "Wall time of a chunk's program, from its start to its end.")
        # Gauges the loop refreshes every FIGURES_REFRESH_S; /metrics copies them.
        self.figures: dict[str, int] = {}
        self.figures_at = 0.0
        self.host = AttemptHost(node_id, data, storage, transport, cache_bytes, self._hand_back, sandbox,
                                metrics=self.metrics)
        self.metrics.counters_from(self._counter_figures)
        self.metrics.gauges_from(self._gauge_figures, GAUGE_DOCS)
        self.refresher: DirectoryRefresher | None = None
        if masters:
            link = LeaderLink(transport, node_id, masters)
            self.refresher = DirectoryRefresher(storage.directory, lambda: link.ask(
                lambda rid: wire.NodesQuery.make(node_id, request_id=rid), wire.NodesReply,
                MEMBERSHIP_TIMEOUT_S).nodes, close=link.close).start()
        if self.host.sandbox is not None:
            # Chunks write only into their slot filesystems: that is the disk there is to offer.
            self.capacity = replace(self.capacity, disk_bytes=min(
                self.capacity.disk_bytes or self.host.sandbox.slot_disk_bytes * slots,
                self.host.sandbox.slot_disk_bytes * slots))
        self.sockets = [transport.client_socket(zmq.DEALER, address) for address in loadbalancer_addresses]
        # The cache's changes not yet told to each balancer (file id -> size
        # added, ids removed): each is told in its own heartbeats.
        self.cache_news: list[tuple[dict[bytes, int], set[bytes]]] = [({}, set()) for _ in self.sockets]
        # One table per balancer, so that each message is known by its sender.
        self.handlers: list[dict[type, Callable[[Any, Any, float], None]]] = [
            {message_type: self._handler_for(balancer) for message_type in BALANCER_MESSAGES}
            for balancer in range(len(self.sockets))]
        self.effects: dict[type, Callable[[Any], Any]] = {
            **self.host.handlers,
            core.Report: lambda effect: self._send(
                effect.to, status_message(self.node_id, self.start_time_ms, effect)),
            core.Resend: lambda effect: self._send(
                effect.to, status_message(self.node_id, self.start_time_ms, effect.report)),
            core.SayHello: self.do_hello, core.SendHeartbeat: self.do_heartbeat,
        }

    def stats(self) -> dict[str, int]:
        return {**self.counters, **self.core.counters}

    # -- /metrics (read from the HTTP server's thread: copies only) -------------

    def _counter_figures(self) -> dict[str, int]:
        cache = self.host.cache.counters()
        return {**self.stats(), **prefixed("transport_", self.transport.counters.snapshot()),
                "cache_bytes_fetched": cache.bytes_fetched, "cache_bytes_served": cache.bytes_served_from_cache,
                "cache_evictions": cache.evictions, "cache_corrupt_files": cache.corrupt_files,
                "cache_corrupt_blocks": cache.corrupt_blocks}

    def _gauge_figures(self) -> dict[str, int]:
        cache = self.host.cache.counters()
        return {**self.figures, "cached_bytes": cache.disk_bytes, "cache_capacity_bytes": cache.capacity_bytes}

    def _refresh_figures(self) -> None:
        running = len(self.core.in_phase(core.Phase.RUNNING))
        self.figures = {"chunks_running": running, "slots": self.slots, "slots_free": self.core.free_slots()}

    # -- loop -----------------------------------------------------------------

    def run(self, stop: Callable[[], bool], on_serving: Callable[[], None]) -> None:
        poller = zmq.Poller()
        for balancer_socket in self.sockets:
            poller.register(balancer_socket, zmq.POLLIN)
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
            for balancer, balancer_socket in enumerate(self.sockets):
                if balancer_socket in ready:
                    for received in recv_messages(balancer_socket, self.transport, MESSAGES_PER_WAKEUP):
                        handle_request(received, self.handlers[balancer], now, "a worker",
                                       self._refuse, self._count, log)
            if now - self.figures_at >= FIGURES_REFRESH_S:
                self.figures_at = now
                guarded(log, self._count, self._refresh_figures)
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
        exited = self.host.exited(key)
        if exited.usage.wall_s > 0:
            self.chunk_run_seconds.observe(exited.usage.wall_s)
        self._apply(exited, now)

    def _on_log_size(self, key: AttemptKey, now: float) -> None:
        self._apply(self.host.log_size(key), now)

    def _hand_back(self, answer: Any) -> None:
        """From a helper thread: queue the answer and wake the loop."""
        self.answers.put(answer)
        wake(self.wake_write)

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def _send(self, balancer: int, message: wire.Message) -> None:
        send_message(self.sockets[balancer], wire.encode(message), counters=self.transport)

    def _refuse(self, peer: Any, request_id: int, failed_type: int, code: int, reason: str) -> None:
        # Not answered: the balancer would take an error for a request of ours.
        log.warning("dropped a message from the load balancer (error %d): %s", code, reason)

    # -- the load balancer ----------------------------------------------------

    def _handler_for(self, balancer: int) -> Callable[[Any, Any, float], None]:
        return lambda message, peer, now: self.on_message(message, balancer, now)

    def on_message(self, message: wire.Message, balancer: int, now: float) -> None:
        event = event_of(message, balancer)
        if event is not None:
            self._apply(event, now)
        else:
            log.warning("load balancer error %d: %s", message.error_code, message.reason)

    def do_hello(self, effect: core.SayHello) -> None:
        self.next_request_id += 1
        self._send(effect.to, hello_message(self.node_id, self.next_request_id, self.slots, self.cache_bytes,
                                            self.start_time_ms, self.hostname, self.capacity,
                                            getattr(self.host, "sandbox_label", "none"), self.facts))

    def do_heartbeat(self, effect: core.SendHeartbeat) -> None:
        added, removed = self.host.cache.drain_changes()
        for balancer, (news_added, news_removed) in enumerate(self.cache_news):
            if not self.core.registered_with(balancer):
                continue                # told the whole cache once it answers a hello
            for file_id, size in added:
                news_added[file_id] = size
                news_removed.discard(file_id)
            for file_id in removed:
                news_added.pop(file_id, None)
                news_removed.add(file_id)
        news_added, news_removed = self.cache_news[effect.to]
        if effect.full_cache:
            added, removed = self.host.cache.complete_files(), []
        else:
            added, removed = list(news_added.items()), sorted(news_removed)
        news_added.clear()
        news_removed.clear()
        self._send(effect.to, heartbeat_message(self.node_id, effect, added, removed))

    def close(self) -> None:
        try:
            self.host.close(core.KILL_GRACE_S)
        finally:
            if self.refresher is not None:
                self.refresher.stop()
            self.storage.close()
