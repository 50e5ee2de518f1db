"""The load-balancer pair under its nemeses: each once, against a cluster
whose two balancers, master, storage and workers run on hosts of their own,
under a job stream from several client threads. See doc/testing.md.

Besides the history checker (every acknowledged job succeeds, each chunk is
committed once), each case checks the fencing it can observe:

- the event log's lease grants rise by one epoch each (fencing_violations);
- once the fault is over, exactly one balancer is active and the other is
  listed standby (lease_epoch 0), as `uds nodes` shows it;
- a balancer that lost its lease (killed, frozen, cut off from the masters)
  holds a lower epoch than the new active's and comes back standby;
- a partition between the balancers only changes nothing: same active,
  same epoch, no grant.
"""
import os
import random
import shutil

import pytest

from chaos import PAIR_NEMESES, JobStream, active_balancer, all_events, apply, balancer_epochs, fencing_violations
from daemons import wait_until
from history import check
from hosts import HostCluster, running_hosts

needs_hosts = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") and not os.path.exists("/usr/sbin/nft"),
                                reason="the host harness needs root and nft (scripts/install-system-deps.sh)")

LOSES_THE_LEASE = ("kill_active_balancer", "freeze_active_balancer", "partition_active_balancer_from_masters")


@pytest.fixture
def pair(tmp_path):
    with running_hosts(tmp_path / "cluster", workers=2, loadbalancers=2) as cluster:
        wait_until(lambda: _one_active_one_standby(cluster), "one balancer active, one standby", timeout=30)
        yield cluster


def _one_active_one_standby(cluster: HostCluster) -> tuple[str, int] | None:
    epochs = balancer_epochs(cluster)
    active = [(name, epoch) for name, epoch in epochs.items() if epoch]
    return active[0] if len(epochs) == 2 and len(active) == 1 else None


def _grants(events: list[dict]) -> list[int]:
    return [int(event["detail"].split()[-1]) for event in events if event["kind"] == "lease_granted"]


@needs_hosts
@pytest.mark.parametrize("nemesis", list(PAIR_NEMESES))
def test_pair_nemesis_keeps_one_balancer_obeyed_and_commits_each_chunk_once(pair, nemesis):
    before = active_balancer(pair)
    stream = JobStream(pair.layout.path, clients=3).start()
    try:
        apply(PAIR_NEMESES[nemesis], pair, stream, random.Random(nemesis))
        after = wait_until(lambda: _one_active_one_standby(pair), "one balancer active, one standby", timeout=30)
    finally:
        stream.stop()
    events = all_events(pair.layout.path)
    assert stream.operations >= 3
    assert check(stream.history, events) == []
    assert fencing_violations(events) == []
    grants = _grants(events)
    if nemesis == "partition_balancers":
        assert after == before and grants == [before[1]]
    else:
        assert after[1] > before[1] and grants[-1] == after[1]
    if nemesis in LOSES_THE_LEASE:      # the old active lost its lease and stays standby
        assert after[0] != before[0]
        assert balancer_epochs(pair)[before[0]] == 0


def _granted(*epochs: int) -> list[dict]:
    return [{"kind": "lease_granted", "detail": f"epoch {epoch}"} for epoch in epochs]


def test_the_fencing_check_catches_an_epoch_granted_twice_or_going_back():
    assert fencing_violations(_granted(1, 2, 3)) == []
    assert fencing_violations(_granted(1, 2, 2)) == ["lease epoch 2 granted after epoch 2"]
    assert fencing_violations(_granted(1, 3, 2)) != []
