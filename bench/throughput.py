"""Chunks per second for /bin/true chunks on a dev cluster with 2 workers,
beside the rate at which this machine starts and reaps /bin/true with two
launcher processes, measured in the same run. Prints one JSON line, which
also gives the CPU milliseconds per chunk of each role, the programs it
started included (cpu_ms_per_chunk), and the rate at which that cost would
use up every core of the machine (cpu_bound_chunks_per_second).
With --compare-sandbox it runs twice, with the workers' sandbox and with
--unsafe-no-sandbox, and gives the sandbox's cost per chunk as a ratio.
With --scrape it runs the workload --rounds times each without and with a
thread that scrapes every daemon's /metrics once a second (the masters,
balancers and storage nodes named in the cluster file, the workers at the
URL their node facts give), alternately on the same cluster, and gives
both rates and their ratio (with / without): what being watched costs.

The jobs are submitted without waiting from up to --threads threads, each
with its own client connection, and then all awaited: `--chunks 1 --jobs
2000` is 2,000 separate one-chunk jobs, the way Ray and Dask submit tasks
(its line adds jobs_per_second). The default, two jobs of 3,000 chunks,
measures how fast chunks of large jobs flow.

    python bench/throughput.py [--masters 1|3|5] [--chunks N] [--jobs J] [--threads T] [--slots S]
                               [--unsafe-no-sandbox | --compare-sandbox | --scrape [--rounds R]]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import add_masters_option, daemon_cpu_seconds, dev_cluster_folder, mark_failed, run_in_threads, true_binary  # noqa: E402
from uds import client  # noqa: E402
from uds.wire import cluster as cluster_file  # noqa: E402
from uds.client.dashboard.worker_metrics import metrics_url  # noqa: E402

LAUNCH_SECONDS = 3.0
# How long one status request may wait at the master for its job to end.
AWAIT_POLL_S = 1.0
# How often the scraper of --scrape reads every daemon's /metrics, as a
# Prometheus server scraping each second (15 s is the usual interval) would.
SCRAPE_INTERVAL_S = 1.0
WORKER_ROLE = 5


def _launch_loop(seconds: float, counter) -> None:
    true = "/bin/true"
    count = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pid = os.posix_spawn(true, [true], os.environ)
        os.waitpid(pid, 0)
        count += 1
    with counter.get_lock():
        counter.value += count


def launch_rate(launchers: int = 2, seconds: float = LAUNCH_SECONDS) -> float:
    """/bin/true started and reaped per second by `launchers` processes."""
    counter = multiprocessing.Value("q", 0)
    processes = [multiprocessing.Process(target=_launch_loop, args=(seconds, counter)) for _ in range(launchers)]
    started = time.monotonic()
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return counter.value / (time.monotonic() - started)


def submit_and_await(folder, program: str, chunks: int, jobs: int, deadline: float) -> list:
    """One thread's share: submit `jobs` jobs back to back on its own
    connection, then await each; their final statuses."""
    with client.connect(folder) as connection:
        submitted = [connection.submit_job(program, chunks=chunks, timeout=60) for _ in range(jobs)]
        statuses = []
        for job in submitted:
            while True:
                status = connection.job_status(job.id, detail=False, wait=AWAIT_POLL_S)
                if status.done:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job.id} still {status.state} at the deadline")
            statuses.append(status)
        return statuses


def report_failures(connection: client.Connection, statuses: list, most: int = 10) -> None:
    """Say on stderr why chunks did not succeed: each such chunk's state and
    last attempt's error, for at most `most` of them."""
    told = 0
    for status in statuses:
        if status.succeeded == status.chunk_count:
            continue
        detail = connection.job_status(status.id)
        for chunk in detail.chunks:
            if chunk.state != "succeeded" and told < most:
                told += 1
                print(f"bench: job {status.id} chunk {chunk.chunk} {chunk.state} after attempt {chunk.attempt}: "
                      f"exit {chunk.result.exit_code}, {chunk.result.error or 'no error given'}", file=sys.stderr)


def metrics_urls(folder, connection: client.Connection) -> list[str]:
    """Every daemon's /metrics: the cluster file's entries, and each live
    worker's URL from its node facts."""
    loaded = cluster_file.load(folder / "cluster.toml")
    entries = (*loaded.masters, *loaded.loadbalancers, *loaded.storage)
    urls = [f"http://{entry.metrics}/metrics" for entry in entries if entry.metrics]
    urls += [url for node in connection.nodes()
             if node["role"] == WORKER_ROLE and node["state"] == "alive" and (url := metrics_url(node))]
    return urls


class Scraper:
    """A thread that reads every URL once each SCRAPE_INTERVAL_S, as a
    monitoring server would, until stopped; counts its scrapes."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.scrapes = self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)

    def __enter__(self) -> "Scraper":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            for url in self.urls:
                try:
                    with urllib.request.urlopen(url, timeout=5) as response:
                        response.read()
                    self.scrapes += 1
                except OSError:
                    self.failures += 1
            if self._stop.wait(SCRAPE_INTERVAL_S):
                return


def cluster_rate(options: argparse.Namespace, unsafe_no_sandbox: bool) -> dict:
    """Run the jobs on a fresh dev cluster: what it did and how fast."""
    with dev_cluster_folder(workers=2, slots=options.slots, unsafe_no_sandbox=unsafe_no_sandbox,
                            masters=options.masters) as folder, client.connect(folder) as connection:
        program = connection.put(true_binary())
        warm = connection.submit_job(program, chunks=50, timeout=60)   # warm caches and processes
        warm.wait(timeout=120)
        return run_workload(options, folder, connection, program)


def scrape_rates(options: argparse.Namespace) -> dict:
    """The workload --rounds times each without and with the scraper,
    alternately, on one dev cluster: the rates of each and their ratio."""
    with dev_cluster_folder(workers=2, slots=options.slots, unsafe_no_sandbox=options.unsafe_no_sandbox,
                            masters=options.masters) as folder, client.connect(folder) as connection:
        program = connection.put(true_binary())
        connection.submit_job(program, chunks=50, timeout=60).wait(timeout=120)
        urls = metrics_urls(folder, connection)
        runs: dict[bool, list[dict]] = {False: [], True: []}
        scrapes = failures = 0
        for _round in range(options.rounds):
            runs[False].append(run_workload(options, folder, connection, program))
            with Scraper(urls) as scraper:
                runs[True].append(run_workload(options, folder, connection, program))
            scrapes, failures = scrapes + scraper.scrapes, failures + scraper.failures

    def rate(scraped: bool) -> float:
        return sum(run["succeeded"] for run in runs[scraped]) / sum(run["seconds"] for run in runs[scraped])

    without, with_scraper = rate(False), rate(True)
    return {"benchmark": "throughput_scrape", "daemons_scraped": len(urls), "scrapes": scrapes,
            "scrape_failures": failures, "rounds": options.rounds, "chunks_per_round": options.chunks * options.jobs,
            "chunks_per_second_without_scraper": round(without, 1),
            "chunks_per_second_with_scraper": round(with_scraper, 1),
            "ratio_with_to_without": round(with_scraper / without, 3),
            "rounds_chunks_per_second": {"without": [round(run["rate"], 1) for run in runs[False]],
                                         "with": [round(run["rate"], 1) for run in runs[True]]},
            "succeeded": sum(run["succeeded"] for both in runs.values() for run in both),
            "chunks": 2 * options.rounds * options.chunks * options.jobs,
            "sandbox": not options.unsafe_no_sandbox, "masters": options.masters, "workers": 2,
            "slots_per_worker": options.slots}


def run_workload(options: argparse.Namespace, folder, connection: client.Connection, program) -> dict:
    """The jobs, submitted from the client threads and awaited: what they did and how fast."""
    threads = max(1, min(options.threads, options.jobs))
    shares = [options.jobs // threads + (1 if index < options.jobs % threads else 0) for index in range(threads)]
    cpu_before, client_before = daemon_cpu_seconds(folder), os.times()
    results, elapsed = run_in_threads(
        lambda share: submit_and_await(folder, program, options.chunks, share, time.monotonic() + 600), shares)
    cpu_after, client_after = daemon_cpu_seconds(folder), os.times()
    succeeded = sum(status.succeeded for share in results for status in share)
    if succeeded < options.chunks * options.jobs:
        mark_failed(folder)
        report_failures(connection, [status for share in results for status in share])
    # This connection found the leader when it submitted: the counters
    # are the leader's, not a follower's.
    stats = connection.master_stats()
    cpu = {role: seconds - cpu_before.get(role, 0.0) for role, seconds in cpu_after.items()}
    cpu["client"] = (client_after.user + client_after.system) - (client_before.user + client_before.system)
    return {"succeeded": succeeded, "seconds": elapsed, "rate": succeeded / elapsed, "stats": stats, "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=3000, help="chunks per job")
    parser.add_argument("--jobs", type=int, default=2, help="jobs submitted at once")
    parser.add_argument("--threads", type=int, default=8,
                        help="client threads submitting (each with its own connection)")
    add_masters_option(parser)
    parser.add_argument("--slots", type=int, default=8, help="slots per worker (short chunks: several per core)")
    sandbox = parser.add_mutually_exclusive_group()
    sandbox.add_argument("--unsafe-no-sandbox", action="store_true",
                         help="workers run chunks unconfined (no bubblewrap, cgroup or slot user)")
    sandbox.add_argument("--compare-sandbox", action="store_true",
                         help="run with and without the sandbox and print both rates and their ratio")
    parser.add_argument("--scrape", action="store_true",
                         help="run with and without a scraper of every daemon's /metrics, alternately, "
                              "and print both rates and their ratio")
    parser.add_argument("--rounds", type=int, default=2,
                        help="with --scrape: rounds of the workload each way")
    options = parser.parse_args()
    if options.scrape and options.compare_sandbox:
        parser.error("--scrape and --compare-sandbox each run their own comparison: give one")

    if options.scrape:
        report = scrape_rates(options)
        print(json.dumps(report))
        return 0 if report["succeeded"] == report["chunks"] and not report["scrape_failures"] else 1
    limit = launch_rate()
    run = cluster_rate(options, unsafe_no_sandbox=options.unsafe_no_sandbox)
    bare = cluster_rate(options, unsafe_no_sandbox=True) if options.compare_sandbox else None
    total = options.chunks * options.jobs
    succeeded, elapsed, rate, stats = run["succeeded"], run["seconds"], run["rate"], run["stats"]
    report = {
        "benchmark": "throughput",
        "sandbox": not options.unsafe_no_sandbox,
        "chunks": total,
        "succeeded": succeeded,
        "seconds": round(elapsed, 2),
        "chunks_per_second": round(rate, 1),
        "limit_true_spawn_per_second_2_launchers": round(limit, 1),
        "ratio_to_limit": round(rate / limit, 3),
        "masters": options.masters,
        "workers": 2,
        "client_threads": max(1, min(options.threads, options.jobs)),
        "slots_per_worker": options.slots,
        "raft_proposals": stats.get("proposals", 0),
        "commands_per_proposal": round(stats.get("commands_proposed", 0) / max(1, stats.get("proposals", 1)), 1),
    }
    # Where the cores went: CPU ms per chunk of each role (all its daemons
    # together, with the programs they started), and the rate at which the
    # machine's cores would run out at that cost, had nothing else run.
    cpu_ms = {role: round(1000 * seconds / max(1, succeeded), 3) for role, seconds in sorted(run["cpu"].items())}
    report["cpu_ms_per_chunk"] = cpu_ms
    report["cpu_bound_chunks_per_second"] = round(1000 * (os.cpu_count() or 1) / max(1e-9, sum(cpu_ms.values())), 1)
    if options.chunks == 1:
        report["jobs_per_second"] = report["chunks_per_second"]
    if bare is not None:
        report.update({
            "chunks_per_second_unsafe_no_sandbox": round(bare["rate"], 1),
            "ratio_sandboxed_to_unsandboxed": round(rate / bare["rate"], 3),
            # Two workers' slots share the machine's cores: per chunk, the set-up
            # costs this much more wall time of the cluster as a whole.
            "sandbox_cost_ms_per_chunk": round(1000 * (1 / rate - 1 / bare["rate"]), 2),
        })
        succeeded = min(succeeded, bare["succeeded"])
    print(json.dumps(report))
    return 0 if succeeded == total else 1


if __name__ == "__main__":
    sys.exit(main())
