"""The leader's answers to clients: submitting, cancelling, releasing and
following jobs, listing nodes and events.

Rules of this module: those of master/leader.py, whose `Leader` inherits
`ClientRequests`. A handler takes the decoded request and `now` and returns
effects; one that needs a command committed queues it with its purpose
(`AnswerSubmit`, `AnswerCancel`, `AnswerRelease`) and answers from the
outcome. The state is read only through the leader's `StateReader`.

A submission goes in as the client sent it, with the cluster's defaults
filled in (its limits, and the poison limit of [scheduling]); whether its
dependencies exist, its references resolve, its times make sense is the
state's to judge at the commit, where the replicas agree on it.

What a handler uses of the leader: `node_id`, `default_limits`, `scheduling`, `_reader`,
`_waiters`, `_event_waiters`, `_events_checked`, `_lease`, and `_not_leading`, `_queue`, `_error`, `_count`,
`_dispatch_with_submission`, `_storage_figures`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from uds import wire
from uds.master import attempts, commands
from uds.master.event_log import MAX_EVENTS_PER_REPLY, EventFilter, EventsMatch, events_matching, events_since
from uds.master.event_waiters import EventsWaiter, EventWaiters
from uds.master.job_list import MAX_JOBS_PER_PAGE, JobFilter, job_page
from uds.master.leader_events import Effect, Reply, Request, Send, StateReader
from uds.master.links import LoadBalancerLease
from uds.master.views import (
    JobSpecNotFound, attempts_reply, event_records, job_spec_fields, job_spec_reply, job_status_reply, node_records,
)
from uds.master.waiters import StatusPage, StatusWaiters
from uds.wire.cluster import Scheduling
from uds.wire.enums import ErrorCode, JobState
from uds.wire.resources import ResourceLimits, ResourceSpecError, chunk_disk_cap, format_bytes

FINAL_JOB_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# ---- what a client's command's outcome is for -------------------------------------

@dataclass(frozen=True, slots=True)
class AnswerSubmit:
    request: Request
    job: bytes


@dataclass(frozen=True, slots=True)
class AnswerCancel:
    request: Request
    job: bytes


@dataclass(frozen=True, slots=True)
class AnswerRelease:
    request: Request
    job: bytes


def input_refs(records: list[dict]) -> tuple[commands.InputRef, ...]:
    """The wire's INPUT_REF records as the state's InputRef tuples."""
    return tuple(commands.InputRef(name=record["name"], chunk=record["chunk"], job=bytes(record["job"]),
                                   output=record["output"], from_chunk=record["from_chunk"])
                 for record in records)


class ClientRequests:
    """The handlers of JobSubmit, JobStatus, JobCancel, JobRelease,
    NodesQuery, EventsQuery, JobsQuery, AttemptsQuery and JobSpecQuery, and what follows the commit of a
    submission, a cancel or a release."""

    node_id: bytes
    default_limits: ResourceLimits
    scheduling: Scheduling
    _reader: StateReader
    _waiters: StatusWaiters
    _event_waiters: EventWaiters
    _events_checked: int
    _lease: LoadBalancerLease
    _not_leading: Callable[[Request], list[Effect]]
    _queue: Callable[..., None]
    _error: Callable[[Request, int, str], Reply]
    _count: Callable[..., None]
    _dispatch_with_submission: Callable[[commands.SubmitJob], None]
    _storage_figures: Callable[[list[commands.NodeView], float], dict[bytes, tuple[dict, float]]]

    def _on_job_submit(self, message: wire.JobSubmit, request: Request, now: float) -> list[Effect]:
        refused = self._not_leading(request)
        if refused:
            return refused
        try:
            limits = ResourceLimits.from_body(message.limits).with_defaults(self.default_limits)
        except ResourceSpecError as fault:
            return [self._error(request, ErrorCode.INVALID, str(fault))]
        if limits.disk_bytes > chunk_disk_cap(self.default_limits):
            # A sandboxed worker's slot filesystems hold no more than that.
            return [self._error(request, ErrorCode.INVALID, (
                f"disk: {format_bytes(limits.disk_bytes)} is more than a chunk may fill on this cluster's "
                f"workers ({format_bytes(chunk_disk_cap(self.default_limits))}, the cluster file's [limits] disk)"))]
        command = commands.SubmitJob(
            job=message.job_uuid, name=message.name, program=tuple(message.program),
            args=tuple(message.args), inputs={name: tuple(ref) for name, ref in message.inputs.items()},
            chunk_inputs=tuple({name: tuple(ref) for name, ref in per_chunk.items()}
                               for per_chunk in message.chunk_inputs),
            chunk_count=message.chunk_count, timeout_s=message.timeout_s,
            max_retries=message.max_retries, limits=limits, network=message.network,
            refs=input_refs(message.refs), after=tuple(bytes(job) for job in message.after),
            start_at=message.start_at, deadline=message.deadline, hold=bool(message.hold),
            cache=bool(message.cache), retry_backoff_s=float(message.retry_backoff_s),
            poison_after=self.scheduling.poison_after)
        self._queue(command, AnswerSubmit(request, command.job))
        self._dispatch_with_submission(command)
        return []

    def _submitted(self, purpose: AnswerSubmit, outcome: commands.Outcome) -> list[Effect]:
        if not outcome.ok:
            return [self._error(purpose.request, outcome.error_code or ErrorCode.INVALID, outcome.error)]
        self._count("jobs_submitted" if outcome.created else "jobs_resubmitted")
        return [Reply(purpose.request, wire.JobSubmitReply.make(
            self.node_id, request_id=purpose.request.request_id, job=purpose.job,
            created=1 if outcome.created else 0))]

    def _on_job_status(self, message: wire.JobStatus, request: Request, now: float) -> list[Effect]:
        refused = self._not_leading(request)
        if refused:
            return refused
        job = message.job_uuid
        if message.wait_ms:
            state = self._reader.read(lambda state: state.job_state(job))
            if state is not None and state not in FINAL_JOB_STATES:
                self._waiters.hold(message, request, now)
                return []
        return [self._status_reply(request, job, StatusPage.of(message))]

    def _answer_waiters(self, now: float, only_expired: bool = False) -> list[Effect]:
        """Answer waiters whose job has ended (unless only_expired) or whose wait is over."""
        if not len(self._waiters):
            return []
        ended: set[bytes] = set()
        if not only_expired:
            jobs = self._waiters.jobs()
            ended = self._reader.read(lambda state: {job for job in jobs
                                                     if state.job_state(job) in FINAL_JOB_STATES})
        return [self._status_reply(waiter.request, waiter.job, waiter.page)
                for waiter in self._waiters.due(now, ended)]

    def _status_reply(self, request: Request, job: bytes, page: StatusPage = StatusPage()) -> Effect:
        # A job past retention answers from its history line.
        view = self._reader.read(lambda state: state.status_view(job, page.first_chunk, page.chunk_limit))
        if view is None:
            return self._error(request, ErrorCode.UNKNOWN_JOB, f"unknown job {job.hex()}")
        return Reply(request, job_status_reply(self.node_id, request.request_id, job, view))

    def _on_job_cancel(self, message: wire.JobCancel, request: Request, now: float) -> list[Effect]:
        refused = self._not_leading(request)
        if refused:
            return refused
        self._queue(commands.CancelJob(job=message.job_uuid), AnswerCancel(request, message.job_uuid))
        return []

    def _cancelled(self, purpose: AnswerCancel, outcome: commands.Outcome) -> list[Effect]:
        if not outcome.ok:
            return [self._error(purpose.request, outcome.error_code or ErrorCode.INVALID, outcome.error)]
        effects = self._cancel_attempts(purpose.job, outcome.cancelled_attempts)
        effects.append(self._status_reply(purpose.request, purpose.job))
        return effects

    def _cancel_attempts(self, job: bytes, cancelled: tuple[tuple[int, int, bytes | None], ...]) -> list[Effect]:
        """Ask the balancer to kill a job's attempts that a commit ended while
        they were dispatched or running (a cancel, a deadline). Without a
        balancer holding the lease there is nobody to ask."""
        attempts = [[chunk, attempt] for chunk, attempt, _worker in cancelled]
        link = self._lease.holder
        if not attempts or link is None:
            return []
        return [Send(link.peer, wire.ChunkCancel.make(self.node_id, epoch=link.epoch, job=job, attempts=attempts))]

    def _on_job_release(self, message: wire.JobRelease, request: Request, now: float) -> list[Effect]:
        refused = self._not_leading(request)
        if refused:
            return refused
        self._queue(commands.ReleaseJob(job=message.job_uuid), AnswerRelease(request, message.job_uuid))
        return []

    def _released(self, purpose: AnswerRelease, outcome: commands.Outcome) -> list[Effect]:
        """The job's status once the release committed; releasing a job that is
        not held changes nothing and is answered the same way."""
        if not outcome.ok:
            return [self._error(purpose.request, outcome.error_code or ErrorCode.INVALID, outcome.error)]
        self._count("jobs_released" if outcome.changed else "jobs_released_again")
        return [self._status_reply(purpose.request, purpose.job)]

    def _on_nodes_query(self, message: wire.NodesQuery, request: Request, now: float) -> list[Effect]:
        # Only the leader: the live view of the workers is its soft state (a
        # follower would list every worker with no free slot), and a client
        # must not read an older table after a newer one.
        refused = self._not_leading(request)
        if refused:
            return refused
        nodes, lease = self._reader.read(lambda state: (state.nodes(), state.lease()))
        live = self._lease.holder.workers if self._lease.holder is not None else {}
        records = node_records(nodes, live, now, lease, self._storage_figures(nodes, now))
        return [Reply(request, wire.NodesReply.make(self.node_id, request_id=request.request_id, nodes=records))]

    def _on_events_query(self, message: wire.EventsQuery, request: Request, now: float) -> list[Effect]:
        # Only the leader: a follower's log may lag, and a client that read
        # an event must not read a log without it next.
        refused = self._not_leading(request)
        if refused:
            return refused
        if self._event_waiters.holds(request):
            return []           # resent while held: the held one is answered
        self._count("events_queries")
        limit = max(1, min(message.limit, MAX_EVENTS_PER_REPLY))
        wanted = EventFilter.of(message.job, message.node, message.kinds)
        match, last_seq = self._reader.read(lambda state: (
            events_matching(state, message.after_seq, wanted.job, wanted.node, wanted.kinds, limit),
            state.last_seq))
        if message.wait_ms and not match.events and not match.gap_from and match.through_seq >= last_seq:
            if not len(self._event_waiters):
                self._events_checked = last_seq     # what came before was read just now
            after_seq = max(message.after_seq, match.through_seq)
            if self._event_waiters.hold(request, after_seq, wanted, limit, message.wait_ms, now):
                self._count("events_queries_held")
                return []
            self._count("events_queries_refused")
            return [self._error(request, ErrorCode.BUSY, (
                f"{len(self._event_waiters)} events queries are held already: ask again later"))]
        return [self._events_reply(request, match, last_seq)]

    def _answer_event_waiters(self, now: float) -> list[Effect]:
        """Answer held events queries that an event committed since the last
        look matches, and those whose wait is over."""
        if not len(self._event_waiters):
            return []
        checked = self._events_checked
        new, last_seq = self._reader.read(lambda state: (
            events_since(state, checked) if state.last_seq > checked else [], state.last_seq))
        self._events_checked = max(checked, last_seq)
        waiters = self._event_waiters.matched(new) + self._event_waiters.due(now)
        return self._answer_events(waiters)

    def _answer_events(self, waiters: list[EventsWaiter]) -> list[Effect]:
        if not waiters:
            return []
        pages = self._reader.read(lambda state: [
            (events_matching(state, waiter.after_seq, waiter.wanted.job, waiter.wanted.node,
                             waiter.wanted.kinds, waiter.limit), state.last_seq)
            for waiter in waiters])
        return [self._events_reply(waiter.request, match, last_seq)
                for waiter, (match, last_seq) in zip(waiters, pages, strict=True)]

    def _events_reply(self, request: Request, match: EventsMatch, last_seq: int) -> Reply:
        records = event_records(match.events)
        # Cut to what one body holds: the reply then covers the log only so far.
        through_seq = match.through_seq
        if len(records) < len(match.events):
            through_seq = records[-1]["seq"] if records else match.events[0].seq - 1
        return Reply(request, wire.EventsReply.make(
            self.node_id, request_id=request.request_id, last_seq=last_seq, events=records,
            through_seq=through_seq, gap_from=match.gap_from, gap_to=match.gap_to))

    def _on_jobs_query(self, message: wire.JobsQuery, request: Request, now: float) -> list[Effect]:
        # Only the leader, like the events: a client paging through the list
        # must not read an older state for its next page.
        refused = self._not_leading(request)
        if refused:
            return refused
        before = None if message.before is None else (float(message.before[0]), bytes(message.before[1]))
        wanted = JobFilter(states=frozenset(JobState(state) for state in message.states),
                           since=message.since, before=before)
        limit = max(1, min(message.limit, MAX_JOBS_PER_PAGE))
        page = self._reader.read(lambda state: job_page(state.job_records, state.history, wanted, limit))
        records = [line.as_record() for line in page.lines]
        fit = wire.items_that_fit(records)
        return [Reply(request, wire.JobsReply.make(self.node_id, request_id=request.request_id,
                                                   jobs=records[:fit], more=page.more or fit < len(records)))]

    def _on_attempts_query(self, message: wire.AttemptsQuery, request: Request, now: float) -> list[Effect]:
        refused = self._not_leading(request)
        if refused:
            return refused
        job, chunk = message.job_uuid, message.chunk
        try:
            views, dropped = self._reader.read(lambda state: attempts.job_chunk_attempts(state, job, chunk))
        except attempts.AttemptsNotFound as missing:
            return [self._error(request, missing.code, str(missing))]
        return [Reply(request, attempts_reply(self.node_id, request.request_id, job, chunk, views, dropped))]

    def _on_job_spec_query(self, message: wire.JobSpecQuery, request: Request, now: float) -> list[Effect]:
        # Only the leader, like the attempts: a follower may not have the job yet.
        refused = self._not_leading(request)
        if refused:
            return refused
        job = message.job_uuid
        try:
            fields = self._reader.read(lambda state: job_spec_fields(state, job))
        except JobSpecNotFound as missing:
            return [self._error(request, missing.code, str(missing))]
        return [Reply(request, job_spec_reply(self.node_id, request.request_id, job, fields))]
