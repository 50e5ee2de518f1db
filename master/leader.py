"""The master leader's brain: what the leader decides between the wire and
the Raft log.

Rules of this module:
- Nothing here imports zmq, threading, socket, time or os, reads a clock or
  opens a file. `Leader.handle(event, now)` returns effects; the shell
  (master/node.py) carries each out. `now` is the shell's wall clock in
  seconds, the same clock whose value goes into each proposal.
- Answers to clients (submit, status, cancel, release, nodes, events) are
  master/client_requests.py, to storage nodes and pins (storage
  heartbeats, gc_check, file_pin) master/storage_requests.py, and the
  leader's own periodic proposals (retention, the state's timers, the result
  cache) master/housekeeping.py, which `Leader` inherits; the balancer's
  messages and dispatching are here. All follow these rules.
- The replicated state is read only through ClusterState's pure queries, by
  way of the `StateReader` given to the constructor: the shell's reader takes
  the state's lock, a simulation's (`DirectReader`) reads the state itself.
- A reply that depends on a command waits for the command's commit. What to
  do with a command's outcome is data (a purpose kept under the proposal's
  tag), never a closure.
- Everything here is soft state: a new leader starts empty and rebuilds what
  it needs from the replicated state and from what its peers send again.
- The same events with the same `now` over the same state give the same
  effects, in the same order.

The contract for whoever drives it (the shell, a simulation):
1. Feed `RaftStatus` whenever readiness, leadership or the leader's address
   changes, before the events that follow the change.
2. Feed `Received(peer, message)` for each decoded message whose type is in
   ACCEPTED_MESSAGES. Its answer, if any, is a `Reply` to that request.
3. Feed `Tick()` after every burst of events, and at the latest at the time of
   the last `Wake(at)`. A Tick runs the timers, dispatches what the credit
   allows, and proposes the commands gathered since the last Tick: commands
   gathered between two Ticks ride together in one proposal (at most
   MAX_COMMANDS_PER_PROPOSAL), and at most MAX_OUTSTANDING_PROPOSALS await
   their commit at once.
4. Carry out `Propose(commands, tag)` by appending the commands, in order, to
   the Raft log as one entry. When it commits, feed `Committed(tag,
   outcomes)` with `ClusterState.apply`'s outcomes; when it fails, feed
   `ProposalFailed(tag, reason)`. A tag no longer awaited (given up after
   PROPOSAL_TIMEOUT_S) is ignored, though the state it changed is read.
5. Carry out `Send(peer, message)` and `Reply(request, message)` by sending
   the message to the peer, and `Note` by logging it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from uds import wire
from uds.master import state as core
from uds.master.client_requests import AnswerCancel, AnswerRelease, AnswerSubmit, ClientRequests
from uds.master.housekeeping import FireTimers, Forget, Housekeeping, PruneResults
from uds.master.links import (  # noqa: F401
    LOADBALANCER_LEASE_S, LoadBalancerLease, LoadBalancerLink, dispatch_messages, dispatch_records,
)
# The events and effects are re-exported: drivers use them as leader.X.
from uds.master.leader_events import (  # noqa: F401
    NOT_STARTED, Committed, DirectReader, Effect, Event, Note, ProposalFailed, Propose, RaftStatus,
    Received, Reply, Request, Send, StateReader, Tick, UnknownEventError, Wake,
)
from uds.master.proposals import (  # noqa: F401
    MAX_COMMANDS_PER_PROPOSAL, MAX_OUTSTANDING_PROPOSALS, PROPOSAL_TIMEOUT_S, Proposal, Proposals,
)
from uds.master.storage_nodes import StorageNodes
from uds.master.storage_requests import (
    AnswerGcChecks, AnswerPin, GcChecks, StorageLost, StorageRequests, StorageSeen,
)
from uds.master.event_waiters import MAX_EVENT_WAITERS, MAX_EVENTS_WAIT_S, EventWaiters  # noqa: F401
from uds.master.waiters import MAX_STATUS_WAIT_S, STATUS_PAGE_CHUNKS, StatusWaiters  # noqa: F401
from uds.wire.cluster import Retention, Scheduling, StoragePolicy
from uds.wire.enums import ErrorCode, NodeRole
from uds.wire.records import NO_FACTS, NodeFacts
from uds.wire.resources import NO_LIMITS, ResourceLimits

# Dispatched attempts that have not started are sent again this often, in
# case a message or the load balancer was lost; the balancer ignores repeats.
RESEND_DISPATCHED_S = 3.0
HEARTBEAT_INTERVAL_S = 0.25
# Chunk event outcomes that change nothing and are worth a log line.
IGNORED_EVENT_STATUSES = frozenset({core.EVENT_STALE, core.EVENT_UNKNOWN, core.EVENT_INVALID})

def may_wait(command: core.SubmitJob) -> bool:
    """Whether the job's chunks may be other than QUEUED once it is committed."""
    return bool(command.after or command.refs or command.hold or command.start_at is not None or command.cache)


# ---- what a command's outcome is for ------------------------------------------

@dataclass(frozen=True, slots=True)
class _SendDispatched:
    keys: tuple[tuple[bytes, int, int], ...]


@dataclass(frozen=True, slots=True)
class _AcknowledgeEvents:
    peer: bytes
    loadbalancer: bytes
    epoch: int
    batch_id: int


@dataclass(frozen=True, slots=True)
class _Lease:
    """A GrantLease for `node`, asked by its hello (answered after the
    commit) or by a heartbeat (request None)."""

    node: bytes
    peer: bytes
    epoch: int
    request: Request | None


_Purpose = (AnswerSubmit | _SendDispatched | AnswerCancel | AnswerRelease | _AcknowledgeEvents | _Lease
            | Forget | FireTimers | PruneResults | StorageSeen | StorageLost | AnswerPin | AnswerGcChecks)


# What a Received message may be; the shell's dispatcher refuses the rest.
ACCEPTED_MESSAGES: tuple[type, ...] = (
    wire.JobSubmit, wire.JobStatus, wire.JobCancel, wire.JobRelease, wire.NodesQuery, wire.EventsQuery,
    wire.AttemptsQuery,
    wire.Hello, wire.Heartbeat, wire.ChunkEvents, wire.NodeReport,
    wire.StorageHeartbeat, wire.GcCheck, wire.FilePin,
    wire.JobsQuery, wire.JobSpecQuery,
)


class Leader(ClientRequests, StorageRequests, Housekeeping):
    """The leader's decisions. `handle(event, now) -> effects`.

    `node_id`, `host`, `address` and `started_at` describe this master (its
    own NodeSeen, the sender of its messages); `reader` reads the state.
    `default_limits` (the cluster file's [limits]) fill in what a job does
    not ask for, before its submission is proposed: every replica, balancer
    and worker then sees the same limits for it. `retention` (the cluster
    file's [retention]) says when finished jobs leave the replicated state;
    `storage_policy` (its [storage_policy]) when a storage node is lost and
    how long collection waits; `scheduling` (its [scheduling]) the poison
    limit each job is submitted with and the bounds of the result cache.
    """

    def __init__(self, node_id: bytes, reader: StateReader, *, host: str = "", address: str = "",
                 started_at: float = 0.0, default_limits: ResourceLimits = NO_LIMITS,
                 retention: Retention = Retention(), storage_policy: StoragePolicy = StoragePolicy(),
                 scheduling: Scheduling = Scheduling(), facts: NodeFacts = NO_FACTS) -> None:
        self.node_id = node_id
        self.facts = facts
        self.storage_policy = storage_policy
        self._storage = StorageNodes()
        self._storage_due_at: float | None = None
        self._gc_checks = GcChecks()
        self.default_limits = default_limits
        self.retention = retention
        self.scheduling = scheduling
        self._housekeeping_init()
        self.counters: dict[str, int] = {}
        self._reader = reader
        self._host, self._address, self._started_at = host, address, started_at
        self._raft = NOT_STARTED
        self._announced = False
        self._lease = LoadBalancerLease()
        self._proposals = Proposals(self._count)
        self._dispatching: set[tuple[bytes, int, int]] = set()
        self._waiters = StatusWaiters()
        self._event_waiters = EventWaiters()
        self._events_checked = 0            # the held events queries have been matched against the log to here
        self._last_resend = 0.0
        self._handlers: dict[type, Callable[[Any, float], list[Effect]]] = {
            RaftStatus: self._on_raft_status,
            Received: self._on_received,
            Committed: self._on_committed,
            ProposalFailed: self._on_proposal_failed,
            Tick: self._on_tick,
        }
        self._requests: dict[type, Callable[[Any, Request, float], list[Effect]]] = {
            wire.JobSubmit: self._on_job_submit,
            wire.JobStatus: self._on_job_status,
            wire.JobCancel: self._on_job_cancel,
            wire.JobRelease: self._on_job_release,
            wire.NodesQuery: self._on_nodes_query,
            wire.EventsQuery: self._on_events_query,
            wire.JobsQuery: self._on_jobs_query,
            wire.AttemptsQuery: self._on_attempts_query,
            wire.JobSpecQuery: self._on_job_spec_query,
            wire.Hello: self._on_hello,
            wire.Heartbeat: self._on_heartbeat,
            wire.ChunkEvents: self._on_chunk_events,
            wire.NodeReport: self._on_node_report,
            wire.StorageHeartbeat: self._on_storage_heartbeat,
            wire.GcCheck: self._on_gc_check,
            wire.FilePin: self._on_file_pin,
        }
        self._after_commit: dict[type, Callable[[Any, core.Outcome], list[Effect]]] = {
            AnswerSubmit: self._submitted,
            _SendDispatched: self._dispatched,
            AnswerCancel: self._cancelled,
            AnswerRelease: self._released,
            _AcknowledgeEvents: self._events_committed,
            _Lease: self._lease_committed,
            Forget: self._forgot,
            FireTimers: self._timers_fired,
            PruneResults: self._cache_pruned,
            StorageSeen: self._storage_registered,
            StorageLost: self._storage_lost,
            AnswerPin: self._pinned,
            AnswerGcChecks: self._answer_gc_checks,
        }
        self._now = 0.0
        self._lease_clock = 0.0

    # ---- public ----------------------------------------------------------

    def handle(self, event: Event, now: float, lease_clock: float | None = None) -> list[Effect]:
        """`lease_clock`: the shell's monotonic clock, which times the
        balancer's lease (a wall clock may jump; a jump forward would end a
        lease early and grant it twice). Defaults to `now`."""
        handler = self._handlers.get(type(event))
        if handler is None:
            raise UnknownEventError(f"{type(event).__name__} is not a leader event")
        self._now = now
        self._lease_clock = now if lease_clock is None else lease_clock
        return handler(event, now)

    @property
    def is_leader(self) -> bool:
        return self._raft.leader

    @property
    def loadbalancer(self) -> LoadBalancerLink | None:
        """The load balancer holding the lease, if any."""
        return self._lease.holder

    @property
    def dispatching(self) -> frozenset[tuple[bytes, int, int]]:
        """Attempts whose "dispatched" is queued or proposed, not yet committed."""
        return frozenset(self._dispatching)

    @property
    def outstanding_proposals(self) -> int:
        return self._proposals.outstanding

    @property
    def queued_commands(self) -> int:
        return self._proposals.queued

    @property
    def status_waiters(self) -> int:
        return len(self._waiters)

    @property
    def events_waiters(self) -> int:
        return len(self._event_waiters)

    # ---- leadership ------------------------------------------------------

    def _on_raft_status(self, event: RaftStatus, now: float) -> list[Effect]:
        was_leader, self._raft = self._raft.leader, event
        if was_leader and not event.leader:
            # Another master dispatches now; what this one meant to is its to redo.
            effects: list[Effect] = [Note("no longer the leader")]
            dropped = self._proposals.drop_queued(now)
            if dropped is not None:
                effects.extend(self._finish(dropped, None, "no longer the leader"))
            self._dispatching.clear()
            self._lease.revoke()
            # A held events query would wait on a log this master no longer
            # extends: its client asks the new leader from its last seq.
            for waiter in self._event_waiters.release_all():
                effects.extend(self._not_leading(waiter.request))
            return effects
        if event.leader and not was_leader:
            self._lease.take_office(self._lease_clock)
            self._storage_take_office(now)
            self._housekeeping_take_office(now)
        return []

    def _not_leading(self, request: Request) -> list[Effect]:
        """[] for the leader; otherwise the answer that says who is."""
        if self._raft.leader:
            return []
        if not self._raft.ready:
            return [self._error(request, ErrorCode.BUSY, "master is starting")]
        # The reason's form is the wire's (wire/leader_hint.py): clients and
        # balancers read the leader's address back out of it.
        return [self._error(request, ErrorCode.NOT_LEADER, wire.not_leader_reason(self._raft.leader_address))]

    # ---- requests --------------------------------------------------------

    def _on_received(self, event: Received, now: float) -> list[Effect]:
        message = event.message
        request = Request(event.peer, getattr(message, "request_id", 0), message.message_type)
        handler = self._requests.get(type(message))
        if handler is None:
            return [self._error(request, ErrorCode.UNEXPECTED,
                                f"a master does not accept {type(message).SPEC.name}")]
        return handler(message, request, now)

    # ---- the load balancer ------------------------------------------------

    def _on_hello(self, message: wire.Hello, request: Request, now: float) -> list[Effect]:
        if message.role != NodeRole.LOADBALANCER:
            return [self._error(request, ErrorCode.UNEXPECTED, "only load balancers say hello to a master")]
        refused = self._not_leading(request)
        if refused:
            return refused
        started_at = message.start_time_ms / 1000.0
        known = self._reader.read(lambda state: next(
            (view for view in state.nodes() if view.node == message.node_uuid), None))
        if (known is None or known.state != "alive" or known.started_at != started_at
                or known.address != message.address):
            # Standby or active, every balancer is listed (`uds nodes`).
            self._queue(core.NodeSeen(node=message.node_uuid, role=message.role, host=message.host,
                                      address=message.address, slots=0, cache_bytes=0, started_at=started_at,
                                      facts=NodeFacts.from_body(message)))
        holder, epoch = self._reader.read(lambda state: state.lease())
        grant_epoch = self._lease.epoch_for(message.node_uuid, holder, epoch, self._lease_clock)
        if grant_epoch is None:
            self._count("lease_refused")
            return [self._error(request, ErrorCode.BUSY,
                                f"standby: load balancer {holder.hex() if holder else '?'} holds the lease "
                                f"at epoch {epoch}")]
        self._propose_lease(message.node_uuid, request.peer, grant_epoch, request)
        return []

    def _propose_lease(self, node: bytes, peer: bytes, epoch: int, request: Request | None) -> None:
        self._lease.pending += 1
        self._queue(core.GrantLease(holder=node, epoch=epoch), _Lease(node, peer, epoch, request))

    def _lease_committed(self, purpose: _Lease, outcome: core.LeaseOutcome) -> list[Effect]:
        self._lease.pending = max(0, self._lease.pending - 1)
        if not outcome.ok or not self._raft.leader:
            if purpose.request is None:
                return []
            return [self._error(purpose.request, ErrorCode.BUSY, f"lease not granted: {outcome.error}")]
        previous = self._lease.holder
        link = self._lease.committed(purpose.node, purpose.peer, purpose.epoch, self._lease_clock)
        effects: list[Effect] = []
        if outcome.granted or previous is not link:
            self._count("lease_grants")
            self._last_resend = self._now
            effects.append(Note(f"load balancer {purpose.node.hex()} holds the lease at epoch {purpose.epoch}"))
        if purpose.request is not None:
            effects.append(Reply(purpose.request, wire.HelloReply.make(
                self.node_id, request_id=purpose.request.request_id, epoch=link.epoch,
                heartbeat_interval_ms=int(HEARTBEAT_INTERVAL_S * 1000),
                lease_ms=int(LOADBALANCER_LEASE_S * 1000))))
        if outcome.granted or previous is not link:
            # A new holder learns from the masters what is dispatched and not started.
            effects.extend(self._resend_dispatched(link))
        return effects

    def _lease_holder(self, message: Any, request: Request, now: float) -> LoadBalancerLink | None:
        """The link, renewed, if `message` comes from the balancer holding the lease."""
        if not self._raft.leader:
            return None
        link = self._lease.current(message.node_uuid)
        if link is not None and message.epoch == link.epoch:
            link.peer = request.peer  # a reconnected balancer may have a new routing id
            return link
        return None

    def _on_heartbeat(self, message: wire.Heartbeat, request: Request, now: float) -> list[Effect]:
        link = self._lease_holder(message, request, now)
        if link is None:
            return [self._error(request, ErrorCode.UNEXPECTED, "hello first")]
        link.free_slots = message.free_slots
        link.running = message.running_count
        return []

    def _on_chunk_events(self, message: wire.ChunkEvents, request: Request, now: float) -> list[Effect]:
        if self._raft.leader and message.epoch < self._reader.read(lambda state: state.lease()[1]):
            # Fenced: a balancer whose lease has passed to a newer epoch.
            self._count("chunk_events_stale_epoch", len(message.events))
            return [self._error(request, ErrorCode.UNEXPECTED, f"epoch {message.epoch} is over")]
        link = self._lease_holder(message, request, now)
        if link is None:
            return [self._error(request, ErrorCode.UNEXPECTED, "hello first")]
        self._count("chunk_events", len(message.events))
        acknowledge = _AcknowledgeEvents(request.peer, link.node, message.epoch, message.batch_id)
        if not message.events:
            return self._events_committed(acknowledge, core.Outcome())
        *first, last = message.chunk_events()
        for event in first:
            self._queue(event)
        # The acknowledgement waits for the last event of the batch.
        self._queue(last, acknowledge)
        return []

    def _events_committed(self, purpose: _AcknowledgeEvents, outcome: core.Outcome) -> list[Effect]:
        # Any outcome but a failed proposal is final for these events.
        if not outcome.ok and outcome.error_code == ErrorCode.BUSY:
            return []
        link = self._lease.holder
        peer = link.peer if link is not None and link.node == purpose.loadbalancer else purpose.peer
        return [Send(peer, wire.ChunkEventsAck.make(self.node_id, epoch=purpose.epoch,
                                                    batch_id=purpose.batch_id))]

    def _on_node_report(self, message: wire.NodeReport, request: Request, now: float) -> list[Effect]:
        link = self._lease_holder(message, request, now)
        if link is None:
            return [self._error(request, ErrorCode.UNEXPECTED, "hello first")]
        reported = {node["node"]: node for node in message.nodes}
        link.workers = reported
        known = self._reader.read(lambda state: {view.node: view for view in state.nodes()
                                                 if view.role == NodeRole.WORKER})
        for node_id, node in reported.items():
            view = known.get(node_id)
            alive = node["state"] == "alive"
            # A new started_at is a new process: what the old one ran is lost.
            if alive and (view is None or view.state != "alive" or view.started_at != node["started_at"]):
                self._queue(core.NodeSeen(node=node_id, role=node["role"], host=node["host"],
                                          address=node["address"], slots=node["slots"],
                                          cache_bytes=node["cache_bytes"], started_at=node["started_at"],
                                          millicpus=node["millicpus"], memory_bytes=node["memory_bytes"],
                                          disk_bytes=node["disk_bytes"], sandbox=node["sandbox"],
                                          facts=NodeFacts.from_body(node)))
            elif not alive and view is not None and view.state == "alive":
                self._queue(core.NodeLost(node=node_id))
        return []

    # ---- dispatching -----------------------------------------------------

    def _credit(self, link: LoadBalancerLink) -> int:
        """Attempts that may still be dispatched: the balancer's credit less
        what is in flight and what is about to be."""
        in_flight = self._reader.read(lambda state: state.in_flight_count())
        return link.credit() - in_flight - len(self._dispatching)

    def _dispatch_ready(self, link: LoadBalancerLink) -> None:
        credit = self._credit(link)
        if credit <= 0:
            return
        ready = self._reader.read(lambda state: state.ready_attempts(credit + len(self._dispatching)))
        chosen = [attempt[:3] for attempt in ready if attempt[:3] not in self._dispatching][:credit]
        if chosen:
            self._queue_dispatch(chosen)

    def _dispatch_with_submission(self, command: core.SubmitJob) -> None:
        """Dispatch the new job's first chunks in the same batch as the job
        itself: the batch applies in order, so they are queued by then, and
        the job starts one commit sooner. (Skipped harmlessly for a job that
        already existed: only chunks queued at attempt 1 are dispatched.)
        Not for a job that may wait (dependencies, a hold, a start time) or
        whose chunks may come from the cache: its chunks are not queued by
        then, and the Tick dispatches them once they are."""
        link = self._lease.holder
        if link is None or may_wait(command):
            return
        count = min(self._credit(link), command.chunk_count)
        if count > 0:
            self._queue_dispatch([(command.job, chunk, 1) for chunk in range(count)])

    def _queue_dispatch(self, keys: list[tuple[bytes, int, int]]) -> None:
        """Commit "dispatched" for these attempts, then send them to the balancer."""
        self._dispatching.update(keys)
        self._queue(core.DispatchAttempts(attempts=tuple(keys)), _SendDispatched(tuple(keys)))

    def _dispatched(self, purpose: _SendDispatched, outcome: core.Outcome) -> list[Effect]:
        self._dispatching.difference_update(purpose.keys)
        if outcome.ok and outcome.dispatched and self._lease.holder is not None:
            return self._send_dispatch(self._lease.holder, list(outcome.dispatched))
        return []

    def _send_dispatch(self, link: LoadBalancerLink, attempts: list) -> list[Effect]:
        """chunk_dispatch messages for (job, chunk, attempt) triples, with job specs."""
        specs, records = self._reader.read(lambda state: dispatch_records(state, attempts))
        effects: list[Effect] = []
        for message in dispatch_messages(self.node_id, link.epoch, specs, records):
            self._count("attempts_dispatched", message.attempt_count)
            effects.append(Send(link.peer, message))
        return effects

    def _resend_dispatched(self, link: LoadBalancerLink) -> list[Effect]:
        attempts = self._reader.read(lambda state: [attempt[:3] for attempt in state.dispatched_attempts()])
        return self._send_dispatch(link, attempts) if attempts else []

    # ---- timers ----------------------------------------------------------

    def _on_tick(self, event: Tick, now: float) -> list[Effect]:
        effects = self._answer_waiters(now, only_expired=True)
        # Also what commits of an earlier leader's entries added to the log.
        effects.extend(self._answer_event_waiters(now))
        effects.extend(self._give_up_proposals(now))
        if self._raft.leader:
            effects.extend(self._leader_timers(now))
            effects.extend(self._storage_timers(now))
            self._housekeeping(now)
        effects.extend(self._proposals.flush(now))
        wake = self._next_wake()
        if wake is not None:
            effects.append(Wake(wake))
        return effects

    def _leader_timers(self, now: float) -> list[Effect]:
        if not self._announced:
            self._announced = True
            self._queue(core.NodeSeen(node=self.node_id, role=int(NodeRole.MASTER), host=self._host,
                                      address=self._address, slots=0, cache_bytes=0,
                                      started_at=self._started_at, facts=self.facts))
        lapsed = self._lease.lapse(self._lease_clock)
        if lapsed is not None:
            return [Note(f"load balancer {lapsed.node.hex()} unrenewed for "
                         f"{self._lease_clock - lapsed.last_seen:.1f}s: "
                         f"its lease at epoch {lapsed.epoch} is over", warning=True)]
        link = self._lease.holder
        if link is None:
            return []
        effects: list[Effect] = []
        if now >= self._last_resend + RESEND_DISPATCHED_S:
            self._last_resend = now
            effects.extend(self._resend_dispatched(link))
        self._dispatch_ready(link)
        return effects

    def _next_wake(self) -> float | None:
        """When the next timer falls due, if any is set. Each timer compares
        `now >=` the very sum returned here, so a Tick at that time fires it."""
        times = [self._waiters.next_deadline(), self._event_waiters.next_deadline(),
                 self._proposals.next_deadline(), *self._housekeeping_wakes()]
        if self._raft.leader and self._storage_due_at is not None and self._storage_due_at < float("inf"):
            times.append(self._storage_due_at)
        if self._lease.holder is not None and self._raft.leader:
            # The lease is timed on the lease clock; the wake is on `now`'s.
            expires_at = self._lease.expires_at()
            if expires_at is not None and self._lease_clock != self._now:
                expires_at = self._now + (expires_at - self._lease_clock)
            times += [expires_at,
                      self._last_resend + RESEND_DISPATCHED_S]
        return min((at for at in times if at is not None), default=None)

    # ---- proposals -------------------------------------------------------

    def _queue(self, command: Any, purpose: _Purpose | None = None) -> None:
        self._proposals.queue(command, purpose)

    def _on_committed(self, event: Committed, now: float) -> list[Effect]:
        proposal = self._proposals.settle(event.tag)
        effects = [] if proposal is None else self._finish(proposal, event.outcomes)
        # Even a proposal given up on changed the state: a job may have ended.
        return effects + self._answer_waiters(now) + self._answer_event_waiters(now)

    def _on_proposal_failed(self, event: ProposalFailed, now: float) -> list[Effect]:
        proposal = self._proposals.settle(event.tag)
        if proposal is None:
            return []
        self._count("proposals_failed")
        effects: list[Effect] = [Note(f"proposal of {len(proposal.commands)} commands failed: {event.reason}",
                                      warning=True)]
        return effects + self._finish(proposal, None, event.reason)

    def _give_up_proposals(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for proposal in self._proposals.give_up(now):
            effects.extend(self._finish(proposal, None, "raft: no commit in time"))
        return effects

    def _finish(self, proposal: Proposal, outcomes: Any, failure: str = "") -> list[Effect]:
        """Carry on after a proposal: with its outcomes, or (None) after its failure."""
        if outcomes is None:
            failed = core.Outcome(ok=False, error=failure, error_code=int(ErrorCode.BUSY))
            outcomes = [failed] * len(proposal.commands)
        effects: list[Effect] = []
        for command, purpose, outcome in zip(proposal.commands, proposal.purposes, outcomes, strict=True):
            if getattr(outcome, "status", "") in IGNORED_EVENT_STATUSES:
                effects.append(self._ignored_event(command, outcome))
            if purpose is not None:
                effects.extend(self._after_commit[type(purpose)](purpose, outcome))
        return effects

    def _ignored_event(self, event: core.ChunkEvent, outcome: Any) -> Note:
        """A result for an attempt that is not current (or not known) changes
        nothing; say so, since it usually means a worker was presumed lost."""
        self._count(f"chunk_events_{outcome.status}")
        return Note(f"ignored {wire.ChunkState(event.state).name} event for job {event.job.hex()} "
                    f"chunk {event.chunk} attempt {event.attempt} from worker {event.worker.hex()}: "
                    f"{outcome.error or outcome.status}")

    # ---- helpers ---------------------------------------------------------

    def _error(self, request: Request, code: int, reason: str) -> Reply:
        self._count("errors_sent")
        return Reply(request, wire.Error.replying(self.node_id, request.request_id, request.message_type,
                                                  code, reason))

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount


