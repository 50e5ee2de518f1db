"""Repair, the holder's side: one scan over this node's blobs offers each
to every member of its replica set that is not this node (file_replicate),
a few at a time per target, and counts what was confirmed.

Rules:
- A scan is made from a listing and a membership; it never changes its
  mind. A new membership starts a new scan (the shell's decision), and the
  answers to the old one's requests are then ignored.
- At most `window` file_replicate are outstanding per target: a target
  pulls one file at a time at its repair rate, so more would only wait in
  its queue (and be refused ERR_BUSY when that is full).
- A target confirms with file_put_reply PUT_PRESENT or PUT_STORED; an
  error, or no answer within `timeout_s(length)`, leaves the pair
  unconfirmed until the next scan.
- `pending` is every pair not yet confirmed nor given up in this scan.
- A blob this node holds but whose replica set (of R members) it is not
  in becomes `trimmable` once every member of the set has confirmed it in
  this scan: R other nodes hold it, so this copy is one too many. A set
  smaller than R (fewer live members) trims nothing, and neither does a
  node the membership does not list alive (the masters' view of it may be
  stale: it keeps its copies until they see it again).

Pure: no sockets, no clock (`now` comes in), no files.
"""
from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from uds.storage.placement import StorageMember, replica_set

# file_replicate outstanding per target at once.
REPLICATES_PER_TARGET = 4


@dataclass(frozen=True, slots=True)
class Replicate:
    """Send file_replicate(file, length, source=this node) to `target`."""
    request_id: int
    target: str
    file_id: bytes
    length: int


@dataclass(frozen=True, slots=True)
class Offer:
    target: str
    file_id: bytes
    length: int


@dataclass
class RepairScan:
    """The pairs (blob, target) of one scan, and how far they got."""

    offers: dict[str, collections.deque[Offer]]
    request_ids: Iterator[int]
    timeout_s: Callable[[int], float]
    window: int = REPLICATES_PER_TARGET
    outstanding: dict[int, tuple[Offer, float]] = field(default_factory=dict)
    confirmed: int = 0
    failed: int = 0
    # Blobs held here outside their replica set: the targets yet to confirm.
    unconfirmed: dict[bytes, set[str]] = field(default_factory=dict)
    # Blobs whose every home confirmed, for the shell to delete here.
    trimmable: list[tuple[bytes, int]] = field(default_factory=list)

    @classmethod
    def plan(cls, own_address: str, blobs: Iterable[tuple[bytes, int]], members: Iterable[StorageMember],
             replicas: int, request_ids: Iterator[int] | None = None,
             timeout_s: Callable[[int], float] = lambda length: 60.0,
             window: int = REPLICATES_PER_TARGET) -> RepairScan:
        """The scan of `blobs` ((id, size) pairs) over `members`, with R =
        `replicas`: each blob to every member of its replica set but this node."""
        members = tuple(members)
        trims = any(member.address == own_address and member.alive for member in members)
        offers: dict[str, collections.deque[Offer]] = {}
        unconfirmed: dict[bytes, set[str]] = {}
        for file_id, size in blobs:
            homes = [home.address for home in replica_set(file_id, members, replicas)]
            for target in homes:
                if target != own_address:
                    offers.setdefault(target, collections.deque()).append(Offer(target, file_id, size))
            if trims and own_address not in homes and len(homes) == replicas:
                unconfirmed[file_id] = set(homes)
        return cls(offers, request_ids if request_ids is not None else itertools.count(1), timeout_s, window,
                   unconfirmed=unconfirmed)

    @property
    def pending(self) -> int:
        return sum(len(queue) for queue in self.offers.values()) + len(self.outstanding)

    @property
    def done(self) -> bool:
        return self.pending == 0

    def sends(self, now: float) -> list[Replicate]:
        """The file_replicate to send now: up to the window per target."""
        busy = collections.Counter(offer.target for offer, _ in self.outstanding.values())
        sends = []
        for target, queue in self.offers.items():
            while queue and busy[target] < self.window:
                offer = queue.popleft()
                busy[target] += 1
                request_id = next(self.request_ids)
                self.outstanding[request_id] = (offer, now)
                sends.append(Replicate(request_id, target, offer.file_id, offer.length))
        return sends

    def answered(self, request_id: int, confirmed: bool) -> Offer | None:
        """A target answered request `request_id`: confirmed or refused. The
        offer, or None if the request is not this scan's (or answered already)."""
        entry = self.outstanding.pop(request_id, None)
        if entry is None:
            return None
        offer = entry[0]
        if confirmed:
            self.confirmed += 1
            waiting = self.unconfirmed.get(offer.file_id)
            if waiting is not None:
                waiting.discard(offer.target)
                if not waiting:
                    del self.unconfirmed[offer.file_id]
                    self.trimmable.append((offer.file_id, offer.length))
        else:
            self.failed += 1
            self.unconfirmed.pop(offer.file_id, None)
        return offer

    def take_trimmable(self) -> list[tuple[bytes, int]]:
        """The blobs to delete here now (each given once)."""
        taken, self.trimmable = self.trimmable, []
        return taken

    def expire(self, now: float) -> list[Offer]:
        """Give up on requests unanswered for their timeout."""
        late = [request_id for request_id, (offer, sent_at) in self.outstanding.items()
                if now - sent_at > self.timeout_s(offer.length)]
        return [offer for offer in (self.answered(request_id, False) for request_id in late) if offer]
