"""What every daemon does the same way: its node id, its log, its ready file,
and stopping on SIGTERM/SIGINT.

- The node id is 16 random bytes made on first start and kept in
  DATA/node_id (32 hex characters), so a restarted node is the same node.
- Once a daemon serves, it writes DATA/ready holding its pid; whoever started
  it (tests, `uds dev`) waits for that file to hold the pid it started. The
  file is removed on a clean exit; after kill -9 it stays, with a dead pid.
"""
from __future__ import annotations

import logging
import os
import pathlib
import signal
import sys
import threading

from wire.ids import ID_BYTES, id_from_hex, new_id

NODE_ID_FILE = "node_id"
READY_FILE = "ready"
LOG_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"


def setup_logging(role: str, verbose: bool = False) -> logging.Logger:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT,
                        stream=sys.stderr, force=True)
    return logging.getLogger(role)


def load_node_id(data: pathlib.Path) -> bytes:
    data.mkdir(parents=True, exist_ok=True)
    path = data / NODE_ID_FILE
    if path.exists():
        return id_from_hex(path.read_text().strip())
    node_id = new_id()
    temporary = path.with_suffix(".tmp")
    temporary.write_text(node_id.hex() + "\n")
    os.replace(temporary, path)
    assert len(node_id) == ID_BYTES
    return node_id


def announce_ready(data: pathlib.Path) -> None:
    temporary = data / (READY_FILE + ".tmp")
    temporary.write_text(f"{os.getpid()}\n")
    os.replace(temporary, data / READY_FILE)


def withdraw_ready(data: pathlib.Path) -> None:
    try:
        if (data / READY_FILE).read_text().strip() == str(os.getpid()):
            (data / READY_FILE).unlink()
    except OSError:
        pass


def ready_pid(data: pathlib.Path) -> int | None:
    """The pid in DATA/ready, or None."""
    try:
        return int((data / READY_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def stop_event_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for a daemon's loop to watch."""
    stop = threading.Event()

    def handle(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


class ConfigurationError(Exception):
    """The daemon cannot start with this cluster file; one line says why."""


def open_cluster(path: str, role_entries: str, index: int):
    """Load the cluster file and the key folder; pick entry `index` of
    `role_entries` ("masters", "loadbalancers", "storage"), or None for
    workers. Raises ConfigurationError with a one-line reason."""
    from wire import cluster as cluster_file
    from wire.keys import KeyFolder, KeyFolderError
    try:
        cluster = cluster_file.load(path)
        keys = KeyFolder(cluster.keys)
    except (cluster_file.ClusterFileError, KeyFolderError) as fault:
        raise ConfigurationError(str(fault)) from None
    entry = None
    if role_entries:
        entries = getattr(cluster, role_entries)
        if not 0 <= index < len(entries):
            raise ConfigurationError(f"{cluster.path}: --index {index}, but there are "
                                     f"{len(entries)} [[{role_entries}]] entries")
        entry = entries[index]
    return cluster, entry, keys
