"""The leader's side of storage membership, pins and gc_check (master/
storage_requests.py, master/storage_nodes.py): exact effects over a real
ClusterState, its proposals committed on demand."""
from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from hypothesis import strategies as st

from uds import wire
from uds.master.commands import NodeLost, NodeSeen, PinFiles, PruneCollection, SubmitJob
from uds.master.leader import (
    PROPOSAL_TIMEOUT_S, Committed, DirectReader, Leader, Note, ProposalFailed, Propose, RaftStatus, Received, Reply, Request,
    Tick, Wake,
)
from uds.master.state import ClusterState
from uds.master.storage_nodes import StorageNodes
from uds.wire.cluster import StoragePolicy
from uds.wire.enums import ErrorCode, NodeRole

MASTER = b"M" * 16
STORE, STORE_B = b"S" * 16, b"T" * 16
WORKER = b"W" * 16
CLIENT = b"C" * 16
PEER = b"storage-peer"
CLIENT_PEER = b"client-peer"
LEADING = RaftStatus(ready=True, leader=True, leader_address=None)
FOLLOWING = RaftStatus(ready=True, leader=False, leader_address="tcp://other:7100")
POLICY = StoragePolicy(heartbeat_interval_s=1.0, lost_after_s=10.0, gc_grace_s=100.0)
FIGURES = {"capacity_bytes": 1000, "used_bytes": 400, "free_bytes": 600, "blob_count": 3}
PINNED, REFERENCED, FREE = b"p" * 16, b"r" * 16, b"f" * 16


def decoded(message: wire.Message) -> wire.Message:
    return wire.decode(wire.encode(message))


def beat(node: bytes = STORE, address: str = "tcp://s:7300", started_ms: int = 5000, figures=None,
         request_id: int = 1) -> Received:
    return Received(PEER, decoded(wire.StorageHeartbeat.make(
        node, request_id=request_id, start_time_ms=started_ms, host="s", address=address, version=1,
        figures=FIGURES if figures is None else figures)))


def asked(message: Received) -> Request:
    return Request(message.peer, message.message.request_id, message.message.message_type)


class Master:
    """A leader over a ClusterState; proposals commit when asked."""

    def __init__(self, state: ClusterState | None = None, now: float = 0.0) -> None:
        self.state = state or ClusterState()
        self.leader = Leader(MASTER, DirectReader(self.state), host="m", address="tcp://m", started_at=1.0,
                             storage_policy=POLICY)
        self.log: deque[Propose] = deque()
        self.handle(LEADING, now)
        self.settle(now)        # its own NodeSeen

    def handle(self, event, now: float) -> list:
        effects = self.leader.handle(event, now)
        self.log.extend(effect for effect in effects if isinstance(effect, Propose))
        return effects

    def commit(self, now: float) -> list:
        proposal = self.log.popleft()
        return self.handle(Committed(proposal.tag, self.state.apply(list(proposal.commands), now)), now)

    def settle(self, now: float) -> list:
        effects = self.handle(Tick(), now)
        while self.log:
            effects += self.commit(now)
            effects += self.handle(Tick(), now)
        return effects

    def storage_view(self, node: bytes = STORE):
        return next(view for view in self.state.nodes() if view.node == node)


def replies(effects: list) -> list[Reply]:
    return [effect for effect in effects if isinstance(effect, Reply)]


def commands_of(effects: list) -> list:
    return [command for effect in effects if isinstance(effect, Propose) for command in effect.commands]


def membership(reply: Reply) -> list[dict]:
    message = decoded(reply.message)
    assert isinstance(message, wire.StorageHeartbeatReply), message
    assert message.heartbeat_interval_ms == 1000
    return message.nodes


# ---- membership --------------------------------------------------------------------

def test_a_first_heartbeat_registers_the_node_and_is_answered_after_the_commit():
    master = Master()
    message = beat()
    assert master.handle(message, 1.0) == []
    effects = master.handle(Tick(), 1.0)
    assert commands_of(effects) == [NodeSeen(node=STORE, role=int(NodeRole.STORAGE), host="s",
                                             address="tcp://s:7300", slots=0, cache_bytes=0, started_at=5.0)]
    [reply] = replies(master.commit(1.0))
    assert reply.request == asked(message)
    assert membership(reply) == [dict(node=STORE, address="tcp://s:7300", state="alive", free_bytes=600)]
    assert master.state.events_after(0, 100)[0][-1].kind == "node_joined"


def test_a_known_node_is_answered_at_once_and_registered_again_when_restarted_or_moved():
    master = Master()
    master.handle(beat(), 1.0)
    master.settle(1.0)
    [reply] = master.handle(beat(figures={"free_bytes": 7}), 2.0)
    assert membership(reply)[0]["free_bytes"] == 7
    assert commands_of(master.handle(Tick(), 2.0)) == []
    master.handle(beat(started_ms=9000), 3.0)
    [seen] = commands_of(master.handle(Tick(), 3.0))
    assert seen.started_at == 9.0
    master.commit(3.0)
    master.handle(beat(address="ipc:///run/s", started_ms=9000), 4.0)
    [moved] = commands_of(master.handle(Tick(), 4.0))
    assert moved.address == "ipc:///run/s"


def test_heartbeats_while_a_registration_is_in_flight_propose_it_once():
    master = Master()
    master.handle(beat(), 1.0)
    master.handle(Tick(), 1.0)
    [reply] = master.handle(beat(request_id=2), 1.5)      # not yet committed: the state as it is
    assert membership(reply) == []
    assert commands_of(master.handle(Tick(), 1.5)) == []


@pytest.mark.parametrize("status, code", [(FOLLOWING, ErrorCode.NOT_LEADER),
                                          (RaftStatus(ready=False, leader=False, leader_address=None),
                                           ErrorCode.BUSY)])
def test_a_master_that_does_not_lead_points_the_node_elsewhere(status, code):
    leader = Leader(MASTER, DirectReader(ClusterState()), storage_policy=POLICY)
    leader.handle(status, 1.0)
    [reply] = leader.handle(beat(), 1.0)
    assert reply.message.error_code == code
    if code == ErrorCode.NOT_LEADER:
        assert reply.message.reason == wire.not_leader_reason("tcp://other:7100")


def test_a_bad_address_or_a_node_of_another_role_is_refused():
    master = Master()
    # An address that clients could not connect to would make every client
    # that learnt it from nodes_reply fail its connect: refused here.
    for address in ("tcp://", "tcp://\u00c2\x82\U000e7535.x:1", "tcp://host:0", "tcp://host"):
        [reply] = master.handle(beat(address=address), 1.0)
        assert (reply.message.error_code, "is not a tcp://HOST:PORT or ipc://PATH address" in reply.message.reason) == (
            ErrorCode.INVALID, True), address
    master.state.apply([NodeSeen(node=WORKER, role=int(NodeRole.WORKER), host="w", address="", slots=1,
                                 cache_bytes=0, started_at=1.0)], 1.0)
    [reply] = master.handle(beat(node=WORKER), 1.0)
    assert reply.message.error_code == ErrorCode.INVALID and "known as a worker" in reply.message.reason
    assert master.handle(Tick(), 1.0) == []


def test_a_silent_node_is_declared_lost_after_lost_after_s_and_comes_back_with_its_next_heartbeat():
    master = Master()
    master.handle(beat(), 1.0)
    effects = master.settle(1.0)
    assert Wake(11.0) in effects
    assert commands_of(master.handle(Tick(), 10.9)) == []
    effects = master.handle(Tick(), 11.0)
    assert commands_of(effects) == [NodeLost(node=STORE)]
    assert any(isinstance(effect, Note) and "declaring it lost" in effect.text for effect in effects)
    assert commands_of(master.handle(Tick(), 11.5)) == []         # once, while in flight
    master.commit(11.5)
    assert master.storage_view().state == "lost"
    assert [event.kind for event in master.state.events_after(0, 100)[0]][-1] == "node_lost"
    assert master.leader.counters["storage_nodes_lost"] == 1
    master.handle(beat(), 20.0)
    [seen] = commands_of(master.handle(Tick(), 20.0))
    assert isinstance(seen, NodeSeen)
    master.commit(20.0)
    assert master.storage_view().state == "alive"


def test_heartbeats_keep_a_node_alive():
    master = Master()
    for second in range(1, 40):
        master.handle(beat(), float(second))
        assert not any(isinstance(command, NodeLost) for command in commands_of(master.settle(float(second))))
    assert master.storage_view().state == "alive"


def test_a_new_leader_gives_every_node_a_full_lost_after_s_from_taking_office():
    state = ClusterState()
    state.apply([NodeSeen(node=STORE, role=int(NodeRole.STORAGE), host="s", address="tcp://s:7300", slots=0,
                          cache_bytes=0, started_at=5.0)], 1.0)
    master = Master(state, now=50.0)         # took office at 50, long after the node's last heartbeat
    assert commands_of(master.handle(Tick(), 59.9)) == []
    assert commands_of(master.handle(Tick(), 60.0)) == [NodeLost(node=STORE)]


def test_a_leader_that_loses_office_and_takes_it_again_starts_the_clock_again():
    master = Master()
    master.handle(beat(), 1.0)
    master.settle(1.0)
    master.handle(FOLLOWING, 5.0)
    master.handle(LEADING, 8.0)
    assert commands_of(master.handle(Tick(), 17.9)) == []
    assert commands_of(master.handle(Tick(), 18.0)) == [NodeLost(node=STORE)]


def nodes_reply(master: Master, now: float) -> list[dict]:
    [reply] = master.handle(Received(CLIENT_PEER, decoded(wire.NodesQuery.make(CLIENT, request_id=3))), now)
    return decoded(reply.message).nodes


def test_nodes_reply_carries_a_storage_nodes_figures_and_none_after_a_leader_change():
    master = Master()
    master.handle(beat(), 1.0)
    master.settle(1.0)
    [record] = [node for node in nodes_reply(master, 3.0) if node["node"] == STORE]
    assert (record["role"], record["state"], record["figures"], record["last_seen_s"]) == (
        NodeRole.STORAGE, "alive", FIGURES, 2.0)
    [own] = [node for node in nodes_reply(master, 3.0) if node["node"] == MASTER]
    assert own["figures"] == {}
    successor = Master(master.state, now=4.0)
    [record] = [node for node in nodes_reply(successor, 4.0) if node["node"] == STORE]
    assert record["figures"] == {}


# ---- pins and gc_check ----------------------------------------------------------------

def pin(files: list[bytes], until_ms: int, request_id: int = 4) -> Received:
    return Received(CLIENT_PEER, decoded(wire.FilePin.make(CLIENT, request_id=request_id, until_ms=until_ms,
                                                           files=files)))


def gc_check(files: list[bytes], request_id: int = 5, peer: bytes = PEER) -> Received:
    return Received(peer, decoded(wire.GcCheck.make(STORE, request_id=request_id, files=files)))


def submit_referencing(file: bytes) -> SubmitJob:
    return SubmitJob(job=b"J" * 16, name="", program=(file, 10), args=(), inputs={}, chunk_inputs=(),
                     chunk_count=1, timeout_s=60.0, max_retries=0)


def test_a_pin_is_committed_then_answered_with_its_file_count():
    master = Master()
    message = pin([PINNED, FREE, PINNED], 2_000_000)
    assert master.handle(message, 1.0) == []
    [command] = commands_of(master.handle(Tick(), 1.0))
    assert command == PinFiles(files=(PINNED, FREE), until=2000.0, gc_grace_s=100.0)
    [reply] = replies(master.commit(1.0))
    assert reply.request == asked(message)
    assert decoded(reply.message).file_count == 2
    assert master.state.holds.pins == {PINNED: 2000.0, FREE: 2000.0}


def test_gc_check_is_answered_after_a_prune_commits_with_what_nothing_references_or_holds():
    master = Master()
    master.handle(pin([PINNED], 2_000_000), 1.0)
    master.settle(1.0)
    master.state.apply([submit_referencing(REFERENCED)], 1.0)
    first, second = gc_check([PINNED, FREE], 5, b"a"), gc_check([REFERENCED, FREE], 6, b"b")
    assert master.handle(first, 2.0) == [] and master.handle(second, 2.0) == []
    assert commands_of(master.handle(Tick(), 2.0)) == [PruneCollection(gc_grace_s=100.0)]   # one for both
    answers = {reply.request.peer: decoded(reply.message).files for reply in replies(master.commit(2.0))}
    assert answers == {b"a": [FREE], b"b": [FREE]}


def test_a_reference_committed_after_the_gc_check_arrived_but_before_its_answer_counts():
    master = Master()
    master.handle(gc_check([REFERENCED, FREE]), 2.0)
    master.handle(Tick(), 2.0)
    # Another proposal of this leader, committed in between (the log is in order).
    master.state.apply([submit_referencing(REFERENCED)], 2.0)
    [reply] = replies(master.commit(2.0))
    assert decoded(reply.message).files == [FREE]


def test_gc_checks_fail_with_their_prune_and_are_refused_by_a_follower():
    master = Master()
    master.handle(gc_check([FREE]), 2.0)
    [proposal] = [effect for effect in master.handle(Tick(), 2.0) if isinstance(effect, Propose)]
    master.log.remove(proposal)
    [reply] = replies(master.handle(ProposalFailed(proposal.tag, "raft: leader_changed"), 2.0))
    assert reply.message.error_code == ErrorCode.BUSY
    master.handle(gc_check([FREE], 7), 3.0)
    master.handle(Tick(), 3.0)
    master.handle(FOLLOWING, 3.0)
    proposal = master.log.popleft()
    [reply] = replies(master.handle(Committed(proposal.tag, master.state.apply(list(proposal.commands), 3.0)),
                                    3.0))
    assert reply.message.error_code == ErrorCode.NOT_LEADER
    [reply] = master.handle(gc_check([FREE], 8), 3.0)
    assert reply.message.error_code == ErrorCode.NOT_LEADER


# ---- the soft state alone -----------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(office=st.floats(0, 100), beats=st.lists(st.tuples(st.sampled_from([STORE, STORE_B]), st.floats(0, 200)),
                                                 max_size=20),
       now=st.floats(0, 300))
def test_a_node_is_silent_exactly_when_neither_a_heartbeat_nor_the_office_is_recent(office, beats, now):
    nodes = StorageNodes()
    nodes.take_office(office)
    last: dict[bytes, float] = {}
    for node, at in sorted(beats, key=lambda beat: beat[1]):
        nodes.heard(node, {}, at)
        last[node] = at
    views = [NodeSeen_view(node) for node in (STORE, STORE_B)]
    silent = nodes.silent(views, now, 10.0)
    assert silent == [node for node in (STORE, STORE_B) if now >= max(office, last.get(node, office)) + 10.0]
    due = nodes.next_silence_due(views, 10.0)
    assert due == min(max(office, last.get(node, office)) + 10.0 for node in (STORE, STORE_B))


def NodeSeen_view(node: bytes):
    state = ClusterState()
    state.apply([NodeSeen(node=node, role=int(NodeRole.STORAGE), host="s", address="tcp://s:1", slots=0,
                          cache_bytes=0, started_at=1.0)], 0.0)
    return state.nodes()[0]


# ---- the leader under random heartbeats, commits, failures and elections ---------------

NODES = (STORE, STORE_B, b"U" * 16)


class StorageMembershipMachine(RuleBasedStateMachine):
    """A NodeLost is decided only for a node silent for lost_after_s since
    its last heartbeat to this leader (or its taking office), at most one
    NodeSeen and one NodeLost per node is in flight, and every heartbeat is
    answered (at once, after its NodeSeen commits, or refused)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.master = Master(now=self.now)
        self.office = self.now
        self.last: dict[bytes, float] = {}
        self.started: dict[bytes, int] = {node: 1000 for node in NODES}
        self.unanswered: set[Request] = set()
        self.request_id = 0
        self.proposed_at: dict[int, float] = {}

    def _effects(self, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, Reply):
                self.unanswered.discard(effect.request)
            if isinstance(effect, Propose):
                self.proposed_at[effect.tag] = self.now
            if isinstance(effect, Note) and "declaring it lost" in effect.text:
                # The decision (a command queued before an election may be proposed after it).
                node = bytes.fromhex(effect.text.split()[2])
                assert self.now >= max(self.office, self.last.get(node, self.office)) + 10.0

    @rule(node=st.sampled_from(NODES), restart=st.booleans())
    def heartbeat(self, node, restart):
        if restart:
            self.started[node] += 1000
        self.request_id += 1
        message = beat(node, started_ms=self.started[node], request_id=self.request_id)
        self.unanswered.add(asked(message))
        if self.master.leader.is_leader:
            self.last[node] = self.now
        self._effects(self.master.handle(message, self.now))

    @rule(seconds=st.floats(0, 6))
    def tick(self, seconds):
        self.now += seconds
        self._effects(self.master.handle(Tick(), self.now))

    @precondition(lambda self: self.master.log)
    @rule()
    def commit(self):
        self._effects(self.master.commit(self.now))

    @precondition(lambda self: self.master.log)
    @rule()
    def fail(self):
        proposal = self.master.log.popleft()
        self._effects(self.master.handle(ProposalFailed(proposal.tag, "raft: lost"), self.now))

    @rule()
    def election(self):
        self._effects(self.master.handle(FOLLOWING, self.now))
        self._effects(self.master.handle(LEADING, self.now))
        self.office = self.now

    @invariant()
    def one_command_per_node_in_flight(self):
        # A proposal given up on (PROPOSAL_TIMEOUT_S) may still commit, and its command be proposed again.
        awaited = [proposal for proposal in self.master.log
                   if self.now < self.proposed_at[proposal.tag] + PROPOSAL_TIMEOUT_S]
        commands = [command for proposal in awaited for command in proposal.commands]
        for kind in (NodeSeen, NodeLost):
            named = [command.node for command in commands if isinstance(command, kind)]
            assert len(named) == len(set(named))

    def teardown(self) -> None:
        self._effects(self.master.settle(self.now))
        assert not self.unanswered


TestStorageMembershipMachine = StorageMembershipMachine.TestCase
TestStorageMembershipMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
