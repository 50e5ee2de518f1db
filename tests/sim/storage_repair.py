"""The storage nodes' membership as the masters keep it, and repair, as the
simulation runs them.

Membership: a node that goes down stops its heartbeats; the masters declare
it lost once it has been silent for LOST_AFTER_S, and alive again at its
first heartbeat back (within HEARTBEAT_S of its return). A node lost for
good stays lost.

Repair: while anything is out of place (a node down, lost or back, a
membership change, a put that had to pass over a down node), every live
node runs a scan of the real repair core (storage/repair.py's RepairScan)
every REPAIR_INTERVAL_S: each of its blobs is offered to every member of the
blob's replica set but itself; the target pulls the blob from it (PULL_S
later) if it lacks it, and confirms; a blob held outside its replica set
and confirmed by every home is trimmed here, as a real node does. A target
that is down does not answer; the next scan offers again. Rounds stop once
every blob on a live node is on each of its R homes, every home is up and
the membership agrees with the nodes: nothing costs a calm seed anything.
"""
from __future__ import annotations

from uds.storage.placement import LOST, replica_set
from uds.storage.repair import RepairScan

from .loop import Simulation
from .storage import HEARTBEAT_S, LOST_AFTER_S, StorageCluster, StorageNode

REPAIR_INTERVAL_S = 0.5
PULL_S = (0.005, 0.05)


class StorageRepair:
    def __init__(self, sim: Simulation, storage: StorageCluster) -> None:
        self.sim = sim
        self.storage = storage
        self.random = storage.random
        self.scans: dict[str, RepairScan] = {}
        self.round_due = False
        self.rounds = 0
        self.copied = 0
        self.trimmed = 0
        storage.on_change = self.changed

    # -- the masters' membership -----------------------------------------------------

    def down(self, address: str, for_good: bool) -> bool:
        """Take a node down (for good: its blobs gone); the masters declare it
        lost once it has been silent for LOST_AFTER_S."""
        if not self.storage.down(address, for_good):
            return False
        self.sim.after(LOST_AFTER_S, self._declare_lost, address, self.sim.now)
        return True

    def _declare_lost(self, address: str, down_since: float) -> None:
        if self.storage.silent_for(address, down_since):
            self.sim.note(f"masters: storage node {address} lost")
            self.storage.mark(address, alive=False)

    def back(self, address: str) -> None:
        """A node back up with its blobs; its first heartbeat comes soon after."""
        node = self.storage.nodes[address]
        if node.gone or node.up:
            return
        self.sim.note(f"storage node {address} back")
        self.storage.back(address)
        self.sim.after(self.random.uniform(*HEARTBEAT_S), self._heard, address, node.up_since)

    def _heard(self, address: str, up_since: float) -> None:
        node = self.storage.nodes[address]
        if node.up and node.up_since == up_since:
            self.storage.mark(address, alive=True)

    # -- repair ------------------------------------------------------------------------

    def changed(self) -> None:
        if not self.round_due:
            self.round_due = True
            self.sim.after(self.random.uniform(*PULL_S), self._round)

    def settled(self) -> bool:
        return not self.unsettled()

    def unsettled(self) -> str:
        """What is left for repair to do ("" when nothing is): a node down
        (not lost for good), a membership that does not match the nodes, a
        blob on a live node missing from one of its R homes."""
        storage = self.storage
        for node in storage.nodes.values():
            if not node.up and not node.gone:
                return f"{node.address} is down"
            if node.gone != (storage.states[node.address] == LOST):
                return f"{node.address} is {'lost' if node.gone else 'up'} but {storage.states[node.address]}"
        members = storage.members()
        replicas = storage.replicas_among(members)
        for node in storage.nodes.values():
            for file_id in node.blobs:
                for home in replica_set(file_id, members, replicas):
                    if not storage.nodes[home.address].serves(file_id):
                        return f"{file_id.hex()[:12]} (on {node.address}) is not on {home.address}, one of its homes"
        return ""

    def _round(self) -> None:
        self.round_due = False
        self.scans.clear()
        if self.settled():
            return
        self.rounds += 1
        storage = self.storage
        members = storage.members()
        replicas = storage.replicas_among(members)
        for node in storage.live():
            blobs = [(file_id, len(content)) for file_id, content in node.blobs.items()]
            scan = RepairScan.plan(node.address, blobs, members, replicas, request_ids=node.request_ids)
            self.scans[node.address] = scan
            self._offer(node, scan)
        self.round_due = True
        self.sim.after(REPAIR_INTERVAL_S, self._round)

    def _offer(self, source: StorageNode, scan: RepairScan) -> None:
        for replicate in scan.sends(self.sim.now):
            self.sim.after(self.random.uniform(*PULL_S), self._pull, source.address, scan, replicate)

    def _pull(self, source_address: str, scan: RepairScan, replicate) -> None:
        """The target of a file_replicate pulls the file from its source and answers."""
        if self.scans.get(source_address) is not scan:
            return                                  # an earlier scan's: ignored
        storage = self.storage
        source, target = storage.nodes[source_address], storage.nodes[replicate.target]
        if not target.up:
            return                                  # no answer; the next scan offers again
        file_id = replicate.file_id
        confirmed = file_id in target.blobs
        if not confirmed and source.serves(file_id):
            target.store(file_id, source.blobs[file_id], self.sim.now)
            self.copied += 1
            confirmed = True
            if self.sim.tracing:
                self.sim.note(f"repair: {target.address} pulled {file_id.hex()[:12]} from {source.address}")
        scan.answered(replicate.request_id, confirmed)
        if source.up:
            for trimmed_id, _ in scan.take_trimmable():
                source.delete(trimmed_id)
                self.trimmed += 1
            self._offer(source, scan)
