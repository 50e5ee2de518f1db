"""Held job_status requests: a `job_status` with `wait_ms` is answered when
its job ends or when its wait is over, whichever comes first, so that
`Job.wait()` hears of the end at once instead of polling.

Pure: the leader says which jobs have ended and what time it is.
"""
from __future__ import annotations

from dataclasses import dataclass

from uds import wire
from uds.master.leader_events import Request

# The most chunk reports one job_status reply carries (fewer if they do not
# fit in one body): reading them holds the state's lock, so keep it short.
STATUS_PAGE_CHUNKS = 5000
# The longest a job_status may wait for its job to end (wait_ms is capped).
MAX_STATUS_WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class StatusPage:
    """Which chunk reports a job_status asked for."""

    first_chunk: int = 0
    chunk_limit: int = 0        # 0: counts only

    @classmethod
    def of(cls, message: wire.JobStatus) -> StatusPage:
        if not message.detail:
            return cls(message.first_chunk, 0)
        asked = message.max_chunks or STATUS_PAGE_CHUNKS
        return cls(message.first_chunk, min(asked, STATUS_PAGE_CHUNKS))


@dataclass(frozen=True, slots=True)
class StatusWaiter:
    request: Request
    job: bytes
    page: StatusPage
    deadline: float


class StatusWaiters:
    def __init__(self) -> None:
        self._by_job: dict[bytes, list[StatusWaiter]] = {}

    def __len__(self) -> int:
        return sum(len(waiters) for waiters in self._by_job.values())

    def hold(self, message: wire.JobStatus, request: Request, now: float) -> None:
        deadline = now + min(message.wait_ms / 1000.0, MAX_STATUS_WAIT_S)
        job = message.job_uuid
        self._by_job.setdefault(job, []).append(StatusWaiter(request, job, StatusPage.of(message), deadline))

    def jobs(self) -> list[bytes]:
        return list(self._by_job)

    def due(self, now: float, ended: set[bytes] | frozenset[bytes] = frozenset()) -> list[StatusWaiter]:
        """Waiters to answer now, no longer held: those of an `ended` job,
        and those whose wait is over; job by job, each in the order it came."""
        deadline = self.next_deadline()
        if not ended and (deadline is None or now < deadline):
            return []           # the common case, on every Tick
        answered = []
        for job, waiters in list(self._by_job.items()):
            remaining = []
            for waiter in waiters:
                (answered if job in ended or now >= waiter.deadline else remaining).append(waiter)
            if remaining:
                self._by_job[job] = remaining
            else:
                del self._by_job[job]
        return answered

    def next_deadline(self) -> float | None:
        return min((waiter.deadline for waiters in self._by_job.values() for waiter in waiters),
                   default=None)
