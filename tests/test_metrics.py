"""Prometheus metrics (daemon/metrics.py, doc/metrics.md): figures read at
scrape time, addresses and port ranges, and every daemon of a real cluster
scraped and parsed with prometheus_client's own parser."""
from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemons import ClusterLayout, wait_until
from uds.daemon.metrics import READ_ATTEMPTS, DaemonMetrics, MetricsAddressError, prefixed
from uds.client.dashboard.worker_metrics import metrics_url
from uds.master.commands import (
    CHUNK_DISPATCHED, CHUNK_RETRIED, JOB_READY, JOB_SUBMITTED, JOB_SUCCEEDED, Event,
)
from uds.master.event_timings import CHUNK_QUEUE_WAIT, JOB_SUBMIT_TO_RESULT, EventTimings

WORKER_ROLE = 5


def scrape(url: str) -> dict[str, object]:
    """Metric families by name, parsed as Prometheus parses them."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(families: dict, name: str, suffix: str = "") -> float:
    """The value of `name`'s sample `name+suffix` (a histogram's _count, say)."""
    family = families[name]
    values = [item.value for item in family.samples if item.name == name + suffix]
    assert values, f"{name}{suffix} has no sample"
    return values[0]


@pytest.fixture
def metrics():
    served = DaemonMetrics("test")
    yield served
    served.close()


# -- daemon/metrics.py --------------------------------------------------------

def test_figures_are_read_at_each_scrape(metrics):
    counters = {"jobs_submitted": 1}
    gauges = {"queued": 4}
    metrics.counters_from(lambda: dict(counters), {"jobs_submitted": "Jobs submitted."})
    metrics.gauges_from(lambda: dict(gauges))
    metrics.histogram("wait_seconds", "Waits.").observe(0.02)
    metrics.serve("127.0.0.1:0")
    first = scrape(metrics.url())
    assert sample(first, "uds_test_jobs_submitted", "_total") == 1
    assert first["uds_test_jobs_submitted"].documentation == "Jobs submitted."
    assert sample(first, "uds_test_queued") == 4
    assert sample(first, "uds_test_wait_seconds", "_count") == 1
    counters["jobs_submitted"] = 7
    counters["jobs_cancelled"] = 2          # a figure counted for the first time
    gauges["queued"] = 0
    second = scrape(metrics.url())
    assert sample(second, "uds_test_jobs_submitted", "_total") == 7
    assert sample(second, "uds_test_jobs_cancelled", "_total") == 2
    assert sample(second, "uds_test_queued") == 0


def test_a_figure_read_during_a_resize_is_read_again(metrics):
    calls = []

    def read():
        calls.append(1)
        if len(calls) < READ_ATTEMPTS:
            raise RuntimeError("dictionary changed size during iteration")
        return {"chunks": 3}

    metrics.gauges_from(read)
    metrics.serve("127.0.0.1:0")
    assert sample(scrape(metrics.url()), "uds_test_chunks") == 3
    assert len(calls) == READ_ATTEMPTS


def test_figures_that_are_not_numbers_are_left_out(metrics):
    metrics.gauges_from(lambda: {"name": "w0", "flag": True, "slots": 2})
    metrics.serve("127.0.0.1:0")
    families = scrape(metrics.url())
    assert "uds_test_slots" in families
    assert "uds_test_name" not in families and "uds_test_flag" not in families


@pytest.mark.parametrize("address", ["9100", "127.0.0.1:", "127.0.0.1:x", "127.0.0.1:9200-9100",
                                     "127.0.0.1:70000", "bad host!:9100"])
def test_a_malformed_address_is_refused(metrics, address):
    with pytest.raises(MetricsAddressError):
        metrics.serve(address)
    assert metrics.url() == ""


def test_a_range_serves_on_its_first_free_port(metrics):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        first = taken.getsockname()[1]
        if first >= 65535 - 4:
            pytest.skip("no room above the port taken")
        host, port = metrics.serve(f"127.0.0.1:{first}-{first + 4}")
    assert host == "127.0.0.1" and first < port <= first + 4
    assert metrics.url() == f"http://127.0.0.1:{port}/metrics"
    assert "python_info" not in scrape(metrics.url())      # its own registry, not the process's


def test_a_wildcard_host_is_named_by_an_address_of_this_host(metrics):
    metrics.serve("0.0.0.0:0")
    port = metrics.address[1]
    assert metrics.url(["192.0.2.7", "fd00::7"]) == f"http://192.0.2.7:{port}/metrics"
    assert metrics.url(["fd00::7"]) == f"http://[fd00::7]:{port}/metrics"
    assert metrics.url() == f"http://0.0.0.0:{port}/metrics"       # nothing better known


def test_a_taken_port_is_refused_saying_why(metrics):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsAddressError, match=f"127.0.0.1:{port}"):
            metrics.serve(f"127.0.0.1:{port}")


def test_prefixed_names_each_figure():
    assert prefixed("transport_", {"sent": 2}) == {"transport_sent": 2}


# -- master/event_timings.py ----------------------------------------------------

def _event(seq, at, kind, job=b"j" * 16, chunk=None):
    return Event(seq, at, kind, job, chunk, None, None, "")


def test_event_timings_time_queue_wait_and_submit_to_result():
    timings = EventTimings()
    found = timings.durations([
        _event(1, 10.0, JOB_SUBMITTED),
        _event(2, 10.5, CHUNK_DISPATCHED, chunk=0),
        _event(3, 11.0, CHUNK_RETRIED, chunk=0),
        _event(4, 11.25, CHUNK_DISPATCHED, chunk=0),
        _event(5, 12.0, CHUNK_DISPATCHED, chunk=1),
        _event(6, 14.0, JOB_SUCCEEDED),
    ])
    assert found == [(CHUNK_QUEUE_WAIT, 0.5), (CHUNK_QUEUE_WAIT, 0.25), (CHUNK_QUEUE_WAIT, 2.0),
                     (JOB_SUBMIT_TO_RESULT, 4.0)]
    assert len(timings) == 0        # a finished job is forgotten


def test_event_timings_wait_from_a_waiting_jobs_readiness():
    timings = EventTimings()
    found = timings.durations([_event(1, 10.0, JOB_SUBMITTED), _event(2, 20.0, JOB_READY),
                               _event(3, 21.0, CHUNK_DISPATCHED, chunk=0)])
    assert found == [(CHUNK_QUEUE_WAIT, 1.0)]


def test_event_timings_do_not_guess_what_came_before_leading():
    timings = EventTimings()
    assert timings.durations([_event(7, 3.0, CHUNK_DISPATCHED, chunk=0), _event(8, 4.0, JOB_SUCCEEDED)]) == []
    timings.durations([_event(9, 5.0, JOB_SUBMITTED, job=b"k" * 16)])
    timings.forget_all()
    assert len(timings) == 0


# -- every daemon of a real cluster -----------------------------------------------

CHUNKS = 4


def test_every_daemon_of_a_cluster_serves_its_metrics(cluster):
    """Masters, balancers and storage are found in the cluster file, workers
    by the URL in their node facts; each is parsed as Prometheus would."""
    connection = cluster.connection
    job = connection.submit_job(b'#!/bin/sh\ncat "$UDS_INPUTS/in.txt"\n', inputs={"in.txt": b"metrics\n"},
                                chunks=CHUNKS, timeout=30)
    assert job.wait(timeout=30).state == "succeeded"
    layout = cluster.layout.cluster

    def master_counted():
        families = scrape(f"http://{layout.masters[0].metrics}/metrics")
        done = sample(families, "uds_master_job_submit_to_result_seconds", "_count") >= 1
        return families if done else None

    master = wait_until(master_counted, "the leader's submit-to-result histogram")
    assert sample(master, "uds_master_is_leader") in (0, 1)
    assert sample(master, "uds_master_raft_commit_seconds", "_count") > 0
    assert sample(master, "uds_master_chunk_queue_wait_seconds", "_count") >= CHUNKS
    for gauge in ("chunks_queued", "chunks_running", "result_cache_entries", "raft_term", "raft_commit_index"):
        assert f"uds_master_{gauge}" in master
    assert any(name.startswith("uds_master_transport_") for name in master)

    def balancer_active():     # gauges are copied once a second: the lease may be newer
        families = scrape(f"http://{layout.loadbalancers[0].metrics}/metrics")
        return families if sample(families, "uds_loadbalancer_active") == 1 else None

    balancer = wait_until(balancer_active, "the balancer's active gauge")
    assert sample(balancer, "uds_loadbalancer_queue_wait_seconds", "_count") >= CHUNKS
    assert sample(balancer, "uds_loadbalancer_attempts_assigned", "_total") >= CHUNKS
    for gauge in ("chunks_queued", "chunks_running"):
        assert f"uds_loadbalancer_{gauge}" in balancer

    storage = scrape(f"http://{layout.storage[0].metrics}/metrics")
    assert sample(storage, "uds_storage_free_bytes") > 0
    assert "uds_storage_used_bytes" in storage and "uds_storage_blobs" in storage
    assert sample(storage, "uds_storage_reads", "_total") + sample(storage, "uds_storage_file_requests",
                                                                     "_total") > 0

    urls = [metrics_url(node) for node in connection.nodes()
            if node["role"] == WORKER_ROLE and node["state"] == "alive"]
    assert len(urls) == len(cluster.worker_names()) and None not in urls
    runs = fetches = reads = 0
    for url in urls:
        worker = scrape(url)
        runs += sample(worker, "uds_worker_chunk_run_seconds", "_count")
        fetches += sample(worker, "uds_worker_block_fetch_seconds", "_count")
        reads += sample(worker, "uds_worker_fuse_read_seconds", "_count")
        for gauge in ("chunks_running", "slots_free", "cached_bytes"):
            assert f"uds_worker_{gauge}" in worker
    assert runs >= CHUNKS
    assert fetches >= 1 and reads >= CHUNKS


def test_a_daemon_whose_metrics_port_is_taken_does_not_start(tmp_path):
    layout = ClusterLayout.create(tmp_path / "cluster")
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            text = layout.path.read_text()
            entry = layout.cluster.storage[0].metrics
            layout.path.write_text(text.replace(f'metrics = "{entry}"', f'metrics = "127.0.0.1:{port}"'))
            daemon = layout.start("storage", wait=False)
            assert daemon.process.wait(timeout=30) == 1
        assert f"cannot bind 127.0.0.1:{port}" in daemon.log()
    finally:
        layout.cleanup()

