"""A client that submits jobs the way client/api.py's `_ask` does: it finds
the leader among the masters through the real LeaderSearch
(wire/leader_search.py), with the client's silence and backoff, driven by
the simulation's clock and random source.

Each submission is one request id and one job id: the same message goes to
each master tried, and again to one that holds it unanswered for
RESEND_AFTER_S; an answer to it from any master that was sent it counts. A
refusal (ERR_NOT_LEADER, busy) moves the search on; a master silent past
the search's silence is left for the next. Each submission has a
connection (a search) of its own, as if from its own process. A job
counts as acknowledged once job_submit_reply arrived. A submission the
leader refuses (no worker can run the job yet) is made again, as a user
would, RESEND_SUBMIT_S later with a new request id and the same job id;
so is one unanswered for DEFAULT_REQUEST_TIMEOUT_S.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from uds import wire
from uds.client.api import (
    BACKOFF_CAP_S, BACKOFF_FIRST_S, DEFAULT_REQUEST_TIMEOUT_S, REFUSAL_CHECK_S, RESEND_AFTER_S, SILENCE_S,
)
from uds.wire.leader_search import LeaderSearch
from uds.wire.resources import NO_LIMITS, ResourceLimits

from .host import Host
from .loop import Simulation

# A refused submission is made again this long after.
RESEND_SUBMIT_S = 2.0
JOB_TIMEOUT_S = 3600.0


@dataclass
class _Submission:
    job: bytes
    search: LeaderSearch
    message: wire.JobSubmit | None = None
    holding: dict[int, float] = field(default_factory=dict)   # master index -> when last sent
    deadline: float = 0.0
    wake: int = 0                                               # the wake that counts


class SimClient(Host):
    def __init__(self, sim: Simulation, name: str, masters: tuple[str, ...], program: tuple[bytes, int],
                 inputs: dict[str, tuple[bytes, int]] | None = None) -> None:
        super().__init__(sim, name)
        self.masters = masters
        self.program = program
        self.inputs = dict(inputs or {})
        self.node_id = b"client".ljust(16, b"\0")
        self.submissions: dict[bytes, _Submission] = {}
        self.by_request: dict[int, _Submission] = {}
        self.acknowledged: dict[bytes, float] = {}       # job -> when the reply came
        self.next_request_id = 1

    def submit(self, job: bytes, chunk_count: int, max_retries: int, limits: ResourceLimits = NO_LIMITS) -> None:
        submission = _Submission(job, LeaderSearch(self.masters, self.sim.random, silence_s=SILENCE_S,
                                                   backoff_first_s=BACKOFF_FIRST_S, backoff_cap_s=BACKOFF_CAP_S))
        self.submissions[job] = submission
        self._request(submission, chunk_count, max_retries, limits)

    def _request(self, submission: _Submission, chunk_count: int, max_retries: int,
                 limits: ResourceLimits) -> None:
        """A new request (a new id) for the submission's job."""
        if submission.job in self.acknowledged:
            return
        self.next_request_id += 1
        submission.message = wire.JobSubmit.make(
            self.node_id, request_id=self.next_request_id, job=submission.job, chunk_count=chunk_count,
            program=list(self.program), args=[],
            inputs={name: list(ref) for name, ref in self.inputs.items()}, chunk_inputs=[], timeout_s=JOB_TIMEOUT_S,
            max_retries=max_retries, name="", limits=limits.as_body())
        self.by_request[self.next_request_id] = submission
        submission.holding.clear()
        submission.deadline = self.sim.now + DEFAULT_REQUEST_TIMEOUT_S
        self._step(submission)

    def _again_later(self, submission: _Submission) -> None:
        message = submission.message
        self.by_request.pop(message.request_id, None)
        self.later(RESEND_SUBMIT_S, self._request, submission, message.chunk_count, message.max_retries,
                   ResourceLimits.from_body(message.limits))

    def _step(self, submission: _Submission) -> None:
        """One turn of `_ask`'s loop up to its wait: send to the target (once,
        or again after RESEND_AFTER_S), then wait for an answer."""
        search, now = submission.search, self.sim.now
        target = search.due(now)
        if target is not None:
            if target not in submission.holding or now - submission.holding[target] >= RESEND_AFTER_S:
                self.send(search.addresses[target], submission.message)
                submission.holding[target] = now
            search.asked(now)
        wake_in = min(REFUSAL_CHECK_S, submission.deadline - now,
                      search.wait_s(now) if target is None else search.silence_s)
        submission.wake += 1
        self.later(max(0.0, wake_in), self._woken, submission, submission.wake)

    def _woken(self, submission: _Submission, wake: int) -> None:
        if wake != submission.wake or submission.job in self.acknowledged:
            return
        if self.by_request.get(submission.message.request_id) is not submission:
            return
        submission.search.overdue(self.sim.now)
        if self.sim.now >= submission.deadline:
            self._again_later(submission)
            return
        self._step(submission)

    def on_message(self, source: str, message: wire.Message) -> None:
        submission = self.by_request.get(getattr(message, "request_id", 0))
        if submission is None or submission.job in self.acknowledged:
            return
        search, now = submission.search, self.sim.now
        index = search.index_of(source)
        if index is None or index not in submission.holding:
            return
        search.heard_from(index, now)
        if isinstance(message, wire.Error) and message.error_code in (wire.ErrorCode.NOT_LEADER,
                                                                      wire.ErrorCode.BUSY):
            submission.holding.pop(index, None)
            search.refused(index, wire.leader_hint(message), now)
            self._step(submission)
            return
        search.served(index, now)
        if isinstance(message, wire.JobSubmitReply) and message.job_uuid == submission.job:
            self.acknowledged.setdefault(submission.job, now)
            self.by_request.pop(message.request_id, None)
            submission.wake += 1
        elif isinstance(message, wire.Error):
            self._again_later(submission)      # the user is told, and submits again
        else:
            self._step(submission)
