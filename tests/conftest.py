"""Shared fixtures. Every process they start and every FUSE mount below
their folders is cleaned up even when the test fails."""
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from daemons import ClusterLayout, start_cluster  # noqa: E402

# How long a test waits for a cluster to notice something (lease is 2 s here).
SETTLE_TIMEOUT_S = 30.0


@pytest.fixture
def daemons(tmp_path):
    layout = ClusterLayout.create(tmp_path / "cluster")
    try:
        yield layout
    finally:
        layout.cleanup()


def _running_cluster(root, workers):
    from uds import client
    layout = ClusterLayout.create(root)
    connection = None
    try:
        running = start_cluster(layout, workers=workers)
        connection = running.connection = client.connect(layout.path, timeout=20)
        _wait_for_workers(connection, workers)
        yield running
    finally:
        if connection is not None:
            connection.close()
        layout.cleanup()


def _wait_for_workers(connection, count):
    """Until the masters know `count` live workers, so placement is deterministic."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        alive = [node for node in connection.nodes() if node["role"] == 5 and node["state"] == "alive"]
        if len(alive) >= count and all(node["free_slots"] for node in alive):
            return
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {count} workers registered")


@pytest.fixture
def cluster(tmp_path):
    """A fresh phase-1 cluster with two workers, for tests that break things."""
    yield from _running_cluster(tmp_path / "cluster", workers=2)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    """One phase-1 cluster per test module, for tests that only submit jobs."""
    yield from _running_cluster(tmp_path_factory.mktemp("shared") / "cluster", workers=2)
