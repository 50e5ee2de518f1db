"""The load balancer as the simulation runs it: the real scheduler core
(loadbalancer/scheduler.py) inside a shell that translates the way
loadbalancer/node.py does: worker messages become scheduler events, effects
become messages, chunk events go to the master in batches resent until
acknowledged, and each acknowledged final status is confirmed to its worker
(status_ack). Like the real one it asks the masters for its lease with a
hello (every ASK_INTERVAL_S while standby, RENEW_INTERVAL_S while
active), counts it from the sending (BalancerLease),
assigns only while active, holds dispatches that come while it is not, and
takes no worker status while standby. A
crash loses all of it; the restarted balancer starts empty.

It finds the leader among the masters as loadbalancer/masters.py's
MasterLink does, through the real LeaderSearch (wire/leader_search.py) with
the link's silence and backoff, driven by the simulation's clock and random
source: only the target is sent anything; a hello or a batch starts the
target's silence clock and anything it says stops it; only the target's
refusals move the search on; a grant from a master left behind brings it
back only if it extends the lease. Where the real loop polls every
LOOP_WAKE_S, this shell wakes exactly when the search's silence or backoff
runs out, or the holder's renewal falls due.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from uds import wire
from uds.loadbalancer import scheduler as core
from uds.loadbalancer.lease import RENEW_INTERVAL_S, BalancerLease
from uds.loadbalancer.masters import BACKOFF_CAP_S, BACKOFF_FIRST_S, SILENCE_S
from uds.loadbalancer.node import MAX_HELD_DISPATCHES, status_acks
from uds.wire.enums import FINAL_CHUNK_STATES, ErrorCode, NodeRole
from uds.wire.leader_search import LeaderSearch

from .host import Host
from .loop import Simulation
from .today import EVENTS_PER_BATCH, MASTER_HELLO_RETRY_S, NODE_REPORT_INTERVAL_S, RESEND_BATCH_S, SETTLE_HEARTBEATS


MASTER_MESSAGES = frozenset({wire.HelloReply, wire.ChunkDispatch, wire.ChunkCancel, wire.ChunkEventsAck,
                             wire.Error})


@dataclass
class _Batch:
    message: wire.ChunkEvents
    finals: list[tuple[bytes, bytes, int, int, int]]   # worker, job, chunk, attempt, state
    sent_at: float
    events: list


class SimBalancer(Host):
    def __init__(self, sim: Simulation, name: str, node_id: bytes, masters: tuple[str, ...],
                 heartbeat_interval_s: float, lease_s: float,
                 on_batch_acknowledged: Callable[[str, list], None] = lambda master, events: None,
                 on_assign: Callable[[str, bytes, list], None] = lambda balancer, job, attempts: None) -> None:
        super().__init__(sim, name)
        self.node_id = node_id
        self.search = LeaderSearch(tuple(masters), sim.random, silence_s=SILENCE_S,
                                   backoff_first_s=BACKOFF_FIRST_S, backoff_cap_s=BACKOFF_CAP_S)
        self.on_batch_acknowledged = on_batch_acknowledged
        self.on_assign = on_assign
        self.hello_owed = False        # a new target is greeted at once, not at the next ask
        self.from_master = 0           # the index of the master whose message is being handled
        self.answered_at: dict[str, float] = {}   # master -> when it last answered as leader
        self.wake_due: float | None = None
        self.heartbeat_interval_s = heartbeat_interval_s
        self.lease_s = lease_s
        self.started_at = sim.now
        self.scheduler = core.Scheduler(lease_s=lease_s, settle_s=SETTLE_HEARTBEATS * heartbeat_interval_s)
        self.master_registered = False
        self.last_master_hello = -MASTER_HELLO_RETRY_S
        self.epoch = 0
        self.lease = BalancerLease()
        self.held_dispatches: list[wire.ChunkDispatch] = []
        self.worker_peers: dict[bytes, str] = {}
        self.outgoing_events: list[wire.ChunkEvent] = []
        self.unacknowledged: dict[int, _Batch] = {}
        self.next_batch_id = int(sim.now * 1000) * 1000      # unique across restarts
        self.next_request_id = 1
        self.last_tick = 0.0
        self.last_node_report = 0.0
        self.handlers: dict[type, Callable[[Any, str], None]] = {
            wire.Hello: self._on_worker_hello,
            wire.Heartbeat: self._on_worker_heartbeat,
            wire.WorkerStatus: self._on_worker_status,
            wire.HelloReply: self._on_master_hello_reply,
            wire.ChunkDispatch: self._on_dispatch,
            wire.ChunkCancel: self._on_cancel,
            wire.ChunkEventsAck: self._on_events_ack,
            wire.Error: self._on_master_error,
        }
        self.effect_handlers: dict[type, Callable[[Any], None]] = {
            core.AssignChunks: self._do_assign,
            core.ForwardToMaster: lambda effect: self.outgoing_events.append(effect.event),
            core.CancelOnWorker: self._do_cancel_on_worker,
            core.WorkerJoined: self._do_worker_joined,
            core.WorkerLost: self._do_worker_lost,
            core.AskHello: self._do_ask_hello,
            core.Note: self._note,
        }
        self.every(heartbeat_interval_s / 2, self._after_wakeup)

    def _note(self, effect: core.Note) -> None:
        if self.sim.tracing:
            self.sim.note(f"{self.name}: {effect.text}")

    def on_message(self, source: str, message: wire.Message) -> None:
        index = self.search.index_of(source)
        if index is not None:
            self.search.heard_from(index, self.sim.now)
            self.from_master = index
        handler = self.handlers.get(type(message))
        if handler is not None and (index is not None) == (type(message) in MASTER_MESSAGES):
            handler(message, source)
        self._after_wakeup()

    def _after_wakeup(self) -> None:
        self._on_timers(self.sim.now)
        self._flush_events(self.sim.now)
        self._wake_for_search()

    def _wake_for_search(self) -> None:
        """Wake when the target's silence or the backoff runs out, and, while
        active, when the renewal falls due (the real loop looks every
        LOOP_WAKE_S; the period here is coarser)."""
        search, now = self.search, self.sim.now
        times = [search.resume_at]
        if self.lease.active(now):
            times.append(self.lease.last_asked + RENEW_INTERVAL_S)
        if search.asked_since is not None:
            times.append(search.asked_since + search.silence_s + 1e-6)
        times = [at for at in times if at > now]
        if not times:
            return
        at = min(times)
        if self.wake_due is not None and now <= self.wake_due <= at:
            return
        self.wake_due = at
        self.later(at - now, self._search_woken, at)

    def _search_woken(self, at: float) -> None:
        if self.wake_due == at:
            self.wake_due = None
        self._after_wakeup()

    def _apply(self, event: Any) -> None:
        for effect in self.scheduler.handle(event, self.sim.now):
            self.effect_handlers[type(effect)](effect)

    # -- workers ---------------------------------------------------------------

    def _on_worker_hello(self, message: wire.Hello, peer: str) -> None:
        if message.role != NodeRole.WORKER:
            return
        self.worker_peers[message.node_uuid] = peer
        self.send(peer, wire.HelloReply.make(
            self.node_id, request_id=message.request_id, epoch=max(self.epoch, 1),
            heartbeat_interval_ms=int(self.heartbeat_interval_s * 1000), lease_ms=int(self.lease_s * 1000)))
        self._apply(core.WorkerHello.of_message(message))

    def _on_worker_heartbeat(self, message: wire.Heartbeat, peer: str) -> None:
        self.worker_peers[message.node_uuid] = peer
        self._apply(core.WorkerHeartbeat.of_message(message))

    def _on_worker_status(self, message: wire.WorkerStatus, peer: str) -> None:
        self.worker_peers[message.node_uuid] = peer
        if self.lease.active(self.sim.now):
            self._apply(message.chunk_event())

    def active(self) -> bool:
        """Whether this balancer believes it holds the lease now."""
        return not self.frozen and self.lease.active(self.sim.now)

    def _send_worker(self, worker: bytes, message: wire.Message) -> None:
        peer = self.worker_peers.get(worker)
        if peer is not None:
            self.send(peer, message)

    def _do_assign(self, effect: core.AssignChunks) -> None:
        if not self.lease.active(self.sim.now):
            return      # the scheduler sees no STARTED and takes them back
        self.on_assign(self.name, effect.job_spec.job,
                       [(assignment.chunk, assignment.attempt) for assignment in effect.assignments])
        self._send_worker(effect.worker, wire.WorkerRequest.make(
            self.node_id, epoch=max(self.epoch, 1),
            assignments=[assignment.to_record() for assignment in effect.assignments],
            **effect.job_spec.request_fields()))

    def _do_cancel_on_worker(self, effect: core.CancelOnWorker) -> None:
        if not self.lease.active(self.sim.now):
            return
        self._send_worker(effect.worker, wire.ChunkCancel.make(
            self.node_id, epoch=max(self.epoch, 1), job=effect.job, attempts=[list(pair) for pair in effect.attempts]))

    def _do_worker_joined(self, effect: core.WorkerJoined) -> None:
        self.last_node_report = 0.0   # tell the master soon

    def _do_worker_lost(self, effect: core.WorkerLost) -> None:
        self.worker_peers.pop(effect.worker, None)
        self._send_master(wire.NodeReport.make(self.node_id, epoch=max(self.epoch, 1),
                                               nodes=[effect.view.to_record()]))

    def _do_ask_hello(self, effect: core.AskHello) -> None:
        peer = self.worker_peers.get(effect.worker)
        if peer is not None:
            self.send(peer, wire.Error.make(self.node_id, request_id=0, error_code=int(ErrorCode.UNEXPECTED),
                                            failed_type=int(wire.MessageType.HEARTBEAT), reason="hello first"))

    # -- the masters -----------------------------------------------------------

    def _send_master(self, message: wire.Message, wants_answer: bool = False) -> None:
        self.send(self.search.address, message)
        if wants_answer:
            self.search.asked(self.sim.now)

    def _left_master(self, why: str) -> None:
        """The search moved to another master: greet it at once."""
        self.master_registered = False
        self.hello_owed = True
        if self.sim.tracing:
            self.sim.note(f"{self.name}: {why}; now asking {self.search.address}")

    def _answered(self, master: str) -> None:
        """`master`, the target, answered as the leader does: in step with it."""
        if self.search.index_of(master) == self.search.target:
            self.answered_at[master] = self.sim.now

    def _on_master_hello_reply(self, message: wire.HelloReply, peer: str) -> None:
        valid_until = self.lease.valid_until
        if not self.lease.granted(message.request_id, message.epoch, message.lease_ms / 1000.0):
            return
        if self.from_master != self.search.target:
            if self.lease.valid_until <= valid_until:
                return      # an old grant from a master left behind: no sign that it leads now
            self.master_registered = False      # a fresh grant: it was slow, not gone
        self.search.served(self.from_master, self.sim.now)
        if not self.master_registered:
            self.last_node_report = 0.0
            for batch in self.unacknowledged.values():
                batch.sent_at = -RESEND_BATCH_S   # resend now: the master may have changed
        self.master_registered = True
        self._answered(peer)
        if message.epoch != self.epoch:
            for batch in self.unacknowledged.values():
                batch.message = wire.ChunkEvents.carrying(self.node_id, message.epoch, batch.message.batch_id,
                                                          batch.events)
                batch.sent_at = -RESEND_BATCH_S
            if self.sim.tracing:
                self.sim.note(f"{self.name}: holds the lease at epoch {message.epoch}")
        self.epoch = message.epoch
        if self.lease.active(self.sim.now):
            held, self.held_dispatches = self.held_dispatches, []
            for dispatch in held:
                if dispatch.epoch == self.epoch:
                    self._apply(core.Dispatched.of_message(dispatch))

    def _on_master_error(self, message: wire.Error, peer: str) -> None:
        if message.error_code == ErrorCode.BUSY and message.failed_type == wire.MessageType.HELLO:
            self._answered(peer)        # standby, or the lease not granted: the leader answered
        if self.from_master != self.search.target:
            return                              # a master left behind: old news
        now = self.sim.now
        if message.error_code == ErrorCode.BUSY and message.failed_type == wire.MessageType.HELLO:
            self.master_registered = False
            self.lease.refused(now)
            self.held_dispatches.clear()
        elif message.error_code in (ErrorCode.UNEXPECTED, ErrorCode.BUSY):
            self.master_registered = False      # "hello first", or it restarted
        elif message.error_code == ErrorCode.NOT_LEADER:
            before = self.search.target
            self.search.refused(self.from_master, wire.leader_hint(message), now)
            if self.search.target != before or self.search.due(now) is None:
                self._left_master(f"{peer} does not lead ({message.reason})")
            else:
                self.master_registered = False

    def _on_dispatch(self, message: wire.ChunkDispatch, peer: str) -> None:
        if not self.lease.active(self.sim.now):
            if len(self.held_dispatches) < MAX_HELD_DISPATCHES:
                self.held_dispatches.append(message)
            return
        self._apply(core.Dispatched.of_message(message))

    def _on_cancel(self, message: wire.ChunkCancel, peer: str) -> None:
        self._apply(core.CancelRequested.of_message(message))

    def _on_events_ack(self, message: wire.ChunkEventsAck, peer: str) -> None:
        self._answered(peer)
        batch = self.unacknowledged.pop(message.batch_id, None)
        if batch is None:
            return
        self.on_batch_acknowledged(peer, batch.events)
        for worker, ack in status_acks(self.node_id, max(self.epoch, 1), batch.finals):
            self._send_worker(worker, ack)

    # -- timers and batching ---------------------------------------------------

    def _on_timers(self, now: float) -> None:
        address = self.search.address
        if self.search.overdue(now):
            self._left_master(f"{address} is silent")
        if (self.hello_owed or self.lease.ask_due(now)) and self.search.due(now) is not None:
            self.last_master_hello = now
            self.hello_owed = False
            self.next_request_id += 1
            self.lease.ask(self.next_request_id, now)
            self._send_master(wire.Hello.make(
                self.node_id, request_id=self.next_request_id, role=int(NodeRole.LOADBALANCER), slots=0,
                cache_bytes=0, start_time_ms=int(self.started_at * 1000), host=self.name, address=self.name,
                version=1), wants_answer=True)
        if now - self.last_tick >= self.heartbeat_interval_s:
            self.last_tick = now
            self._apply(core.Tick())
            total, free = self.scheduler.capacity()
            if self.master_registered:
                self._send_master(wire.Heartbeat.make(
                    self.node_id, epoch=max(self.epoch, 1), free_slots=free, running_count=total - free,
                    running=[], cache_added=[], cache_removed=[]))
        if self.master_registered and now - self.last_node_report >= NODE_REPORT_INTERVAL_S:
            self.last_node_report = now
            self._send_master(wire.NodeReport.make(
                self.node_id, epoch=max(self.epoch, 1),
                nodes=[view.to_record() for view in self.scheduler.workers(now)]))
        if self.master_registered:
            for batch in self.unacknowledged.values():
                if now - batch.sent_at > RESEND_BATCH_S:
                    batch.sent_at = now
                    self._send_master(batch.message, wants_answer=True)

    def _flush_events(self, now: float) -> None:
        while self.outgoing_events:
            events = self.outgoing_events[:EVENTS_PER_BATCH]
            del self.outgoing_events[:len(events)]
            batch_id = self.next_batch_id
            self.next_batch_id += 1
            message = wire.ChunkEvents.carrying(self.node_id, max(self.epoch, 1), batch_id, events)
            finals = [(e.worker, e.job, e.chunk, e.attempt, e.state) for e in events
                      if e.state in FINAL_CHUNK_STATES and e.worker != core.NO_WORKER]
            self.unacknowledged[batch_id] = _Batch(message, finals, now, events)
            if self.master_registered:
                self._send_master(message, wants_answer=True)
