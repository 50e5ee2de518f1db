"""A dev cluster for a benchmark: started in a temporary folder, stopped at the end."""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import client  # noqa: E402
from client import devcluster  # noqa: E402
from wire.enums import NodeRole  # noqa: E402

READY_TIMEOUT_S = 30.0


@contextlib.contextmanager
def dev_cluster(workers: int = 2, slots: int = 2) -> Iterator[client.Connection]:
    folder = pathlib.Path(tempfile.mkdtemp(prefix="uds-bench-"))
    try:
        devcluster.start(folder, workers=workers, slots=slots, detach=True)
        with client.connect(folder) as connection:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                alive = [node for node in connection.nodes()
                         if node["role"] == NodeRole.WORKER and node["state"] == "alive" and node["free_slots"]]
                if len(alive) >= workers:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("workers did not register")
                time.sleep(0.05)
            yield connection
    finally:
        devcluster.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def true_binary() -> bytes:
    path = shutil.which("true") or "/bin/true"
    return pathlib.Path(os.path.realpath(path)).read_bytes()
