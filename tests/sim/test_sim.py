"""The simulation of the chunk path (doc/simulation.md): six hundred seeds
with faults and workflows, every invariant checked after every step;
replay; and planted bugs that it must catch."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from typing import Callable, Iterable, TypeVar

import pytest

from .bugs import BUGS, planted
from .faults import NODE_FAULT_KINDS, STORAGE_FAULT_KINDS
from .run import SeedReport, run_seed

# A seed with its workflow jobs costs about 1.6 times what one without did:
# six hundred of them take about what a thousand took before.
SUITE_SEEDS = range(600)
# Each planted bug is caught within this many seeds (seeds 0, 1, ...); today
# each is caught within the first ten.
PLANTED_BUG_SEED_LIMIT = 50
TRACE_TAIL_LINES = 60
# The suite's seeds run in this many processes at most (one per core the
# suite may use): each seed is a world of its own that replays exactly in
# any process (test_a_seed_replays_the_same_trace_in_another_process), so
# the reports are those of one process, in half the time on two cores.
SEED_PROCESSES = 2
SEEDS_PER_TASK = 5
T, R = TypeVar("T"), TypeVar("R")


def explain(report: SeedReport) -> str:
    """A failing seed, replayed with its trace, for the assertion message."""
    replay = run_seed(report.seed, tracing=True)
    tail = "\n".join(replay.trace[-TRACE_TAIL_LINES:])
    return (f"seed {report.seed} failed {report.failure}\n"
            f"replay: python -m tests.sim --seed {report.seed} --trace\n"
            f"last {TRACE_TAIL_LINES} lines of its trace:\n{tail}")


def in_processes(function: Callable[[T], R], items: Iterable[T], chunksize: int = 1) -> list[R]:
    """`function` of each item, in order, from SEED_PROCESSES fresh
    processes (spawned: nothing of this one, such as a planted bug, goes
    with them); in this one when the suite has a single core."""
    processes = min(SEED_PROCESSES, len(os.sched_getaffinity(0)))
    if processes < 2:
        return [function(item) for item in items]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return pool.map(function, items, chunksize=chunksize)


def run_seeds(seeds: Iterable[int]) -> list[SeedReport]:
    return in_processes(run_seed, seeds, chunksize=SEEDS_PER_TASK)


def first_failing_seed(bug: str) -> int | None:
    """The first seed that fails with `bug` planted, or None within PLANTED_BUG_SEED_LIMIT."""
    with planted(bug):
        return next((seed for seed in range(PLANTED_BUG_SEED_LIMIT) if not run_seed(seed).ok), None)


@pytest.fixture(scope="module")
def suite_reports() -> list[SeedReport]:
    reports = run_seeds(SUITE_SEEDS)
    assert [report.seed for report in reports] == list(SUITE_SEEDS)
    return reports


def test_six_hundred_seeds_with_faults_keep_every_invariant(suite_reports):
    failed = [report for report in suite_reports if not report.ok]
    assert not failed, f"{len(failed)} seeds failed: {[r.seed for r in failed][:20]}\n" + explain(failed[0])


def test_the_seeds_inject_every_kind_of_fault(suite_reports):
    totals: dict[str, int] = {}
    for report in suite_reports:
        for kind, count in report.faults.items():
            totals[kind] = totals.get(kind, 0) + count
    for kind in (*NODE_FAULT_KINDS, "message_dropped", "message_duplicated", "message_delayed",
                 "proposal_failed"):
        assert totals.get(kind, 0) >= 50, totals
    assert sum(report.chunks for report in suite_reports) >= 2000


def test_the_seeds_exercise_every_workflow_rule(suite_reports):
    totals: dict[str, int] = {}
    for report in suite_reports:
        for name, number in report.workflows.items():
            totals[name] = totals.get(name, 0) + number
    # Jobs that waited while the leader changed, and that the new leader
    # made ready: dependencies, holds and start times across failovers.
    assert totals["jobs_waiting_over_a_leader_change"] >= 100, totals
    for name in ("deadlines_hit", "dependents_failed", "held_released", "held_cancelled", "started_later"):
        assert totals[name] >= 40, totals
    assert totals["dependents_cancelled"] >= 5, totals
    assert totals["chunks_cached"] >= 200, totals
    assert totals["statuses_polled"] >= 2000, totals


def test_the_seeds_change_leaders_and_judge_the_balancers_step(suite_reports):
    assert sum(report.elections for report in suite_reports) >= 500
    # Elections after which a balancer's step was judged, not excused.
    assert sum(report.in_step_checked for report in suite_reports) >= 100


def test_a_subscriber_follows_the_event_log_through_every_fault(suite_reports):
    # Each seed's subscriber is checked at its end (run.py): every event once,
    # in order, as the log holds it. Here: it kept up, across the leader
    # changes, crashes, freezes and cut-offs of the seeds.
    followed = sum(report.events_followed for report in suite_reports)
    logged = sum(report.events_logged for report in suite_reports)
    assert followed >= 0.8 * logged, (followed, logged)


def test_a_seed_replays_exactly_with_a_readable_trace():
    with planted("stale_result_accepted_in_flight"):
        first = next(report for report in map(run_seed, range(PLANTED_BUG_SEED_LIMIT)) if not report.ok)
        again = run_seed(first.seed, tracing=True)
        third = run_seed(first.seed, tracing=True)
    assert again.failure == first.failure and again.messages == first.messages
    assert again.trace == third.trace
    assert any(" -> " in line and "worker_status" in line for line in again.trace)
    for line in again.trace:
        float(line.split()[0])          # every line starts with the fake time


@pytest.fixture(scope="module")
def caught() -> dict[str, int | None]:
    """Each planted bug -> the first seed that caught it (each bug planted
    in a process of its own)."""
    bugs = sorted(BUGS)
    return dict(zip(bugs, in_processes(first_failing_seed, bugs)))


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_a_planted_bug_is_caught(caught, bug):
    assert caught[bug] is not None, f"{bug} went unnoticed for {PLANTED_BUG_SEED_LIMIT} seeds"


def test_planting_a_bug_is_undone_afterwards():
    with planted("duplicate_result_committed_twice"):
        pass
    assert all(run_seed(seed).ok for seed in range(10))


def test_a_seed_replays_the_same_trace_in_another_process():
    # Another hash seed changes the order of any set of bytes: nothing may
    # depend on it.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    replays = []
    for hash_seed in ("1", "2"):                # at once: the two are independent
        environment = dict(os.environ, PYTHONHASHSEED=hash_seed,
                           PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        replays.append(subprocess.Popen([sys.executable, "-m", "tests.sim", "--seed", "56", "--trace"], cwd=root,
                                        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True))
    outputs = []
    try:
        for replay in replays:
            stdout, stderr = replay.communicate(timeout=120)
            assert replay.returncode == 0, stderr
            outputs.append(stdout)
    finally:
        for replay in replays:
            if replay.poll() is None:
                replay.kill()
                replay.wait()
    assert outputs[0] == outputs[1]
    assert outputs[0].count("\n") > 50


def test_the_workers_machines_fail_requests(suite_reports):
    totals: dict[str, int] = {}
    for report in suite_reports:
        for kind in ("program_unavailable", "mount_failed", "upload_failed"):
            totals[kind] = totals.get(kind, 0) + report.faults.get(kind, 0)
    assert all(count >= 30 for count in totals.values()), totals


def test_the_seeds_take_storage_nodes_down_and_repair(suite_reports):
    totals: dict[str, int] = {}
    for report in suite_reports:
        for kind, count in [*report.faults.items(), *report.storage.items()]:
            totals[kind] = totals.get(kind, 0) + count
    for kind in STORAGE_FAULT_KINDS:
        assert totals.get(kind, 0) >= 100, totals
    # Reads that passed over a node down or without the file, copies that
    # repair made and trimmed, and reads and puts that failed, each judged.
    assert totals.get("reads_failed_over", 0) >= 100, totals
    assert totals.get("repair_copies", 0) >= 500, totals
    assert totals.get("repair_trims", 0) >= 100, totals
    assert totals.get("storage_failures_checked", 0) >= 20, totals
