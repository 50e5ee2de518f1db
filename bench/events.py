"""Events pushed to subscribers, on a dev cluster with 2 workers: the
latency from an event's commit to a subscriber's receipt, and what 100
subscribers cost the master's throughput, as a ratio in the same run.
Prints one JSON line.

Latency: one subscriber follows every event (held queries, client/events.py)
while a job of --latency-chunks /bin/true chunks runs; for each event, its
receipt (this machine's clock) less its `at` (the leader's clock when it
proposed the event: the same clock, the daemons run here). That is proposal,
commit, the held query's answer and the client's decoding, p50 and p99.

Throughput: --jobs jobs of --chunks /bin/true chunks, submitted from 8
threads and awaited as bench/throughput.py does, in chunks per second; with
no subscriber, and with --subscribers following (`--follow job`: each
follows one job's events, as `job.events()` does, the jobs' ids known
before they are submitted; `--follow all`: each follows every event), the
two alternated --rounds times. The subscribers are threads of this process,
each with its own request link, on one client transport; they share the
machine's cores with the daemons, so the ratio counts their decoding too.

    python bench/events.py [--chunks N] [--jobs J] [--subscribers S] [--follow job|all] [--rounds R]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import dev_cluster_folder, run_in_threads, true_binary  # noqa: E402
from throughput import AWAIT_POLL_S  # noqa: E402
from uds import client  # noqa: E402
from uds.client.events import JOB_FINAL_KINDS, follow, job_events  # noqa: E402
from uds.client.leader import LeaderLink  # noqa: E402
from uds.wire.ids import new_id  # noqa: E402

THREADS = 8


def submit_and_await(folder, program: str, chunks: int, job_ids: list[str], deadline: float) -> list:
    """One thread's share, as bench/throughput.py's, with the jobs' ids given."""
    with client.connect(folder) as connection:
        for job_id in job_ids:
            connection.submit_job(program, chunks=chunks, timeout=60, job_id=job_id)
        statuses = []
        for job_id in job_ids:
            while not (status := connection.job_status(job_id, detail=False, wait=AWAIT_POLL_S)).done:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {status.state} at the deadline")
            statuses.append(status)
        return statuses


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def light_links(connection: client.Connection, count: int) -> list:
    """`count` request links on the connection's transport, each usable by one
    thread as a connection is by `follow` (a node id, a leader link, a timeout)."""
    addresses = [master.address for master in connection.cluster.masters]
    links = []
    for _ in range(count):
        node_id = new_id()
        links.append(types.SimpleNamespace(node_id=node_id, timeout=30.0,
                                           _leader=LeaderLink(connection._transport, node_id, addresses),
                                           job_status=connection.job_status))
    return links


def latencies(connection: client.Connection, program: str, chunks: int) -> list[float]:
    """Commit-to-receipt delays of every event while a job of `chunks` runs."""
    start = connection.events(after=0, limit=1).last_seq
    job_id = new_id().hex()
    delays: list[float] = []
    ready = threading.Event()

    def subscribe() -> None:
        [link] = light_links(connection, 1)
        ready.set()
        for event in follow(link, start):
            delays.append(time.time() - event.at)
            if event.job == job_id and event.kind in JOB_FINAL_KINDS:
                return

    subscriber = threading.Thread(target=subscribe)
    subscriber.start()
    ready.wait()
    connection.submit_job(program, chunks=chunks, timeout=60, job_id=job_id)
    subscriber.join(600)
    return delays


def throughput(folder, connection: client.Connection, program: str, options: argparse.Namespace,
               subscribers: int) -> float:
    """Chunks per second of the workload, with `subscribers` following."""
    job_ids = [new_id().hex() for _ in range(options.jobs)]
    start = connection.events(after=0, limit=1).last_seq
    links = light_links(connection, subscribers)
    received = [0] * subscribers

    def subscribe(index: int) -> None:
        link = links[index]
        if options.follow == "job":
            for _event in job_events(link, job_ids[index % len(job_ids)], start):
                received[index] += 1
            return
        ends = 0
        for event in follow(link, start):
            received[index] += 1
            if event.kind in JOB_FINAL_KINDS and event.job in job_ids:
                ends += 1
                if ends == len(job_ids):
                    return

    threads = [threading.Thread(target=subscribe, args=(index,), daemon=True) for index in range(subscribers)]
    for thread in threads:
        thread.start()
    shares = [job_ids[index::THREADS] for index in range(THREADS)]     # any count: some get one more
    results, elapsed = run_in_threads(
        lambda share: submit_and_await(folder, program, options.chunks, share, time.monotonic() + 600), shares)
    for thread in threads:
        thread.join(120)
    if any(thread.is_alive() for thread in threads):
        raise RuntimeError("a subscriber did not see the end of its jobs")
    succeeded = sum(status.succeeded for share in results for status in share)
    if succeeded != options.chunks * options.jobs:
        raise RuntimeError(f"{succeeded} of {options.chunks * options.jobs} chunks succeeded")
    return succeeded / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-chunks", type=int, default=1500, help="chunks of the latency run's job")
    parser.add_argument("--chunks", type=int, default=20, help="chunks per job of the throughput runs")
    parser.add_argument("--jobs", type=int, default=100, help="jobs per throughput run")
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--follow", choices=("job", "all"), default="job",
                        help="each subscriber follows one job's events, or every event")
    parser.add_argument("--rounds", type=int, default=2, help="throughput runs of each kind, alternated")
    parser.add_argument("--slots", type=int, default=8, help="slots per worker")
    options = parser.parse_args()
    with dev_cluster_folder(workers=2, slots=options.slots) as folder, client.connect(folder) as connection:
        program = connection.put(true_binary())
        connection.submit_job(program, chunks=50, timeout=60).wait(timeout=120)   # warm up
        delays = latencies(connection, program, options.latency_chunks)
        rates: dict[int, list[float]] = {0: [], options.subscribers: []}
        for _ in range(options.rounds):
            for subscribers in rates:
                rates[subscribers].append(throughput(folder, connection, program, options, subscribers))
        stats = connection.master_stats()
    without = statistics.median(rates[0])
    with_subscribers = statistics.median(rates[options.subscribers])
    print(json.dumps({
        "benchmark": "events",
        "latency_events": len(delays),
        "latency_ms_p50": round(1000 * percentile(delays, 0.50), 2),
        "latency_ms_p99": round(1000 * percentile(delays, 0.99), 2),
        "latency_ms_max": round(1000 * max(delays), 2),
        "workload": f"{options.jobs} jobs x {options.chunks} chunks of /bin/true, 2 workers x {options.slots} slots",
        "subscribers": options.subscribers,
        "follow": options.follow,
        "chunks_per_second_0_subscribers": [round(rate, 1) for rate in rates[0]],
        f"chunks_per_second_{options.subscribers}_subscribers": [round(rate, 1)
                                                                  for rate in rates[options.subscribers]],
        "ratio_with_to_without": round(with_subscribers / without, 3),
        "events_queries": stats.get("events_queries", 0),
        "events_queries_held": stats.get("events_queries_held", 0),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
