"""`uds nodes` facts and `uds nodes --history NODE`, without a cluster:
naming a node, gathering its events and printing them."""
import pytest

from uds.client.events import Event, EventsPage
from uds.client.node_history import AmbiguousNodeError, NodeHistory, UnknownNodeError, find_node, node_events
from uds.client.node_view import print_facts_table, print_history
from uds.wire.enums import NodeRole

WORKER = bytes.fromhex("ab12" + "00" * 14)
TWIN = bytes.fromhex("ab13" + "00" * 14)
BALANCER = bytes.fromhex("cd" * 16)


def _record(node, role=NodeRole.WORKER, host="alpha", **changes):
    """A NODE record as `Connection.nodes()` lists it."""
    return {**dict(node=node, role=int(role), host=host, address="", slots=2, free_slots=2, running=0,
                   cache_bytes=0, started_at=1_700_000_000.0, last_seen_s=0.1, state="alive", millicpus=2000,
                   memory_bytes=4 << 30, disk_bytes=50 << 30, sandbox="none", lease_epoch=0, figures={},
                   software="0.1.0", cpus=8, machine_memory_bytes=16 << 30, machine_disk_bytes=500 << 30,
                   addresses=["10.0.0.5", "fd00::5"]), **changes}


RECORDS = [_record(WORKER), _record(TWIN, host="beta"),
           _record(BALANCER, NodeRole.LOADBALANCER, host="gamma", lease_epoch=3,
                   addresses=["tcp://10.0.0.7:5000"], software="", cpus=0)]


@pytest.mark.parametrize("name, expected", [
    ("ab12" + "00" * 14, WORKER), ("AB12", WORKER), ("ab13", TWIN), ("beta", TWIN), ("c", BALANCER),
    ("gamma", BALANCER),
])
def test_a_node_is_named_by_its_id_a_prefix_or_its_host(name, expected):
    assert find_node(RECORDS, name)["node"] == expected


def test_a_name_that_fits_several_nodes_or_none_says_so_naming_it():
    with pytest.raises(AmbiguousNodeError, match=r"node 'ab1' is ambiguous: it names 2 nodes \(ab120000 "
                                                 r"\(worker on alpha\), ab130000 \(worker on beta\)\)"):
        find_node(RECORDS, "ab1")
    for name in ("ef", "delta", ""):
        with pytest.raises(UnknownNodeError, match=f"unknown node '{name}'"):
            find_node(RECORDS, name)


def _event(seq, kind, node, job=None, chunk=None, attempt=None, detail=""):
    return Event(seq, 1_700_000_000.0 + seq, kind, job and job.hex(), chunk, attempt, node and node.hex(), detail)


class EventLog:
    """Answers `Connection.events(after, limit, node=...)` as the masters do
    (master/event_log.py): each page looks at `scanned` events of the log at
    most and says how far it covered (through_seq)."""

    def __init__(self, events, scanned, first_kept=1):
        self.events, self.scanned, self.first_kept = events, scanned, first_kept
        self.asked = []

    def events_page(self, after=0, limit=1000, job=None, node=None, kinds=(), wait=0.0):
        self.asked.append((after, node))
        last_seq = self.events[-1].seq if self.events else 0
        looked = [event for event in self.events if event.seq > after][:self.scanned]
        matching = [event for event in looked if event.node == node.hex()][:limit]
        through = looked[-1].seq if looked else last_seq
        gap = (after + 1, self.first_kept - 1) if after + 1 < self.first_kept else None
        return EventsPage(matching, through, last_seq, gap)


def test_node_events_are_every_event_naming_it_oldest_first_across_pages():
    job = bytes(range(16))
    log = [_event(1, "node_joined", WORKER), _event(2, "node_joined", BALANCER),
           _event(3, "lease_granted", BALANCER), _event(4, "job_submitted", None, job=job),
           _event(5, "chunk_dispatched", None, job=job, chunk=0, attempt=1),
           _event(6, "chunk_started", WORKER, job=job, chunk=0, attempt=1),
           _event(7, "chunk_started", TWIN, job=job, chunk=1, attempt=1),
           _event(8, "node_lost", WORKER), _event(9, "chunk_lost", WORKER, job=job, chunk=0, attempt=1),
           _event(10, "node_joined", WORKER)]
    answers = EventLog(log, scanned=3)
    connection = type("Connection", (), {"events": lambda self, **asked: answers.events_page(**asked)})()
    events, gap = node_events(connection, WORKER)
    assert [event.seq for event in events] == [1, 6, 8, 9, 10] and gap is None
    assert answers.asked == [(0, WORKER), (3, WORKER), (6, WORKER), (9, WORKER)]
    assert node_events(connection, bytes(16)) == ([], None)
    # The log dropped its oldest events: the history says which.
    answers = EventLog(log[4:], scanned=100, first_kept=5)
    events, gap = node_events(connection, WORKER)
    assert [event.seq for event in events] == [6, 8, 9, 10] and gap == (1, 4)
    answers = EventLog([], scanned=3)
    assert node_events(connection, WORKER) == ([], None)


def test_the_facts_table_shows_one_address_and_a_count_or_every_one(capsys):
    print_facts_table(RECORDS)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["node", "version", "cpus", "memory", "disk", "addresses"]
    assert lines[1].split() == [WORKER.hex(), "0.1.0", "8", "16.0", "GiB", "500.0", "GiB", "10.0.0.5",
                                "(+1,", "see", "--long)"]
    # What a node did not say prints as "-".
    assert lines[3].split() == [BALANCER.hex(), "-", "-", "16.0", "GiB", "500.0", "GiB", "tcp://10.0.0.7:5000"]
    print_facts_table(RECORDS, long=True)
    assert capsys.readouterr().out.splitlines()[1].endswith("  10.0.0.5, fd00::5")


def test_the_history_prints_the_record_then_each_event_oldest_first(capsys):
    job = bytes(range(16))
    print_history(NodeHistory(record=RECORDS[0], events=[
        _event(1, "node_joined", WORKER, detail="worker alpha"),
        _event(6, "chunk_succeeded", WORKER, job=job, chunk=0, attempt=2, detail="0.100 s")]))
    lines = capsys.readouterr().out.splitlines()
    shown = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines[:lines.index("")]}
    assert shown["node"] == WORKER.hex() and shown["role"] == "worker" and shown["host"] == "alpha"
    assert shown["state"] == "alive" and shown["version"] == "0.1.0" and shown["cpus"] == "8"
    assert shown["memory"] == "16.0 GiB" and shown["disk"] == "500.0 GiB"
    assert shown["addresses"] == "10.0.0.5, fd00::5" and shown["boot time"].endswith("(its process started)")
    assert shown["offers"] == "2 slots, 2 cpus, 4.0 GiB memory, 50.0 GiB disk"
    assert lines[lines.index("") + 1] == "2 events, oldest first:"
    first, second = (line.split() for line in lines[-2:])
    assert first[0] == "1" and first[3:] == ["node_joined", "worker", "alpha"]
    assert second[0] == "6" and second[3:] == ["chunk_succeeded", "job", job.hex()[:8], "chunk", "0",
                                               "attempt", "2", "0.100", "s"]


def test_a_balancers_history_says_whether_it_holds_the_lease_and_what_the_log_dropped(capsys):
    print_history(NodeHistory(record=RECORDS[2], events=[], gap=(1, 4)))
    out = capsys.readouterr().out
    assert "lease:      held, epoch 3\n" in out and "version:    -\n" in out
    assert out.endswith("(events 1..4 were dropped from the masters' log: some of this node's may be among "
                        "them)\nno events name this node\n")
