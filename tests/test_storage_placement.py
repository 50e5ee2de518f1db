"""Rendezvous placement (storage/placement.py): a stable order, R distinct
live nodes, few files moving when a node joins or leaves, full nodes skipped."""
from __future__ import annotations

import os

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from uds.storage.placement import (
    LOST, StorageMember, put_order, read_order, rendezvous_order, replica_set, weight,
)

FILES = [os.urandom(16) for _ in range(3000)]
addresses = st.lists(st.integers(1024, 65535).map(lambda port: f"tcp://10.0.0.{port % 250}:{port}"),
                     min_size=1, max_size=12, unique=True)


def members_of(names, lost=()):
    return [StorageMember(name, state=LOST if name in lost else "alive") for name in names]


@given(addresses, st.binary(min_size=16, max_size=16), st.randoms())
def test_the_order_depends_on_the_membership_only_not_on_its_listing(names, file_id, rng):
    shuffled = list(names)
    rng.shuffle(shuffled)
    assert rendezvous_order(file_id, members_of(names)) == rendezvous_order(file_id, members_of(shuffled))


@given(addresses, st.binary(min_size=16, max_size=16), st.integers(1, 5), st.data())
def test_a_replica_set_is_r_distinct_live_nodes_in_order(names, file_id, replicas, data):
    lost = data.draw(st.sets(st.sampled_from(names)))
    members = members_of(names, lost)
    chosen = replica_set(file_id, members, replicas)
    assert len(chosen) == min(replicas, len(names) - len(lost))
    assert len({member.address for member in chosen}) == len(chosen)
    assert all(member.alive for member in chosen)
    live_order = [member for member in rendezvous_order(file_id, members) if member.alive]
    assert chosen == live_order[:len(chosen)]
    # reads look at the live nodes first, in the same order, then the lost ones
    assert read_order(file_id, members)[:len(live_order)] == live_order


def moved_fraction(before, after, replicas):
    moved = sum({m.address for m in replica_set(f, before, replicas)} != {m.address for m in replica_set(f, after, replicas)}
                for f in FILES)
    return moved / len(FILES)


def test_about_r_over_n_of_the_files_move_when_a_node_joins_or_leaves():
    names = [f"tcp://10.0.0.{index}:7000" for index in range(1, 11)]
    ten, nine = members_of(names), members_of(names[:-1])
    # A file moves when the changed node is among its R = 2: 2/10 of them.
    for before, after in ((nine, ten), (ten, nine)):
        assert 0.15 < moved_fraction(before, after, 2) < 0.25
    # A node declared lost moves exactly the files it held, the same share.
    lost = members_of(names, lost={names[3]})
    assert 0.15 < moved_fraction(ten, lost, 2) < 0.25


def test_files_spread_evenly_over_the_nodes():
    members = members_of([f"tcp://10.0.0.{index}:7000" for index in range(1, 6)])
    counts = {member.address: 0 for member in members}
    for file_id in FILES:
        for member in replica_set(file_id, members, 2):
            counts[member.address] += 1
    expected = len(FILES) * 2 / len(members)
    assert all(abs(count - expected) < 0.15 * expected for count in counts.values()), counts


def test_put_order_skips_nodes_known_to_be_too_full_and_keeps_the_rest_in_order():
    names = [f"tcp://10.0.0.{index}:7000" for index in range(1, 5)]
    file_id = FILES[0]
    order = [member.address for member in rendezvous_order(file_id, members_of(names))]
    free = {order[0]: 100, order[1]: None, order[2]: 10_000, order[3]: 5000}
    members = [StorageMember(name, free_bytes=free[name]) for name in names]
    assert [member.address for member in put_order(file_id, members, 1000)] == order[1:]
    assert [member.address for member in put_order(file_id, members, 50)] == order
    assert [member.address for member in put_order(file_id, members, 6000)] == [order[1], order[2]]
    lost = [StorageMember(m.address, state=LOST, free_bytes=m.free_bytes) if m.address == order[1] else m
            for m in members]
    assert [member.address for member in put_order(file_id, lost, 1000)] == [order[2], order[3]]


@settings(max_examples=50)
@given(st.text(min_size=1, max_size=80), st.binary(min_size=16, max_size=16))
def test_a_weight_is_a_pure_function_of_address_and_file(address, file_id):
    assert weight(address, file_id) == weight(address, file_id)
    assert 0 <= weight(address, file_id) < 1 << 64


def test_the_storage_policy_table_has_defaults_and_is_checked_at_load(tmp_path):
    from test_master_retention import cluster_with
    from uds.wire import cluster as cluster_file

    assert cluster_file.storage_policy(cluster_file.load(cluster_with(tmp_path, ""))) == cluster_file.StoragePolicy()
    loaded = cluster_file.load(cluster_with(tmp_path, "\n[storage_policy]\nreplicas = 3\ngc_grace_s = 5\n"))
    policy = cluster_file.storage_policy(loaded)
    assert (policy.replicas, policy.gc_grace_s, policy.lost_after_s) == (3, 5.0, 10.0)
    assert [policy.replicas_among(live) for live in (0, 1, 2, 3, 5)] == [1, 1, 2, 3, 3]
    for table, why in (("replicas = 0", "more than zero"), ("replicas = 1.5", "expected int"),
                       ("grace = 3", "unknown key"), ("gc_grace_s = true", "expected float"),
                       ("heartbeat_interval_s = 5\nlost_after_s = 2", "longer than heartbeat_interval_s")):
        with pytest.raises(cluster_file.ClusterFileError, match=why):
            cluster_file.load(cluster_with(tmp_path, f"\n[storage_policy]\n{table}\n"))


def test_an_endpoint_is_checked_before_anyone_connects_to_it():
    from uds.wire.cluster import endpoint_problem
    for good in ("tcp://127.0.0.1:7300", "tcp://store-1.example.org:1", "tcp://[::1]:65535", "ipc:///run/uds/s0"):
        assert endpoint_problem(good) == "", good
    for bad in ("", "tcp://", "tcp://host", "tcp://host:0", "tcp://host:65536", "tcp://h\u00e9:1",
                "tcp://-h:1", "udp://h:1", "ipc://", "ipc://a b", "tcp://h:1 "):
        assert "is not a tcp://HOST:PORT or ipc://PATH address" in endpoint_problem(bad), bad
