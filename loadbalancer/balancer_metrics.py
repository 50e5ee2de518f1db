"""The load balancer's /metrics (doc/metrics.md): its queue wait, observed
as attempts are assigned, and the gauges its loop copies once a second.

Rules: this is the shell's (loadbalancer/node.py), not the scheduler's: it
reads the clock the loop hands it and the scheduler's public queries, and
decides nothing. The HTTP server's thread reads only copies: the counters
dict copied at the scrape, the gauges as the loop last replaced them.
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

from uds.daemon.metrics import DaemonMetrics
from uds.loadbalancer.events import AttemptKey, Assignment
from uds.loadbalancer.scheduler import Scheduler

GAUGE_DOCS = {
    "chunks_queued": "Chunk attempts received from the master, not yet placed on a worker.",
    "chunks_running": "Chunk attempts placed on workers (slots taken).",
    "slots": "Slots of the alive workers.",
    "slots_free": "Free slots of the alive workers.",
    "workers": "Workers known (alive or lost).",
    "active": "1 while this balancer holds the lease, else 0 (a standby).",
    "epoch": "The lease epoch this balancer last held.",
    "unacknowledged_batches": "Batches of chunk events sent to the master and not yet acknowledged.",
}


class BalancerMetrics:
    def __init__(self, metrics: DaemonMetrics, read_counters: Callable[[], dict[str, int]]) -> None:
        """`read_counters`: what stats_query counts, as a copy, from any thread."""
        self.metrics = metrics
        self.queue_wait_seconds = metrics.histogram(
            "queue_wait_seconds", "A chunk attempt, from its chunk_dispatch's arrival to its assignment to a worker.")
        # When each attempt not yet assigned arrived (the loop's monotonic
        # clock); pruned to the scheduler's pending ones at each refresh.
        self.arrived_at: dict[AttemptKey, float] = {}
        self.figures: dict[str, int] = {}
        metrics.counters_from(read_counters)
        metrics.gauges_from(lambda: dict(self.figures), GAUGE_DOCS)

    def arrived(self, attempts: Iterable[Mapping], now: float) -> None:
        """A chunk_dispatch's attempts came (a resend keeps the first time)."""
        for attempt in attempts:
            self.arrived_at.setdefault(AttemptKey(attempt["job"], attempt["chunk"], attempt["attempt"]), now)

    def assigned(self, job: bytes, assignments: Iterable[Assignment], now: float) -> None:
        for assignment in assignments:
            arrived_at = self.arrived_at.pop(AttemptKey(job, assignment.chunk, assignment.attempt), None)
            if arrived_at is not None:
                self.queue_wait_seconds.observe(max(0.0, now - arrived_at))

    def refresh(self, scheduler: Scheduler, active: bool, epoch: int, unacknowledged: int, now: float) -> None:
        total, free = scheduler.capacity()
        pending = scheduler.pending_count()
        if len(self.arrived_at) > pending:     # repeats of assigned attempts, cancelled ones
            waiting = set(scheduler.pending())
            self.arrived_at = {key: at for key, at in self.arrived_at.items() if key in waiting}
        self.figures = {"chunks_queued": pending, "chunks_running": total - free, "slots": total,
                        "slots_free": free, "workers": len(scheduler.workers(now)), "active": int(active),
                        "epoch": epoch, "unacknowledged_batches": unacknowledged}
