"""The records the masters' state keeps per chunk, job and node
(master/state.py changes them; master/queries.py reads them).

Rules of this module: plain data, nothing else. They are what every master
holds once per chunk and pickles into every snapshot, so they are compact:
slotted, a finished chunk's result packed (doc/master.md#memory), and a
job's chunks pickled as one msgpack blob.
"""
from __future__ import annotations

from dataclasses import dataclass

import msgpack

from uds.master.commands import ChunkPhase, SubmitJob, unpack_result
from uds.wire.capacity import Capacity
from uds.wire.enums import JobState
from uds.wire.records import ChunkResult

_PHASES = {int(phase): phase for phase in ChunkPhase}


@dataclass(slots=True)
class ChunkRecord:
    phase: ChunkPhase = ChunkPhase.QUEUED
    attempt: int = 1
    retries_used: int = 0           # program failures (FAILED, TIMED_OUT) requeued
    lost_count: int = 0             # workers lost or refusing it (LOST, REJECTED)
    worker: bytes | None = None
    packed_result: bytes | None = None  # set only in a final phase; `result` reads it

    @property
    def result(self) -> ChunkResult | None:
        return None if self.packed_result is None else unpack_result(self.packed_result)

    # A bare tuple keeps snapshots small: a job may have 100,000 of these.
    def __getstate__(self) -> tuple:
        return (self.phase, self.attempt, self.retries_used, self.lost_count, self.worker, self.packed_result)

    def __setstate__(self, values: tuple) -> None:
        (self.phase, self.attempt, self.retries_used, self.lost_count, self.worker,
         self.packed_result) = values


@dataclass(slots=True)
class JobRecord:
    spec: SubmitJob                 # as submitted, normalised; compared on resubmission
    submitted_at: float
    chunks: list[ChunkRecord]
    finished_at: float | None = None
    cancelled: bool = False         # by CancelJob
    started_at: float | None = None # its first dispatch
    chunks_succeeded: int = 0
    chunks_failed: int = 0
    chunks_cancelled: int = 0
    first_error: str = ""           # "chunk N: why", from the first chunk that failed

    # Its chunks as one msgpack blob: a snapshot then holds one object per
    # job, not four per chunk (a million chunks took 11 s and 300 MiB more).
    def __getstate__(self) -> tuple:
        return (self.spec, self.submitted_at, _pack_chunks(self.chunks), self.finished_at, self.cancelled,
                self.started_at, self.chunks_succeeded, self.chunks_failed, self.chunks_cancelled,
                self.first_error)

    def __setstate__(self, values: tuple) -> None:
        (self.spec, self.submitted_at, chunks, self.finished_at, self.cancelled, self.started_at,
         self.chunks_succeeded, self.chunks_failed, self.chunks_cancelled, self.first_error) = values
        self.chunks = _unpack_chunks(chunks)

    @property
    def chunks_final(self) -> int:
        return self.chunks_succeeded + self.chunks_failed + self.chunks_cancelled

    @property
    def state(self) -> JobState:
        if self.cancelled:
            return JobState.CANCELLED
        if self.chunks_final == self.spec.chunk_count:
            # Chunks are cancelled only with their job (self.cancelled).
            return JobState.FAILED if self.chunks_failed else JobState.SUCCEEDED
        return JobState.QUEUED if self.started_at is None else JobState.RUNNING


@dataclass(slots=True)
class NodeRecord:
    role: int
    host: str
    address: str
    slots: int
    cache_bytes: int
    started_at: float
    alive: bool
    changed_at: float               # when it joined or was declared lost
    millicpus: int = 0              # what a worker offers (0: not measured)
    memory_bytes: int = 0
    disk_bytes: int = 0
    sandbox: str = ""

    @property
    def capacity(self) -> Capacity:
        return Capacity(self.millicpus, self.memory_bytes, self.disk_bytes)


def _pack_chunks(chunks: list[ChunkRecord]) -> bytes:
    return msgpack.packb([(int(chunk.phase), chunk.attempt, chunk.retries_used, chunk.lost_count,
                           chunk.worker, chunk.packed_result) for chunk in chunks], use_bin_type=True)


def _unpack_chunks(packed: bytes) -> list[ChunkRecord]:
    # One bytes object per worker id, as the replicas share them (master/replicated.py).
    workers: dict[bytes, bytes] = {}
    return [ChunkRecord(_PHASES[phase], attempt, retries_used, lost_count,
                        None if worker is None else workers.setdefault(worker, worker), packed_result)
            for phase, attempt, retries_used, lost_count, worker, packed_result
            in msgpack.unpackb(packed, raw=False, use_list=False)]
