"""p50 and p99 of submit-to-result for one-chunk /bin/true jobs, one at a
time, on a dev cluster with 2 workers; beside the round trip of a status
query to the master (the floor any request pays) in the same run.
Prints one JSON line.

    python bench/latency.py [--masters 1|3|5] [--jobs N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import add_masters_option, dev_cluster, true_binary  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    add_masters_option(parser)
    options = parser.parse_args()
    with dev_cluster(workers=2, slots=2, masters=options.masters) as connection:
        program = connection.put(true_binary())
        for _ in range(20):  # warm up
            connection.submit_job(program, timeout=30).wait(timeout=30)
        latencies = []
        for _ in range(options.jobs):
            started = time.perf_counter()
            status = connection.submit_job(program, timeout=30).wait(timeout=30)
            latencies.append(time.perf_counter() - started)
            if status.state != "succeeded":
                print(json.dumps({"benchmark": "latency", "error": f"a job {status.state}"}))
                raise SystemExit(1)   # inside the cluster: its logs are kept
        job = connection.submit_job(program, timeout=30)
        job.wait(timeout=30)
        round_trips = []
        for _ in range(200):
            started = time.perf_counter()
            job.status(detail=False)
            round_trips.append(time.perf_counter() - started)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    floor = statistics.median(round_trips)
    print(json.dumps({
        "benchmark": "latency",
        "masters": options.masters,
        "jobs": options.jobs,
        "p50_ms": round(p50 * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "mean_ms": round(statistics.mean(latencies) * 1000, 2),
        "limit_status_round_trip_ms": round(floor * 1000, 3),
        "p50_ratio_to_round_trip": round(p50 / floor, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
