"""The records the masters' state keeps per chunk, job and node
(master/state.py changes them; master/queries.py reads them).

Rules of this module: plain data, nothing else. They are what every master
holds once per chunk and pickles into every snapshot, so they are compact:
slotted, a finished chunk's result packed (doc/master.md#memory), and a
job's chunks pickled as one msgpack blob.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import msgpack

from uds.master.commands import ChunkPhase, FileRef, SubmitJob, unpack_result
from uds.wire.capacity import Capacity
from uds.wire.enums import JobState
from uds.wire.records import NO_FACTS, ChunkResult, NodeFacts

_PHASES = {int(phase): phase for phase in ChunkPhase}
# A chunk record keeps the classes of its newest failed attempts, one letter each.
FAILURE_LETTERS = {"a": "application", "i": "infrastructure"}
MAX_FAILURES_KEPT = 64


@dataclass(slots=True)
class ChunkRecord:
    phase: ChunkPhase = ChunkPhase.QUEUED
    attempt: int = 1
    retries_used: int = 0           # application failures (FAILED, TIMED_OUT) retried
    lost_count: int = 0             # workers lost under it in a row (LOST; an application failure resets it)
    worker: bytes | None = None
    packed_result: bytes | None = None  # set only in a final phase; `result` reads it
    failures: str = ""              # the class of each failed attempt, oldest first: FAILURE_LETTERS
    # The current attempt's timeline on the masters' clock (0.0: not yet), and
    # the worker's ChunkState it ended in (0: not ended, or ended without a
    # report: cancelled with its job, or a cached result). master/attempts.py
    # sets them, to the millisecond (`on_grid`), which packs them in a few bytes.
    dispatched_at: float = 0.0
    running_at: float = 0.0
    committed_at: float = 0.0       # when it became final
    ended: int = 0
    # The attempts that ended without ending the chunk, packed by
    # master/attempts.py (b"": none): at most 64 kept, with a count of the dropped.
    past: bytes = b""

    @property
    def result(self) -> ChunkResult | None:
        return None if self.packed_result is None else unpack_result(self.packed_result)

    def failed_attempt(self, letter: str) -> None:
        """Note a failed attempt's class ("a" or "i"), keeping the newest MAX_FAILURES_KEPT."""
        self.failures = (self.failures + letter)[-MAX_FAILURES_KEPT:]

    # A bare tuple keeps snapshots small: a job may have 100,000 of these.
    def __getstate__(self) -> tuple:
        return (self.phase, self.attempt, self.retries_used, self.lost_count, self.worker, self.packed_result,
                self.failures, *_pack_attempt_fields(self))

    def __setstate__(self, values: tuple) -> None:
        (self.phase, self.attempt, self.retries_used, self.lost_count, self.worker,
         self.packed_result, *rest) = values
        self.failures = rest[0] if rest else ""
        _unpack_attempt_fields(self, rest[1:], {})


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
    # Workflows (master/workflow.py).
    held: bool = False              # submitted with hold and not yet released
    waiting_for: tuple[bytes, ...] = ()   # dependencies that have not succeeded yet
    ready: bool = True              # its chunks have left WAITING (dependencies, start time, hold)
    failed_by: str = ""             # why the job failed as a whole (a dependency, its deadline), or ""
    chunks_cached: int = 0          # of chunks_succeeded: results reused
    # Inputs with the refs resolved (job-wide, per chunk); None: the spec's own.
    resolved: tuple[dict[str, FileRef], tuple[dict[str, FileRef], ...]] | None = None
    # The seq of its job_submitted event: its events are found from there on
    # (master/event_log.py). 0: not known (a record pickled before it was kept).
    first_seq: int = 0

    # Its chunks as one msgpack blob: a snapshot then holds one object per
    # job, not four per chunk (a million chunks took 11 s and 300 MiB more).
    def __getstate__(self) -> tuple:
        return (self.spec, self.submitted_at, _pack_chunks(self.chunks), self.finished_at, self.cancelled,
                self.started_at, self.chunks_succeeded, self.chunks_failed, self.chunks_cancelled,
                self.first_error, self.held, self.waiting_for, self.ready, self.failed_by, self.chunks_cached,
                self.resolved, self.first_seq)

    def __setstate__(self, values: tuple) -> None:
        (self.spec, self.submitted_at, chunks, self.finished_at, self.cancelled, self.started_at,
         self.chunks_succeeded, self.chunks_failed, self.chunks_cancelled, self.first_error, *later) = values
        self.chunks = _unpack_chunks(chunks)
        # Fields added later, at the end: an older pickle takes their defaults.
        defaults = (False, (), True, "", 0, None, 0)
        (self.held, self.waiting_for, self.ready, self.failed_by, self.chunks_cached,
         self.resolved, self.first_seq) = (*later, *defaults[len(later):])

    @property
    def inputs(self) -> dict[str, FileRef]:
        """Its job-wide inputs, refs resolved ({} of refs until they are)."""
        return self.spec.inputs if self.resolved is None else self.resolved[0]

    @property
    def chunk_inputs(self) -> tuple[dict[str, FileRef], ...]:
        """One map per chunk, refs resolved, or () when no chunk has inputs of its own."""
        return self.spec.chunk_inputs if self.resolved is None else self.resolved[1]

    @property
    def chunks_final(self) -> int:
        return self.chunks_succeeded + self.chunks_failed + self.chunks_cancelled

    @property
    def state(self) -> JobState:
        if self.cancelled:
            return JobState.CANCELLED
        if self.failed_by:
            return JobState.FAILED
        if self.chunks_final == self.spec.chunk_count:
            # Chunks are cancelled only with their job (cancelled or failed_by).
            return JobState.FAILED if self.chunks_failed else JobState.SUCCEEDED
        if self.held:
            return JobState.HELD
        if not self.ready:
            return JobState.WAITING
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
    facts: NodeFacts = NO_FACTS     # version, machine, addresses, as it said at its last join

    @property
    def capacity(self) -> Capacity:
        return Capacity(self.millicpus, self.memory_bytes, self.disk_bytes)

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, values: tuple) -> None:
        # A record pickled before a field existed takes that field's default.
        defaults = (NO_FACTS,)
        known = tuple(values) + defaults[len(values) - len(self.__slots__) + len(defaults):]
        for name, value in zip(self.__slots__, known, strict=True):
            setattr(self, name, value)


@lru_cache(maxsize=16)
def on_grid(at: float) -> float:
    """`at` to the nearest whole millisecond, as a chunk record keeps its
    times: running_at and committed_at then pack as small integers after
    dispatched_at and read back exactly. The chunks that one command
    changes share one float (the command's `now`, here remembered)."""
    return round(at * 1000) / 1000


def _pack_attempt_fields(chunk: ChunkRecord) -> list:
    """The timeline, ending and past attempts as packed after `failures`:
    running_at and committed_at as milliseconds after dispatched_at, and the
    trailing defaults left out (a chunk queued or never retried costs little)."""
    base_ms = round(chunk.dispatched_at * 1000)
    packed = [chunk.dispatched_at, round(chunk.running_at * 1000) - base_ms if chunk.running_at else None,
              round(chunk.committed_at * 1000) - base_ms if chunk.committed_at else None, chunk.ended, chunk.past]
    while packed and packed[-1] == _ATTEMPT_DEFAULTS[len(packed) - 1]:
        packed.pop()
    return packed


# What a left-out field of _pack_attempt_fields reads as, by position.
_ATTEMPT_DEFAULTS = (0.0, None, None, 0, b"")


def _unpack_attempt_fields(chunk: ChunkRecord, packed: tuple | list, times: dict[float, float]) -> None:
    """Set what _pack_attempt_fields packed (fields an older record lacks,
    or left out, take their defaults). `times` shares one float per value."""
    base, running_ms, committed_ms, ended, past = (*packed, *_ATTEMPT_DEFAULTS[len(packed):])
    base_ms = round(base * 1000)
    chunk.dispatched_at = _shared(times, base)
    chunk.running_at = 0.0 if running_ms is None else _shared(times, (base_ms + running_ms) / 1000)
    chunk.committed_at = 0.0 if committed_ms is None else _shared(times, (base_ms + committed_ms) / 1000)
    chunk.ended = ended
    chunk.past = past


def _shared(times: dict[float, float], value: float) -> float:
    return times.setdefault(value, value)


def _pack_chunks(chunks: list[ChunkRecord]) -> bytes:
    return msgpack.packb([(int(chunk.phase), chunk.attempt, chunk.retries_used, chunk.lost_count,
                           chunk.worker, chunk.packed_result, chunk.failures, *_pack_attempt_fields(chunk))
                          for chunk in chunks], use_bin_type=True)


def _unpack_chunks(packed: bytes) -> list[ChunkRecord]:
    # One bytes object per worker id, as the replicas share them
    # (master/replicated.py), and one float per time.
    workers: dict[bytes, bytes] = {}
    times: dict[float, float] = {}
    chunks = []
    for phase, attempt, retries_used, lost_count, worker, packed_result, *rest in msgpack.unpackb(
            packed, raw=False, use_list=False):
        chunk = ChunkRecord(_PHASES[phase], attempt, retries_used, lost_count,
                            None if worker is None else workers.setdefault(worker, worker), packed_result,
                            rest[0] if rest else "")
        if len(rest) > 1:
            _unpack_attempt_fields(chunk, rest[1:], times)
        chunks.append(chunk)
    return chunks
