"""A dev cluster for a benchmark: started in a temporary folder, stopped at the end.

After a clean run the folder goes. After a failed one (a start that did not
come up, or a benchmark that raised) the daemons' logs stay, in the folder's
`logs/`, and stderr says where; the rest of the folder (stored files, Raft
journals) still goes.
"""
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

MASTER_COUNTS = (1, 3, 5)


@contextlib.contextmanager
def dev_cluster_folder(workers: int = 2, slots: int = 2, unsafe_no_sandbox: bool = False,
                       masters: int = 1) -> Iterator[pathlib.Path]:
    """A running dev cluster's folder: `client.connect(folder)` reaches it."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="uds-bench-"))
    failed = True
    try:
        devcluster.start(folder, workers=workers, slots=slots, detach=True,
                         unsafe_no_sandbox=unsafe_no_sandbox, masters=masters)
        yield folder
        failed = False
    finally:
        devcluster.stop(folder)
        if failed:
            _keep_only_logs(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def dev_cluster(workers: int = 2, slots: int = 2, unsafe_no_sandbox: bool = False,
                masters: int = 1) -> Iterator[client.Connection]:
    with dev_cluster_folder(workers, slots, unsafe_no_sandbox, masters) as folder:
        with client.connect(folder) as connection:
            yield connection


def _keep_only_logs(folder: pathlib.Path) -> None:
    for entry in folder.iterdir():
        if entry.name == "logs":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    print(f"bench: the run failed; the daemons' logs are kept in {folder / 'logs'}", file=sys.stderr)


def add_masters_option(parser) -> None:
    parser.add_argument("--masters", type=int, default=1, choices=MASTER_COUNTS,
                        help="masters in the Raft group (1, 3 or 5)")


def true_binary() -> bytes:
    path = shutil.which("true") or "/bin/true"
    return pathlib.Path(os.path.realpath(path)).read_bytes()
