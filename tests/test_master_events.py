"""The event log read with a filter (master/event_log.py), held events
queries (master/event_waiters.py), and the leader answering them: at the
commit of an event they want and not before, at the end of their wait, and
with the not-leader error once it stops leading."""
from __future__ import annotations

import pickle
from collections import deque

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from uds import wire
from uds.master.commands import Event
from uds.master.event_log import EventFilter, events_matching, events_since
from uds.master.event_waiters import MAX_EVENTS_WAIT_S, EventWaiters
from uds.master.leader import RaftStatus, Reply, Request, Tick, Wake
from uds.master.state import ClusterState
from uds.wire import ChunkState, ErrorCode

from test_master_leader import (
    BALANCER_PEER, CLIENT, CLIENT_PEER, JOB, JOB_B, chunk_events, event_record, leading, received,
    request, submit, submit_command, with_balancer,
)

NODE_A, NODE_B = b"a" * 16, b"b" * 16


def log_of(events: list[tuple[str, bytes | None, bytes | None]], dropped: int = 0,
           limit: int | None = None) -> ClusterState:
    """A state whose log holds `events` (kind, job, node), seqs from
    dropped + 1 on: the `dropped` first ones are gone from it already."""
    state = ClusterState()
    state.event_log = deque(maxlen=limit)
    for seq, (kind, job, node) in enumerate(events, start=dropped + 1):
        state.event_log.append(Event(seq, float(seq), kind, job, None, None, node, ""))
    state.last_seq = dropped + len(events)
    return state


def seqs(events: list[Event]) -> list[int]:
    return [event.seq for event in events]


# ---- event_log.events_matching -----------------------------------------------------

MIXED = [("job_submitted", JOB, None), ("node_joined", None, NODE_A), ("chunk_started", JOB, NODE_A),
         ("job_submitted", JOB_B, None), ("chunk_started", JOB_B, NODE_B), ("job_succeeded", JOB, None)]


def test_filters_on_job_node_and_kinds_and_the_reply_covers_the_whole_log():
    state = log_of(MIXED)
    assert seqs(events_matching(state, 0).events) == [1, 2, 3, 4, 5, 6]
    assert seqs(events_matching(state, 0, job=JOB).events) == [1, 3, 6]
    assert seqs(events_matching(state, 0, node=NODE_A).events) == [2, 3]
    assert seqs(events_matching(state, 0, kinds=["chunk_started", "node_joined"]).events) == [2, 3, 5]
    assert seqs(events_matching(state, 0, job=JOB_B, node=NODE_B).events) == [5]
    assert seqs(events_matching(state, 3, job=JOB).events) == [6]
    match = events_matching(state, 0, job=JOB, kinds=["node_lost"])
    assert match == ([], 6, 0, 0)        # nothing matched, all of it looked at


def test_a_reply_cut_by_its_limit_covers_the_log_to_its_last_event():
    state = log_of(MIXED)
    match = events_matching(state, 0, kinds=["chunk_started"], limit=1)
    assert seqs(match.events) == [3] and match.through_seq == 3
    assert seqs(events_matching(state, match.through_seq, kinds=["chunk_started"], limit=1).events) == [5]


def test_one_query_scans_at_most_its_scan_limit_and_says_how_far_it_looked():
    state = log_of([("chunk_started", JOB_B, None)] * 50 + [("chunk_started", JOB, None)])
    match = events_matching(state, 0, job=JOB, scan_limit=20)
    assert match == ([], 20, 0, 0)
    match = events_matching(state, 40, job=JOB, scan_limit=20)
    assert seqs(match.events) == [51] and match.through_seq == 51


def test_asking_past_the_end_finds_nothing_and_covers_the_log():
    state = log_of(MIXED)
    assert events_matching(state, 6) == ([], 6, 0, 0)
    assert events_matching(state, 9) == ([], 6, 0, 0)
    assert events_matching(ClusterState(), 0) == ([], 0, 0, 0)


def test_a_gap_is_what_the_log_dropped_after_the_seq_asked_from():
    state = log_of(MIXED, dropped=10)                   # seqs 11..16 kept
    assert events_matching(state, 0)[2:] == (1, 10)
    assert events_matching(state, 4, node=NODE_A)[2:] == (5, 10)
    assert events_matching(state, 10)[2:] == (0, 0)
    assert seqs(events_matching(state, 4).events) == [11, 12, 13, 14, 15, 16]


def test_a_jobs_gap_is_only_its_own_dropped_events():
    state = log_of([("chunk_started", JOB_B, None)] * 10 + [("job_submitted", JOB, None),
                                                            ("chunk_started", JOB, None)], dropped=100)
    state.job_records[JOB] = object.__new__(_Record)
    state.job_records[JOB].first_seq = 111
    assert events_matching(state, 0, job=JOB) == ([state.event_log[10], state.event_log[11]], 112, 0, 0)
    # Submitted before the log's start: its events between there and the log are gone.
    state.job_records[JOB].first_seq = 95
    assert events_matching(state, 0, job=JOB)[2:] == (95, 100)
    assert events_matching(state, 97, job=JOB)[2:] == (98, 100)
    # Not known (forgotten, or from an older snapshot): whatever was dropped might have matched.
    assert events_matching(state, 0, job=JOB_B)[2:] == (1, 100)


class _Record:
    first_seq = 0


def test_a_jobs_events_are_found_from_its_submission_on():
    state = ClusterState()
    state.apply([submit_command(JOB_B)], 1.0)
    state.apply([submit_command(JOB, chunks=2)], 2.0)
    record = state.job_records[JOB]
    assert record.first_seq == state.last_seq == 2
    assert seqs(events_matching(state, 0, job=JOB, scan_limit=1).events) == [2]
    # Older snapshots have no first_seq: they load with 0, and the log is scanned.
    old = pickle.loads(pickle.dumps(record))
    assert old.first_seq == 2
    values = record.__getstate__()[:-1]
    older = object.__new__(type(record))
    older.__setstate__(values)
    assert older.first_seq == 0 and older.spec == record.spec
    older.__setstate__(values[:10])
    assert older.first_seq == 0 and older.ready


@settings(max_examples=200, deadline=None)
@given(kinds=st.lists(st.sampled_from(["a", "b", "c"]), max_size=40), dropped=st.integers(0, 5),
       after=st.integers(0, 50), wanted=st.sets(st.sampled_from(["a", "b", "c"])),
       limit=st.integers(1, 5), scan_limit=st.integers(1, 10))
def test_paging_by_through_seq_reads_every_matching_event_once(kinds, dropped, after, wanted, limit, scan_limit):
    state = log_of([(kind, None, None) for kind in kinds], dropped=dropped)
    read: list[Event] = []
    seq = after
    for _ in range(100):
        match = events_matching(state, seq, kinds=wanted, limit=limit, scan_limit=scan_limit)
        assert match.through_seq >= seq or match.through_seq == state.last_seq
        read += match.events
        if match.through_seq <= seq:
            break
        seq = match.through_seq
    expected = [event for event in state.event_log if event.seq > after and (not wanted or event.kind in wanted)]
    assert read == expected


def test_events_since_is_the_tail_of_the_log():
    state = log_of(MIXED, dropped=3)
    assert seqs(events_since(state, 7)) == [8, 9]
    assert seqs(events_since(state, 0)) == [4, 5, 6, 7, 8, 9]
    assert events_since(state, 9) == []


# ---- event_waiters ----------------------------------------------------------------

def asker(n: int) -> Request:
    return Request(CLIENT_PEER, n, int(wire.MessageType.EVENTS_QUERY))


def event(seq: int, kind: str = "chunk_started", job: bytes | None = JOB, node: bytes | None = None) -> Event:
    return Event(seq, 0.0, kind, job, None, None, node, "")


def test_a_waiter_is_released_by_a_new_event_it_wants_only():
    waiters = EventWaiters()
    waiters.hold(asker(1), 5, EventFilter(job=JOB), 10, 5000, now=0.0)
    waiters.hold(asker(2), 5, EventFilter(node=NODE_A), 10, 5000, now=0.0)
    waiters.hold(asker(3), 5, EventFilter(kinds=frozenset({"job_succeeded"})), 10, 5000, now=0.0)
    waiters.hold(asker(4), 7, EventFilter(), 10, 5000, now=0.0)
    assert waiters.matched([event(5), event(6, job=JOB_B)]) == []
    assert [w.request.request_id for w in waiters.matched([event(7, job=JOB_B, node=NODE_A)])] == [2]
    assert [w.request.request_id for w in waiters.matched([event(8)])] == [1, 4]
    assert [w.request.request_id for w in waiters.matched([event(9, "job_succeeded", JOB_B)])] == [3]
    assert len(waiters) == 0 and waiters.next_deadline() is None


def test_waits_end_at_their_deadline_capped_and_a_resent_request_is_held_once():
    waiters = EventWaiters()
    waiters.hold(asker(1), 0, EventFilter(), 10, 500, now=1.0)
    waiters.hold(asker(2), 0, EventFilter(job=JOB), 10, 10**9, now=1.0)
    assert waiters.hold(asker(1), 0, EventFilter(), 10, 500, now=1.2)
    assert len(waiters) == 2 and waiters.next_deadline() == 1.5
    assert waiters.due(1.49) == []
    assert [w.request.request_id for w in waiters.due(1.5)] == [1]
    assert waiters.next_deadline() == 1.0 + MAX_EVENTS_WAIT_S
    assert [w.request.request_id for w in waiters.release_all()] == [2]
    assert waiters.due(100.0) == []


def test_no_more_than_the_capacity_is_held():
    waiters = EventWaiters(capacity=2)
    assert waiters.hold(asker(1), 0, EventFilter(), 10, 500, now=0.0)
    assert waiters.hold(asker(2), 0, EventFilter(), 10, 500, now=0.0)
    assert not waiters.hold(asker(3), 0, EventFilter(), 10, 500, now=0.0)
    waiters.matched([event(1)])
    assert waiters.hold(asker(3), 0, EventFilter(), 10, 500, now=0.0)


@settings(max_examples=200, deadline=None)
@given(held=st.lists(st.tuples(st.sampled_from([None, JOB, JOB_B]), st.sampled_from([None, NODE_A]),
                               st.sets(st.sampled_from(["x", "y"])), st.integers(0, 6)), max_size=12),
       new=st.lists(st.tuples(st.sampled_from(["x", "y"]), st.sampled_from([None, JOB, JOB_B]),
                              st.sampled_from([None, NODE_A, NODE_B])), max_size=8))
def test_matched_releases_exactly_the_waiters_a_new_event_matches(held, new):
    waiters = EventWaiters()
    filters = {}
    for n, (job, node, kinds, after) in enumerate(held):
        filters[n] = (EventFilter(job, node, frozenset(kinds)), after)
        waiters.hold(asker(n), after, filters[n][0], 10, 5000, now=0.0)
    events = [event(seq, kind, job, node) for seq, (kind, job, node) in enumerate(new, start=3)]
    released = {w.request.request_id for w in waiters.matched(events)}
    expected = {n for n, (wanted, after) in filters.items()
                if any(e.seq > after and wanted.matches(e) for e in events)}
    assert released == expected and len(waiters) == len(held) - len(expected)


# ---- the leader -----------------------------------------------------------------

def events_query(request_id: int, after: int = 0, wait_ms: int = 0, job: bytes | None = None,
                 kinds: tuple[str, ...] = ()) -> wire.EventsQuery:
    return wire.EventsQuery.make(CLIENT, request_id=request_id, after_seq=after, limit=100, job=job,
                                 kinds=list(kinds), wait_ms=wait_ms)


def replies(effects: list) -> list[Reply]:
    return [effect for effect in effects if isinstance(effect, Reply)]


def test_a_held_query_is_answered_at_the_commit_of_an_event_it_wants_and_not_before():
    cluster = with_balancer(free_slots=1)
    cluster.handle(received(submit(chunks=1)), 0.1)
    cluster.settle(0.1)
    last = cluster.state.last_seq
    asked = events_query(20, after=last, wait_ms=20_000, job=JOB, kinds=("chunk_succeeded",))
    assert cluster.handle(received(asked), 0.2) == []
    assert cluster.leader.events_waiters == 1
    # Another job's events, and this job's of other kinds, commit: still held.
    cluster.handle(received(submit(JOB_B, request_id=3)), 0.3)
    cluster.handle(received(chunk_events(1, event_record(JOB, 0, 1, ChunkState.STARTED)), BALANCER_PEER), 0.3)
    assert all(reply.request != request(asked) for reply in replies(cluster.settle(0.3)))
    assert cluster.state.last_seq > last + 2 and cluster.leader.events_waiters == 1
    cluster.handle(received(chunk_events(2, event_record(JOB, 0, 1, ChunkState.SUCCEEDED)), BALANCER_PEER), 0.4)
    answered = [reply for reply in replies(cluster.settle(0.4)) if reply.request == request(asked)]
    assert len(answered) == 1 and cluster.leader.events_waiters == 0
    reply = answered[0].message
    assert isinstance(reply, wire.EventsReply)
    assert [e["kind"] for e in reply.events] == ["chunk_succeeded"]
    assert reply.through_seq == reply.last_seq == cluster.state.last_seq and reply.gap_from == 0


def test_a_query_that_finds_something_is_answered_at_once():
    cluster = leading()
    cluster.handle(received(submit()), 1.0)
    cluster.settle(1.0)
    [answer] = cluster.handle(received(events_query(21, wait_ms=20_000, job=JOB)), 2.0)
    assert [e["kind"] for e in answer.message.events] == ["job_submitted"]


def test_a_held_query_is_answered_empty_at_the_end_of_its_wait():
    cluster = leading()
    last = cluster.state.last_seq
    asked = events_query(22, after=last, wait_ms=800)
    assert cluster.handle(received(asked), 1.0) == []
    assert cluster.handle(Tick(), 1.0) == [Wake(1.8)]
    assert cluster.handle(Tick(), 1.79) == [Wake(1.8)]
    [answer] = cluster.handle(Tick(), 1.8)
    assert answer.request == request(asked)
    assert answer.message.events == [] and answer.message.through_seq == last


def test_held_queries_get_the_not_leader_error_when_the_master_stops_leading():
    cluster = leading()
    asked = events_query(23, after=cluster.state.last_seq, wait_ms=20_000)
    cluster.handle(received(asked), 1.0)
    effects = cluster.handle(RaftStatus(ready=True, leader=False, leader_address="tcp://m2"), 1.5)
    [refused] = replies(effects)
    assert refused.request == request(asked)
    assert refused.message.error_code == ErrorCode.NOT_LEADER and "tcp://m2" in refused.message.reason
    assert cluster.leader.events_waiters == 0


def test_a_query_resent_while_held_is_held_once_and_answered_once():
    cluster = leading()
    asked = events_query(26, after=cluster.state.last_seq, wait_ms=5000)
    assert cluster.handle(received(asked), 1.0) == []
    assert cluster.handle(received(asked), 3.0) == []
    assert cluster.leader.events_waiters == 1 and cluster.leader.counters["events_queries"] == 1
    assert [reply.request for reply in replies(cluster.handle(Tick(), 6.0))] == [request(asked)]


def test_beyond_the_cap_a_held_query_is_refused_busy():
    cluster = leading()
    cluster.leader._event_waiters.capacity = 1
    cluster.handle(received(events_query(24, after=cluster.state.last_seq, wait_ms=5000)), 1.0)
    [refused] = cluster.handle(received(events_query(25, after=cluster.state.last_seq, wait_ms=5000)), 1.0)
    assert refused.message.error_code == ErrorCode.BUSY


# ---- a leader and a real state, driven by hypothesis ---------------------------------

JOBS = [bytes([n]) * 16 for n in (1, 2, 3)]
KINDS = ["job_submitted", "chunk_dispatched", "job_cancelled", "chunk_cancelled"]


class HeldEventsMachine(RuleBasedStateMachine):
    """Jobs submitted and cancelled while clients hold events queries with
    filters: after every step, no query is held while the log has an event
    it wants, every answer holds only what its query wants, in order, and
    each query is answered once."""

    def __init__(self) -> None:
        super().__init__()
        self.cluster = with_balancer(free_slots=4)
        self.now = 0.1
        self.asked: dict[int, wire.EventsQuery] = {}
        self.answered: dict[int, wire.Message] = {}
        self.request_ids = iter(range(100, 10**6))

    def absorb(self, effects: list) -> None:
        for reply in replies(effects):
            if reply.request.message_type != int(wire.MessageType.EVENTS_QUERY):
                continue
            request_id = reply.request.request_id
            assert request_id not in self.answered, "a query answered twice"
            self.answered[request_id] = reply.message

    def settle(self) -> None:
        self.absorb(self.cluster.settle(self.now))

    @rule(job=st.sampled_from(JOBS), chunks=st.integers(1, 3))
    def submit(self, job, chunks):
        self.absorb(self.cluster.handle(received(submit(job, chunks, next(self.request_ids))), self.now))
        self.settle()

    @rule(job=st.sampled_from(JOBS))
    def cancel(self, job):
        asked = wire.JobCancel.make(CLIENT, request_id=next(self.request_ids), job=job)
        self.absorb(self.cluster.handle(received(asked), self.now))
        self.settle()

    @rule(job=st.sampled_from([None, *JOBS]), kinds=st.sets(st.sampled_from(KINDS), max_size=2),
          back=st.integers(0, 4), wait_ms=st.sampled_from([0, 300, 5000]))
    def query(self, job, kinds, back, wait_ms):
        request_id = next(self.request_ids)
        after = max(0, self.cluster.state.last_seq - back)
        asked = events_query(request_id, after, wait_ms, job, tuple(sorted(kinds)))
        self.asked[request_id] = asked
        self.absorb(self.cluster.handle(received(asked), self.now))

    @rule(seconds=st.sampled_from([0.05, 0.4, 6.0]))
    def time_passes(self, seconds):
        self.now += seconds
        self.renew_lease()
        self.absorb(self.cluster.handle(Tick(), self.now))

    def renew_lease(self) -> None:
        self.cluster.renew(self.now)

    @invariant()
    def nothing_is_held_that_could_be_answered(self):
        log = list(self.cluster.state.event_log)
        for waiter in self.cluster.leader._event_waiters._held.values():
            assert not [event for event in log if event.seq > waiter.after_seq and waiter.wanted.matches(event)]

    @invariant()
    def answers_hold_what_was_asked_in_order(self):
        for request_id, reply in self.answered.items():
            asked = self.asked[request_id]
            assert isinstance(reply, wire.EventsReply), reply
            wanted = EventFilter.of(asked.job, asked.node, asked.kinds)
            seqs_read = [event["seq"] for event in reply.events]
            assert seqs_read == sorted(set(seqs_read)) and all(seq > asked.after_seq for seq in seqs_read)
            assert all(wanted.matches(Event(**event)) for event in reply.events)
            assert reply.through_seq >= max(seqs_read, default=0)
            if asked.wait_ms == 0 or not reply.events:
                continue
            # Nothing it wanted was left out below its coverage.
            log = [event for event in self.cluster.state.event_log
                   if asked.after_seq < event.seq <= reply.through_seq and wanted.matches(event)]
            assert [event.seq for event in log][:len(seqs_read)] == seqs_read

    @invariant()
    def a_query_without_wait_is_answered_at_once(self):
        for request_id, asked in self.asked.items():
            if asked.wait_ms == 0:
                assert request_id in self.answered


TestHeldEvents = HeldEventsMachine.TestCase
TestHeldEvents.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])
