"""What the master knows of its load balancer, and how dispatches are cut
into messages."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from uds import wire
from uds.master.state import ClusterState
from uds.wire.limits import LIST_BUDGET_BYTES

# Chunks the balancer may hold beyond its free slots, so that a slot that
# frees up is refilled without waiting for the master: credit = slots * this.
CREDIT_PER_SLOT = 2
# Before any heartbeat says how many slots there are.
MIN_CREDIT = 4
# Attempts per chunk_dispatch message; keeps each body well under its limit.
ATTEMPTS_PER_MESSAGE = 1000
# A load balancer silent for this long is dispatched to no more.
LOADBALANCER_LEASE_S = 3.0


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


class LoadBalancerLease:
    """Which load balancer the leader dispatches to, under which epoch, and
    until when: every message from the holder renews the lease, and
    LOADBALANCER_LEASE_S of silence ends it.

    Today the leader alone grants it, to whichever balancer said hello last,
    and the epoch stays 1. The load-balancer pair will have it granted through
    a Raft command, the epoch rising with each grant: `grant` is that place.
    """

    def __init__(self) -> None:
        self.holder: LoadBalancerLink | None = None

    def grant(self, node: bytes, peer: bytes, now: float) -> LoadBalancerLink:
        epoch = 1 if self.holder is None else self.holder.epoch
        self.holder = LoadBalancerLink(peer=peer, node=node, epoch=epoch, last_seen=now)
        return self.holder

    def renew(self, node: bytes, peer: bytes, now: float) -> LoadBalancerLink | None:
        """The holder, renewed, if `node` holds the lease; else None."""
        link = self.holder
        if link is None or link.node != node:
            return None
        link.peer = peer  # a reconnected balancer may have a new routing id
        link.last_seen = now
        return link

    def expires_at(self) -> float | None:
        return None if self.holder is None else self.holder.last_seen + LOADBALANCER_LEASE_S

    def lapse(self, now: float) -> LoadBalancerLink | None:
        """The holder, if its lease has run out by `now`: it holds it no more."""
        expires_at = self.expires_at()
        if expires_at is None or now < expires_at:
            return None
        lapsed, self.holder = self.holder, None
        return lapsed

    def revoke(self) -> None:
        self.holder = None


def dispatch_messages(node_id: bytes, epoch: int, specs: list[dict],
                      attempts: list[dict]) -> Iterator[wire.ChunkDispatch]:
    """chunk_dispatch messages for `attempts`, each with the specs it needs,
    cut at ATTEMPTS_PER_MESSAGE or where the body would outgrow its budget
    (chunk inputs and job inputs can be large)."""
    by_job = {spec["job"]: spec for spec in specs}
    spec_sizes = {job: wire.packed_size(spec) for job, spec in by_job.items()}
    part: list[dict] = []
    jobs: dict[bytes, dict] = {}
    used = 0
    for attempt in attempts:
        job = attempt["job"]
        size = wire.packed_size(attempt)
        spec_size = spec_sizes.get(job, 0)
        adds = size + (spec_size if job not in jobs else 0)
        if part and (len(part) >= ATTEMPTS_PER_MESSAGE or used + adds > LIST_BUDGET_BYTES):
            yield _dispatch(node_id, epoch, jobs, part)
            part, jobs, used = [], {}, 0
            adds = size + spec_size
        part.append(attempt)
        if job in by_job:
            jobs[job] = by_job[job]
        used += adds
    if part:
        yield _dispatch(node_id, epoch, jobs, part)


def _dispatch(node_id: bytes, epoch: int, jobs: dict[bytes, dict], part: list[dict]) -> wire.ChunkDispatch:
    return wire.ChunkDispatch.make(node_id, epoch=epoch, attempt_count=len(part),
                                   jobs=list(jobs.values()), attempts=part)


def dispatch_records(state: ClusterState, attempts: list) -> tuple[list[dict], list[dict]]:
    """Job specs and DISPATCH_ATTEMPT records for (job, chunk, attempt)
    triples, read from the state (under its lock, in the shell)."""
    specs: dict[bytes, dict] = {}
    records = []
    for job, chunk, attempt in attempts:
        if job not in specs:
            spec = state.job_spec(job)
            if spec is None:
                continue
            specs[job] = spec
        records.append({"job": job, "chunk": chunk, "attempt": attempt,
                        "inputs": state.chunk_inputs(job, chunk)})
    return list(specs.values()), records
