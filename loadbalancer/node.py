"""The load balancer's shell: a ROUTER for workers, a DEALER to each master
(loadbalancer/masters.py, which finds the leader among them), and a loop
that turns messages into scheduler events and effects into messages.

Rules: all decisions are the scheduler's (loadbalancer/scheduler.py); this
module only translates. Chunk events go to the master in batches
(chunk_events) that are resent until acknowledged; once a batch is
acknowledged, each final status in it is confirmed to its worker
(status_ack), so a result is never lost between worker and master.
"""
from __future__ import annotations

import logging
import os
import random
import socket as socket_module
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import zmq

from uds import wire
from uds.wire.limits import LIST_BUDGET_BYTES
from uds.loadbalancer import scheduler as core
from uds.loadbalancer.lease import BalancerLease
from uds.loadbalancer.masters import MasterLink
from uds.daemon.runtime import guarded
from uds.daemon.dispatch import Dispatcher
from uds.daemon.metrics import DaemonMetrics, prefixed
from uds.loadbalancer.balancer_metrics import BalancerMetrics
from uds.wire.enums import FINAL_CHUNK_STATES, ErrorCode, NodeRole
from uds.wire.records import NO_FACTS, NodeFacts
from uds.wire.transport import Transport, recv_messages, send_message

log = logging.getLogger("loadbalancer")

EVENTS_PER_BATCH = 1000
# An unacknowledged batch is sent again after this long.
RESEND_BATCH_S = 1.0
# Hello again to the master when it has not answered for this long.
MASTER_HELLO_RETRY_S = 1.0
NODE_REPORT_INTERVAL_S = 1.0
MESSAGES_PER_WAKEUP = 1000
# chunk_dispatch messages kept while the lease does not count.
MAX_HELD_DISPATCHES = 100
# Heartbeat periods to listen before placing anything after a start.
SETTLE_HEARTBEATS = 1.5
# The loop wakes at least this often, to ask for the lease and to notice a
# silent master in time, whatever the heartbeat interval.
LOOP_WAKE_S = 0.05
# How often the loop copies its gauges (queued and running chunks) for /metrics.
FIGURES_REFRESH_S = 1.0


@dataclass
class EventBatch:
    batch_id: int
    frames: list
    finals: list[tuple[bytes, bytes, int, int, int]]   # worker, job, chunk, attempt, state
    sent_at: float
    events: list = None        # kept to send again under a newer epoch
    epoch: int = 0


class LoadBalancerNode:
    def __init__(self, node_id: bytes, address: str, master_addresses: list[str], transport: Transport,
                 heartbeat_interval_s: float, lease_s: float, facts: NodeFacts = NO_FACTS,
                 metrics: DaemonMetrics | None = None) -> None:
        """`facts`: what this balancer says of itself in its hello to the
        masters. `metrics`: where its figures are exported (daemon/metrics.py)."""
        self.node_id = node_id
        self.facts = facts
        self.address = address
        self.transport = transport
        self.heartbeat_interval_s = heartbeat_interval_s
        self.lease_s = lease_s
        self.host = socket_module.gethostname()
        self.started_at = time.time()
        # Soft state starts empty: wait for workers' first heartbeats to say what
        # they run before placing anything the master re-sends.
        self.scheduler = core.Scheduler(lease_s=lease_s, settle_s=SETTLE_HEARTBEATS * heartbeat_interval_s)
        self.workers_socket = transport.server_socket(zmq.ROUTER, address)
        self.masters = MasterLink(transport, master_addresses, random.Random(int.from_bytes(os.urandom(8), "big")))
        self.master_registered = False
        self.hello_owed = False        # a new target is greeted at once, not at the next ask
        self.from_master = 0           # the index of the master whose message is being handled
        self.last_master_hello = 0.0
        self.epoch = 0
        # Active while the lease counts; a standby keeps its worker table warm
        # from the workers' heartbeats but assigns nothing.
        self.lease = BalancerLease()
        self.was_active = False
        self.announced_epoch = 0       # the epoch every known worker was last told of
        # Dispatches that came while the lease did not count (after a stall,
        # before the renewal's answer): placed once it counts again, dropped
        # if another balancer holds it (the masters send them there).
        self.held_dispatches: list[wire.ChunkDispatch] = []
        self.worker_peers: dict[bytes, bytes] = {}
        self.outgoing_events: list[wire.ChunkEvent] = []
        self.unacknowledged: dict[int, EventBatch] = {}
        self.next_batch_id = int(time.time() * 1000)  # unique across restarts of this node
        self.next_request_id = 1
        self.counters: dict[str, int] = {}
        self.metrics = BalancerMetrics(metrics if metrics is not None else DaemonMetrics("loadbalancer"),
                                       self._process_counters)
        self.figures_at = 0.0
        self.last_tick = 0.0
        self.last_node_report = 0.0
        self.worker_handlers: dict[type, Callable[[Any, bytes, float], None]] = {
            wire.Hello: self.on_worker_hello,
            wire.Heartbeat: self.on_worker_heartbeat,
            wire.WorkerStatus: self.on_worker_status,
            wire.StatsQuery: self.on_stats_query,
            wire.NodesQuery: self.on_nodes_query,
        }
        self.master_handlers: dict[type, Callable[[Any, bytes | None, float], None]] = {
            wire.HelloReply: self.on_master_hello_reply,
            wire.ChunkDispatch: self.on_dispatch,
            wire.ChunkCancel: self.on_cancel,
            wire.ChunkEventsAck: self.on_events_ack,
            wire.Error: self.on_master_error,
        }
        self.effect_handlers: dict[type, Callable[[Any, float], None]] = {
            core.AssignChunks: self.do_assign,
            core.ForwardToMaster: self.do_forward,
            core.CancelOnWorker: self.do_cancel_on_worker,
            core.WorkerJoined: self.do_worker_joined,
            core.WorkerLost: self.do_worker_lost,
            core.AskHello: self.do_ask_hello,
            core.Note: lambda effect, now: log.info("%s", effect.text),
        }
        self.worker_dispatcher = Dispatcher("a load balancer", node_id, self.worker_handlers,
                                            self._send_to_worker_peer, self._count, log)
        # Errors are never sent to the master: they are logged, so that a
        # misunderstanding cannot become an exchange of errors.
        self.master_dispatcher = Dispatcher("a load balancer", node_id, self.master_handlers,
                                            self._note_master_fault, self._count, log)

    # -- loop -----------------------------------------------------------------

    def run(self, stop: Callable[[], bool], on_serving: Callable[[], None]) -> None:
        poller = zmq.Poller()
        poller.register(self.workers_socket, zmq.POLLIN)
        polled = 0
        on_serving()
        while not stop():
            for socket in self.masters.sockets[polled:]:   # all, for good: none is closed before the end
                poller.register(socket, zmq.POLLIN)
            polled = len(self.masters.sockets)
            timeout_ms = max(1, int(min(self.heartbeat_interval_s / 2, LOOP_WAKE_S) * 1000))
            ready = dict(poller.poll(timeout_ms))
            now = time.monotonic()
            for index, socket in enumerate(self.masters.sockets):
                if socket in ready:
                    self._drain(socket, now, lambda received, now, index=index:
                                self._handle_master(index, received, now))
            if self.workers_socket in ready:
                self._drain(self.workers_socket, now, self._handle_worker)
            guarded(log, self._count, self._on_timers, now)
            guarded(log, self._count, self._flush_events, now)
            if now - self.figures_at >= FIGURES_REFRESH_S:
                self.figures_at = now
                guarded(log, self._count, self._refresh_figures, now)

    def _drain(self, socket: zmq.Socket, now: float, handle: Callable[[Any, float], None]) -> None:
        for received in recv_messages(socket, self.transport, MESSAGES_PER_WAKEUP):
            handle(received, now)

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def _apply(self, event: Any, now: float) -> None:
        for effect in self.scheduler.handle(event, now):
            try:
                self.effect_handlers[type(effect)](effect, now)
            except Exception:
                log.exception("carrying out %s", type(effect).__name__)

    def close(self) -> None:
        self.workers_socket.close()
        self.masters.close()

    # -- workers --------------------------------------------------------------

    def _handle_worker(self, received: Any, now: float) -> None:
        self.worker_dispatcher.handle(received, now)

    def _send_to_worker_peer(self, peer: bytes | None, message: wire.Message) -> None:
        send_message(self.workers_socket, wire.encode(message), peer=peer, counters=self.transport)

    def _send_worker(self, worker: bytes, message: wire.Message) -> bool:
        peer = self.worker_peers.get(worker)
        if peer is None:
            return False
        return send_message(self.workers_socket, wire.encode(message), peer=peer, counters=self.transport)

    def _send_worker_error(self, peer: bytes, request_id: int, failed_type: int, code: int, reason: str) -> None:
        self.worker_dispatcher.send_error(peer, request_id, failed_type, code, reason)

    def on_worker_hello(self, message: wire.Hello, peer: bytes, now: float) -> None:
        if message.role != NodeRole.WORKER:
            self._send_worker_error(peer, message.request_id, message.message_type, ErrorCode.UNEXPECTED,
                                    "only workers say hello to a load balancer")
            return
        worker = message.node_uuid
        self.worker_peers[worker] = peer
        self._send_hello_reply(peer, message.request_id, now)
        self._apply(core.WorkerHello.of_message(message), now)

    def _send_hello_reply(self, peer: bytes, request_id: int, now: float) -> None:
        """A worker follows the balancer that shows it the highest epoch: a
        standby shows 0, so that a worker is never drawn to it."""
        send_message(self.workers_socket, wire.encode(wire.HelloReply.make(
            self.node_id, request_id=request_id, epoch=self.epoch if self.lease.active(now) else 0,
            heartbeat_interval_ms=int(self.heartbeat_interval_s * 1000),
            lease_ms=int(self.lease_s * 1000))), peer=peer, counters=self.transport)

    def on_worker_heartbeat(self, message: wire.Heartbeat, peer: bytes, now: float) -> None:
        self.worker_peers[message.node_uuid] = peer
        self._apply(core.WorkerHeartbeat.of_message(message), now)

    def on_worker_status(self, message: wire.WorkerStatus, peer: bytes, now: float) -> None:
        worker = message.node_uuid
        self.worker_peers[worker] = peer
        if not self.lease.active(now):
            # The active balancer forwards it; the worker sends it again
            # until the one it obeys confirms it (status_ack).
            self._count("worker_statuses_while_standby")
            return
        self._count("worker_statuses")
        self._apply(message.chunk_event(), now)

    def _refresh_figures(self, now: float) -> None:
        self.metrics.refresh(self.scheduler, self.lease.active(now), self.epoch, len(self.unacknowledged), now)

    def _process_counters(self) -> dict[str, int]:
        """Its counters and the transport's, as copies (/metrics reads them from its own thread)."""
        return {**self.counters, **prefixed("transport_", self.transport.counters.snapshot())}

    def on_stats_query(self, message: wire.StatsQuery, peer: bytes, now: float) -> None:
        counters = self._process_counters()
        total, free = self.scheduler.capacity()
        counters.update(slots=total, free_slots=free, pending=self.scheduler.pending_count(),
                        unacknowledged_batches=len(self.unacknowledged),
                        master_registered=int(self.master_registered), master=self.masters.target,
                        active=int(self.lease.active(now)), epoch=self.epoch)
        send_message(self.workers_socket, wire.encode(wire.StatsReply.make(
            self.node_id, request_id=message.request_id, role=int(NodeRole.LOADBALANCER),
            counters=counters)), peer=peer, counters=self.transport)

    def on_nodes_query(self, message: wire.NodesQuery, peer: bytes, now: float) -> None:
        send_message(self.workers_socket, wire.encode(wire.NodesReply.make(
            self.node_id, request_id=message.request_id,
            nodes=[view.to_record() for view in self.scheduler.workers(now)])),
            peer=peer, counters=self.transport)

    # -- effects --------------------------------------------------------------

    def do_assign(self, effect: core.AssignChunks, now: float) -> None:
        if not self.lease.active(now):
            # The masters may grant the lease elsewhere: assign nothing. The
            # scheduler sees no STARTED and takes the attempts back.
            self._count("assignments_withheld", len(effect.assignments))
            return
        self.metrics.assigned(effect.job_spec.job, effect.assignments, now)
        job_fields = effect.job_spec.request_fields()
        records = [assignment.to_record() for assignment in effect.assignments]
        # Chunks with many inputs of their own go in several requests.
        budget = max(1, LIST_BUDGET_BYTES - wire.packed_size({**job_fields, "job": b""}))
        while records:
            part = records[:wire.items_that_fit(records, budget)]
            del records[:len(part)]
            message = wire.WorkerRequest.make(self.node_id, epoch=max(self.epoch, 1), assignments=part,
                                              **job_fields)
            if self._send_worker(effect.worker, message):
                self._count("attempts_assigned", len(part))
            else:
                # The scheduler will see no STARTED and take the attempts back.
                self._count("assignments_undeliverable")

    def do_forward(self, effect: core.ForwardToMaster, now: float) -> None:
        self.outgoing_events.append(effect.event)

    def do_cancel_on_worker(self, effect: core.CancelOnWorker, now: float) -> None:
        if not self.lease.active(now):
            self._count("cancels_withheld")   # only the active balancer's orders count
            return
        self._send_worker(effect.worker, wire.ChunkCancel.make(
            self.node_id, epoch=max(self.epoch, 1), job=effect.job,
            attempts=[list(pair) for pair in effect.attempts]))

    def do_worker_joined(self, effect: core.WorkerJoined, now: float) -> None:
        log.info("worker %s (%s) joined with %d slots", effect.worker.hex(), effect.view.host, effect.view.slots)
        self.last_node_report = 0.0  # tell the master soon

    def do_worker_lost(self, effect: core.WorkerLost, now: float) -> None:
        log.warning("worker %s (%s) lost", effect.worker.hex(), effect.view.host)
        self.worker_peers.pop(effect.worker, None)
        self._send_master(wire.NodeReport.make(self.node_id, epoch=max(self.epoch, 1),
                                               nodes=[effect.view.to_record()]), now)

    def do_ask_hello(self, effect: core.AskHello, now: float) -> None:
        peer = self.worker_peers.get(effect.worker)
        if peer is not None:
            self._send_worker_error(peer, 0, int(wire.MessageType.HEARTBEAT), ErrorCode.UNEXPECTED, "hello first")

    # -- the masters ----------------------------------------------------------

    def _send_master(self, message: wire.Message, now: float, wants_answer: bool = False) -> bool:
        return self.masters.send(wire.encode(message), now, wants_answer)

    def _handle_master(self, index: int, received: Any, now: float) -> None:
        self.masters.heard_from(index, now)
        self.from_master = index
        self.master_dispatcher.handle(received, now)

    def _note_master_fault(self, peer: bytes | None, message: wire.Message) -> None:
        self._count("faults_from_master")
        log.warning("a message from the master was refused: %s", getattr(message, "reason", message))

    def _hello_master(self, now: float) -> None:
        """Ask for the lease (or renew it): hello is the request."""
        self.last_master_hello = now
        self.hello_owed = False
        request_id = self.next_request_id
        self.next_request_id += 1
        self.lease.ask(request_id, now)
        self._send_master(wire.Hello.make(
            self.node_id, request_id=request_id, role=int(NodeRole.LOADBALANCER), slots=0, cache_bytes=0,
            start_time_ms=int(self.started_at * 1000), host=self.host, address=self.address, version=1,
            **self.facts.as_body()),
            now, wants_answer=True)

    def _left_master(self, why: str) -> None:
        """The search moved to another master: greet it at once; nothing else
        goes to it before its hello_reply (unacknowledged batches then do)."""
        self.master_registered = False
        self.hello_owed = True
        self._count("master_switches")
        log.warning("%s; now asking the master at %s", why, self.masters.address)

    def on_master_hello_reply(self, message: wire.HelloReply, peer: bytes | None, now: float) -> None:
        lease_s = message.lease_ms / 1000.0
        valid_until = self.lease.valid_until
        if not self.lease.granted(message.request_id, message.epoch, lease_s):
            self._count("lease_replies_stale")
            return
        if self.from_master != self.masters.target:
            if self.lease.valid_until <= valid_until:
                # An old grant from a master left behind (one thawed, say):
                # committed, but no sign that it leads now.
                self._count("lease_replies_from_masters_left")
                return
            # A fresh grant from a master left behind: it was slow, not gone.
            log.info("the master at %s leads", self.masters.search.addresses[self.from_master])
            self.master_registered = False      # registered with another one: resend to this one
        self.masters.served(self.from_master, now)
        if not self.master_registered:
            log.info("holds the lease at epoch %d", message.epoch)
            self.last_node_report = 0.0
            for batch in self.unacknowledged.values():
                batch.sent_at = 0.0  # resend now: the master may have restarted, or be a new leader
        self.master_registered = True
        if message.epoch != self.epoch:
            self._reepoch_batches(message.epoch)
        self.epoch = message.epoch
        self._note_activity(now)
        if not self.lease.active(now):
            return  # an answer to a request sent too long ago
        held, self.held_dispatches = self.held_dispatches, []
        for dispatch in held:
            if dispatch.epoch == self.epoch:
                self._apply(core.Dispatched.of_message(dispatch), now)

    def _reepoch_batches(self, epoch: int) -> None:
        """Statuses gathered under an older epoch (or as standby) are facts
        from the workers: they go to the masters again under the new one."""
        for batch in self.unacknowledged.values():
            batch.frames = wire.encode(wire.ChunkEvents.carrying(self.node_id, epoch, batch.batch_id, batch.events))
            batch.epoch, batch.sent_at = epoch, 0.0

    def _note_activity(self, now: float) -> None:
        active = self.lease.active(now)
        if active != self.was_active:
            self.was_active = active
            self._count("became_active" if active else "became_standby")
            log.log(logging.INFO if active else logging.WARNING, "%s at epoch %d",
                    "active" if active else "standby", self.epoch)
        if active and self.epoch != self.announced_epoch:
            # Tell every worker at once (an unasked hello_reply), so that they
            # report here from now on, rather than to a balancer that is gone.
            self.announced_epoch = self.epoch
            for peer in self.worker_peers.values():
                self._send_hello_reply(peer, 0, now)

    def on_master_error(self, message: wire.Error, peer: bytes | None, now: float) -> None:
        if self.from_master != self.masters.target:
            self._count("errors_from_masters_left")    # a master left behind: old news
            return
        if message.error_code == ErrorCode.BUSY and message.failed_type == wire.MessageType.HELLO:
            self.master_registered = False  # standby: another balancer holds the lease
            self.lease.refused(now)
            self.held_dispatches.clear()
            self._note_activity(now)
        elif message.error_code in (ErrorCode.UNEXPECTED, ErrorCode.BUSY):
            self.master_registered = False  # "hello first", or it restarted
        elif message.error_code == ErrorCode.NOT_LEADER:
            address = self.masters.address
            if self.masters.refused(self.from_master, wire.leader_hint(message), now):
                self._left_master(f"the master at {address} does not lead ({message.reason})")
            else:
                self.master_registered = False
        else:
            log.warning("master error %d: %s", message.error_code, message.reason)

    def on_dispatch(self, message: wire.ChunkDispatch, peer: bytes | None, now: float) -> None:
        self._count("attempts_received", len(message.attempts))
        self.metrics.arrived(message.attempts, now)
        if not self.lease.active(now):
            if len(self.held_dispatches) < MAX_HELD_DISPATCHES:
                self.held_dispatches.append(message)
                self._count("dispatches_held")
            return
        self._apply(core.Dispatched.of_message(message), now)

    def on_cancel(self, message: wire.ChunkCancel, peer: bytes | None, now: float) -> None:
        self._apply(core.CancelRequested.of_message(message), now)

    def on_events_ack(self, message: wire.ChunkEventsAck, peer: bytes | None, now: float) -> None:
        batch = self.unacknowledged.pop(message.batch_id, None)
        if batch is None:
            return
        for worker, ack in status_acks(self.node_id, max(self.epoch, 1), batch.finals):
            self._send_worker(worker, ack)

    # -- timers and batching ----------------------------------------------------

    def _on_timers(self, now: float) -> None:
        address = self.masters.address
        if self.masters.overdue(now):
            self._left_master(f"the master at {address} is silent")
        if (self.hello_owed or self.lease.ask_due(now)) and self.masters.due(now):
            self._hello_master(now)
        self._note_activity(now)
        if now - self.last_tick >= self.heartbeat_interval_s:
            self.last_tick = now
            self._apply(core.Tick(), now)
            total, free = self.scheduler.capacity()
            if self.master_registered:
                self._send_master(wire.Heartbeat.make(self.node_id, epoch=max(self.epoch, 1), free_slots=free,
                                                      running_count=total - free, running=[], cache_added=[],
                                                      cache_removed=[]), now)
        if self.master_registered and now - self.last_node_report >= NODE_REPORT_INTERVAL_S:
            self.last_node_report = now
            self._send_master(wire.NodeReport.make(
                self.node_id, epoch=max(self.epoch, 1),
                nodes=[view.to_record() for view in self.scheduler.workers(now)]), now)
        if self.master_registered:
            for batch in self.unacknowledged.values():
                if now - batch.sent_at > RESEND_BATCH_S:
                    batch.sent_at = now
                    self._count("batches_resent")
                    self.masters.send(batch.frames, now, wants_answer=True)

    def _flush_events(self, now: float) -> None:
        while self.outgoing_events:
            events = self.outgoing_events[:EVENTS_PER_BATCH]
            # Results with many outputs are large: a batch ends where one body does.
            events = events[:wire.items_that_fit([event.as_body() for event in events])]
            del self.outgoing_events[:len(events)]
            batch_id = self.next_batch_id
            self.next_batch_id += 1
            frames = wire.encode(wire.ChunkEvents.carrying(self.node_id, max(self.epoch, 1), batch_id,
                                                           events))
            finals = [(event.worker, event.job, event.chunk, event.attempt, event.state) for event in events
                      if event.state in FINAL_CHUNK_STATES and event.worker != core.NO_WORKER]
            self.unacknowledged[batch_id] = EventBatch(batch_id, frames, finals, now, events, max(self.epoch, 1))
            self._count("events_forwarded", len(events))
            if self.master_registered:
                self.masters.send(frames, now, wants_answer=True)


def status_acks(node_id: bytes, epoch: int, finals: list[tuple]) -> Iterator[tuple[bytes, wire.StatusAck]]:
    """One status_ack per worker for the final reports (worker, job, chunk,
    attempt, state) of a batch the master acknowledged: from then on the
    worker may stop resending them."""
    by_worker: dict[bytes, list] = {}
    for worker, job, chunk, attempt, state in finals:
        by_worker.setdefault(worker, []).append([job, chunk, attempt, state])
    for worker, attempts in by_worker.items():
        yield worker, wire.StatusAck.make(node_id, epoch=epoch, attempt_count=len(attempts), attempts=attempts)
