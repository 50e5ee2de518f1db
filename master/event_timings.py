"""How long chunks wait and jobs take, read from the committed event log:
what the leader's /metrics histograms observe (doc/metrics.md).

Rules of this module:
- Pure: events in, durations out; no clock (the events' own `at`, the
  proposal's wall clock, times everything), no sockets, no metrics library.
  The shell (master/node.py) feeds it the events each commit added and
  observes what it returns.
- Only the leader feeds it, from the events committed while it leads: a
  chunk made ready before that has no start, and is not timed, rather than
  timed from a guess. `forget_all()` at a change of leader.
- What it remembers ends with what it times: a job's times go at its final
  event, a chunk's at its dispatch; so it holds no more than the jobs
  unfinished and the chunks queued.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

from uds.master.commands import (
    CHUNK_DISPATCHED, CHUNK_LOST, CHUNK_RETRIED, JOB_CANCELLED, JOB_FAILED, JOB_READY, JOB_RELEASED,
    JOB_SUBMITTED, JOB_SUCCEEDED, Event,
)

# The histograms a duration is for.
CHUNK_QUEUE_WAIT = "chunk_queue_wait_seconds"
JOB_SUBMIT_TO_RESULT = "job_submit_to_result_seconds"

JOB_FINAL = frozenset({JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELLED})
# A chunk queued again (a retry, a lost worker's attempt): it waits from then.
CHUNK_REQUEUED = frozenset({CHUNK_RETRIED, CHUNK_LOST})


class Duration(NamedTuple):
    histogram: str
    seconds: float


class EventTimings:
    """Chunk queue wait (the chunk queued, by its job's submission, release
    or readiness or by its requeue, to its dispatch committed) and job
    submit-to-result (submission to its final state committed)."""

    def __init__(self) -> None:
        self._submitted: dict[bytes, float] = {}              # job -> submitted at
        self._ready: dict[bytes, float] = {}                  # job -> its chunks queued at
        self._requeued: dict[bytes, dict[int, float]] = {}    # job -> chunk -> queued again at

    def __len__(self) -> int:
        """Jobs remembered."""
        return len(self._submitted.keys() | self._ready.keys() | self._requeued.keys())

    def forget_all(self) -> None:
        self._submitted.clear()
        self._ready.clear()
        self._requeued.clear()

    def durations(self, events: Iterable[Event]) -> list[Duration]:
        """What the events, oldest first, end: each a duration for a histogram."""
        found: list[Duration] = []
        for event in events:
            job = event.job
            if job is None:
                continue
            if event.kind == JOB_SUBMITTED:
                self._submitted[job] = self._ready[job] = event.at
            elif event.kind in (JOB_READY, JOB_RELEASED):
                self._ready[job] = event.at
            elif event.kind in CHUNK_REQUEUED and event.chunk is not None:
                self._requeued.setdefault(job, {})[event.chunk] = event.at
            elif event.kind == CHUNK_DISPATCHED and event.chunk is not None:
                queued_at = self._requeued.get(job, {}).pop(event.chunk, None)
                if queued_at is None:
                    queued_at = self._ready.get(job)
                if queued_at is not None:
                    found.append(Duration(CHUNK_QUEUE_WAIT, max(0.0, event.at - queued_at)))
            elif event.kind in JOB_FINAL:
                submitted_at = self._submitted.pop(job, None)
                self._ready.pop(job, None)
                self._requeued.pop(job, None)
                if submitted_at is not None:
                    found.append(Duration(JOB_SUBMIT_TO_RESULT, max(0.0, event.at - submitted_at)))
        return found
