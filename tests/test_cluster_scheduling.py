"""The cluster file's [scheduling] table (wire/cluster.py): its defaults,
its checks at load, and the master daemon handing it to the leader."""
from __future__ import annotations

import dataclasses
import math

import pytest

from uds.wire import cluster as cluster_file
from uds.wire.cluster import Scheduling
from uds.wire.records import NO_FACTS

from test_master_retention import cluster_with




def scheduling_of(tmp_path, table: str) -> Scheduling:
    return cluster_file.scheduling(cluster_file.load(cluster_with(tmp_path, table)))


def test_without_the_table_every_default_holds(tmp_path):
    assert scheduling_of(tmp_path, "") == Scheduling(poison_after=3, cache_max_entries=100_000,
                                                     cache_max_age_s=604800.0)


def test_each_key_is_read(tmp_path):
    assert scheduling_of(tmp_path, "\n[scheduling]\npoison_after = 1\ncache_max_entries = 0\n"
                                   "cache_max_age_s = 60\n") == Scheduling(1, 0, 60.0)
    assert type(scheduling_of(tmp_path, "\n[scheduling]\ncache_max_age_s = 5\n").cache_max_age_s) is float
    assert scheduling_of(tmp_path, "\n[scheduling]\ncache_max_age_s = inf\n").cache_max_age_s == math.inf


@pytest.mark.parametrize("table, why", [
    ("poison_after = 0", r"scheduling.poison_after: must be 1 or more, not 0"),
    ("poison_after = -2", r"scheduling.poison_after: must be 1 or more"),
    ("poison_after = 2.5", r"scheduling.poison_after: expected int, got float"),
    ("poison_after = true", r"scheduling.poison_after: expected int, got bool"),
    ("cache_max_entries = -1", r"scheduling.cache_max_entries: must be zero or more, not -1"),
    ("cache_max_entries = \"10\"", r"scheduling.cache_max_entries: expected int, got str"),
    ("cache_max_age_s = -0.5", r"scheduling.cache_max_age_s: must be zero or more"),
    ("cache_max_age_s = nan", r"scheduling.cache_max_age_s: must be zero or more"),
    ("poison = 3", r"scheduling: unknown key\(s\) poison"),
])
def test_a_bad_value_stops_the_load_naming_it(tmp_path, table, why):
    with pytest.raises(cluster_file.ClusterFileError, match=why):
        cluster_file.load(cluster_with(tmp_path, f"\n[scheduling]\n{table}\n"))


def test_a_scheduling_that_is_not_a_table_is_refused(tmp_path):
    loaded = cluster_file.load(cluster_with(tmp_path, ""))
    with pytest.raises(cluster_file.ClusterFileError, match=r"scheduling: expected a table"):
        cluster_file.scheduling(dataclasses.replace(loaded, extra={"scheduling": 3}))


def test_the_master_daemon_hands_the_table_to_its_leader(tmp_path, monkeypatch):
    from uds.master import __main__ as master_main
    from uds.master import node as master_node
    from uds.master import replicated

    seen = {}

    class FakeNode:
        def __init__(self, *args, **keywords):
            seen.update(keywords)

    class FakeGroup:
        def __init__(self, *args, **keywords):
            pass

        def destroy(self):
            pass

    monkeypatch.setattr(master_node, "MasterNode", FakeNode)
    monkeypatch.setattr(replicated, "RaftGroup", FakeGroup)
    monkeypatch.setattr(master_main, "wake_pipe", lambda: (-1, -1))
    cluster = cluster_file.load(cluster_with(tmp_path, "\n[scheduling]\npoison_after = 4\n"))

    class Context:
        node_id = b"N" * 16
        entry = cluster.masters[0]
        data = tmp_path
        transport = type("Transport", (), {"keys": None})()
        facts = NO_FACTS
        metrics = None

    Context.cluster = cluster
    master_main.build(Context())
    assert seen["scheduling"] == Scheduling(poison_after=4)
