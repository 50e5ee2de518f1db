"""The master's shell: a ROUTER socket for clients and the load balancer, the
Raft group, and a loop that turns messages into batched commands.

Rules: only the leader accepts commands and dispatches; everything durable
goes through `RaftGroup.propose`, and a reply that depends on a command is
sent only after that command committed. Commands are queued while a loop
iteration runs and proposed together at its end (at most
MAX_OUTSTANDING_PROPOSALS batches in flight), which is how one Raft entry
carries many submissions or chunk events.
"""
from __future__ import annotations

import logging
import socket as socket_module
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

import wire
from master import state as core
from master.links import LoadBalancerLink, dispatch_messages
from master.replicated import RaftGroup
from master.views import job_status_reply, node_records, event_records
from wire.enums import ErrorCode, JobState, NodeRole
from wire.daemon import drain, guarded, handle_request
from wire.transport import Transport, recv_messages, send_message

log = logging.getLogger("master")

# One batch in flight: while it commits (about a millisecond) the next one
# gathers everything that arrives, which is what makes batches large.
MAX_OUTSTANDING_PROPOSALS = 1
MAX_COMMANDS_PER_PROPOSAL = 2000
# A proposal whose callback never came is given up after this long; its
# requesters retry (every command is idempotent).
PROPOSAL_TIMEOUT_S = 10.0
# Dispatched attempts that have not started are sent again this often, in
# case a message or the load balancer was lost; the balancer ignores repeats.
RESEND_DISPATCHED_S = 3.0
HEARTBEAT_INTERVAL_S = 0.25
LOADBALANCER_LEASE_S = 3.0
MESSAGES_PER_WAKEUP = 1000
IDLE_POLL_MS = 100
# The most chunk reports one job_status reply carries (fewer if they do not
# fit in one body): reading them holds the state's lock, so keep it short.
STATUS_PAGE_CHUNKS = 5000
# The longest a job_status may wait for its job to end (wait_ms is capped).
MAX_STATUS_WAIT_S = 30.0
FINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
# Chunk event outcomes that change nothing and are worth a log line.
IGNORED_EVENT_STATUSES = frozenset({core.EVENT_STALE, core.EVENT_UNKNOWN, core.EVENT_INVALID})

Continuation = Callable[[Any], None]


@dataclass
class Proposal:
    commands: list
    continuations: list[Continuation | None]
    sent_at: float


@dataclass
class Request:
    """Who asked, so that the answer can go back."""

    peer: bytes
    request_id: int
    message_type: int


@dataclass
class StatusWaiter:
    """A job_status with wait_ms, answered when its job ends or at `deadline`."""

    request: Request
    page: StatusPage
    deadline: float


@dataclass(frozen=True)
class StatusPage:
    """Which chunk reports a job_status asked for."""

    first_chunk: int = 0
    chunk_limit: int = 0        # 0: counts only

    @classmethod
    def of(cls, message: wire.JobStatus) -> StatusPage:
        if not message.detail:
            return cls(message.first_chunk, 0)
        asked = message.max_chunks or STATUS_PAGE_CHUNKS
        return cls(message.first_chunk, min(asked, STATUS_PAGE_CHUNKS))


class MasterNode:
    def __init__(self, node_id: bytes, address: str, raft: RaftGroup, transport: Transport,
                 wake_fd: int, host: str | None = None,
                 client_addresses: dict[str, str] | None = None) -> None:
        self.node_id = node_id
        self.address = address
        self.raft = raft
        self.transport = transport
        self.wake_fd = wake_fd
        self.host = host or socket_module.gethostname()
        # Raft address -> the address clients use, to point them at the leader.
        self.client_addresses = client_addresses or {}
        self.socket = transport.server_socket(zmq.ROUTER, address)
        self.counters: dict[str, int] = {}
        self.loadbalancer: LoadBalancerLink | None = None
        self.queued_commands: list = []
        self.queued_continuations: list[Continuation | None] = []
        self.proposals: dict[int, Proposal] = {}
        self.next_token = 1
        self.dispatching: set[tuple[bytes, int, int]] = set()
        self.status_waiters: dict[bytes, list[StatusWaiter]] = {}
        self.last_resend = 0.0
        self.announced_self = False
        self.started_at = time.time()
        self.handlers: dict[type, Callable[[Any, bytes, float], None]] = {
            wire.JobSubmit: self.on_job_submit,
            wire.JobStatus: self.on_job_status,
            wire.JobCancel: self.on_job_cancel,
            wire.Hello: self.on_hello,
            wire.Heartbeat: self.on_heartbeat,
            wire.ChunkEvents: self.on_chunk_events,
            wire.NodeReport: self.on_node_report,
            wire.NodesQuery: self.on_nodes_query,
            wire.EventsQuery: self.on_events_query,
            wire.StatsQuery: self.on_stats_query,
        }

    # -- loop -----------------------------------------------------------------

    def run(self, stop: Callable[[], bool], on_serving: Callable[[], None]) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.wake_fd, zmq.POLLIN)
        serving = False
        while not stop():
            ready = dict(poller.poll(IDLE_POLL_MS))
            now = time.time()
            if self.wake_fd in ready:
                drain(self.wake_fd)
            guarded(log, self._count, self._after_commits, now)
            if self.socket in ready:
                for received in recv_messages(self.socket, self.transport, MESSAGES_PER_WAKEUP):
                    self._count("messages")
                    handle_request(received, self.handlers, now, "a master", self._error, self._count, log)
            guarded(log, self._count, self._on_timers, now)
            guarded(log, self._count, self._flush, now)
            if not serving and self.raft.is_leader:
                serving = True
                on_serving()

    def _after_commits(self, now: float) -> None:
        if self._apply_commits() and self.status_waiters:
            self._answer_waiters(now)

    def close(self) -> None:
        self.raft.destroy()
        self.socket.close()

    # -- sending --------------------------------------------------------------

    def _send(self, peer: bytes, message: wire.Message) -> bool:
        return send_message(self.socket, wire.encode(message), peer=peer, counters=self.transport)

    def _error(self, peer: bytes, request_id: int, failed_type: int, code: int, reason: str) -> None:
        self._count("errors_sent")
        self._send(peer, wire.Error.make(self.node_id, request_id=request_id, error_code=int(code),
                                         failed_type=failed_type, reason=reason[:4000]))

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def _require_leader(self, message: Any, peer: bytes) -> bool:
        if self.raft.is_leader:
            return True
        request_id = getattr(message, "request_id", 0)
        if not self.raft.ready:
            self._error(peer, request_id, message.message_type, ErrorCode.BUSY, "master is starting")
        else:
            leader = self.raft.leader_address()
            leader = self.client_addresses.get(leader, leader) if leader else None
            self._error(peer, request_id, message.message_type, ErrorCode.NOT_LEADER,
                        f"not the leader; the leader is at {leader}" if leader else "no leader elected yet")
        return False

    # -- proposals ------------------------------------------------------------

    def _queue(self, command: Any, continuation: Continuation | None = None) -> None:
        self.queued_commands.append(command)
        self.queued_continuations.append(continuation)

    def _flush(self, now: float) -> None:
        while self.queued_commands and len(self.proposals) < MAX_OUTSTANDING_PROPOSALS:
            commands = self.queued_commands[:MAX_COMMANDS_PER_PROPOSAL]
            continuations = self.queued_continuations[:MAX_COMMANDS_PER_PROPOSAL]
            del self.queued_commands[:MAX_COMMANDS_PER_PROPOSAL]
            del self.queued_continuations[:MAX_COMMANDS_PER_PROPOSAL]
            token = self.next_token
            self.next_token += 1
            self.proposals[token] = Proposal(commands, continuations, now)
            self._count("proposals")
            self._count("commands_proposed", len(commands))
            self.raft.propose(token, commands, now)

    def _apply_commits(self) -> bool:
        """Carry on after committed proposals; True if there were any."""
        applied = False
        while not self.raft.commits.empty():
            applied = True
            commit = self.raft.commits.get()
            proposal = self.proposals.pop(commit.token, None)
            if proposal is None:
                continue  # already given up on
            if commit.outcomes is None:
                self._count("proposals_failed")
                log.warning("proposal of %d commands failed: %s", len(proposal.commands), commit.failure)
            self._finish(proposal, commit.outcomes, commit.failure)
        return applied

    def _finish(self, proposal: Proposal, outcomes: list | None, failure: str) -> None:
        for index, continuation in enumerate(proposal.continuations):
            if outcomes is not None and getattr(outcomes[index], "status", "") in IGNORED_EVENT_STATUSES:
                self._note_ignored_event(proposal.commands[index], outcomes[index])
            if continuation is None:
                continue
            try:
                continuation(outcomes[index] if outcomes is not None
                             else core.Outcome(ok=False, error=failure, error_code=int(ErrorCode.BUSY)))
            except Exception:
                log.exception("continuation of %s", type(proposal.commands[index]).__name__)

    def _note_ignored_event(self, event: core.ChunkEvent, outcome: Any) -> None:
        """A result for an attempt that is not current (or not known) changes
        nothing; say so, since it usually means a worker was presumed lost."""
        self._count(f"chunk_events_{outcome.status}")
        log.info("ignored %s event for job %s chunk %d attempt %d from worker %s: %s",
                 wire.ChunkState(event.state).name, event.job.hex(), event.chunk, event.attempt,
                 event.worker.hex(), outcome.error or outcome.status)

    # -- timers ---------------------------------------------------------------

    def _on_timers(self, now: float) -> None:
        if self.status_waiters:
            self._answer_waiters(now, only_expired=True)
        for token, proposal in list(self.proposals.items()):
            if now - proposal.sent_at > PROPOSAL_TIMEOUT_S:
                del self.proposals[token]
                self._count("proposals_timed_out")
                self._finish(proposal, None, "raft: no commit in time")
        if not self.raft.is_leader:
            self.dispatching.clear()
            return
        if not self.announced_self:
            self.announced_self = True
            self._queue(core.NodeSeen(node=self.node_id, role=int(NodeRole.MASTER), host=self.host,
                                      address=self.address, slots=0, cache_bytes=0,
                                      started_at=self.started_at))
        link = self.loadbalancer
        if link is not None and now - link.last_seen > LOADBALANCER_LEASE_S:
            log.warning("load balancer %s silent for %.1fs: no more dispatches to it",
                        link.node.hex(), now - link.last_seen)
            self.loadbalancer = None
            return
        if link is not None:
            if now - self.last_resend > RESEND_DISPATCHED_S:
                self.last_resend = now
                self._resend_dispatched(link)
            self._dispatch_ready(link)

    # -- dispatching ----------------------------------------------------------

    def _dispatch_ready(self, link: LoadBalancerLink) -> None:
        in_flight = self.raft.read(lambda state: state.in_flight_count())
        credit = link.credit() - in_flight - len(self.dispatching)
        if credit <= 0:
            return
        ready = self.raft.read(lambda state: state.ready_attempts(credit + len(self.dispatching)))
        chosen = [attempt for attempt in ready if attempt[:3] not in self.dispatching][:credit]
        if chosen:
            self._queue_dispatch([attempt[:3] for attempt in chosen])

    def _queue_dispatch(self, keys: list[tuple[bytes, int, int]]) -> None:
        """Commit "dispatched" for these attempts, then send them to the balancer."""
        self.dispatching.update(keys)

        def dispatched(outcome: Any) -> None:
            self.dispatching.difference_update(keys)
            if outcome.ok and outcome.dispatched and self.loadbalancer is not None:
                self._send_dispatch(self.loadbalancer, list(outcome.dispatched))

        self._queue(core.DispatchAttempts(attempts=tuple(keys)), dispatched)

    def _send_dispatch(self, link: LoadBalancerLink, attempts: list) -> None:
        """Send (job, chunk, attempt) triples to the balancer, with job specs."""
        records = self.raft.read(lambda state: _dispatch_records(state, attempts))
        for message in dispatch_messages(self.node_id, link.epoch, *records):
            if self._send(link.peer, message):
                self._count("attempts_dispatched", message.attempt_count)

    def _resend_dispatched(self, link: LoadBalancerLink) -> None:
        attempts = self.raft.read(lambda state: [attempt[:3] for attempt in state.dispatched_attempts()])
        if attempts:
            self._send_dispatch(link, attempts)

    # -- client requests ------------------------------------------------------

    def on_job_submit(self, message: wire.JobSubmit, peer: bytes, now: float) -> None:
        if not self._require_leader(message, peer):
            return
        command = core.SubmitJob(
            job=message.job_uuid, name=message.name, program=tuple(message.program),
            args=tuple(message.args), inputs={name: tuple(ref) for name, ref in message.inputs.items()},
            chunk_inputs=tuple({name: tuple(ref) for name, ref in per_chunk.items()}
                               for per_chunk in message.chunk_inputs),
            chunk_count=message.chunk_count, timeout_s=message.timeout_s,
            max_retries=message.max_retries)
        request = Request(peer, message.request_id, message.message_type)

        def submitted(outcome: Any) -> None:
            if not outcome.ok:
                self._error(request.peer, request.request_id, request.message_type,
                            outcome.error_code or ErrorCode.INVALID, outcome.error)
                return
            self._count("jobs_submitted" if outcome.created else "jobs_resubmitted")
            self._send(request.peer, wire.JobSubmitReply.make(
                self.node_id, request_id=request.request_id, job=command.job,
                created=1 if outcome.created else 0))

        self._queue(command, submitted)
        self._dispatch_with_submission(command)

    def _dispatch_with_submission(self, command: core.SubmitJob) -> None:
        """Dispatch the new job's first chunks in the same batch as the job
        itself: the batch applies in order, so they are queued by then, and
        the job starts one commit sooner. (Skipped harmlessly for a job that
        already existed: only chunks queued at attempt 1 are dispatched.)"""
        link = self.loadbalancer
        if link is None:
            return
        in_flight = self.raft.read(lambda state: state.in_flight_count())
        credit = link.credit() - in_flight - len(self.dispatching)
        count = min(credit, command.chunk_count)
        if count > 0:
            self._queue_dispatch([(command.job, chunk, 1) for chunk in range(count)])

    def on_job_status(self, message: wire.JobStatus, peer: bytes, now: float) -> None:
        if not self._require_leader(message, peer):
            return
        request = Request(peer, message.request_id, message.message_type)
        job = message.job_uuid
        if message.wait_ms:
            state = self.raft.read(lambda state: state.job_state(job))
            if state is not None and state not in FINAL_JOB_STATES:
                deadline = now + min(message.wait_ms / 1000.0, MAX_STATUS_WAIT_S)
                self.status_waiters.setdefault(job, []).append(
                    StatusWaiter(request, StatusPage.of(message), deadline))
                return
        self._reply_status(request, job, StatusPage.of(message))

    def _answer_waiters(self, now: float, only_expired: bool = False) -> None:
        """Answer waiters whose job has ended (unless only_expired) or whose wait is over."""
        for job, waiters in list(self.status_waiters.items()):
            ended = not only_expired and self.raft.read(lambda state: state.job_state(job)) in FINAL_JOB_STATES
            remaining = []
            for waiter in waiters:
                if ended or now >= waiter.deadline:
                    self._reply_status(waiter.request, job, waiter.page)
                else:
                    remaining.append(waiter)
            if remaining:
                self.status_waiters[job] = remaining
            else:
                del self.status_waiters[job]

    def _reply_status(self, request: Request, job: bytes, page: StatusPage = StatusPage()) -> None:
        view = self.raft.read(lambda state: state.job_view(job, page.first_chunk, page.chunk_limit))
        if view is None:
            self._error(request.peer, request.request_id, request.message_type, ErrorCode.UNKNOWN_JOB,
                        f"unknown job {job.hex()}")
            return
        self._send(request.peer, job_status_reply(self.node_id, request.request_id, job, view))

    def on_job_cancel(self, message: wire.JobCancel, peer: bytes, now: float) -> None:
        if not self._require_leader(message, peer):
            return
        request = Request(peer, message.request_id, message.message_type)
        job = message.job_uuid

        def cancelled(outcome: Any) -> None:
            if not outcome.ok:
                self._error(request.peer, request.request_id, request.message_type,
                            outcome.error_code or ErrorCode.INVALID, outcome.error)
                return
            attempts = [[chunk, attempt] for chunk, attempt, _worker in outcome.cancelled_attempts]
            if attempts and self.loadbalancer is not None:
                self._send(self.loadbalancer.peer, wire.ChunkCancel.make(
                    self.node_id, epoch=self.loadbalancer.epoch, job=job, attempts=attempts))
            self._reply_status(request, job)

        self._queue(core.CancelJob(job=job), cancelled)

    def on_nodes_query(self, message: wire.NodesQuery, peer: bytes, now: float) -> None:
        nodes = self.raft.read(lambda state: state.nodes())
        live = self.loadbalancer.workers if self.loadbalancer is not None else {}
        self._send(peer, wire.NodesReply.make(self.node_id, request_id=message.request_id,
                                              nodes=node_records(nodes, live, now)))

    def on_events_query(self, message: wire.EventsQuery, peer: bytes, now: float) -> None:
        limit = max(1, min(message.limit, 10_000))
        events, last_seq = self.raft.read(lambda state: state.events_after(message.after_seq, limit))
        self._send(peer, wire.EventsReply.make(self.node_id, request_id=message.request_id,
                                               last_seq=last_seq, events=event_records(events)))

    def on_stats_query(self, message: wire.StatsQuery, peer: bytes, now: float) -> None:
        counters = dict(self.counters)
        counters.update({f"transport_{name}": value for name, value in self.transport.counters.items()})
        counters["leader"] = int(self.raft.is_leader)
        counters["raft_journal_syncs"] = self.raft.journal_syncs
        counters["in_flight"] = self.raft.read(lambda state: state.in_flight_count())
        self._send(peer, wire.StatsReply.make(self.node_id, request_id=message.request_id,
                                              role=int(NodeRole.MASTER), counters=counters))

    # -- the load balancer ----------------------------------------------------

    def on_hello(self, message: wire.Hello, peer: bytes, now: float) -> None:
        if message.role != NodeRole.LOADBALANCER:
            self._error(peer, message.request_id, message.message_type, ErrorCode.UNEXPECTED,
                        "only load balancers say hello to a master")
            return
        if not self._require_leader(message, peer):
            return
        previous = self.loadbalancer
        epoch = 1 if previous is None else previous.epoch
        self.loadbalancer = LoadBalancerLink(peer=peer, node=message.node_uuid, epoch=epoch, last_seen=now)
        log.info("load balancer %s at %s joined", message.node_uuid.hex(), message.address or "?")
        self._send(peer, wire.HelloReply.make(
            self.node_id, request_id=message.request_id, epoch=epoch,
            heartbeat_interval_ms=int(HEARTBEAT_INTERVAL_S * 1000), lease_ms=int(LOADBALANCER_LEASE_S * 1000)))
        self._queue(core.NodeSeen(node=message.node_uuid, role=message.role, host=message.host,
                                  address=message.address, slots=0, cache_bytes=0,
                                  started_at=message.start_time_ms / 1000.0))
        self.last_resend = now
        self._resend_dispatched(self.loadbalancer)

    def _loadbalancer_message(self, message: Any, peer: bytes, now: float) -> LoadBalancerLink | None:
        link = self.loadbalancer
        if link is None or link.node != message.node_uuid or not self.raft.is_leader:
            self._error(peer, 0, message.message_type, ErrorCode.UNEXPECTED, "hello first")
            return None
        link.peer = peer  # a reconnected balancer may have a new routing id
        link.last_seen = now
        return link

    def on_heartbeat(self, message: wire.Heartbeat, peer: bytes, now: float) -> None:
        link = self._loadbalancer_message(message, peer, now)
        if link is not None:
            link.free_slots = message.free_slots
            link.running = message.running_count

    def on_chunk_events(self, message: wire.ChunkEvents, peer: bytes, now: float) -> None:
        link = self._loadbalancer_message(message, peer, now)
        if link is None:
            return
        self._count("chunk_events", len(message.events))
        for event in message.chunk_events():
            self._queue(event)
        batch_id, epoch = message.batch_id, message.epoch

        def committed(outcome: Any) -> None:
            # Any outcome but a failed proposal is final for these events.
            if outcome.ok or outcome.error_code != ErrorCode.BUSY:
                self._send(link.peer, wire.ChunkEventsAck.make(self.node_id, epoch=epoch, batch_id=batch_id))

        # The acknowledgement waits for the last event of the batch.
        if message.events:
            self.queued_continuations[-1] = committed
        else:
            committed(core.Outcome())

    def on_node_report(self, message: wire.NodeReport, peer: bytes, now: float) -> None:
        link = self._loadbalancer_message(message, peer, now)
        if link is None:
            return
        reported = {node["node"]: node for node in message.nodes}
        link.workers = reported
        known = self.raft.read(lambda state: {view.node: view for view in state.nodes()
                                              if view.role == NodeRole.WORKER})
        for node_id, node in reported.items():
            view = known.get(node_id)
            alive = node["state"] == "alive"
            if alive and (view is None or view.state != "alive"):
                self._queue(core.NodeSeen(node=node_id, role=node["role"], host=node["host"],
                                          address=node["address"], slots=node["slots"],
                                          cache_bytes=node["cache_bytes"], started_at=node["started_at"]))
            elif not alive and view is not None and view.state == "alive":
                self._queue(core.NodeLost(node=node_id))


def _dispatch_records(state: core.ClusterState, attempts: list) -> tuple[list, list]:
    """Job specs and DISPATCH_ATTEMPT records for (job, chunk, attempt) triples."""
    specs: dict[bytes, dict] = {}
    records = []
    for job, chunk, attempt in attempts:
        if job not in specs:
            spec = state.job_spec(job)
            if spec is None:
                continue
            specs[job] = spec
        records.append({"job": job, "chunk": chunk, "attempt": attempt,
                        "inputs": state.chunk_inputs(job, chunk)})
    return list(specs.values()), records
