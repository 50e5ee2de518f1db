"""Each nemesis once, against a cluster whose daemons run on hosts of their
own, under a job stream from several client threads; the history checker
judges what the clients saw. See doc/testing.md."""
import os
import shutil
import subprocess

import pytest

from chaos import ONE_BALANCER_NEMESES, JobStream, all_events, judged_run
from history import PROOF_PROGRAM, check
from hosts import IP, OWNERS_DIR, HostCluster, Network, running_hosts, sweep_leftovers

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") and not os.path.exists("/usr/sbin/nft"),
                                reason="the host harness needs root and nft (scripts/install-system-deps.sh)")


@pytest.fixture(scope="module", autouse=True)
def no_leftovers():
    sweep_leftovers()
    yield
    sweep_leftovers()


@pytest.fixture
def hosts(tmp_path):
    with running_hosts(tmp_path / "cluster", workers=2) as cluster:
        yield cluster


def _pids_on_hosts(cluster: HostCluster) -> list[str]:
    pids = []
    for host in cluster.network.hosts.values():
        if host.namespace:
            pids += subprocess.run([IP, "netns", "pids", host.namespace], capture_output=True,
                                   text=True).stdout.split()
    return pids


@pytest.mark.parametrize("nemesis", list(ONE_BALANCER_NEMESES))
def test_nemesis_keeps_every_acknowledged_job_and_commits_each_chunk_once(hosts, nemesis):
    events = judged_run(ONE_BALANCER_NEMESES[nemesis], hosts, nemesis)
    if nemesis == "kill_worker":    # it landed mid-chunk: the masters lost an attempt and ran it again
        assert any(event["kind"] in ("chunk_lost", "chunk_retried") for event in events)
    hosts.cleanup()
    assert _pids_on_hosts(hosts) == []


def test_the_checker_catches_a_planted_wrong_output_from_a_real_cluster(hosts):
    """A program that writes the wrong chunk's proof: the checker, not the test, says so."""
    from daemons import wait_until
    planted = PROOF_PROGRAM.replace(b'"$UDS_CHUNK"', b'"$((UDS_CHUNK + 1))"')
    assert planted != PROOF_PROGRAM
    stream = JobStream(hosts.layout.path, clients=1, program=planted).start()
    try:
        wait_until(lambda: stream.succeeded_chunks() >= 2, "a job done", timeout=60)
    finally:
        stream.stop()
    kinds = {violation.kind for violation in check(stream.history, all_events(hosts.layout.path))}
    assert kinds == {"wrong-output"}


def test_a_partition_cuts_the_client_off_and_heals(hosts):
    """The client's address is a host too: cut off from the masters, its
    request times out; healed, it is answered."""
    from uds import client
    from uds.errors import RequestTimeout
    with client.connect(hosts.layout.path, timeout=1.0) as connection:
        assert connection.nodes()
        hosts.network.partition(["client"], ["master"])
        with pytest.raises(RequestTimeout):
            connection.nodes()
        hosts.network.heal()
    with client.connect(hosts.layout.path, timeout=10.0) as connection:
        assert connection.nodes()


def test_teardown_leaves_no_namespace_bridge_or_owner(tmp_path):
    network = Network.create()
    cluster = HostCluster.create(tmp_path / "cluster", network, workers=1)
    cluster.start_all()
    namespaces = [host.namespace for host in network.hosts.values() if host.namespace]
    cluster.cleanup()
    network.teardown()
    listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run([IP, "link"], capture_output=True, text=True).stdout
    assert not any(namespace in listed for namespace in namespaces)
    assert network.bridge not in links


def test_the_sweep_removes_a_dead_runs_hosts_and_keeps_a_live_ones():
    dead, live = Network.create(), Network.create()
    try:
        for network in (dead, live):
            network.add_host("master")
        gone = subprocess.Popen(["true"])            # a pid that no longer runs
        gone.wait()
        (OWNERS_DIR / dead.tag).write_text(str(gone.pid))
        assert dead.tag in sweep_leftovers()
        listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run([IP, "link"], capture_output=True, text=True).stdout
        assert dead.hosts["master"].namespace not in listed and dead.bridge not in links
        assert live.hosts["master"].namespace in listed and live.bridge in links
    finally:
        dead.teardown()
        live.teardown()
