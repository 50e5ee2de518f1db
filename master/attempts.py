"""Every attempt of a chunk, as the masters keep it: the current attempt's
timeline in its ChunkRecord, and the attempts that ended without ending the
chunk (retried, lost, refused, taken back) packed in its `past`.

Rules of this module:
- Pure, like master/state.py (which calls the recording functions at each
  transition): nothing here reads the clock or touches files; `now` is the
  command's.
- An attempt is recorded once, when it ends: into `past` when the chunk goes
  on with a new attempt, or in the chunk's own fields when it ends the
  chunk. Attempt numbers in `past` rise, and the current attempt's is
  higher than all of them.
- `past` keeps the newest MAX_PAST_ATTEMPTS, with a count of those dropped:
  a chunk retried for ever must not grow without bound in every replica.
  It is one msgpack blob, [dropped, entry, entry, ...], so that a chunk
  never retried costs nothing and one retried costs one bytes object.
  An entry is (attempt, the ChunkState its report ended it in, worker or None,
  dispatched_at, running_at, committed_at, the packed result).
- Files of past attempts (outputs, stdout, stderr) stay referenced while
  their job is kept (master/collection.py reads them through `past_results`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import msgpack

from uds.master.commands import FINAL_PHASES, ChunkPhase, pack_result, unpack_result
from uds.master.records import on_grid
from uds.wire.enums import ChunkState, ErrorCode
from uds.wire.records import NO_RESULT, NO_WORKER, ChunkEvent, ChunkResult

if TYPE_CHECKING:
    from uds.master.records import ChunkRecord, JobRecord
    from uds.master.queries import StateQueries

# Past attempts one chunk keeps (the newest); older ones are counted only.
MAX_PAST_ATTEMPTS = 64

# How the worker's report of an ending names the attempt's failure class.
_FAILURES = {
    ChunkState.FAILED: "application",
    ChunkState.TIMED_OUT: "application",
    ChunkState.LOST: "infrastructure",
    ChunkState.REJECTED: "infrastructure",
    # A cancel reported while the chunk goes on: a balancer took it back.
    ChunkState.CANCELLED: "infrastructure",
}
# What the current attempt of a chunk that is not final reads as.
_OPEN_STATES = {
    ChunkPhase.QUEUED: "queued", ChunkPhase.WAITING: "queued", ChunkPhase.DELAYED: "queued",
    ChunkPhase.DISPATCHED: "dispatched", ChunkPhase.RUNNING: "running",
}


# ---- recording (master/state.py and master/workflow.py call these) -----------

def dispatched(chunk: ChunkRecord, now: float) -> None:
    """The chunk's current attempt was committed as dispatched."""
    chunk.dispatched_at = on_grid(now)


def started(chunk: ChunkRecord, now: float) -> None:
    """Its worker reported the current attempt STARTED."""
    chunk.running_at = on_grid(now)


def requeued(chunk: ChunkRecord, event: ChunkEvent, now: float) -> None:
    """The current attempt ended as `event` reports and the chunk goes on
    with a new one: it joins `past`, and the timeline starts afresh. Called
    before the attempt number moves on."""
    # A balancer's report names no worker: the attempt's is the one that started it, if any.
    worker = chunk.worker if event.worker == NO_WORKER else event.worker
    entry = (chunk.attempt, int(event.state), worker, chunk.dispatched_at, chunk.running_at, on_grid(now),
             pack_result(event.result))
    dropped, entries = _unpacked(chunk.past)
    entries.append(entry)
    if len(entries) > MAX_PAST_ATTEMPTS:
        dropped += len(entries) - MAX_PAST_ATTEMPTS
        entries = entries[-MAX_PAST_ATTEMPTS:]
    chunk.past = msgpack.packb([dropped, *entries], use_bin_type=True)
    chunk.dispatched_at = chunk.running_at = 0.0


def ended(chunk: ChunkRecord, state: int, now: float) -> None:
    """The current attempt ended the chunk (which is final from now on):
    `state` is the worker's ChunkState it ended in, 0 when no worker
    reported the ending (cancelled with its job, a cached result)."""
    chunk.ended = int(state)
    chunk.committed_at = on_grid(now)


# ---- reading --------------------------------------------------------------------

def past_results(past: bytes) -> Iterator[bytes]:
    """The packed results of the past attempts in a chunk's `past`."""
    for entry in _unpacked(past)[1]:
        yield entry[-1]


@dataclass(frozen=True, slots=True)
class AttemptView:
    """One attempt of a chunk as a client is told it (wire ATTEMPT)."""

    attempt: int
    state: str                      # wire.messages.ATTEMPT_STATES
    failure: str                    # "", "application", "infrastructure"
    worker: bytes | None
    dispatched_at: float | None     # the masters' clock; None: not yet
    running_at: float | None
    committed_at: float | None
    result: ChunkResult

    def as_record(self) -> dict[str, Any]:
        return dict(attempt=self.attempt, state=self.state, failure=self.failure, worker=self.worker,
                    dispatched_at=self.dispatched_at, running_at=self.running_at,
                    committed_at=self.committed_at, **self.result.as_body())


def chunk_attempts(chunk: ChunkRecord) -> tuple[list[AttemptView], int]:
    """Every attempt the chunk keeps, oldest first (the current one last),
    and how many older ones were dropped."""
    dropped, entries = _unpacked(chunk.past)
    views = [AttemptView(attempt=attempt, state=ChunkState(state).name.lower(),
                         failure=_FAILURES.get(ChunkState(state), ""), worker=worker,
                         dispatched_at=_known(dispatched_at), running_at=_known(running_at),
                         committed_at=_known(committed_at), result=unpack_result(packed))
             for attempt, state, worker, dispatched_at, running_at, committed_at, packed in entries]
    views.append(_current(chunk))
    return views, dropped


def _current(chunk: ChunkRecord) -> AttemptView:
    phase = chunk.phase
    failure = ""
    if phase in FINAL_PHASES:
        state = phase.label
        if phase is ChunkPhase.FAILED and chunk.ended:
            state = ChunkState(chunk.ended).name.lower()
            failure = _FAILURES.get(ChunkState(chunk.ended), "")
    else:
        state = _OPEN_STATES[phase]
    return AttemptView(attempt=chunk.attempt, state=state, failure=failure, worker=chunk.worker,
                       dispatched_at=_known(chunk.dispatched_at), running_at=_known(chunk.running_at),
                       committed_at=_known(chunk.committed_at), result=chunk.result or NO_RESULT)


class AttemptsNotFound(Exception):
    """What an attempts query names is not known: `code` is the wire's ErrorCode."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def job_chunk_attempts(state: StateQueries, job: bytes, chunk: int) -> tuple[list[AttemptView], int]:
    """The attempts of chunk `chunk` of `job` (`chunk_attempts`); raises
    AttemptsNotFound for a job never known or past retention, or no such chunk."""
    record: JobRecord | None = state.job_records.get(job)
    if record is None:
        if state.history_line(job) is not None:
            raise AttemptsNotFound(ErrorCode.UNKNOWN_JOB,
                                   f"job {job.hex()} is past retention: its attempts are no longer kept")
        raise AttemptsNotFound(ErrorCode.UNKNOWN_JOB, f"unknown job {job.hex()}")
    if not 0 <= chunk < record.spec.chunk_count:
        raise AttemptsNotFound(ErrorCode.INVALID,
                               f"job {job.hex()} has {record.spec.chunk_count} chunks, no chunk {chunk}")
    return chunk_attempts(record.chunks[chunk])


def _unpacked(past: bytes) -> tuple[int, list[tuple]]:
    if not past:
        return 0, []
    dropped, *entries = msgpack.unpackb(past, raw=False, use_list=False)
    return dropped, list(entries)


def _known(at: float) -> float | None:
    return at if at else None
