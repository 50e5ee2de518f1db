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
# The load-balancer lease: granted and renewed through a GrantLease command,
# timed by the leader on its own clock from each commit. The balancer stops
# dispatching earlier (doc/loadbalancer.md gives the margin).
LOADBALANCER_LEASE_S = 1.5


@dataclass
class LoadBalancerLink:
    peer: bytes              # ROUTER routing id of its connection
    node: bytes
    epoch: int
    last_seen: float         # the commit of its last grant or renewal, on the leader's clock
    free_slots: int = 0
    running: int = 0
    workers: dict = field(default_factory=dict)   # node id -> NODE record, from node_report

    def credit(self) -> int:
        total_slots = self.free_slots + self.running
        return max(MIN_CREDIT, total_slots * CREDIT_PER_SLOT)


class LoadBalancerLease:
    """The leader's side of the load-balancer lease.

    Who holds it under which epoch is replicated state (GrantLease); how long
    it lasts is this leader's soft state: LOADBALANCER_LEASE_S from the commit
    of the last grant or renewal it saw. A leader that has just taken office
    cannot know when the holder last renewed, so it counts from its own first
    moment in office before granting the lease to anyone else.
    """

    def __init__(self) -> None:
        self.holder: LoadBalancerLink | None = None
        self.pending = 0                    # GrantLease commands queued or proposed
        self.renewed_at = 0.0               # last grant/renewal commit, or taking office

    def take_office(self, now: float) -> None:
        self.holder, self.pending, self.renewed_at = None, 0, now

    def epoch_for(self, node: bytes, state_holder: bytes | None, state_epoch: int, now: float) -> int | None:
        """The epoch to propose for `node`'s request, or None while it may not
        have the lease.

        While the lease is live (in this leader's count), its holder renews
        it under its own epoch (a renewal that loses the race to a new grant
        is refused by the state) and anyone else waits. Once it has lapsed,
        whoever asks first gets the next epoch, the old holder too: a
        balancer that comes back after its lease ran out is a new active,
        whose epoch fences whatever its earlier self sent. No grant is
        proposed while another lease command is in flight, since a renewal
        committing in between would give two balancers a lease at once."""
        live = state_holder is not None and now < self.renewed_at + LOADBALANCER_LEASE_S
        if live and node == state_holder:
            return state_epoch
        if live or self.pending:
            return None
        return state_epoch + 1

    def committed(self, node: bytes, peer: bytes, epoch: int, now: float) -> LoadBalancerLink:
        """The holder after a committed grant or renewal."""
        self.renewed_at = now
        link = self.holder
        if link is not None and link.node == node and link.epoch == epoch:
            link.peer = peer  # a reconnected balancer may have a new routing id
            link.last_seen = now
            return link
        self.holder = LoadBalancerLink(peer=peer, node=node, epoch=epoch, last_seen=now)
        return self.holder

    def current(self, node: bytes) -> LoadBalancerLink | None:
        """The holder if `node` is it."""
        link = self.holder
        return link if link is not None and link.node == node else None

    def expires_at(self) -> float | None:
        return None if self.holder is None else self.renewed_at + LOADBALANCER_LEASE_S

    def lapse(self, now: float) -> LoadBalancerLink | None:
        """The holder, if its lease has run out by `now`: it holds it no more."""
        expires_at = self.expires_at()
        if expires_at is None or now < expires_at:
            return None
        lapsed, self.holder = self.holder, None
        return lapsed

    def revoke(self) -> None:
        self.holder, self.pending = None, 0


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
