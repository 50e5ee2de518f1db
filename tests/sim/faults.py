"""The nemesis: which faults a seed injects, and when.

Each seed draws its own mix (a calm seed next to a stormy one), then injects
node faults at random times during the fault phase: a worker frozen and
thawed, a worker or a load balancer crashed and restarted empty, a load
balancer frozen (past its lease about half the time) and thawed, the
leader demoted (its host unharmed), the leader's host killed and started
again empty, frozen and thawed, or cut off from the other masters (not
from clients and balancers) and healed. Until the phase ends, the
leader's proposals fail, and the network drops, duplicates and delays (so
reorders) messages, at the seed's odds.

Storage faults are drawn from storage's own random source (storage.py), so
that the rest of a seed draws what it drew before storage was plural: a
storage node down for a while (then back with its blobs), and one node at
most lost for good (its blobs gone), so that two of three remain to hold R.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from .loop import NetworkFaults, Simulation

FREEZE_S = (0.2, 4.0)           # past the worker lease (1.5 s) about half the time
DOWN_S = (0.05, 2.0)            # how long a crashed node stays down
# How long a killed leader's host stays down: as long as the chaos tests'
# (3-5 s) at most, so that clients and balancers must find the new leader
# while the old one is silent.
LEADER_DOWN_S = (0.05, 4.0)
NODE_FAULT_KINDS = ("worker_frozen", "worker_crashed", "balancer_crashed", "leader_replaced",
                    "balancer_frozen", "leader_killed", "leader_frozen", "leader_cut_off")
CUT_S = FREEZE_S                # how long a leader stays cut off from the other masters
STORAGE_FAULT_KINDS = ("storage_down", "storage_lost")
STORAGE_DOWN_S = (0.2, 4.0)     # past the masters' LOST_AFTER_S (2 s) about half the time
STORAGE_DOWNS = (0, 0, 0, 0, 1, 2)    # how many a seed draws
STORAGE_LOST_ODDS = 0.2


@dataclass
class StorageFaultPlan:
    faults: list[tuple[float, str, float]]     # (at, kind, how long down)

    @classmethod
    def draw(cls, source: random.Random, end: float) -> "StorageFaultPlan":
        """A plan for the fault phase [0, end), from storage's own random source."""
        faults = [(source.uniform(0.0, end), "storage_down", source.uniform(*STORAGE_DOWN_S))
                  for _ in range(source.choice(STORAGE_DOWNS))]
        if source.random() < STORAGE_LOST_ODDS:
            faults.append((source.uniform(0.0, end), "storage_lost", 0.0))
        return cls(sorted(faults))


@dataclass
class FaultPlan:
    network: NetworkFaults
    node_faults_per_s: float
    weights: tuple[float, ...]  # one per NODE_FAULT_KINDS
    proposal_failure: float     # odds that a proposal of the leader fails

    @classmethod
    def draw(cls, sim: Simulation) -> "FaultPlan":
        rng = sim.random
        # A network that drops or holds back nothing in one seed of four:
        # there, every election is judged for the balancers' step (checks.py).
        network = NetworkFaults(drop=rng.choice((0.0, 0.0, 0.02, 0.1)), duplicate=rng.choice((0.0, 0.05, 0.2)),
                                slow=rng.choice((0.0, 0.0, 0.05, 0.2)), slow_max_s=rng.uniform(0.1, 3.0))
        return cls(network=network, node_faults_per_s=rng.choice((0.0, 0.5, 1.5)),
                   weights=tuple(rng.random() for _ in NODE_FAULT_KINDS),
                   proposal_failure=rng.choice((0.0, 0.02, 0.1)))


class Nemesis:
    """Injects a plan's faults into a cluster between `start` and `end`.

    `cluster` offers: workers (names), freeze(name), thaw(name), crash(name),
    restart(name), balancers (names), leader() (its name, or None),
    replace_leader(), cut_off_leader(), heal(name), fail_proposals(odds);
    with a storage plan, also store (its nodes and random source),
    storage_down(address, for_good) and storage_back(address)."""

    def __init__(self, sim: Simulation, cluster, plan: FaultPlan, end: float,
                 storage: StorageFaultPlan | None = None) -> None:
        self.sim = sim
        self.cluster = cluster
        self.plan = plan
        self.end = end
        self.storage = storage
        self.actions: dict[str, Callable[[], None]] = {
            "worker_frozen": lambda: self._freeze(self.sim.random.choice(self.cluster.workers), "worker_frozen"),
            "worker_crashed": lambda: self._crash(self.sim.random.choice(self.cluster.workers)),
            "balancer_crashed": lambda: self._crash(self.sim.random.choice(self.cluster.balancers)),
            "balancer_frozen": lambda: self._freeze(self.sim.random.choice(self.cluster.balancers),
                                                    "balancer_frozen"),
            "leader_replaced": self._replace_leader,
            "leader_killed": self._kill_leader,
            "leader_frozen": self._freeze_leader,
            "leader_cut_off": self._cut_off_leader,
        }

    def start(self) -> None:
        self.sim.faults = self.plan.network
        self.cluster.fail_proposals(self.plan.proposal_failure)
        self.sim.at(self.end, self._stop)
        if self.plan.node_faults_per_s:
            self._schedule_next()
        for at, kind, down_s in self.storage.faults if self.storage else ():
            self.sim.at(at, self._storage_fault, kind, down_s)

    def _schedule_next(self) -> None:
        self.sim.after(self.sim.random.expovariate(self.plan.node_faults_per_s), self._inject)

    def _inject(self) -> None:
        if self.sim.now >= self.end:
            return
        kind = self.sim.random.choices(NODE_FAULT_KINDS, weights=self.plan.weights)[0]
        self.actions[kind]()
        self._schedule_next()

    def _stop(self) -> None:
        self.sim.faults = NetworkFaults()
        self.cluster.fail_proposals(0.0)
        self.sim.note("faults stop")

    def _freeze(self, name: str, kind: str) -> None:
        if not self.cluster.freeze(name):
            return
        self.sim.count(kind)
        self.sim.note(f"freeze {name}")
        self.sim.after(self.sim.random.uniform(*FREEZE_S), self.cluster.thaw, name)

    def _crash(self, name: str) -> None:
        if not self.cluster.crash(name):
            return
        self.sim.count("balancer_crashed" if name in self.cluster.balancers else "worker_crashed")
        self.sim.note(f"crash {name}")
        self.sim.after(self.sim.random.uniform(*DOWN_S), self.cluster.restart, name)

    def _replace_leader(self) -> None:
        if self.cluster.replace_leader():
            self.sim.count("leader_replaced")

    def _kill_leader(self) -> None:
        name = self.cluster.leader()
        if name is None or not self.cluster.crash(name):
            return
        self.sim.count("leader_killed")
        self.sim.note(f"kill {name}")
        self.sim.after(self.sim.random.uniform(*LEADER_DOWN_S), self.cluster.restart, name)

    def _freeze_leader(self) -> None:
        name = self.cluster.leader()
        if name is not None:
            self._freeze(name, "leader_frozen")

    def _cut_off_leader(self) -> None:
        name = self.cluster.cut_off_leader()
        if name is None:
            return
        self.sim.count("leader_cut_off")
        self.sim.note(f"cut {name} off from the other masters")
        self.sim.after(self.sim.random.uniform(*CUT_S), self.cluster.heal, name)

    def _storage_fault(self, kind: str, down_s: float) -> None:
        store = self.cluster.store
        up = [address for address, node in store.nodes.items() if node.up]
        if kind == "storage_lost":
            # Not the only holder of a file: one written while the others
            # were declared lost went to it alone (R = 1), and losing it then
            # loses the file, which no replication could have kept.
            up = [address for address in up if all(
                any(file_id in other.blobs for other in store.nodes.values() if other.address != address)
                for file_id in store.nodes[address].blobs)]
        if not up:
            return
        address = store.random.choice(up)
        if not self.cluster.storage_down(address, for_good=kind == "storage_lost"):
            return
        self.sim.count(kind)
        if kind == "storage_lost":
            self.sim.note(f"lose storage node {address} for good")
        else:
            self.sim.note(f"storage node {address} down")
            self.sim.after(down_s, self.cluster.storage_back, address)
