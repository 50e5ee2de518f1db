"""The masters' event log, read and followed: `Connection.events`,
`Connection.follow`, `Job.events`, `as_completed` and `uds events`.

A follower asks the leader for the events after its last seq with a wait:
the leader holds the request until an event it wants commits (or the wait
is over), so events arrive one commit after they happen and nobody polls.
Between two requests nothing sleeps. The follower's place is the seq up to
which the masters said they answered (`through_seq`), which every master
agrees on, so after a leader change, a lost answer or a timeout it asks the
next leader from there and reads each event exactly once.

When the masters' log no longer holds events the follower might have
wanted (it fell more than the log's length behind), it yields one Event of
kind "gap" saying which seqs were dropped, then goes on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

from uds import wire
from uds.errors import InvalidJobError, RequestTimeout

if TYPE_CHECKING:
    from uds.client.api import Connection

# How long a follower's request waits at the leader for an event: long, to
# cost nearly nothing while nothing happens; a dead leader is noticed after
# that and the next one asked.
FOLLOW_WAIT_S = 20.0
# The leader holds a query at most this long (master/event_waiters.py).
MAX_WAIT_S = 30.0
PAGE_EVENTS = 1000
GAP = "gap"
JOB_FINAL_KINDS = ("job_succeeded", "job_failed", "job_cancelled")


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    at: float                   # the leader's clock when it proposed the event
    kind: str
    job: str | None             # hex
    chunk: int | None
    attempt: int | None
    node: str | None            # hex
    detail: str

    @classmethod
    def from_record(cls, record: dict) -> Event:
        job, node = record["job"], record["node"]
        return cls(record["seq"], record["at"], record["kind"], None if job is None else bytes(job).hex(),
                   record["chunk"], record["attempt"], None if node is None else bytes(node).hex(),
                   record["detail"])

    @classmethod
    def gap(cls, gap_from: int, gap_to: int, at: float) -> Event:
        return cls(gap_to, at, GAP, None, None, None, None,
                   f"events {gap_from}..{gap_to} were dropped from the masters' log before they were read")

    def __str__(self) -> str:
        """One line, as `uds events` prints it."""
        return "  ".join([f"{self.seq:>6}", time.strftime("%H:%M:%S", time.localtime(self.at)), self.kind,
                          *self.named()])

    def named(self, node: bool = True) -> list[str]:
        """What it names, as the event lines of `uds` print it: job, chunk,
        attempt, node (unless not asked for) and detail."""
        parts = []
        if self.job:
            parts.append(f"job {self.job[:8]}")
        if self.chunk is not None:
            parts.append(f"chunk {self.chunk}")
        if self.attempt is not None:
            parts.append(f"attempt {self.attempt}")
        if node and self.node:
            parts.append(f"node {self.node[:8]}")
        if self.detail:
            parts.append(self.detail)
        return parts


@dataclass(frozen=True, slots=True)
class EventsPage:
    events: list[Event]
    through_seq: int            # the page covers the log up to here: ask again after it
    last_seq: int               # the newest seq in the log
    gap: tuple[int, int] | None  # (from, to): dropped events that might have matched


def id_bytes(value: object, what: str) -> bytes | None:
    """A job or node id given as a Job, hex text or 16 bytes; None stays None."""
    if value is None:
        return None
    value = getattr(value, "id", value)
    if isinstance(value, (bytes, bytearray)) and len(value) == 16:
        return bytes(value)
    try:
        raw = bytes.fromhex(str(value))
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise InvalidJobError(f"{what} must be an id of 32 hex characters, not {value!r}")
    return raw


def check_kinds(kinds: Iterable[str]) -> list[str]:
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if len(kinds) > wire.MAX_EVENT_KINDS:
        raise InvalidJobError(f"at most {wire.MAX_EVENT_KINDS} kinds, not {len(kinds)}")
    if not all(isinstance(kind, str) and 0 < len(kind) <= 64 for kind in kinds):
        raise InvalidJobError(f"kinds must be event kind names, not {kinds!r}")
    return kinds


def read_page(connection: Connection, after: int, limit: int, job: object, node: object,
              kinds: Iterable[str], wait: float) -> EventsPage:
    """One events_query: events after `after`, held up to `wait` seconds if there are none."""
    if type(after) is not int or after < 0:
        raise InvalidJobError(f"after must be a seq (an integer from 0), not {after!r}")
    if type(limit) is not int or limit < 1:
        raise InvalidJobError(f"limit must be a positive integer, not {limit!r}")
    wait = min(max(0.0, float(wait)), MAX_WAIT_S)
    wait_ms = int(wait * 1000)
    job_id, node_id, kinds = id_bytes(job, "job"), id_bytes(node, "node"), check_kinds(kinds)
    reply = connection._leader.ask(
        lambda rid: wire.EventsQuery.make(connection.node_id, request_id=rid, after_seq=after,
                                          limit=min(limit, 10_000), job=job_id, node=node_id, kinds=kinds,
                                          wait_ms=wait_ms),
        wire.EventsReply, connection.timeout + wait, patience_s=wait)
    events = [Event.from_record(record) for record in reply.events]
    # An older master sends no through_seq: its page covers up to its last event, or all of the log.
    through_seq = reply.through_seq or (events[-1].seq if events else reply.last_seq)
    gap = (reply.gap_from, reply.gap_to) if reply.gap_from else None
    return EventsPage(events, through_seq, reply.last_seq, gap)


def follow(connection: Connection, after: int = 0, job: object = None, node: object = None,
           kinds: Iterable[str] = (), wait: float = FOLLOW_WAIT_S,
           deadline: float | None = None) -> Iterator[Event]:
    """Every event after seq `after` that matches, as it commits, for ever
    (or until the monotonic `deadline`: RequestTimeout). A gap is yielded as
    an Event of kind "gap"."""
    seq = after
    kinds = check_kinds(kinds)
    while True:
        patience = wait
        if deadline is not None:
            patience = min(wait, deadline - time.monotonic())
            if patience <= 0:
                raise RequestTimeout(f"still following events at seq {seq} when the time was up")
        try:
            page = read_page(connection, seq, PAGE_EVENTS, job, node, kinds, patience)
        except RequestTimeout:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            continue            # no master answered in time: ask again from the same place
        if page.gap is not None and page.gap[1] > seq:
            yield Event.gap(max(page.gap[0], seq + 1), page.gap[1], time.time())
            seq = page.gap[1]
        for event in page.events:
            if event.seq > seq:
                seq = event.seq
                yield event
        seq = max(seq, page.through_seq)


def job_events(connection: Connection, job_id: str, after: int = 0, follow_on: bool = True) -> Iterator[Event]:
    """The job's events after `after`: with `follow_on`, as they commit,
    ending after its final event (job_succeeded, job_failed or
    job_cancelled); otherwise those in the log now."""
    if not follow_on:
        seq = after
        while True:
            page = read_page(connection, seq, PAGE_EVENTS, job_id, None, (), 0.0)
            if page.gap is not None and page.gap[1] > seq:
                yield Event.gap(max(page.gap[0], seq + 1), page.gap[1], time.time())
            yield from (event for event in page.events if event.seq > seq)
            if page.through_seq <= seq or page.through_seq >= page.last_seq:
                return
            seq = page.through_seq
    for event in follow(connection, after, job=job_id):
        yield event
        if event.kind in JOB_FINAL_KINDS:
            return
        if event.kind == GAP and connection.job_status(job_id, detail=False).done:
            # Its end may be among what was dropped: read what the log still has, then stop.
            yield from job_events(connection, job_id, event.seq, follow_on=False)
            return
