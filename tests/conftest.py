"""Shared fixtures. `daemons` gives a ClusterLayout whose processes and FUSE
mounts are cleaned up even when the test fails."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from daemons import ClusterLayout  # noqa: E402


@pytest.fixture
def daemons(tmp_path):
    layout = ClusterLayout.create(tmp_path / "cluster")
    try:
        yield layout
    finally:
        layout.cleanup()
