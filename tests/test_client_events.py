"""The client's follower (client/events.py) against a stand-in leader link:
it asks after the seq the masters said they covered, yields a gap as an
event of kind "gap", asks again from the same place after a timeout, and
a job's events end at its final event."""
from __future__ import annotations

import types

import pytest

from uds import wire
from uds.client.events import GAP, Event, follow, job_events, read_page
from uds.errors import InvalidJobError, RequestTimeout

MASTER = bytes(16)
JOB = "ab" * 16


def record(seq: int, kind: str = "chunk_started", job: str | None = JOB) -> dict:
    return dict(seq=seq, at=float(seq), kind=kind, job=None if job is None else bytes.fromhex(job), chunk=0,
                attempt=1, node=None, detail="")


class StandInLink:
    """Answers each ask with the next of `answers` (an EventsReply's fields,
    or an exception to raise), and keeps what was asked."""

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.asked: list[wire.EventsQuery] = []

    def ask(self, make, expected, timeout, patience_s=0.0):
        query = make(len(self.asked) + 1)
        self.asked.append(query)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return wire.EventsReply.make(MASTER, request_id=query.request_id, **answer)


def connection(answers: list, done: bool = True):
    link = StandInLink(answers)
    status = types.SimpleNamespace(done=done)
    return types.SimpleNamespace(node_id=bytes(16), timeout=5.0, _leader=link,
                                 job_status=lambda job_id, detail=False: status), link


def test_a_page_carries_its_events_coverage_and_gap():
    conn, link = connection([dict(last_seq=40, events=[record(7), record(9)], through_seq=30,
                                  gap_from=2, gap_to=5)])
    page = read_page(conn, 1, 100, JOB, None, ["chunk_started"], wait=3.0)
    assert [event.seq for event in page.events] == [7, 9] and page.events[0].job == JOB
    assert (page.through_seq, page.last_seq, page.gap) == (30, 40, (2, 5))
    [asked] = link.asked
    assert (asked.after_seq, asked.job, asked.kinds, asked.wait_ms) == (1, bytes.fromhex(JOB), ["chunk_started"],
                                                                        3000)


def test_bad_arguments_are_refused_before_anything_is_sent():
    conn, link = connection([])
    for arguments in (dict(job="nothex"), dict(after=-1), dict(limit=0), dict(kinds=["x"] * 33)):
        with pytest.raises(InvalidJobError):
            read_page(conn, **{"after": 0, "limit": 10, "job": None, "node": None, "kinds": (), "wait": 0.0,
                               **arguments})
    assert link.asked == []


def test_the_follower_asks_after_through_seq_yields_a_gap_and_rides_out_a_timeout():
    conn, link = connection([
        dict(last_seq=200, events=[], through_seq=120, gap_from=1, gap_to=99),
        RequestTimeout("no answer"),
        dict(last_seq=200, events=[record(150)], through_seq=200, gap_from=0, gap_to=0),
        dict(last_seq=201, events=[record(150), record(201)], through_seq=201, gap_from=0, gap_to=0),
    ])
    events = follow(conn, 0, job=JOB)
    gap = next(events)
    assert gap.kind == GAP and gap.seq == 99 and "events 1..99 were dropped" in gap.detail
    assert [next(events).seq, next(events).seq] == [150, 201]      # 150 not twice
    assert [query.after_seq for query in link.asked] == [0, 120, 120, 200]
    assert all(query.wait_ms == 20_000 for query in link.asked)


def test_a_jobs_events_end_at_its_final_event():
    conn, link = connection([
        dict(last_seq=10, events=[record(3, "job_submitted"), record(4)], through_seq=10, gap_from=0, gap_to=0),
        dict(last_seq=12, events=[record(12, "job_succeeded")], through_seq=12, gap_from=0, gap_to=0),
    ])
    assert [event.kind for event in job_events(conn, JOB)] == ["job_submitted", "chunk_started", "job_succeeded"]
    assert not link.answers


def test_a_jobs_events_after_a_gap_stop_once_the_job_is_done():
    conn, link = connection([
        dict(last_seq=500, events=[], through_seq=500, gap_from=1, gap_to=400),
        dict(last_seq=500, events=[], through_seq=500, gap_from=0, gap_to=0),
    ], done=True)
    assert [event.kind for event in job_events(conn, JOB)] == [GAP]


def test_without_follow_a_job_reads_what_the_log_holds_page_by_page():
    conn, link = connection([
        dict(last_seq=50, events=[record(3, "job_submitted")], through_seq=20, gap_from=0, gap_to=0),
        dict(last_seq=50, events=[record(30)], through_seq=50, gap_from=0, gap_to=0),
    ])
    assert [event.seq for event in job_events(conn, JOB, follow_on=False)] == [3, 30]
    assert [query.wait_ms for query in link.asked] == [0, 0]


def test_an_event_prints_as_one_line():
    event = Event.from_record(record(42, "chunk_started"))
    assert str(event).split()[2:] == ["chunk_started", "job", JOB[:8], "chunk", "0", "attempt", "1"]
