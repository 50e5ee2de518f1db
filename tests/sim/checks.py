"""What must hold after every step of a simulation, and at its end.

Safety, after every step that changed the replicated state:
- a chunk's phase and the state's phase tables agree (no chunk lost from them);
- a final chunk holds the result of its current attempt: its proof output,
  read back from the content store, names this job, this chunk, the attempt
  the state records as current and the worker it records;
- a chunk's result is committed once: one final event in the log, and the
  record never changes afterwards; the job's counters match its chunks;
- no chunk is cancelled (nothing here cancels) and every acknowledged job exists.
Liveness, at the end: every acknowledged job finished.
"""
from __future__ import annotations

from typing import Callable

from uds.master.commands import FINAL_PHASES, ChunkPhase
from uds.master.state import (
    CHUNK_CANCELLED, CHUNK_FAILED, CHUNK_SUCCEEDED, POISON_ERROR, ClusterState,
)

from .storage import PROOF_NAME, ContentStore, Proof
from .trace import short

FINAL_EVENT_KINDS = frozenset({CHUNK_SUCCEEDED, CHUNK_FAILED, CHUNK_CANCELLED})


class InvariantBroken(AssertionError):
    """The simulation found the system doing something it must never do."""


class Checker:
    def __init__(self, state: ClusterState, store: ContentStore, acknowledged: dict[bytes, float],
                 balancers: Callable[[], list] = list) -> None:
        self.state = state
        self.balancers = balancers           # the live SimBalancers
        self.lease_epoch = 0
        self.holders: dict[int, bytes] = {}  # epoch -> its one holder
        self.store = store
        self.acknowledged = acknowledged
        self.seen_seq = 0
        self.final_events: dict[tuple[bytes, int], int] = {}
        self.final_records: dict[tuple[bytes, int], tuple] = {}
        self.unfinished = 0

    def after_step(self) -> None:
        state = self.state
        self._check_lease()
        if state.last_seq == self.seen_seq:
            return
        self._count_final_events()
        self.unfinished = 0
        for job, record in state.job_records.items():
            self._check_job(job, record)
        for job in self.acknowledged:
            if job not in state.job_records:
                raise InvariantBroken(f"acknowledged job {short(job)} is not in the state")

    def _check_lease(self) -> None:
        """Epochs only rise, each has one holder, and never do two balancers
        believe at once that they hold the lease (so at most one assigns)."""
        holder, epoch = self.state.lease()
        if epoch < self.lease_epoch:
            raise InvariantBroken(f"the lease epoch went back from {self.lease_epoch} to {epoch}")
        self.lease_epoch = epoch
        if holder is not None and self.holders.setdefault(epoch, holder) != holder:
            raise InvariantBroken(f"epoch {epoch} has two holders")
        active = [balancer.name for balancer in self.balancers() if balancer.active()]
        if len(active) > 1:
            raise InvariantBroken(f"balancers {active} both believe they hold the lease")

    def _count_final_events(self) -> None:
        events, self.seen_seq = self.state.events_after(self.seen_seq, 1 << 30)
        for event in events:
            if event.kind in FINAL_EVENT_KINDS:
                key = (event.job, event.chunk)
                self.final_events[key] = self.final_events.get(key, 0) + 1
                if self.final_events[key] > 1:
                    raise InvariantBroken(f"chunk {event.chunk} of job {short(event.job)} committed "
                                          f"{self.final_events[key]} times (attempt {event.attempt})")

    def _check_job(self, job: bytes, record) -> None:
        state = self.state
        tables = {ChunkPhase.QUEUED: state.queued, ChunkPhase.DISPATCHED: state.dispatched,
                  ChunkPhase.RUNNING: state.running}
        succeeded = 0
        for index, chunk in enumerate(record.chunks):
            key = (job, index)
            for phase, table in tables.items():
                if (key in table) != (chunk.phase is phase):
                    raise InvariantBroken(f"chunk {index} of job {short(job)} is {chunk.phase.label} "
                                          f"but {'in' if key in table else 'not in'} the {phase.label} table")
            if chunk.phase not in FINAL_PHASES:
                continue
            succeeded += chunk.phase is ChunkPhase.SUCCEEDED
            if chunk.phase is ChunkPhase.CANCELLED:
                raise InvariantBroken(f"chunk {index} of job {short(job)} cancelled, but nobody cancelled it")
            self._check_result(job, index, chunk)
            if self.final_events.get(key) != 1:
                raise InvariantBroken(f"chunk {index} of job {short(job)} is {chunk.phase.label} "
                                      f"with {self.final_events.get(key, 0)} final events")
            fingerprint = (chunk.phase, chunk.attempt, chunk.worker, chunk.result)
            if self.final_records.setdefault(key, fingerprint) != fingerprint:
                raise InvariantBroken(f"chunk {index} of job {short(job)} changed after it was final: "
                                      f"{self.final_records[key]} became {fingerprint}")
        if succeeded != record.chunks_succeeded:
            raise InvariantBroken(f"job {short(job)} counts {record.chunks_succeeded} chunks succeeded "
                                  f"but {succeeded} are")
        if record.finished_at is None:
            self.unfinished += 1

    def _check_result(self, job: bytes, index: int, chunk) -> None:
        ref = chunk.result.outputs.get(PROOF_NAME) if chunk.result else None
        if ref is None:
            # Only a poisoned chunk ends without a program's output.
            if chunk.phase is ChunkPhase.FAILED and chunk.result and chunk.result.error == POISON_ERROR:
                return
            raise InvariantBroken(f"chunk {index} of job {short(job)} is {chunk.phase.label} "
                                  f"without a program's output: {chunk.result}")
        proof = self.store.proof_of(ref)
        expected = Proof(job, index, chunk.attempt, chunk.worker)
        if proof != expected:
            raise InvariantBroken(
                f"chunk {index} of job {short(job)} committed the output of attempt "
                f"{proof.attempt if proof else '?'} on worker {short(proof.worker) if proof else '?'}, "
                f"but its current attempt is {chunk.attempt} on {short(chunk.worker) if chunk.worker else None}")

    def all_finished(self, expected_jobs: int) -> bool:
        return (len(self.acknowledged) == expected_jobs and self.unfinished == 0
                and len(self.state.job_records) == expected_jobs)

    def at_end(self, expected_jobs: int, now: float) -> None:
        if len(self.acknowledged) < expected_jobs:
            raise InvariantBroken(f"only {len(self.acknowledged)} of {expected_jobs} submissions "
                                  f"acknowledged by {now:.2f} s")
        for job, record in self.state.job_records.items():
            if record.finished_at is None:
                phases = ", ".join(f"{index}:{chunk.phase.label}/{chunk.attempt}"
                                   for index, chunk in enumerate(record.chunks))
                raise InvariantBroken(f"job {short(job)} unfinished at {now:.2f} s: {phases}")
