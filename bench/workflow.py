"""What the result cache saves and what a dependency costs, on a dev cluster
with 2 workers. Prints one JSON line.

- The cache: a job of --chunks /bin/true chunks with cache=True, run once
  (every chunk runs and records its result), then submitted again as a new
  job with the same program, args and chunk count (every chunk's key is
  found: nothing runs). Each is timed from the submit to the moment the
  masters call the job final; the line gives both, their ratio, and the CPU
  the daemons spent on each.
- A dependency: --pairs pairs of one-chunk jobs, A and B after=[A],
  submitted together, one pair at a time. From the event log's times: the
  commit of A's last chunk to the dispatch of B's first chunk (a chunk
  as short as /bin/true ends before it would report its start); beside
  it, a lone job's submit to its first dispatch (0: the same commit).

    python bench/workflow.py [--masters 1|3|5] [--chunks N] [--pairs P]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cluster import add_masters_option, daemon_cpu_seconds, dev_cluster_folder, mark_failed, true_binary  # noqa: E402
from uds import client  # noqa: E402

# How long one status request may wait at the master for its job to end.
AWAIT_POLL_S = 1.0
RUN_TIMEOUT_S = 900.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def await_final(connection: client.Connection, job_id: str, timeout: float = RUN_TIMEOUT_S):
    """The job's counts once it is final (no chunk reports: a large job's
    pages would be timed too)."""
    deadline = time.monotonic() + timeout
    while True:
        status = connection.job_status(job_id, detail=False, wait=AWAIT_POLL_S)
        if status.done:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status.state} after {timeout:g}s")


def timed_run(connection: client.Connection, folder, program: str, chunks: int) -> dict:
    cpu_before = daemon_cpu_seconds(folder)
    started = time.monotonic()
    job = connection.submit_job(program, chunks=chunks, timeout=60, cache=True)
    status = await_final(connection, job.id)
    seconds = time.monotonic() - started
    cpu_after = daemon_cpu_seconds(folder)
    return {"status": status, "seconds": seconds,
            "cpu_s": {role: round(used - cpu_before.get(role, 0.0), 2) for role, used in sorted(cpu_after.items())}}


def report_uncached(connection: client.Connection, first_id: str, again_id: str, most: int = 10) -> None:
    """Say on stderr which chunks of the re-run were not taken from the
    cache, and how the same chunk of the first run ended."""
    told = 0
    for chunk in connection.job_status(again_id).chunks:
        if chunk.state != "cached" and told < most:
            told += 1
            before = connection.job_status(first_id, first_chunk=chunk.chunk, max_chunks=1).chunks[0]
            print(f"bench: re-run chunk {chunk.chunk} {chunk.state} (attempt {chunk.attempt}, failures "
                  f"{chunk.failures}, {chunk.result.error or 'no error'}); in the first run "
                  f"{before.state} at attempt {before.attempt}, failures {before.failures}, "
                  f"{before.result.error or 'no error'}", file=sys.stderr)


def events_since(connection: client.Connection, after: int) -> list:
    found = []
    while True:
        page = connection.events(after=after, limit=10_000)
        found += page.events
        if page.through_seq >= page.last_seq or page.through_seq <= after:
            return found
        after = page.through_seq


def dependency_latencies(connection: client.Connection, program: str, pairs: int) -> dict:
    start_seq = connection.events(after=0, limit=1).last_seq
    jobs = []
    for _ in range(pairs):
        first = connection.submit_job(program, timeout=30)
        second = connection.submit_job(program, timeout=30, after=[first])
        for job in (first, second):
            if await_final(connection, job.id, 60).state != "succeeded":
                raise RuntimeError(f"job {job.id} did not succeed")
        jobs.append((first.id, second.id))
    at: dict[tuple[str, str], float] = {}
    for event in events_since(connection, start_seq):
        if event.job is not None:
            key = (event.job, event.kind)
            # The last commit of a kind, the first dispatch or start.
            if event.kind in ("chunk_succeeded", "job_submitted") or key not in at:
                at[key] = event.at
    to_dispatch = [at[(b, "chunk_dispatched")] - at[(a, "chunk_succeeded")] for a, b in jobs]
    floor = [at[(a, "chunk_dispatched")] - at[(a, "job_submitted")] for a, _ in jobs]
    return {
        "pairs": pairs,
        "dependency_to_dispatch_p50_ms": round(1000 * statistics.median(to_dispatch), 2),
        "dependency_to_dispatch_p90_ms": round(1000 * percentile(to_dispatch, 0.9), 2),
        "lone_submit_to_dispatch_p50_ms": round(1000 * statistics.median(floor), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000, help="chunks of the cached job")
    parser.add_argument("--pairs", type=int, default=20, help="dependent pairs of one-chunk jobs")
    add_masters_option(parser)
    options = parser.parse_args()
    with dev_cluster_folder(workers=2, slots=8, masters=options.masters) as folder, \
            client.connect(folder) as connection:
        program = connection.put(true_binary())
        connection.submit_job(program, chunks=50, timeout=60).wait(timeout=120)   # warm caches and processes
        first = timed_run(connection, folder, program, options.chunks)
        again = timed_run(connection, folder, program, options.chunks)
        ok = (first["status"].succeeded == options.chunks and again["status"].succeeded == options.chunks
              and again["status"].cached == options.chunks)
        if not ok:
            mark_failed(folder)
            report_uncached(connection, first["status"].id, again["status"].id)
        dependency = dependency_latencies(connection, program, options.pairs)
    report = {
        "benchmark": "workflow",
        "masters": options.masters,
        "workers": 2,
        "chunks": options.chunks,
        "first_run_s": round(first["seconds"], 3),
        "first_run_succeeded": first["status"].succeeded,
        "first_run_cached": first["status"].cached,
        "cached_rerun_s": round(again["seconds"], 3),
        "cached_rerun_succeeded": again["status"].succeeded,
        "cached_rerun_cached": again["status"].cached,
        "rerun_to_first_ratio": round(again["seconds"] / first["seconds"], 4),
        "cached_rerun_us_per_chunk": round(1e6 * again["seconds"] / options.chunks, 1),
        "first_run_cpu_s": first["cpu_s"],
        "cached_rerun_cpu_s": again["cpu_s"],
        **dependency,
    }
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
