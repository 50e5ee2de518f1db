"""The job list through real daemons: `uds jobs` and `c.jobs()` list exactly
the right jobs, newest first, across the retention boundary: a cluster that
keeps two finished jobs, five jobs finished one after the other (the oldest
three forgotten, known by their history lines), one held and one waiting
for it."""
from __future__ import annotations

import pytest

from conftest import _wait_for_workers
from daemons import ClusterLayout, start_cluster, wait_until
from test_cli import uds as run_uds
from uds import client
from uds.client import job_list

KEPT_FINISHED = 2
SUCCEEDS = b"#!/bin/sh\necho done\n"
FAILS = b"#!/bin/sh\necho broken >&2\nexit 3\n"


class Cluster:
    """A master, a balancer, a storage node and a worker; finished jobs
    beyond the newest KEPT_FINISHED are forgotten."""

    def __init__(self, layout: ClusterLayout) -> None:
        self.layout = layout
        with open(layout.path, "a") as cluster_file:
            cluster_file.write(f"\n[retention]\nmax_finished_jobs = {KEPT_FINISHED}\n")
        start_cluster(layout, workers=1)
        self.connection = client.connect(layout.path, timeout=20)
        _wait_for_workers(self.connection, 1)

    def uds(self, *args: str, fails: bool = False) -> str:
        result = run_uds(*args, cluster_dir=self.layout.path, check=False)
        assert (result.returncode != 0) == fails, (args, result.stdout.decode(), result.stderr.decode())
        return result.stderr.decode() if fails else result.stdout.decode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    layout = ClusterLayout.create(tmp_path_factory.mktemp("jobs") / "cluster")
    made = None
    try:
        made = Cluster(layout)
        yield made
    finally:
        if made is not None:
            made.connection.close()
        layout.cleanup()


@pytest.fixture(scope="module")
def jobs(cluster):
    """Job ids oldest first: 0 failed, 1..4 succeeded (0..2 past retention),
    5 held, 6 waiting for 5."""
    connection = cluster.connection
    made = []
    for index in range(5):
        job = connection.submit_job(FAILS if index == 0 else SUCCEEDS, name=f"list-{index}", timeout=60)
        assert job.wait(timeout=60).state == ("failed" if index == 0 else "succeeded")
        made.append(job)
    made.append(connection.submit_job(SUCCEEDS, name="list-5", hold=True))
    made.append(connection.submit_job(SUCCEEDS, name="list-6", after=[made[5]]))
    forgotten = made[:5 - KEPT_FINISHED]
    wait_until(lambda: all(connection.job_status(job.id, detail=False).past_retention for job in forgotten),
               "the oldest finished jobs forgotten", timeout=30)
    assert not any(connection.job_status(job.id, detail=False).past_retention for job in made[len(forgotten):])
    return [job.id for job in made]


def listed(table: str) -> list[str]:
    """The id prefixes of `uds jobs`, a '*' after those past retention."""
    return [line.split()[0] for line in table.splitlines()[1:] if not line.startswith("*")]


def prefixes(ids: list[str], jobs: list[str]) -> list[str]:
    """As `uds jobs` shows `ids`: those forgotten of `jobs` marked."""
    past = set(jobs[:5 - KEPT_FINISHED])
    return [job + ("*" if job in past else "") for job in ids]


def test_c_jobs_lists_every_job_newest_first_with_its_state_times_and_counts(cluster, jobs):
    everything = cluster.connection.jobs(limit=None)
    assert [job.id for job in everything] == jobs[::-1]
    by_id = {job.id: job for job in everything}
    assert [by_id[job].state for job in jobs] == ["failed", "succeeded", "succeeded", "succeeded", "succeeded",
                                                  "held", "waiting"]
    assert [by_id[job].past_retention for job in jobs] == [True, True, True, False, False, False, False]
    assert [by_id[job].name for job in jobs] == [f"list-{index}" for index in range(7)]
    for job in jobs[:5]:
        line = by_id[job]
        assert line.submitted_at <= line.started_at <= line.finished_at, line
        assert (line.chunk_count, line.succeeded + line.failed, line.cancelled, line.cached) == (1, 1, 0, 0)
    assert by_id[jobs[0]].error and by_id[jobs[0]].failed == 1
    for job in jobs[5:]:
        assert (by_id[job].started_at, by_id[job].finished_at, by_id[job].duration_s) == (None, None, None)
    submitted = [by_id[job].submitted_at for job in jobs]
    assert submitted == sorted(submitted)


def test_c_jobs_pages_across_the_retention_boundary_and_stops_at_the_limit(cluster, jobs, monkeypatch):
    monkeypatch.setattr(job_list, "PAGE_LINES", 2)
    connection = cluster.connection
    assert [job.id for job in connection.jobs(limit=None)] == jobs[::-1]
    assert [job.id for job in connection.jobs(limit=5)] == jobs[:1:-1]
    assert [job.id for job in connection.jobs(state="succeeded")] == jobs[4:0:-1]
    assert [job.id for job in connection.jobs(state=["failed", "held"])] == [jobs[5], jobs[0]]
    third = next(job for job in connection.jobs() if job.id == jobs[2])
    assert [job.id for job in connection.jobs(since=third.submitted_at, limit=3)] == jobs[:3:-1]
    assert [job.id for job in connection.jobs(since=third.submitted_at, state="succeeded")] == jobs[4:1:-1]
    assert connection.jobs(state="running") == []
    assert [job.id for job in connection.jobs(since="1h")] == jobs[::-1]


def test_uds_jobs_prints_the_table_and_filters_by_state_since_and_limit(cluster, jobs):
    table = cluster.uds("jobs")
    assert listed(table) == prefixes(jobs[::-1], jobs), table
    assert table.splitlines()[-1].startswith("* past retention"), table
    assert listed(cluster.uds("jobs", "--state", "failed")) == prefixes([jobs[0]], jobs)
    assert listed(cluster.uds("jobs", "--state", "held", "--state", "waiting")) == prefixes([jobs[6], jobs[5]], jobs)
    assert listed(cluster.uds("jobs", "--state", "succeeded")) == prefixes(jobs[4:0:-1], jobs)
    assert listed(cluster.uds("jobs", "--limit", "3")) == prefixes(jobs[:3:-1], jobs)
    third = next(job for job in cluster.connection.jobs() if job.id == jobs[2])
    since = cluster.uds("jobs", "--since", repr(third.submitted_at), "--state", "succeeded,failed")
    assert listed(since) == prefixes(jobs[4:1:-1], jobs), since
    assert listed(cluster.uds("jobs", "--since", "2h", "--limit", "100")) == prefixes(jobs[::-1], jobs)
    assert cluster.uds("jobs", "--state", "running").strip() == "no jobs"
    assert cluster.uds("jobs", "--since", "2286-01-01T00:00:00").strip() == "no jobs"
    refused = cluster.uds("jobs", "--state", "done", fails=True)
    assert refused.strip() == ("uds: state 'done' is not a job state: expected one of held, waiting, queued, "
                               "running, succeeded, failed, cancelled")
