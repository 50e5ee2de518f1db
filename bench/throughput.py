"""Chunks per second for /bin/true chunks on a dev cluster with 2 workers,
beside the rate at which this machine starts and reaps /bin/true with two
launcher processes, measured in the same run. Prints one JSON line.
With --compare-sandbox it runs twice, with the workers' sandbox and with
--unsafe-no-sandbox, and gives the sandbox's cost per chunk as a ratio.

    python bench/throughput.py [--chunks N] [--jobs J] [--slots S] [--unsafe-no-sandbox | --compare-sandbox]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import dev_cluster, true_binary  # noqa: E402

LAUNCH_SECONDS = 3.0


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


def cluster_rate(options: argparse.Namespace, unsafe_no_sandbox: bool) -> dict:
    """Run the jobs on a fresh dev cluster: what it did and how fast."""
    with dev_cluster(workers=2, slots=options.slots, unsafe_no_sandbox=unsafe_no_sandbox) as connection:
        program = connection.put(true_binary())
        warm = connection.submit_job(program, chunks=50, timeout=60)   # warm caches and processes
        warm.wait(timeout=120)
        started = time.monotonic()
        jobs = [connection.submit_job(program, chunks=options.chunks, timeout=60) for _ in range(options.jobs)]
        for job in connection.as_completed(jobs, timeout=600):
            pass
        elapsed = time.monotonic() - started
        statuses = [job.status(detail=False) for job in jobs]
        succeeded = sum(status.succeeded for status in statuses)
        stats = connection.master_stats()
    return {"succeeded": succeeded, "seconds": elapsed, "rate": succeeded / elapsed, "stats": stats}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=3000, help="chunks per job")
    parser.add_argument("--jobs", type=int, default=2, help="jobs submitted at once")
    parser.add_argument("--slots", type=int, default=8, help="slots per worker (short chunks: several per core)")
    sandbox = parser.add_mutually_exclusive_group()
    sandbox.add_argument("--unsafe-no-sandbox", action="store_true",
                         help="workers run chunks unconfined (no bubblewrap, cgroup or slot user)")
    sandbox.add_argument("--compare-sandbox", action="store_true",
                         help="run with and without the sandbox and print both rates and their ratio")
    options = parser.parse_args()

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
        "workers": 2,
        "slots_per_worker": options.slots,
        "raft_proposals": stats.get("proposals", 0),
        "commands_per_proposal": round(stats.get("commands_proposed", 0) / max(1, stats.get("proposals", 1)), 1),
    }
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
