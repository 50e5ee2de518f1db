"""The load-balancer lease on the masters' side: GrantLease in the replicated
state, and the leader's rules for granting, renewing and fencing."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from uds import wire
from uds.master.commands import LEASE_GRANTED, GrantLease
from uds.master.leader import LOADBALANCER_LEASE_S, Committed, Note, RaftStatus, Reply, Tick
from uds.master.state import ClusterState
from uds.wire import ChunkState, ErrorCode, NodeRole

from test_master_leader import (
    BALANCER, BALANCER_PEER, LEADING, MASTER, Cluster, event_record, leading, received, request, with_balancer,
    without,
)

OTHER = b"O" * 16
OTHER_PEER = b"other-peer"


def hello_from(node: bytes, request_id: int = 1) -> wire.Hello:
    return wire.Hello.make(node, request_id=request_id, role=int(NodeRole.LOADBALANCER), slots=0,
                           cache_bytes=0, start_time_ms=5000, host="lb", address="tcp://lb", version=1)


def granted(asked: wire.Hello, peer: bytes, epoch: int) -> Reply:
    return Reply(request(asked, peer), wire.HelloReply.make(
        MASTER, request_id=asked.request_id, epoch=epoch, heartbeat_interval_ms=250,
        lease_ms=int(LOADBALANCER_LEASE_S * 1000)))


def ask(cluster: Cluster, node: bytes, peer: bytes, now: float, request_id: int = 1) -> list:
    """A balancer's hello at `now`, settled: the effects with replies and notes."""
    asked = hello_from(node, request_id)
    effects = cluster.handle(received(asked, peer), now) + cluster.settle(now)
    return [effect for effect in effects if isinstance(effect, Reply)]


# ---- the replicated state -------------------------------------------------------

def test_a_grant_takes_the_next_epoch_a_renewal_keeps_it_and_anything_else_is_refused():
    state = ClusterState()
    first, renewal, skipped, stale = state.apply(
        [GrantLease(BALANCER, 1), GrantLease(BALANCER, 1), GrantLease(OTHER, 3), GrantLease(OTHER, 1)], 1.0)
    assert first.ok and first.granted and renewal.ok and not renewal.granted
    assert not skipped.ok and not stale.ok
    assert state.lease() == (BALANCER, 1)
    assert [(event.kind, event.node, event.detail) for event in state.event_log] == [
        (LEASE_GRANTED, BALANCER, "epoch 1")]


@given(st.lists(st.tuples(st.sampled_from([BALANCER, OTHER, b"X" * 16]), st.integers(0, 6)), max_size=40))
def test_epochs_only_rise_and_each_epoch_has_one_holder(grants):
    state = ClusterState()
    holders: dict[int, bytes] = {}
    last_epoch = 0
    for holder, epoch in grants:
        state.apply([GrantLease(holder, epoch)], 0.0)
        current_holder, current_epoch = state.lease()
        assert current_epoch >= last_epoch
        last_epoch = current_epoch
        if current_holder is not None:
            assert holders.setdefault(current_epoch, current_holder) == current_holder


# ---- the leader's rules --------------------------------------------------------------

def test_a_second_balancer_is_standby_until_the_lease_lapses_then_gets_the_next_epoch():
    cluster = with_balancer()
    asked = hello_from(OTHER, 4)
    effects = cluster.handle(received(asked, OTHER_PEER), 1.0)
    assert [type(effect.message) for effect in effects] == [wire.Error]
    assert effects[0].message.error_code == ErrorCode.BUSY
    assert cluster.state.lease() == (BALANCER, 1)
    cluster.handle(Tick(), LOADBALANCER_LEASE_S)          # the holder stopped renewing
    assert cluster.leader.loadbalancer is None
    assert ask(cluster, OTHER, OTHER_PEER, LOADBALANCER_LEASE_S, 5) == [
        granted(hello_from(OTHER, 5), OTHER_PEER, 2)]
    assert cluster.state.lease() == (OTHER, 2)
    assert cluster.leader.loadbalancer.node == OTHER
    assert [event.detail for event in cluster.state.event_log if event.kind == LEASE_GRANTED] == [
        "epoch 1", "epoch 2"]


def test_hellos_of_the_holder_renew_its_lease_through_commits_and_heartbeats_do_not():
    cluster = with_balancer()
    for now in (0.4, 0.8, 1.2, 1.6, 2.0):
        cluster.renew(now)
    assert cluster.leader.loadbalancer is not None
    assert without((Note,), cluster.handle(received(hello_from(OTHER), OTHER_PEER), 2.0))[0].message.error_code \
        == ErrorCode.BUSY
    cluster.settle(2.0)                             # the standby is listed
    link = cluster.leader.loadbalancer
    heartbeat = wire.Heartbeat.make(BALANCER, epoch=1, free_slots=1, running_count=0, running=[],
                                    cache_added=[], cache_removed=[])
    for now in (2.5, 3.0, 3.4):
        assert cluster.handle(received(heartbeat, BALANCER_PEER), now) == []
        cluster.handle(Tick(), now)
        assert not cluster.log                      # no renewal proposed
    assert link.free_slots == 1
    cluster.handle(Tick(), 2.0 + LOADBALANCER_LEASE_S)
    assert cluster.leader.loadbalancer is None


def test_a_holder_that_asks_after_its_lease_lapsed_gets_the_next_epoch():
    """Killed and restarted, say: its earlier self's epoch is over."""
    cluster = with_balancer()
    cluster.handle(Tick(), LOADBALANCER_LEASE_S)
    assert ask(cluster, BALANCER, BALANCER_PEER, LOADBALANCER_LEASE_S + 1.0, 4) == [
        granted(hello_from(BALANCER, 4), BALANCER_PEER, 2)]
    assert cluster.state.lease() == (BALANCER, 2)
    assert [event.detail for event in cluster.state.event_log if event.kind == LEASE_GRANTED] == [
        "epoch 1", "epoch 2"]


def test_while_a_lapsed_holder_is_granted_the_next_epoch_the_other_is_refused():
    cluster = with_balancer()
    cluster.handle(Tick(), LOADBALANCER_LEASE_S)
    now = LOADBALANCER_LEASE_S + 0.5
    assert cluster.handle(received(hello_from(BALANCER, 4), BALANCER_PEER), now) == []
    refused = without((Note,), cluster.handle(received(hello_from(OTHER, 5), OTHER_PEER), now))
    assert refused[0].message.error_code == ErrorCode.BUSY
    cluster.settle(now)
    assert cluster.state.lease() == (BALANCER, 2)


def test_a_new_leader_renews_the_holder_at_once_but_waits_a_full_lease_for_another():
    cluster = with_balancer()
    cluster.handle(RaftStatus(ready=True, leader=False, leader_address="tcp://m2"), 0.5)
    cluster.handle(LEADING, 10.0)                          # long after: it still cannot know
    refused = cluster.handle(received(hello_from(OTHER), OTHER_PEER), 10.1)
    assert refused[0].message.error_code == ErrorCode.BUSY
    assert ask(cluster, BALANCER, BALANCER_PEER, 10.2, 7) == [granted(hello_from(BALANCER, 7), BALANCER_PEER, 1)]

    fresh = with_balancer()
    fresh.handle(RaftStatus(ready=True, leader=False, leader_address="tcp://m2"), 0.5)
    fresh.handle(LEADING, 10.0)
    assert fresh.handle(received(hello_from(OTHER), OTHER_PEER), 10.0 + LOADBALANCER_LEASE_S - 0.01)[0] \
        .message.error_code == ErrorCode.BUSY
    assert ask(fresh, OTHER, OTHER_PEER, 10.0 + LOADBALANCER_LEASE_S, 8) == [
        granted(hello_from(OTHER, 8), OTHER_PEER, 2)]


def test_chunk_events_of_a_lower_epoch_are_dropped_and_counted():
    cluster = with_balancer()
    cluster.handle(Tick(), LOADBALANCER_LEASE_S)
    ask(cluster, OTHER, OTHER_PEER, LOADBALANCER_LEASE_S)
    stale = wire.ChunkEvents.make(BALANCER, epoch=1, batch_id=3, event_count=1,
                                  events=[event_record(b"J" * 16, 0, 1, ChunkState.SUCCEEDED)])
    effects = cluster.handle(received(stale, BALANCER_PEER), 1.6)
    assert [effect.message.error_code for effect in effects] == [ErrorCode.UNEXPECTED]
    assert cluster.leader.counters["chunk_events_stale_epoch"] == 1
    assert cluster.leader.queued_commands == 0


def test_a_leader_never_lets_two_balancers_hold_overlapping_leases():
    cluster = leading()
    assert ask(cluster, BALANCER, BALANCER_PEER, 0.0) == [granted(hello_from(BALANCER), BALANCER_PEER, 1)]
    now = 0.0
    for step in range(30):
        now += 0.1
        node, peer = (OTHER, OTHER_PEER) if step % 2 else (BALANCER, BALANCER_PEER)
        replies = ask(cluster, node, peer, now, step + 2)
        holder, epoch = cluster.state.lease()
        for reply in replies:
            if isinstance(reply.message, wire.HelloReply):
                assert (node, reply.message.epoch) == (holder, epoch)
    assert cluster.state.lease() == (BALANCER, 1)      # the holder kept renewing


def test_a_wall_clock_jump_does_not_end_the_lease_the_lease_clock_times_it():
    cluster = Cluster()
    leader = cluster.leader
    for event in (LEADING, Tick()):
        cluster.log.extend(p for p in leader.handle(event, 0.0, 100.0) if hasattr(p, "commands"))
    asked = hello_from(BALANCER)
    leader.handle(received(asked, BALANCER_PEER), 0.0, 100.0)
    cluster.log.extend(p for p in leader.handle(Tick(), 0.0, 100.0) if hasattr(p, "commands"))
    while cluster.log:
        proposal = cluster.log.popleft()
        leader.handle(Committed(proposal.tag, cluster.state.apply(list(proposal.commands), 0.0)), 0.0, 100.0)
        cluster.log.extend(p for p in leader.handle(Tick(), 0.0, 100.0) if hasattr(p, "commands"))
    assert leader.loadbalancer is not None
    leader.handle(Tick(), 3600.0, 100.5)              # the wall clock leapt an hour; 0.5 s passed
    assert leader.loadbalancer is not None
    leader.handle(Tick(), 3600.0, 100.0 + LOADBALANCER_LEASE_S)
    assert leader.loadbalancer is None
