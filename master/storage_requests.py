"""The leader's answers to storage nodes and to pins: `storage_heartbeat`
(membership), `gc_check` (collection) and `file_pin`.

Rules of this module: those of master/leader.py, whose `Leader` inherits
`StorageRequests`. Handlers take the decoded request and `now` and return
effects; a command is queued with its purpose (plain data), and what
follows its commit is a method of this class.

- A storage heartbeat is answered at once with the membership, unless it
  registers its node: then after the NodeSeen commits, so the node reads
  itself alive.
- gc_checks wait for a PruneCollection proposed after they arrived. Once it
  commits, the leader's state holds every command committed before they
  arrived (the leader's log holds them all, and applies in order), and one
  reading of the state answers every gc_check waiting for it.
- Silent storage nodes are declared lost from the Tick (`_storage_timers`).

What it uses of the leader: `node_id`, `storage_policy`, `_reader`,
`_storage`, `_gc_checks`, `_storage_due_at`, `_raft`, `_now`,
`_not_leading`, `_queue`, `_error`, `_count`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from uds import wire
from uds.master import commands
from uds.master.collection import reference_snapshot
from uds.master.leader_events import Effect, Note, RaftStatus, Reply, Request, StateReader
from uds.master.storage_nodes import StorageNodes, address_problem, needs_registration
from uds.wire.cluster import StoragePolicy
from uds.wire.enums import ErrorCode, NodeRole
from uds.wire.records import NodeFacts


# ---- what a command's outcome is for ------------------------------------------

@dataclass(frozen=True, slots=True)
class StorageSeen:
    """A NodeSeen for a storage node; `request`: its heartbeat, answered after."""

    node: bytes
    request: Request


@dataclass(frozen=True, slots=True)
class StorageLost:
    node: bytes


@dataclass(frozen=True, slots=True)
class AnswerPin:
    request: Request


@dataclass(frozen=True, slots=True)
class AnswerGcChecks:
    """The PruneCollection that the waiting gc_checks are answered after."""


@dataclass(slots=True)
class GcChecks:
    """gc_checks waiting for their PruneCollection to commit."""

    waiting: list[tuple[Request, tuple[bytes, ...]]] = field(default_factory=list)
    proposed: bool = False          # a PruneCollection is queued or proposed


class StorageRequests:
    node_id: bytes
    storage_policy: StoragePolicy
    _reader: StateReader
    _storage: StorageNodes
    _gc_checks: GcChecks
    _raft: RaftStatus
    _now: float                     # the `now` of the event being handled
    _storage_due_at: float | None   # when the next storage node falls silent (inf: none
                                    # alive; None: to be read from the state at the next Tick)
    _not_leading: Callable[[Request], list[Effect]]
    _queue: Callable[..., None]
    _error: Callable[[Request, int, str], Reply]
    _count: Callable[..., None]

    # ---- membership --------------------------------------------------------

    def _on_storage_heartbeat(self, message: wire.StorageHeartbeat, request: Request, now: float) -> list[Effect]:
        refused = self._not_leading(request)
        if refused:
            return refused
        problem = address_problem(message.address)
        if problem:
            return [self._error(request, ErrorCode.INVALID, problem)]
        node = message.node_uuid
        views = self._reader.read(lambda state: state.nodes())
        known = next((view for view in views if view.node == node), None)
        if known is not None and known.role != NodeRole.STORAGE:
            return [self._error(request, ErrorCode.INVALID,
                                f"node {node.hex()} is known as a {NodeRole(known.role).name.lower()}")]
        self._count("storage_heartbeats")
        self._storage.heard(node, message.figures, now)
        started_at = message.start_time_ms / 1000.0
        if node not in self._storage.registering and needs_registration(known, message.address, started_at):
            self._storage.registering.add(node)
            self._queue(commands.NodeSeen(node=node, role=int(NodeRole.STORAGE), host=message.host,
                                          address=message.address, slots=0, cache_bytes=0,
                                          started_at=started_at, facts=NodeFacts.from_body(message)),
                        StorageSeen(node, request))
            return []
        return [self._membership_reply(request, views)]

    def _storage_registered(self, purpose: StorageSeen, outcome: commands.Outcome) -> list[Effect]:
        self._storage.registering.discard(purpose.node)
        self._storage_due_at = None         # one more node to watch
        if not outcome.ok:
            return [self._error(purpose.request, outcome.error_code or ErrorCode.INVALID, outcome.error)]
        if not self._raft.leader:
            return self._not_leading(purpose.request)
        self._count("storage_nodes_registered")
        return [self._membership_reply(purpose.request, self._reader.read(lambda state: state.nodes()))]

    def _membership_reply(self, request: Request, views: list[commands.NodeView]) -> Reply:
        return Reply(request, wire.StorageHeartbeatReply.make(
            self.node_id, request_id=request.request_id,
            heartbeat_interval_ms=int(self.storage_policy.heartbeat_interval_s * 1000),
            nodes=self._storage.membership(views)))

    def _storage_take_office(self, now: float) -> None:
        self._storage.take_office(now)
        self._storage_due_at = None

    def _storage_timers(self, now: float) -> list[Effect]:
        """Declare lost the storage nodes silent for lost_after_s (the
        leader's Tick). Reads the state only when one may be due: a
        heartbeat or a node joining never brings the next one nearer."""
        if self._storage_due_at is not None and now < self._storage_due_at:
            return []
        lost_after_s = self.storage_policy.lost_after_s
        views = self._reader.read(lambda state: [view for view in state.nodes()
                                                 if view.role == NodeRole.STORAGE])
        effects: list[Effect] = []
        for node in self._storage.silent(views, now, lost_after_s):
            self._storage.losing.add(node)
            self._queue(commands.NodeLost(node=node), StorageLost(node))
            effects.append(Note(f"storage node {node.hex()} silent for "
                                f"{now - self._storage.silent_since(node):.1f}s: declaring it lost", warning=True))
        due = self._storage.next_silence_due(views, lost_after_s)
        self._storage_due_at = math.inf if due is None else due
        return effects

    def _storage_lost(self, purpose: StorageLost, outcome: commands.Outcome) -> list[Effect]:
        self._storage.losing.discard(purpose.node)
        self._storage_due_at = None         # still alive if this failed: watch it again
        if outcome.ok and getattr(outcome, "changed", False):
            self._count("storage_nodes_lost")
        return []

    def _storage_figures(self, views: list[commands.NodeView], now: float) -> dict[bytes, tuple[dict, float]]:
        """node -> (figures, seconds since its last heartbeat), for nodes_reply."""
        return {view.node: (self._storage.figures(view.node), self._storage.last_seen_s(view.node, now))
                for view in views if view.role == NodeRole.STORAGE}

    # ---- pins --------------------------------------------------------------

    def _on_file_pin(self, message: wire.FilePin, request: Request, now: float) -> list[Effect]:
        refused = self._not_leading(request)
        if refused:
            return refused
        files = tuple(dict.fromkeys(bytes(file) for file in message.files))
        self._queue(commands.PinFiles(files=files, until=message.until_ms / 1000.0,
                                      gc_grace_s=self.storage_policy.gc_grace_s), AnswerPin(request))
        return []

    def _pinned(self, purpose: AnswerPin, outcome: commands.Outcome) -> list[Effect]:
        if not outcome.ok:
            return [self._error(purpose.request, outcome.error_code or ErrorCode.INVALID, outcome.error)]
        self._count("files_pinned", outcome.pinned)
        return [Reply(purpose.request, wire.FilePinReply.make(
            self.node_id, request_id=purpose.request.request_id, file_count=outcome.pinned))]

    # ---- collection --------------------------------------------------------

    def _on_gc_check(self, message: wire.GcCheck, request: Request, now: float) -> list[Effect]:
        refused = self._not_leading(request)
        if refused:
            return refused
        self._count("gc_checks")
        self._gc_checks.waiting.append((request, tuple(dict.fromkeys(bytes(file) for file in message.files))))
        if not self._gc_checks.proposed:
            self._gc_checks.proposed = True
            self._queue(commands.PruneCollection(gc_grace_s=self.storage_policy.gc_grace_s), AnswerGcChecks())
        return []

    def _answer_gc_checks(self, purpose: AnswerGcChecks, outcome: commands.Outcome) -> list[Effect]:
        waiting, self._gc_checks.waiting = self._gc_checks.waiting, []
        self._gc_checks.proposed = False
        if not outcome.ok:
            return [self._error(request, outcome.error_code or ErrorCode.BUSY, outcome.error or "not committed")
                    for request, _ in waiting]
        if not self._raft.leader:
            return [effect for request, _ in waiting for effect in self._not_leading(request)]
        asked = {file for _, files in waiting for file in files}
        grace_s = self.storage_policy.gc_grace_s
        now = self._now
        snapshot = self._reader.read(lambda state: reference_snapshot(state, asked, now, grace_s))
        collectable = snapshot.collectable()
        self._count("gc_files_asked", len(asked))
        self._count("gc_files_collectable", len(collectable))
        return [Reply(request, wire.GcCheckReply.make(self.node_id, request_id=request.request_id,
                                                      files=[file for file in files if file in collectable]))
                for request, files in waiting]
