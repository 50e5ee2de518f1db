"""The master's shell: a ROUTER socket for clients and the load balancer,
the Raft group, and a loop that turns messages and commits into events for
the leader's core (master/leader.py) and its effects into sends and
proposals.

Rules: every decision is the core's; this module only translates, and owns
the socket, the clock and the Raft group. Each loop iteration feeds the Raft
group's status, then its commits, then the messages that arrived, and ends
with a Tick, which is when the commands gathered meanwhile are proposed.
"""
from __future__ import annotations

import logging
import pathlib
import socket as socket_module
import time
from typing import Any, Callable

import zmq

from uds import wire
from uds.master import leader as core
from uds.master import membership
from uds.master.raft_node import RAFT_ROLES
from uds.master.replicated import Commit, MembershipCommitted, RaftGroup
from uds.wire import cluster as cluster_file
from uds.wire.cluster import Retention, Scheduling, StoragePolicy
from uds.daemon.dispatch import handle_request
from uds.daemon.metrics import DaemonMetrics, prefixed
from uds.master.event_log import events_since
from uds.master.event_timings import CHUNK_QUEUE_WAIT, JOB_SUBMIT_TO_RESULT, EventTimings
from uds.daemon.runtime import drain, guarded
from uds.wire.enums import ErrorCode, NodeRole
from uds.wire.records import NO_FACTS, NodeFacts
from uds.wire.resources import NO_LIMITS, ResourceLimits
from uds.wire.transport import Transport, recv_messages, send_message

log = logging.getLogger("master")

MESSAGES_PER_WAKEUP = 1000
# The longest the loop sleeps when no timer of the core falls due sooner.
IDLE_POLL_MS = 100
# How often the loop copies its gauges (queued chunks, Raft term...) for /metrics.
FIGURES_REFRESH_S = 1.0

GAUGE_DOCS = {
    "is_leader": "1 on the leader (confirmed by a majority), else 0.",
    "raft_term": "The Raft term this master is in.",
    "raft_commit_index": "The Raft log's commit index here.",
    "raft_last_applied": "The last Raft entry applied to this master's state.",
    "chunks_queued": "Chunks waiting for a slot (the replicated state's queue).",
    "chunks_dispatched": "Chunks dispatched to the load balancer, not yet started.",
    "chunks_running": "Chunks whose program runs on a worker.",
    "chunks_delayed": "Chunks waiting for a start time or a retry's backoff.",
    "jobs": "Jobs in the replicated state, finished ones kept included.",
    "result_cache_entries": "Entries of the result cache.",
    "proposals_outstanding": "Proposals of this leader awaiting their commit.",
}


class MasterNode:
    def __init__(self, node_id: bytes, address: str, raft: RaftGroup, transport: Transport,
                 wake_fd: int, host: str | None = None,
                 client_addresses: dict[str, str] | None = None,
                 default_limits: ResourceLimits = NO_LIMITS, retention: Retention = Retention(),
                 storage_policy: StoragePolicy = StoragePolicy(), scheduling: Scheduling = Scheduling(),
                 cluster_path: pathlib.Path | None = None, facts: NodeFacts = NO_FACTS,
                 metrics: DaemonMetrics | None = None) -> None:
        """`facts`: what this master says of itself in its node record when it
        leads. `metrics`: where its figures are exported (daemon/metrics.py)."""
        self.node_id = node_id
        self.cluster_path = cluster_path       # re-read when a master is to be added
        self.address = address
        self.raft = raft
        self.transport = transport
        self.wake_fd = wake_fd
        # Raft address -> the address clients use, to point them at the leader,
        # in the cluster file's order of [[masters]].
        self.client_addresses = client_addresses or {}
        self.socket = transport.server_socket(zmq.ROUTER, address)
        self.counters: dict[str, int] = {}
        self.leader = core.Leader(node_id, raft, host=host or socket_module.gethostname(), address=address,
                                  started_at=time.time(), default_limits=default_limits, retention=retention,
                                  storage_policy=storage_policy, scheduling=scheduling, facts=facts)
        self.raft_status = core.NOT_STARTED
        self.wake_at: float | None = None
        # The membership change handed to the Raft group and not yet committed.
        self.membership_pending: membership.PendingChange | None = None
        self._metrics_init(metrics)
        self.handlers: dict[type, Callable[[Any, bytes, float], None]] = {
            **{message_type: self.on_message for message_type in core.ACCEPTED_MESSAGES},
            wire.StatsQuery: self.on_stats_query,
            wire.MasterChange: self.on_master_change,
        }
        self.effect_handlers: dict[type, Callable[[Any, float], None]] = {
            core.Propose: self.do_propose,
            core.Send: lambda effect, now: self._send(effect.peer, effect.message),
            core.Reply: lambda effect, now: self._send(effect.request.peer, effect.message),
            core.Wake: self.do_wake,
            core.Note: lambda effect, now: log.log(logging.WARNING if effect.warning else logging.INFO,
                                                   "%s", effect.text),
        }

    # -- loop -----------------------------------------------------------------

    def run(self, stop: Callable[[], bool], on_serving: Callable[[], None]) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.wake_fd, zmq.POLLIN)
        serving = False
        while not stop():
            ready = dict(poller.poll(self._poll_ms()))
            now = time.time()
            if self.wake_fd in ready:
                drain(self.wake_fd)
            guarded(log, self._count, self._feed_raft_status, now)
            guarded(log, self._count, self._feed_commits, now)
            guarded(log, self._count, self._time_events)
            if now - self.figures_at >= FIGURES_REFRESH_S:
                self.figures_at = now
                guarded(log, self._count, self._refresh_figures)
            if self.socket in ready:
                for received in recv_messages(self.socket, self.transport, MESSAGES_PER_WAKEUP):
                    self._count("messages")
                    handle_request(received, self.handlers, now, "a master", self._error, self._count, log)
            self.wake_at = None     # the Tick says when it wants the next one
            guarded(log, self._count, self._apply, core.Tick(), now)
            # A follower serves too (it points clients at the leader) once it
            # follows one; a leader once elected.
            if not serving and (self.raft_status.leader or self.raft_status.leader_address):
                serving = True
                on_serving()

    def close(self) -> None:
        self.raft.destroy()
        self.socket.close()

    def _poll_ms(self) -> int:
        if self.wake_at is None:
            return IDLE_POLL_MS
        return max(0, min(IDLE_POLL_MS, int((self.wake_at - time.time()) * 1000) + 1))

    def _feed_raft_status(self, now: float) -> None:
        ready, leader = self.raft.ready, self.raft.is_leader
        address = None
        if ready and not leader:   # only a follower needs to say where the leader is
            raft_address = self.raft.leader_address()
            address = (self.client_addresses.get(raft_address) or self.raft.client_address_of(raft_address)
                       or raft_address) if raft_address else None
            if address == self.address:
                address = None     # a leader no majority confirms: not to be pointed at
        known = self.raft_status
        if (ready, leader, address) != (known.ready, known.leader, known.leader_address):
            self.raft_status = core.RaftStatus(ready=ready, leader=leader, leader_address=address)
            self._apply(self.raft_status, now)

    def _feed_commits(self, now: float) -> None:
        while not self.raft.commits.empty():
            commit: Commit | MembershipCommitted = self.raft.commits.get()
            self.committed = True
            if isinstance(commit, Commit):
                proposed_at = self.proposed_at.pop(commit.token, None)
                if proposed_at is not None and commit.outcomes is not None:
                    self.raft_commit_seconds.observe(time.monotonic() - proposed_at)
            if isinstance(commit, MembershipCommitted):
                self._membership_committed(commit)
            elif commit.outcomes is None:
                self._apply(core.ProposalFailed(commit.token, commit.failure), now)
            else:
                self._apply(core.Committed(commit.token, commit.outcomes), now)

    def _apply(self, event: Any, now: float) -> None:
        for effect in self.leader.handle(event, now, time.monotonic()):
            try:
                self.effect_handlers[type(effect)](effect, now)
            except Exception:
                log.exception("carrying out %s", type(effect).__name__)
                self._count("internal_errors")

    # -- effects --------------------------------------------------------------

    def do_propose(self, effect: core.Propose, now: float) -> None:
        self.proposed_at[effect.tag] = time.monotonic()
        self.raft.propose(effect.tag, list(effect.commands), now)

    def do_wake(self, effect: core.Wake, now: float) -> None:
        self.wake_at = effect.at

    def _send(self, peer: bytes, message: wire.Message) -> bool:
        return send_message(self.socket, wire.encode(message), peer=peer, counters=self.transport)

    # -- requests -------------------------------------------------------------

    def on_message(self, message: wire.Message, peer: bytes, now: float) -> None:
        self._apply(core.Received(peer, message), now)

    def on_master_change(self, message: wire.MasterChange, peer: bytes, now: float) -> None:
        """`uds admin masters add|remove`: the confirmed leader hands the
        change to the Raft group and answers once it is committed."""
        if not self.raft.is_leader:
            self._error(peer, message.request_id, message.message_type, ErrorCode.NOT_LEADER,
                        wire.not_leader_reason(self.raft_status.leader_address))
            return
        pending = self.membership_pending
        if pending is not None and (pending.peer, pending.request_id) == (peer, message.request_id):
            return      # the client's resend of the change under way: its answer comes at the commit
        members = self.raft.members()
        try:
            change = membership.judge(message, members[0], members, pending, now, self._listed_masters())
        except membership.MembershipRefused as refused:
            self._error(peer, message.request_id, message.message_type, refused.code, str(refused))
            return
        log.info("asked to %s", change.describe())
        self.membership_pending = membership.PendingChange(change, peer, message.request_id, asked_at=now)
        self.raft.change_membership(self.membership_pending, change.add, change.raft, change.address)

    def _listed_masters(self) -> dict[str, str]:
        """The [[masters]] of the cluster file as it is now (the operator
        adds a master's entry before adding the master): raft -> address."""
        if self.cluster_path is None:
            return {}
        try:
            return {entry.raft: entry.address for entry in cluster_file.load(self.cluster_path).masters}
        except Exception as fault:       # a file being edited: no entry counts
            log.warning("cannot read the cluster file %s: %s", self.cluster_path, fault)
            return {}

    def _membership_committed(self, done: MembershipCommitted) -> None:
        pending: membership.PendingChange = done.token  # type: ignore[assignment]
        if self.membership_pending is pending:
            self.membership_pending = None
        change = pending.change
        if not done.failure:
            log.info("%s: committed at index %d; members %s", change.describe(), done.commit_index,
                     ", ".join(self.raft.members()))
            self._send(pending.peer, wire.MasterChangeReply.make(
                self.node_id, request_id=pending.request_id, commit_index=done.commit_index,
                members=self.raft.members()))
        elif done.failure in membership.LEADERSHIP_LOST:
            self._error(pending.peer, pending.request_id, int(wire.MessageType.MASTER_CHANGE),
                        ErrorCode.NOT_LEADER, wire.not_leader_reason(self.raft_status.leader_address))
        else:
            log.warning("%s: %s", change.describe(), done.failure)
            self._error(pending.peer, pending.request_id, int(wire.MessageType.MASTER_CHANGE),
                        ErrorCode.INVALID, membership.refusal_by_the_group(change, done.failure))

    def _error(self, peer: bytes, request_id: int, failed_type: int, code: int, reason: str) -> None:
        self._count("errors_sent")
        self._send(peer, wire.Error.replying(self.node_id, request_id, failed_type, code, reason))

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def _raft_counters(self) -> dict[str, int]:
        """Where this member stands in the Raft group; counters are integers, so
        the role is its index in RAFT_ROLES and the leader its index in the
        cluster file's [[masters]] (-1: none known)."""
        record = self.raft.record()
        members = list(self.client_addresses)
        return {"raft_role": RAFT_ROLES.index(record.role), "raft_term": record.term,
                "raft_commit_index": record.commit_index, "raft_last_applied": record.last_applied,
                "raft_leader_index": members.index(record.leader) if record.leader in members else -1}

    # -- /metrics -------------------------------------------------------------

    def _metrics_init(self, metrics: DaemonMetrics | None) -> None:
        self.metrics = metrics if metrics is not None else DaemonMetrics("master")
        self.raft_commit_seconds = self.metrics.histogram(
            "raft_commit_seconds", "A proposal of this leader, from its hand-over to the Raft group to its commit.")
        self.event_seconds = {
            CHUNK_QUEUE_WAIT: self.metrics.histogram(
                CHUNK_QUEUE_WAIT, "A chunk queued (job submitted, released or ready, or the chunk "
                                  "requeued) to its dispatch committed; observed by the leader."),
            JOB_SUBMIT_TO_RESULT: self.metrics.histogram(
                JOB_SUBMIT_TO_RESULT, "A job submitted to its final state committed; observed by the leader."),
        }
        self.proposed_at: dict[int, float] = {}     # proposal tag -> monotonic time handed to Raft
        self.committed = False                      # commits arrived since events were last timed
        self.timings = EventTimings()
        self.events_timed: int | None = None        # the log's seq timed up to; None: not leading
        # Gauges the loop refreshes every FIGURES_REFRESH_S; /metrics copies them.
        self.figures: dict[str, int] = {}
        self.figures_at = 0.0
        self.metrics.counters_from(self._process_counters)
        self.metrics.gauges_from(lambda: dict(self.figures), GAUGE_DOCS)

    def _process_counters(self) -> dict[str, int]:
        """The counters of this process: the core's, the loop's and the
        transport's, as copies (/metrics reads them from its own thread)."""
        counters = dict(self.leader.counters)
        for name, value in dict(self.counters).items():
            counters[name] = counters.get(name, 0) + value
        counters.update(prefixed("transport_", self.transport.counters.snapshot()))
        counters["raft_journal_syncs"] = self.raft.journal_syncs
        return counters

    def _time_events(self) -> None:
        """The leader's chunk and job histograms, from the events its
        commits added to the log (master/event_timings.py)."""
        if not self.raft_status.leader:
            if self.events_timed is not None:
                self.events_timed = None
                self.timings.forget_all()
                self.proposed_at.clear()
            return
        if self.events_timed is None:
            self.events_timed = self.raft.read(lambda state: state.last_seq)   # what came before is not timed
            self.committed = False
            return
        if not self.committed:
            return
        self.committed = False
        timed = self.events_timed
        events, self.events_timed = self.raft.read(lambda state: (
            events_since(state, timed) if state.last_seq > timed else [], state.last_seq))
        for duration in self.timings.durations(events):
            self.event_seconds[duration.histogram].observe(duration.seconds)

    def _refresh_figures(self) -> None:
        record = self.raft.record()
        figures = self.raft.read(lambda state: {
            "chunks_queued": len(state.queued), "chunks_dispatched": len(state.dispatched),
            "chunks_running": len(state.running), "chunks_delayed": len(state.delayed),
            "jobs": len(state.job_records), "result_cache_entries": state.cache_size()})
        figures.update(is_leader=int(self.raft.is_leader), raft_term=record.term,
                       raft_commit_index=record.commit_index, raft_last_applied=record.last_applied,
                       proposals_outstanding=self.leader.outstanding_proposals)
        self.figures = figures

    def on_stats_query(self, message: wire.StatsQuery, peer: bytes, now: float) -> None:
        """The counters of this process, and where it stands in the Raft group."""
        counters = self._process_counters()
        counters["leader"] = int(self.raft.is_leader)
        counters.update(self._raft_counters())
        counters["in_flight"] = self.raft.read(lambda state: state.in_flight_count())
        self._send(peer, wire.StatsReply.make(self.node_id, request_id=message.request_id,
                                              role=int(NodeRole.MASTER), counters=counters))
