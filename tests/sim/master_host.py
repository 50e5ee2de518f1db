"""One master process as the simulation runs it: the real leader core
(master/leader.py) in a shell that drives it the way master/node.py does,
in front of the Raft group (raft_group.py). Every master runs one, leader
or follower; a restarted master is a new process with a fresh core.

The shell is node.py's loop: what arrives (a commit or failure of a
proposal, a message) waits for the loop's next iteration, at most LOOP_S
later. An iteration first reads the Raft status from the group and feeds it
if it changed (node.py's `_feed_raft_status`), then what arrived in node.py's
order (commits, then messages), and ends with one Tick, so messages that
arrive together are one burst and their commands ride in one proposal. A
Wake schedules an iteration. Nothing ticks on a period: a core that forgets
to ask for a Wake stalls here.

Every acknowledgement it sends (job_submit_reply, chunk_events_ack,
hello_reply, and chunk_dispatch, sent once its attempts committed) goes
past `on_acknowledgement` first, with the office it answers under as
leader (None as a follower), for the checker.
"""
from __future__ import annotations

from typing import Any, Callable

from uds import wire
from uds.master import leader as core

from .host import Host
from .loop import Simulation
from .raft_group import RaftGroup

# A message or commit is handled by the loop's next iteration, at most this
# much later; what arrives meanwhile is handled in the same burst.
LOOP_S = 0.001
# What a master sends after a commit, as leader: the checker's acknowledgements.
ACKNOWLEDGEMENTS = (wire.JobSubmitReply, wire.ChunkEventsAck, wire.HelloReply, wire.ChunkDispatch)
_FEED_ORDER = {core.Committed: 0, core.ProposalFailed: 0, core.Received: 1}


class MasterHost(Host):
    def __init__(self, sim: Simulation, name: str, group: RaftGroup, generation: int,
                 on_acknowledgement: Callable[["MasterHost", int | None, str, wire.Message], None]) -> None:
        super().__init__(sim, name)
        self.group = group
        self.generation = generation
        self.on_acknowledgement = on_acknowledgement
        node_id = f"{name}p{generation}".encode().ljust(16, b"\0")
        self.core = core.Leader(node_id, group.reader, host=name, address=name, started_at=sim.now)
        self.status = core.NOT_STARTED
        self.office: int | None = None          # the office it answers under as leader
        self.ready_at = 0.0
        self.inbox: list[Any] = []
        self.iteration_due = False
        self.wake_at: float | None = None       # the earliest Tick already scheduled
        self.effect_handlers: dict[type, Callable[[Any], None]] = {
            core.Propose: lambda effect: group.propose(self, effect.tag, effect.commands),
            core.Send: lambda effect: self._send(effect.peer.decode(), effect.message),
            core.Reply: lambda effect: self._send(effect.request.peer.decode(), effect.message),
            core.Wake: self._wake,
            core.Note: self._note,
        }

    # -- driving the core: master/node.py's loop -------------------------------

    def post(self, event: Any) -> None:
        """An event for the loop's next iteration (None: only a Tick), which
        comes within LOOP_S."""
        if event is not None:
            self.inbox.append(event)
        if not self.iteration_due:
            self.iteration_due = True
            self.later(self.sim.random.random() * LOOP_S, self._iterate)

    def _iterate(self) -> None:
        self.iteration_due = False
        self._read_raft_status()
        inbox, self.inbox = self.inbox, []
        inbox.sort(key=lambda event: _FEED_ORDER[type(event)])
        for event in inbox:
            self._feed(event)
        self._feed(core.Tick())

    def _read_raft_status(self) -> None:
        status = self.group.status(self)
        if status.leader:
            office = self.group.office_of(self)
            self.office = office if office is not None else self.office
        else:
            self.office = None
        if status != self.status:
            self.status = status
            self._feed(status)

    def _feed(self, event: Any) -> None:
        for effect in self.core.handle(event, self.sim.now):
            self.effect_handlers[type(effect)](effect)

    def on_message(self, source: str, message: wire.Message) -> None:
        self.post(core.Received(source.encode(), message))

    def _send(self, peer: str, message: wire.Message) -> None:
        if isinstance(message, ACKNOWLEDGEMENTS):
            self.on_acknowledgement(self, self.office if self.core.is_leader else None, peer, message)
        self.send(peer, message)

    def _wake(self, effect: core.Wake) -> None:
        if self.wake_at is not None and self.wake_at <= effect.at:
            return                              # a Tick comes by then anyway
        self.wake_at = effect.at
        self.sim.at(effect.at, self._run, self._woken, (effect.at,))

    def _woken(self, at: float) -> None:
        if self.wake_at == at:
            self.wake_at = None
        self.post(None)

    def _note(self, effect: core.Note) -> None:
        if self.sim.tracing:
            self.sim.note(f"{self.name}: {effect.text}")
