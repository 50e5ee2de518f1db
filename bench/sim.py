"""Seeds per second of the chunk-path simulation (tests/sim), with the
faults it injected, the elections it held (after the first of each seed),
the balancers found in step with a new leader (checks.py), storage's
figures (reads that failed over, repair's copies and trims, storage failures
judged), what the workflow jobs went through (run.py's `workflow_figures`;
the deadline lateness is the largest of any seed, the rest are sums), and
the seeds that failed. Prints one JSON line.

    python bench/sim.py [--seeds N] [--first S] [--plant BUG]
    python bench/sim.py --seed N --trace      # replay one seed, with its trace
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.sim.bugs import BUGS, planted  # noqa: E402
from tests.sim.run import run_seed  # noqa: E402

FAILED_SEEDS_SHOWN = 20


def campaign(first: int, count: int) -> dict:
    faults: dict[str, int] = {}
    storage: dict[str, int] = {}
    workflows: dict[str, int] = {}
    failed: list[int] = []
    first_failure = ""
    chunks = messages = elections = judged = 0
    simulated_s = 0.0
    started = time.perf_counter()
    for seed in range(first, first + count):
        report = run_seed(seed)
        chunks += report.chunks
        messages += report.messages
        simulated_s += report.sim_time_s
        elections += report.elections
        judged += report.in_step_checked
        for kind, number in report.faults.items():
            faults[kind] = faults.get(kind, 0) + number
        for name, number in report.storage.items():
            storage[name] = storage.get(name, 0) + number
        for name, number in report.workflows.items():
            combined = max if name.endswith("_max_ms") else int.__add__
            workflows[name] = combined(workflows.get(name, 0), number)
        if not report.ok:
            failed.append(seed)
            first_failure = first_failure or f"seed {seed}: {report.failure}"
    elapsed = time.perf_counter() - started
    return {
        "benchmark": "sim",
        "seeds": count,
        "first_seed": first,
        "seconds": round(elapsed, 2),
        "seeds_per_second": round(count / elapsed, 1),
        "simulated_seconds": round(simulated_s, 1),
        "messages": messages,
        "chunks": chunks,
        "faults_injected": sum(faults.values()),
        "faults": dict(sorted(faults.items())),
        "elections": elections,
        "elections_judged_in_step": judged,
        "storage": dict(sorted(storage.items())),
        "workflows": dict(sorted(workflows.items())),
        "failures": len(failed),
        "failed_seeds": failed[:FAILED_SEEDS_SHOWN],
        "first_failure": first_failure[:2000],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10_000, help="how many seeds to run")
    parser.add_argument("--first", type=int, default=0, help="the first seed")
    parser.add_argument("--seed", type=int, help="replay this one seed instead")
    parser.add_argument("--trace", action="store_true", help="with --seed: print its trace")
    parser.add_argument("--plant", choices=sorted(BUGS), help="run with this known bug planted")
    options = parser.parse_args()
    with planted(options.plant) if options.plant else nullcontext():
        if options.seed is not None:
            report = run_seed(options.seed, tracing=options.trace)
            for line in report.trace:
                print(line)
            print(json.dumps({"benchmark": "sim", "seed": report.seed, "ok": report.ok,
                              "failure": report.failure, "messages": report.messages,
                              "simulated_seconds": round(report.sim_time_s, 3), "faults": report.faults}))
            return 0 if report.ok else 1
        result = campaign(options.first, options.seeds)
    print(json.dumps(result))
    return 0 if result["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
