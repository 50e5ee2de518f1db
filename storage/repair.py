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

    @classmethod
    def plan(cls, own_address: str, blobs: Iterable[tuple[bytes, int]], members: Iterable[StorageMember],
             replicas: int, request_ids: Iterator[int] | None = None,
             timeout_s: Callable[[int], float] = lambda length: 60.0,
             window: int = REPLICATES_PER_TARGET) -> RepairScan:
        """The scan of `blobs` ((id, size) pairs) over `members`, with R =
        `replicas`: each blob to every member of its replica set but this node."""
        members = tuple(members)
        offers: dict[str, collections.deque[Offer]] = {}
        for file_id, size in blobs:
            for target in replica_set(file_id, members, replicas):
                if target.address != own_address:
                    offers.setdefault(target.address, collections.deque()).append(
                        Offer(target.address, file_id, size))
        return cls(offers, request_ids if request_ids is not None else itertools.count(1), timeout_s, window)

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
        if confirmed:
            self.confirmed += 1
        else:
            self.failed += 1
        return entry[0]

    def expire(self, now: float) -> list[Offer]:
        """Give up on requests unanswered for their timeout."""
        late = [request_id for request_id, (offer, sent_at) in self.outstanding.items()
                if now - sent_at > self.timeout_s(offer.length)]
        return [offer for offer in (self.answered(request_id, False) for request_id in late) if offer]
