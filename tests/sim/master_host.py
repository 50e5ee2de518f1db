"""The master as the simulation runs it: the replicated ClusterState behind
a Raft group modelled as one linearizable log, and the leader's core.

Replacing the leader loses its soft state (a new SimLeader starts empty) and
settles each proposal still in flight either way, as a real election may:
committed (applied, but nobody hears of it) or dropped.
"""
from __future__ import annotations

from uds import wire
from uds.master.state import ClusterState

from .host import Host
from .loop import Simulation
from .master_node import Committed, Propose, Received, Send, SimLeader, Tick
from .today import IDLE_POLL_MS

# A proposal commits this long after it is proposed (plus up to as much again).
COMMIT_DELAY_S = 0.002
# The leader's loop wakes at least this often.
LEADER_TICK_S = IDLE_POLL_MS / 1000


class MasterHost(Host):
    def __init__(self, sim: Simulation, name: str = "master") -> None:
        super().__init__(sim, name)
        self.state = ClusterState()
        self.generation = 0
        self.leader = self._new_leader()
        self.in_flight: dict[int, tuple[int, tuple]] = {}   # proposal number -> (generation, commands)
        self.next_proposal = 1
        self.every(LEADER_TICK_S, lambda: self._carry_out(self.leader.handle(Tick(), self.sim.now)))

    def _new_leader(self) -> SimLeader:
        self.generation += 1
        node_id = self.generation.to_bytes(16, "big")
        return SimLeader(node_id=node_id, state=self.state)

    def on_message(self, source: str, message: wire.Message) -> None:
        self._carry_out(self.leader.handle(Received(source, message), self.sim.now))

    def _carry_out(self, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self.send(effect.peer, effect.message)
            elif isinstance(effect, Propose):
                number = self.next_proposal
                self.next_proposal += 1
                self.in_flight[number] = (self.generation, effect.commands)
                delay = COMMIT_DELAY_S * (1 + self.sim.random.random())
                self.later(delay, self._commit, number, effect.tag)

    def _commit(self, number: int, tag: int) -> None:
        entry = self.in_flight.pop(number, None)
        if entry is None:
            return                                  # dropped in an election
        generation, commands = entry
        outcomes = self.state.apply(commands, self.sim.now)
        if self.sim.tracing:
            self.sim.note(f"commit {len(commands)} commands: " + ", ".join(
                type(command).__name__ for command in commands))
        if generation == self.generation:
            self._carry_out(self.leader.handle(Committed(tag, outcomes), self.sim.now))

    def replace_leader(self) -> None:
        """A new leader with no soft state; in-flight proposals commit or vanish."""
        for number, (generation, commands) in list(self.in_flight.items()):
            if self.sim.random.random() < 0.5:
                del self.in_flight[number]
        self.leader = self._new_leader()
        self.sim.note(f"leader replaced (generation {self.generation})")
