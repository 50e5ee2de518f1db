"""A dev cluster for a benchmark: started in a temporary folder, stopped at the end.

After a clean run the folder goes. After a failed one (a start that did not
come up, or a benchmark that raised) the daemons' logs stay, in the folder's
`logs/`, and stderr says where; the rest of the folder (stored files, Raft
journals) still goes.
"""
from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterator

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from uds import client  # noqa: E402
from uds.client import devcluster  # noqa: E402

# A start that fails is tried again this many times in all, each in a new
# folder; the failed one's logs are kept.
START_ATTEMPTS = 3

# Folders of runs that finished but failed (some chunks did not succeed).
_failed_runs: set[pathlib.Path] = set()


def mark_failed(folder: pathlib.Path) -> None:
    """Keep the logs of this run when its cluster stops."""
    _failed_runs.add(folder)


@contextlib.contextmanager
def dev_cluster_folder(workers: int = 2, slots: int = 2, unsafe_no_sandbox: bool = False,
                       masters: int = 1) -> Iterator[pathlib.Path]:
    """A running dev cluster's folder: `client.connect(folder)` reaches it."""
    folder = _started(workers, slots, unsafe_no_sandbox, masters)
    failed = True
    try:
        yield folder
        failed = folder in _failed_runs
    finally:
        devcluster.stop(folder)
        if failed:
            _keep_only_logs(folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _started(workers: int, slots: int, unsafe_no_sandbox: bool, masters: int) -> pathlib.Path:
    for attempt in range(1, START_ATTEMPTS + 1):
        folder = pathlib.Path(tempfile.mkdtemp(prefix="uds-bench-"))
        try:
            devcluster.start(folder, workers=workers, slots=slots, detach=True,
                             unsafe_no_sandbox=unsafe_no_sandbox, masters=masters)
            return folder
        except devcluster.DevClusterError as fault:
            devcluster.stop(folder)
            _keep_only_logs(folder)
            if attempt == START_ATTEMPTS:
                raise
            print(f"bench: start {attempt} of {START_ATTEMPTS} failed ({str(fault).splitlines()[0]}); "
                  f"starting again", file=sys.stderr)
    raise AssertionError("unreachable")


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
    parser.add_argument("--masters", type=int, default=1, choices=devcluster.MASTER_COUNTS,
                        help="masters in the Raft group (1, 3 or 5)")


def true_binary() -> bytes:
    path = shutil.which("true") or "/bin/true"
    return pathlib.Path(os.path.realpath(path)).read_bytes()


def daemon_cpu_seconds(folder: pathlib.Path) -> dict[str, float]:
    """CPU seconds (user and system, with the children each has reaped) that
    the dev cluster's daemons have used so far, summed by role."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = collections.defaultdict(float)
    for entry in devcluster.running_pids(folder):
        try:
            fields = pathlib.Path(f"/proc/{entry['pid']}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[entry["role"]] += sum(int(value) for value in fields[11:15]) / ticks
    return dict(used)


def run_in_threads(work: Callable[[Any], Any], shares: list) -> tuple[list, float]:
    """`work(share)` for every share at once, one thread each: the results,
    in the shares' order, and the seconds until the last ended. The first
    fault of any thread is raised here."""
    results: list = [None] * len(shares)
    faults: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = work(shares[index])
        except BaseException as fault:  # raised by the calling thread
            faults.append(fault)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(shares))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if faults:
        raise faults[0]
    return results, elapsed
