"""Three masters under their nemeses: each once, against a cluster whose
masters, balancer pair, storage and workers run on hosts of their own,
under a job stream from several client threads. See doc/testing.md.

Besides the history checker (every acknowledged job succeeds, each chunk is
committed once, no client sees a state go backwards), each case checks that
the masters end with one leader, and that the balancers' lease epochs rose
one at a time (fencing_violations) through the leader changes.
"""
import os
import shutil

import pytest

from chaos import MASTER_NEMESES, fencing_violations, judged_run, leader_master, master_roles
from daemons import wait_until
from hosts import HostCluster, running_hosts

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") and not os.path.exists("/usr/sbin/nft"),
                                reason="the host harness needs root and nft (scripts/install-system-deps.sh)")


@pytest.fixture
def group(tmp_path):
    with running_hosts(tmp_path / "cluster", workers=2, masters=3, loadbalancers=2) as cluster:
        leader_master(cluster)
        yield cluster


@pytest.mark.parametrize("nemesis", list(MASTER_NEMESES))
def test_master_nemesis_loses_no_acknowledged_job_and_commits_each_chunk_once(group, nemesis):
    events = judged_run(MASTER_NEMESES[nemesis], group, nemesis)
    assert fencing_violations(events) == []
    wait_until(lambda: _one_leader_two_followers(group), "one leader and two followers", timeout=30)


def _one_leader_two_followers(group: HostCluster) -> bool:
    return sorted(master_roles(group).values(), key=lambda role: -1 if role is None else role) == [0, 0, 1]
