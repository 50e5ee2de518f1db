"""Storage as the simulation runs it: N content-addressed nodes, placed by
the real rendezvous hashing (storage/placement.py) with R = 2, and the
output every simulated program writes: a proof of which job, chunk, attempt
and worker made it, and of the inputs it was given.

- A read walks `read_order` over the masters' membership and fails over: a
  node that is down costs the real probe timeout (storage/replicas.py's
  PROBE_TIMEOUT_S) before the next is tried; a live node that lacks the file
  costs nothing. It fails only when no node served it.
- A put goes to R live nodes in `put_order`, as ReplicatedStorage.store
  does, with R = min(R, nodes the membership lists alive); a down node costs
  the probe timeout and is replaced by the next. It fails only when fewer
  than R took it (the copies that did remain, as whole blobs).
- As in ReplicatedStorage, a node that did not answer goes to the end of
  the reader's or writer's every order for FAILED_MEMORY_S (each worker
  process remembers its own), so a dead node costs one probe, not one per
  request.
- Every storage failure a worker sees is recorded (`failures`), with when
  it started, for the checker to judge whether a good replica was there
  all along.
- A node may go down (its blobs kept) and come back, or be lost for good
  (its blobs gone). The membership (the masters' view, as their storage
  heartbeats give it) marks a node lost after LOST_AFTER_S of silence, and
  alive again at its first heartbeat back. Repair (storage_repair.py) puts
  every file back on R live nodes.

Everything storage draws comes from its own random source, so that the
draws of the rest of a seed stay as they were before storage was plural.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from uds.storage import placement
from uds.storage.placement import ALIVE, LOST, StorageMember
from uds.storage.replicas import FAILED_MEMORY_S, PROBE_TIMEOUT_S
from uds.wire.ids import file_id_of

FileRef = tuple[bytes, int]
PROOF_NAME = "proof"
NODE_COUNT = 3
REPLICAS = 2
# The masters declare a silent storage node lost after this long: the
# cluster file's lost_after_s, short here (like the worker lease) so that a
# node down for a while is sometimes declared lost and comes back.
LOST_AFTER_S = 2.0
# A node back up says hello (its first heartbeat) within this long.
HEARTBEAT_S = (0.0, 0.3)
# What a down node costs a reader or a writer before it moves on.
PROBE_S = PROBE_TIMEOUT_S

Later = Callable[..., None]             # later(delay_s, action, *args), stopped by a crash or freeze


class Proof(NamedTuple):
    """What a program writes: who ran it, and the id of every input it was
    given, by name, so that a chunk fed the wrong file cannot pass."""

    job: bytes
    chunk: int
    attempt: int
    worker: bytes
    inputs: tuple[tuple[str, bytes], ...] = ()     # (name, file id), by name

    def content(self) -> bytes:
        seen = " ".join(f"{name}={file_id.hex()}" for name, file_id in self.inputs)
        return f"{self.job.hex()} {self.chunk} {self.attempt} {self.worker.hex()} {seen}".strip().encode()

    @classmethod
    def parse(cls, content: bytes) -> "Proof":
        job, chunk, attempt, worker, *seen = content.decode().split()
        inputs = tuple((name, bytes.fromhex(file_id)) for name, file_id in (item.split("=") for item in seen))
        return cls(bytes.fromhex(job), int(chunk), int(attempt), bytes.fromhex(worker), inputs)

    def ran(self) -> tuple[bytes, int, int, bytes]:
        """The attempt that wrote it: (job, chunk, attempt, worker)."""
        return self.job, self.chunk, self.attempt, self.worker


@dataclass
class StorageNode:
    """One storage node: its blobs, and whether it is up."""

    address: str
    blobs: dict[bytes, bytes] = field(default_factory=dict)
    stored_at: dict[bytes, float] = field(default_factory=dict)   # file -> when this copy was made
    up: bool = True
    gone: bool = False              # lost for good: never back, its blobs gone
    up_since: float = 0.0
    request_ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def store(self, file_id: bytes, content: bytes, now: float) -> None:
        if file_id not in self.blobs:
            self.blobs[file_id] = content
            self.stored_at[file_id] = now

    def delete(self, file_id: bytes) -> None:
        self.blobs.pop(file_id, None)
        self.stored_at.pop(file_id, None)

    def serves(self, file_id: bytes) -> bool:
        return self.up and file_id in self.blobs

    def held_since(self, file_id: bytes, since: float) -> bool:
        """Up and holding the file, both since `since` or earlier."""
        return self.up and self.up_since <= since and self.stored_at.get(file_id, since + 1) <= since


@dataclass(frozen=True)
class StorageFailure:
    """A read or put a worker saw fail, for the checker."""

    kind: str                   # "read" or "put"
    file_id: bytes
    started_at: float
    at: float
    wanted: int                 # for a put: R at its start
    reason: str


class StorageCluster:
    """The storage nodes, the masters' membership of them, reads and puts."""

    def __init__(self, seed: int, now: Callable[[], float], node_count: int = NODE_COUNT,
                 replicas: int = REPLICAS) -> None:
        self.random = random.Random(f"storage {seed}")
        self.now = now
        self.replicas = replicas
        self.nodes = {address: StorageNode(address) for address in (f"s{index}" for index in range(node_count))}
        self.states = {address: ALIVE for address in self.nodes}     # the masters' membership
        self._members: tuple[StorageMember, ...] | None = None
        self.failures: list[StorageFailure] = []
        self.on_change: Callable[[], None] = lambda: None            # repair listens
        self.reads_failed_over = 0

    # -- membership ------------------------------------------------------------------

    def members(self) -> tuple[StorageMember, ...]:
        if self._members is None:
            self._members = tuple(StorageMember(address, address.encode(), state)
                                  for address, state in self.states.items())
        return self._members

    def replicas_among(self, members: tuple[StorageMember, ...]) -> int:
        return min(self.replicas, sum(member.alive for member in members))

    def set_state(self, address: str, state: str) -> None:
        if self.states[address] != state:
            self.states[address] = state
            self._members = None
            self.on_change()

    def live(self) -> list[StorageNode]:
        return [node for node in self.nodes.values() if node.up]

    # -- reads and puts ----------------------------------------------------------------

    def _demoted(self, addresses: list[str], failed_at: dict[str, float]) -> list[str]:
        now = self.now()
        recent = [address for address in addresses if now - failed_at.get(address, -FAILED_MEMORY_S) < FAILED_MEMORY_S]
        return [address for address in addresses if address not in recent] + recent if recent else addresses

    def read(self, file_id: bytes, failed_at: dict[str, float], later: Later, done: Callable[[str], None]) -> None:
        """Find a node that serves the file, in read order (the reader's
        `failed_at` nodes last); `done("")` then, or `done(reason)` when none
        did. Steps through `later`, so a crash of the reader stops it."""
        order = self._demoted([member.address for member in placement.read_order(file_id, self.members())],
                              failed_at)
        self._read_from(file_id, order, 0, self.now(), failed_at, later, done)

    def _read_from(self, file_id: bytes, order: list[str], position: int, started_at: float,
                   failed_at: dict[str, float], later: Later, done: Callable[[str], None]) -> None:
        for index in range(position, len(order)):
            node = self.nodes[order[index]]
            if node.serves(file_id):
                self.reads_failed_over += index > 0
                failed_at.pop(node.address, None)
                done("")
                return
            if not node.up:
                later(PROBE_S, self._probed, file_id, order, index, started_at, failed_at, later, done)
                return
        reason = f"no storage node serves {file_id.hex()[:12]} (tried {', '.join(order)})"
        self.failures.append(StorageFailure("read", file_id, started_at, self.now(), 0, reason))
        done(reason)

    def _probed(self, file_id: bytes, order: list[str], index: int, started_at: float,
                failed_at: dict[str, float], later: Later, done: Callable[[str], None]) -> None:
        failed_at[order[index]] = self.now()
        self._read_from(file_id, order, index + 1, started_at, failed_at, later, done)

    def put(self, content: bytes, failed_at: dict[str, float] | None = None) -> tuple[FileRef, float, str]:
        """Store `content` on R live nodes in put order (the writer's
        `failed_at` nodes last): (its ref, the time the down nodes tried
        cost, "" or why it failed)."""
        file_id, now = file_id_of(content), self.now()
        failed_at = {} if failed_at is None else failed_at
        members = self.members()
        wanted = self.replicas_among(members)
        ordered = [member.address for member in placement.put_order(file_id, members, len(content))]
        stored: list[str] = []
        probed = 0.0
        for address in self._demoted(ordered, failed_at):
            if len(stored) == wanted:
                break
            node = self.nodes[address]
            if node.up:
                node.store(file_id, content, now)
                failed_at.pop(address, None)
                stored.append(address)
            else:
                probed += PROBE_S
                failed_at[address] = now
        reason = ""
        if len(stored) < wanted:
            reason = f"only {len(stored)} of {wanted} storage nodes took {file_id.hex()[:12]}"
            self.failures.append(StorageFailure("put", file_id, now, now, wanted, reason))
        if stored != ordered[:wanted]:
            self.on_change()            # some copies are off their homes: repair puts them there
        return (file_id, len(content)), probed, reason

    # -- ground truth, for the checker -------------------------------------------------

    def content(self, file_id: bytes) -> bytes | None:
        """The file from any node that still has it, up or down."""
        for node in self.nodes.values():
            content = node.blobs.get(file_id)
            if content is not None:
                return content
        return None

    def proof_of(self, ref: FileRef) -> Proof | None:
        content = self.content(bytes(ref[0]))
        return None if content is None else Proof.parse(content)

    def live_holders(self, file_id: bytes) -> list[str]:
        return [node.address for node in self.nodes.values() if node.serves(file_id)]

    # -- faults --------------------------------------------------------------------------

    def down(self, address: str, for_good: bool = False) -> bool:
        node = self.nodes[address]
        if not node.up:
            return False
        node.up = False
        if for_good:
            node.gone = True
            node.blobs.clear()
            node.stored_at.clear()
        self.on_change()
        return True

    def back(self, address: str) -> None:
        node = self.nodes[address]
        if node.gone or node.up:
            return
        node.up = True
        node.up_since = self.now()
        self.on_change()

    def silent_for(self, address: str, down_since: float) -> bool:
        """Whether the node has been down without a break since `down_since`."""
        node = self.nodes[address]
        return not node.up and node.up_since <= down_since

    def mark(self, address: str, alive: bool) -> None:
        self.set_state(address, ALIVE if alive else LOST)
