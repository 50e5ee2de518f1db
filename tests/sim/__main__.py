"""Replay one seed: python -m tests.sim --seed N [--trace] [--plant BUG]"""
from __future__ import annotations

import argparse
import sys

from contextlib import nullcontext

from .bugs import BUGS, planted
from .run import run_seed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--trace", action="store_true", help="print one line per delivered message")
    parser.add_argument("--plant", choices=sorted(BUGS), help="with this known bug planted")
    options = parser.parse_args()
    with planted(options.plant) if options.plant else nullcontext():
        report = run_seed(options.seed, tracing=options.trace)
    for line in report.trace:
        print(line)
    print(f"seed {report.seed}: {'ok' if report.ok else 'FAILED ' + report.failure}")
    print(f"  {report.jobs} jobs, {report.chunks} chunks, {report.messages} messages, "
          f"{report.sim_time_s:.2f} simulated s, faults {report.faults}, storage {report.storage}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
