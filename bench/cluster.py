"""A dev cluster for a benchmark: started in a temporary folder, stopped at the end."""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from uds import client  # noqa: E402
from uds.client import devcluster  # noqa: E402



@contextlib.contextmanager
def dev_cluster(workers: int = 2, slots: int = 2, unsafe_no_sandbox: bool = False) -> Iterator[client.Connection]:
    folder = pathlib.Path(tempfile.mkdtemp(prefix="uds-bench-"))
    try:
        devcluster.start(folder, workers=workers, slots=slots, detach=True, unsafe_no_sandbox=unsafe_no_sandbox)
        with client.connect(folder) as connection:
            yield connection
    finally:
        devcluster.stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


def true_binary() -> bytes:
    path = shutil.which("true") or "/bin/true"
    return pathlib.Path(os.path.realpath(path)).read_bytes()
