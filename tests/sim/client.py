"""A client that asks the masters the way client/api.py's `_ask` does: it
finds the leader among the masters through the real LeaderSearch
(wire/leader_search.py), with the client's silence and backoff, driven by
the simulation's clock and random source.

Each request (a submission, a release, a cancel, a status) is one request
id: the same message goes to each master tried, and again to one that
holds it unanswered for RESEND_AFTER_S; an answer to it from any master
that was sent it counts. A refusal (ERR_NOT_LEADER, busy) moves the search
on; a master silent past the search's silence is left for the next. Each
submission, release and cancel has a connection (a search) of its own, as
if from its own process; the status polls share one, as one `uds status
--watch` would, and ask one job at a time. A job counts as acknowledged
once job_submit_reply arrived. A request the leader refuses otherwise (no
worker can run the job yet, a job not known yet) is made again, as a user
would, RESEND_SUBMIT_S later with a new request id and the same job id;
so is one unanswered for DEFAULT_REQUEST_TIMEOUT_S.

A submission that names other jobs (after=, refs) is made once each of
them is acknowledged, as a user's program would hold their Job objects;
its start time and deadline are fixed at its first request, so that a
request made again carries the same spec. What the polls tell the client
of each job's state goes to `on_status`, for the checker.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from uds import wire
from uds.client.api import (
    BACKOFF_CAP_S, BACKOFF_FIRST_S, DEFAULT_REQUEST_TIMEOUT_S, REFUSAL_CHECK_S, RESEND_AFTER_S, SILENCE_S,
)
from uds.wire.enums import JobState
from uds.wire.leader_search import LeaderSearch
from uds.wire.resources import NO_LIMITS, ResourceLimits

from .host import Host
from .loop import Simulation

# A refused request is made again this long after.
RESEND_SUBMIT_S = 2.0
JOB_TIMEOUT_S = 3600.0
# Between two status polls (of the next job not known to be final).
POLL_S = (0.4, 1.0)
FINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True)
class JobPlan:
    """What a job the client submits asks for; times are from its first
    request (start_in, deadline_in) or from its acknowledgement (release_in)."""

    job: bytes
    chunk_count: int
    max_retries: int = 0
    limits: ResourceLimits = NO_LIMITS
    refs: tuple = ()                    # master.commands.InputRef
    after: tuple[bytes, ...] = ()
    hold: bool = False
    start_in: float | None = None
    deadline_in: float | None = None
    cache: bool = False
    release_in: float | None = None     # a held job: released this long after its acknowledgement
    cancel_in: float | None = None      # ... or cancelled instead

    @property
    def needs(self) -> tuple[bytes, ...]:
        """The jobs it names, which must be acknowledged before it is submitted."""
        return tuple(dict.fromkeys([*self.after, *(ref.job for ref in self.refs)]))


@dataclass
class _Ask:
    kind: str                                                   # "submit", "release", "cancel", "status"
    job: bytes
    search: LeaderSearch
    make: Callable[[int], wire.Message]                         # request id -> message
    message: wire.Message | None = None
    holding: dict[int, float] = field(default_factory=dict)    # master index -> when last sent
    deadline: float = 0.0
    wake: int = 0                                               # the wake that counts
    done: bool = False


class SimClient(Host):
    def __init__(self, sim: Simulation, name: str, masters: tuple[str, ...], program: tuple[bytes, int],
                 inputs: dict[str, tuple[bytes, int]] | None = None) -> None:
        super().__init__(sim, name)
        self.masters = masters
        self.program = program
        self.inputs = dict(inputs or {})
        self.node_id = b"client".ljust(16, b"\0")
        self.submissions: dict[bytes, _Ask] = {}
        self.by_request: dict[int, _Ask] = {}
        self.acknowledged: dict[bytes, float] = {}       # job -> when the reply came
        self.plans: dict[bytes, JobPlan] = {}
        self.times: dict[bytes, tuple[float | None, float | None]] = {}   # job -> (start_at, deadline)
        self.released_at: dict[bytes, float] = {}        # job -> when a release was first sent
        self.cancelled_at: dict[bytes, float] = {}       # job -> when a cancel was first sent
        self.waiting: list[JobPlan] = []                 # submissions waiting for the jobs they name
        self.seen: dict[bytes, JobState] = {}            # job -> the last state a status reply gave
        self.on_status: Callable[[bytes, JobState], None] = lambda job, state: None
        self.poller: LeaderSearch | None = None
        self.polling = False
        self.next_poll = 0
        self.next_request_id = 1

    def _search(self) -> LeaderSearch:
        return LeaderSearch(self.masters, self.sim.random, silence_s=SILENCE_S,
                            backoff_first_s=BACKOFF_FIRST_S, backoff_cap_s=BACKOFF_CAP_S)

    # -- what the client does --------------------------------------------------------

    def submit(self, job: bytes, chunk_count: int, max_retries: int, limits: ResourceLimits = NO_LIMITS) -> None:
        self.submit_plan(JobPlan(job, chunk_count, max_retries, limits))

    def submit_plan(self, plan: JobPlan) -> None:
        """Submit the job now, or as soon as every job it names is acknowledged."""
        self.plans[plan.job] = plan
        if any(job not in self.acknowledged for job in plan.needs):
            self.waiting.append(plan)
            return
        now = self.sim.now
        self.times[plan.job] = (None if plan.start_in is None else now + plan.start_in,
                                None if plan.deadline_in is None else now + plan.deadline_in)
        ask = _Ask("submit", plan.job, self._search(), lambda request_id: self._submit_message(plan, request_id))
        self.submissions[plan.job] = ask
        self._request(ask)

    def _submit_message(self, plan: JobPlan, request_id: int) -> wire.JobSubmit:
        start_at, deadline = self.times[plan.job]
        return wire.JobSubmit.make(
            self.node_id, request_id=request_id, job=plan.job, chunk_count=plan.chunk_count,
            program=list(self.program), args=[],
            inputs={name: list(ref) for name, ref in self.inputs.items()}, chunk_inputs=[], timeout_s=JOB_TIMEOUT_S,
            max_retries=plan.max_retries, name="", limits=plan.limits.as_body(),
            refs=[dict(name=ref.name, chunk=ref.chunk, job=ref.job, output=ref.output, from_chunk=ref.from_chunk)
                  for ref in plan.refs],
            after=list(plan.after), start_at=start_at, deadline=deadline, hold=plan.hold, cache=plan.cache)

    def _acknowledged(self, job: bytes) -> None:
        now = self.sim.now
        self.acknowledged.setdefault(job, now)
        plan = self.plans.get(job)
        if plan is not None and plan.release_in is not None:
            self.later(plan.release_in, self._ask_about, "release", job, wire.JobRelease)
        if plan is not None and plan.cancel_in is not None:
            self.later(plan.cancel_in, self._ask_about, "cancel", job, wire.JobCancel)
        ready = [plan for plan in self.waiting if all(need in self.acknowledged for need in plan.needs)]
        self.waiting = [plan for plan in self.waiting if plan not in ready]
        for plan in ready:
            self.submit_plan(plan)
        if not self.polling:
            self.polling = True
            self.later(self.sim.random.uniform(*POLL_S), self._poll)

    def _ask_about(self, kind: str, job: bytes, kind_of: type) -> None:
        if self.seen.get(job) in FINAL_JOB_STATES:
            return
        (self.released_at if kind == "release" else self.cancelled_at).setdefault(job, self.sim.now)
        self._request(_Ask(kind, job, self._search(), lambda request_id: kind_of.make(
            self.node_id, request_id=request_id, job=job)))

    def _poll(self) -> None:
        """Ask for the status of the next acknowledged job not known to be final."""
        jobs = [job for job in self.acknowledged if self.seen.get(job) not in FINAL_JOB_STATES]
        if not jobs:
            self.polling = False
            return
        job = jobs[self.next_poll % len(jobs)]
        self.next_poll += 1
        if self.poller is None:
            self.poller = self._search()
        self._request(_Ask("status", job, self.poller, lambda request_id: wire.JobStatus.make(
            self.node_id, request_id=request_id, job=job, detail=0, wait_ms=0, first_chunk=0, max_chunks=0)))

    # -- asking the leader --------------------------------------------------------------

    def _request(self, ask: _Ask) -> None:
        """A new request (a new id) for the ask."""
        if ask.done or (ask.kind == "submit" and ask.job in self.acknowledged):
            return
        self.next_request_id += 1
        ask.message = ask.make(self.next_request_id)
        self.by_request[self.next_request_id] = ask
        ask.holding.clear()
        ask.deadline = self.sim.now + DEFAULT_REQUEST_TIMEOUT_S
        self._step(ask)

    def _again_later(self, ask: _Ask) -> None:
        self.by_request.pop(ask.message.request_id, None)
        if ask.kind == "status":
            self._finished(ask)
        else:
            self.later(RESEND_SUBMIT_S, self._request, ask)

    def _finished(self, ask: _Ask) -> None:
        ask.done = True
        ask.wake += 1
        self.by_request.pop(ask.message.request_id, None)
        if ask.kind == "status":
            self.later(self.sim.random.uniform(*POLL_S), self._poll)

    def _step(self, ask: _Ask) -> None:
        """One turn of `_ask`'s loop up to its wait: send to the target (once,
        or again after RESEND_AFTER_S), then wait for an answer."""
        search, now = ask.search, self.sim.now
        target = search.due(now)
        if target is not None:
            if target not in ask.holding or now - ask.holding[target] >= RESEND_AFTER_S:
                self.send(search.addresses[target], ask.message)
                ask.holding[target] = now
            search.asked(now)
        wake_in = min(REFUSAL_CHECK_S, ask.deadline - now,
                      search.wait_s(now) if target is None else search.silence_s)
        ask.wake += 1
        self.later(max(0.0, wake_in), self._woken, ask, ask.wake)

    def _woken(self, ask: _Ask, wake: int) -> None:
        if wake != ask.wake or ask.done:
            return
        if self.by_request.get(ask.message.request_id) is not ask:
            return
        ask.search.overdue(self.sim.now)
        if self.sim.now >= ask.deadline:
            self._again_later(ask)
            return
        self._step(ask)

    def on_message(self, source: str, message: wire.Message) -> None:
        ask = self.by_request.get(getattr(message, "request_id", 0))
        if ask is None or ask.done:
            return
        search, now = ask.search, self.sim.now
        index = search.index_of(source)
        if index is None or index not in ask.holding:
            return
        search.heard_from(index, now)
        if isinstance(message, wire.Error) and message.error_code in (wire.ErrorCode.NOT_LEADER,
                                                                      wire.ErrorCode.BUSY):
            ask.holding.pop(index, None)
            search.refused(index, wire.leader_hint(message), now)
            self._step(ask)
            return
        search.served(index, now)
        if isinstance(message, wire.JobSubmitReply) and ask.kind == "submit" and message.job_uuid == ask.job:
            self._finished(ask)
            self._acknowledged(ask.job)
        elif isinstance(message, wire.JobStatusReply) and message.job_uuid == ask.job:
            state = JobState(message.state)
            self.seen[ask.job] = state
            if ask.kind == "status":
                # Only the polls, one after another on one connection, are
                # in order: a release's answer may overtake a later poll's.
                self.on_status(ask.job, state)
            self._finished(ask)
        elif isinstance(message, wire.Error):
            self._again_later(ask)      # the user is told, and asks again
        else:
            self._step(ask)
