"""What the master knows of its load balancer, and how dispatches are cut
into messages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import wire

# Chunks the balancer may hold beyond its free slots, so that a slot that
# frees up is refilled without waiting for the master: credit = slots * this.
CREDIT_PER_SLOT = 2
# Before any heartbeat says how many slots there are.
MIN_CREDIT = 4
# Attempts per chunk_dispatch message; keeps each body well under its limit.
ATTEMPTS_PER_MESSAGE = 1000


@dataclass
class LoadBalancerLink:
    peer: bytes              # ROUTER routing id of its connection
    node: bytes
    epoch: int
    last_seen: float
    free_slots: int = 0
    running: int = 0
    workers: dict = field(default_factory=dict)   # node id -> NODE record, from node_report

    def credit(self) -> int:
        total_slots = self.free_slots + self.running
        return max(MIN_CREDIT, total_slots * CREDIT_PER_SLOT)


def dispatch_messages(node_id: bytes, epoch: int, specs: list[dict],
                      attempts: list[dict]) -> Iterator[wire.ChunkDispatch]:
    """chunk_dispatch messages for `attempts`, each with the specs it needs."""
    by_job = {spec["job"]: spec for spec in specs}
    for start in range(0, len(attempts), ATTEMPTS_PER_MESSAGE):
        part = attempts[start:start + ATTEMPTS_PER_MESSAGE]
        jobs = {attempt["job"] for attempt in part}
        yield wire.ChunkDispatch.make(node_id, epoch=epoch, attempt_count=len(part),
                                      jobs=[by_job[job] for job in jobs if job in by_job],
                                      attempts=part)
