"""The master leader's decisions, as a core the simulation can drive:
`SimLeader.handle(event, now) -> effects`.

This follows today's rules in master/node.py (which will move into the
leader core, master/leader.py): dispatch credit per slot, "dispatched"
committed before a chunk_dispatch is sent, dispatched attempts re-sent every
RESEND_DISPATCHED_S, a load balancer dropped after LOADBALANCER_LEASE_S of
silence, chunk events acknowledged once committed, node reports turned into
NodeSeen / NodeLost, and commands batched into one proposal at a time.
Replies wait for commits through tags, not closures. Swapping in the real
core means mapping its events and effects onto these four classes.

Held status waiters, queries and cancels are left out: the chunk path does
not use them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from uds import wire
from uds.master import state as core
from uds.master.links import LoadBalancerLink, dispatch_messages
from uds.wire.enums import ErrorCode, NodeRole

from .today import (
    HEARTBEAT_INTERVAL_S, LOADBALANCER_LEASE_S, MAX_COMMANDS_PER_PROPOSAL, MAX_OUTSTANDING_PROPOSALS,
    PROPOSAL_TIMEOUT_S, RESEND_DISPATCHED_S, dispatch_records,
)


# ---- events in -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Received:
    peer: str
    message: wire.Message


@dataclass(frozen=True, slots=True)
class Committed:
    tag: int
    outcomes: list | None           # None: the proposal failed


@dataclass(frozen=True, slots=True)
class Tick:
    pass


# ---- effects out -----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Propose:
    commands: tuple
    tag: int


@dataclass(frozen=True, slots=True)
class Send:
    peer: str
    message: wire.Message


# What to do once a queued command committed: (kind, arguments).
After = tuple | None


@dataclass
class _Proposal:
    commands: list
    afters: list[After]
    sent_at: float


@dataclass
class SimLeader:
    node_id: bytes
    state: core.ClusterState        # read only: the replicated state as committed
    loadbalancer: LoadBalancerLink | None = None
    last_resend: float = 0.0
    dispatching: set = field(default_factory=set)
    queued_commands: list = field(default_factory=list)
    queued_afters: list[After] = field(default_factory=list)
    proposals: dict[int, _Proposal] = field(default_factory=dict)
    next_tag: int = 1
    _effects: list = field(default_factory=list)

    def handle(self, event: Received | Committed | Tick, now: float) -> list:
        self._effects = []
        if isinstance(event, Received):
            handler = _MESSAGE_HANDLERS.get(type(event.message))
            if handler is not None:
                handler(self, event.message, event.peer, now)
        elif isinstance(event, Committed):
            self._committed(event, now)
        self._on_timers(now)
        self._flush(now)
        effects, self._effects = self._effects, []
        return effects

    # -- proposals -------------------------------------------------------------

    def _send(self, peer: str, message: wire.Message) -> None:
        self._effects.append(Send(peer, message))

    def _error(self, peer: str, request_id: int, failed_type: int, code: int, reason: str) -> None:
        self._send(peer, wire.Error.make(self.node_id, request_id=request_id, error_code=int(code),
                                         failed_type=failed_type, reason=reason))

    def _queue(self, command: Any, after: After = None) -> None:
        self.queued_commands.append(command)
        self.queued_afters.append(after)

    def _flush(self, now: float) -> None:
        while self.queued_commands and len(self.proposals) < MAX_OUTSTANDING_PROPOSALS:
            commands = self.queued_commands[:MAX_COMMANDS_PER_PROPOSAL]
            afters = self.queued_afters[:MAX_COMMANDS_PER_PROPOSAL]
            del self.queued_commands[:MAX_COMMANDS_PER_PROPOSAL]
            del self.queued_afters[:MAX_COMMANDS_PER_PROPOSAL]
            tag = self.next_tag
            self.next_tag += 1
            self.proposals[tag] = _Proposal(commands, afters, now)
            self._effects.append(Propose(tuple(commands), tag))

    def _committed(self, event: Committed, now: float) -> None:
        proposal = self.proposals.pop(event.tag, None)
        if proposal is not None:
            self._finish(proposal, event.outcomes)

    def _finish(self, proposal: _Proposal, outcomes: list | None) -> None:
        for index, after in enumerate(proposal.afters):
            if after is None:
                continue
            outcome = outcomes[index] if outcomes is not None else core.Outcome(
                ok=False, error="raft: no commit", error_code=int(ErrorCode.BUSY))
            _AFTER_COMMIT[after[0]](self, outcome, *after[1:])

    # -- timers ----------------------------------------------------------------

    def _on_timers(self, now: float) -> None:
        for tag, proposal in list(self.proposals.items()):
            if now - proposal.sent_at > PROPOSAL_TIMEOUT_S:
                del self.proposals[tag]
                self._finish(proposal, None)
        link = self.loadbalancer
        if link is not None and now - link.last_seen > LOADBALANCER_LEASE_S:
            self.loadbalancer = None
            return
        if link is not None:
            if now - self.last_resend > RESEND_DISPATCHED_S:
                self.last_resend = now
                self._resend_dispatched(link)
            self._dispatch_ready(link)

    # -- dispatching -----------------------------------------------------------

    def _credit(self, link: LoadBalancerLink) -> int:
        return link.credit() - self.state.in_flight_count() - len(self.dispatching)

    def _dispatch_ready(self, link: LoadBalancerLink) -> None:
        credit = self._credit(link)
        if credit <= 0:
            return
        ready = self.state.ready_attempts(credit + len(self.dispatching))
        chosen = [attempt[:3] for attempt in ready if attempt[:3] not in self.dispatching][:credit]
        if chosen:
            self._queue_dispatch(chosen)

    def _queue_dispatch(self, keys: list[tuple[bytes, int, int]]) -> None:
        """Commit "dispatched" for these attempts, then send them."""
        self.dispatching.update(keys)
        self._queue(core.DispatchAttempts(attempts=tuple(keys)), ("dispatched", tuple(keys)))

    def _after_dispatched(self, outcome: Any, keys: tuple) -> None:
        self.dispatching.difference_update(keys)
        if outcome.ok and outcome.dispatched and self.loadbalancer is not None:
            self._send_dispatch(self.loadbalancer, list(outcome.dispatched))

    def _send_dispatch(self, link: LoadBalancerLink, attempts: list) -> None:
        for message in dispatch_messages(self.node_id, link.epoch, *dispatch_records(self.state, attempts)):
            self._send(link.peer, message)

    def _resend_dispatched(self, link: LoadBalancerLink) -> None:
        attempts = [attempt[:3] for attempt in self.state.dispatched_attempts()]
        if attempts:
            self._send_dispatch(link, attempts)

    # -- clients ---------------------------------------------------------------

    def _on_job_submit(self, message: wire.JobSubmit, peer: str, now: float) -> None:
        command = core.SubmitJob(
            job=message.job_uuid, name=message.name, program=tuple(message.program),
            args=tuple(message.args), inputs={name: tuple(ref) for name, ref in message.inputs.items()},
            chunk_inputs=tuple({name: tuple(ref) for name, ref in per_chunk.items()}
                               for per_chunk in message.chunk_inputs),
            chunk_count=message.chunk_count, timeout_s=message.timeout_s, max_retries=message.max_retries)
        self._queue(command, ("submitted", peer, message.request_id, command.job))
        link = self.loadbalancer
        if link is not None:
            # The job's first chunks ride in the same batch as the job itself.
            count = min(self._credit(link), command.chunk_count)
            if count > 0:
                self._queue_dispatch([(command.job, chunk, 1) for chunk in range(count)])

    def _after_submitted(self, outcome: Any, peer: str, request_id: int, job: bytes) -> None:
        if not outcome.ok:
            self._error(peer, request_id, int(wire.MessageType.JOB_SUBMIT),
                        outcome.error_code or ErrorCode.INVALID, outcome.error)
            return
        self._send(peer, wire.JobSubmitReply.make(self.node_id, request_id=request_id, job=job,
                                                  created=1 if outcome.created else 0))

    # -- the load balancer -----------------------------------------------------

    def _on_hello(self, message: wire.Hello, peer: str, now: float) -> None:
        previous = self.loadbalancer
        epoch = 1 if previous is None else previous.epoch
        self.loadbalancer = LoadBalancerLink(peer=peer, node=message.node_uuid, epoch=epoch, last_seen=now)
        self._send(peer, wire.HelloReply.make(
            self.node_id, request_id=message.request_id, epoch=epoch,
            heartbeat_interval_ms=int(HEARTBEAT_INTERVAL_S * 1000),
            lease_ms=int(LOADBALANCER_LEASE_S * 1000)))
        self._queue(core.NodeSeen(node=message.node_uuid, role=message.role, host=message.host,
                                  address=message.address, slots=0, cache_bytes=0,
                                  started_at=message.start_time_ms / 1000.0))
        self.last_resend = now
        self._resend_dispatched(self.loadbalancer)

    def _balancer(self, message: Any, peer: str, now: float) -> LoadBalancerLink | None:
        link = self.loadbalancer
        if link is None or link.node != message.node_uuid:
            self._error(peer, 0, message.message_type, ErrorCode.UNEXPECTED, "hello first")
            return None
        link.peer = peer
        link.last_seen = now
        return link

    def _on_heartbeat(self, message: wire.Heartbeat, peer: str, now: float) -> None:
        link = self._balancer(message, peer, now)
        if link is not None:
            link.free_slots = message.free_slots
            link.running = message.running_count

    def _on_chunk_events(self, message: wire.ChunkEvents, peer: str, now: float) -> None:
        link = self._balancer(message, peer, now)
        if link is None:
            return
        for event in message.chunk_events():
            self._queue(event)
        ack = ("events_committed", link, message.epoch, message.batch_id)
        if message.events:
            # The acknowledgement waits for the last event of the batch.
            self.queued_afters[-1] = ack
        else:
            self._after_events_committed(core.Outcome(), *ack[1:])

    def _after_events_committed(self, outcome: Any, link: LoadBalancerLink, epoch: int, batch_id: int) -> None:
        # Any outcome but a failed proposal is final for these events.
        if outcome.ok or outcome.error_code != ErrorCode.BUSY:
            self._send(link.peer, wire.ChunkEventsAck.make(self.node_id, epoch=epoch, batch_id=batch_id))

    def _on_node_report(self, message: wire.NodeReport, peer: str, now: float) -> None:
        link = self._balancer(message, peer, now)
        if link is None:
            return
        reported = {node["node"]: node for node in message.nodes}
        link.workers = reported
        known = {view.node: view for view in self.state.nodes() if view.role == NodeRole.WORKER}
        for node_id, node in reported.items():
            view = known.get(node_id)
            alive = node["state"] == "alive"
            # A new started_at is a new process: what the old one ran is lost.
            if alive and (view is None or view.state != "alive" or view.started_at != node["started_at"]):
                self._queue(core.NodeSeen(node=node_id, role=node["role"], host=node["host"],
                                          address=node["address"], slots=node["slots"],
                                          cache_bytes=node["cache_bytes"], started_at=node["started_at"]))
            elif not alive and view is not None and view.state == "alive":
                self._queue(core.NodeLost(node=node_id))


_MESSAGE_HANDLERS: dict[type, Callable[..., None]] = {
    wire.JobSubmit: SimLeader._on_job_submit,
    wire.Hello: SimLeader._on_hello,
    wire.Heartbeat: SimLeader._on_heartbeat,
    wire.ChunkEvents: SimLeader._on_chunk_events,
    wire.NodeReport: SimLeader._on_node_report,
}

_AFTER_COMMIT: dict[str, Callable[..., None]] = {
    "dispatched": SimLeader._after_dispatched,
    "submitted": SimLeader._after_submitted,
    "events_committed": SimLeader._after_events_committed,
}
