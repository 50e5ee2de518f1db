"""What every daemon does the same way: its node id, its log, its ready file,
and stopping on SIGTERM/SIGINT.

- The node id is 16 random bytes made on first start and kept in
  DATA/node_id (32 hex characters), so a restarted node is the same node.
- Once a daemon serves, it writes DATA/ready holding its pid; whoever started
  it (tests, `uds dev`) waits for that file to hold the pid it started. The
  file is removed on a clean exit; after kill -9 it stays, with a dead pid.
"""
from __future__ import annotations

import argparse
import logging
import os
import pathlib
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from uds.wire.ids import ID_BYTES, id_from_hex, new_id
from uds.wire.records import NO_FACTS, NodeFacts

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


def open_cluster(path: str, role: str, role_entries: str, index: int) -> tuple[Any, Any, Any]:
    """Load the cluster file and the key folder of `role` ("master"), which
    must hold that role's secret; pick entry `index` of `role_entries`
    ("masters", "loadbalancers", "storage"), or None when `role_entries` is
    empty (workers). Raises ConfigurationError."""
    from uds.wire import cluster as cluster_file
    from uds.wire.keys import KeyFolderError, open_role, role_of_name
    try:
        cluster = cluster_file.load(path)
        keys = open_role(cluster.keys, role_of_name(role))
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


def add_common_arguments(parser: argparse.ArgumentParser, entries: str) -> None:
    parser.add_argument("--cluster", metavar="FILE", required=True, help="cluster file (TOML)")
    if entries:
        parser.add_argument("--index", type=int, default=0, metavar="N",
                            help=f"which [[{entries}]] entry of the cluster file to run (default 0)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


@dataclass
class DaemonContext:
    """What a daemon's node is built from."""

    options: argparse.Namespace
    cluster: Any
    entry: Any
    transport: Any
    node_id: bytes
    data: pathlib.Path
    log: logging.Logger
    facts: NodeFacts = NO_FACTS     # gathered once at start (daemon/node_facts.py)
    metrics: Any = None             # its DaemonMetrics (daemon/metrics.py), served if configured


class Node(Protocol):
    def run(self, stop: Callable[[], bool], on_serving: Callable[[], None]) -> None: ...

    def close(self) -> None: ...


def listening_endpoints(entry: Any) -> list[str]:
    """Where the node of a cluster file entry serves: a master's client and
    Raft addresses, a balancer's or storage node's address; none for a worker
    (entry None)."""
    return [address for address in (getattr(entry, "address", ""), getattr(entry, "raft", "")) if address]


def metrics_address(cluster: Any, entry: Any) -> str:
    """Where the node of a cluster file entry serves /metrics: its entry's
    `metrics`, a worker's (entry None) the [workers] range; "": nowhere."""
    if entry is None:
        return cluster.workers.metrics
    return getattr(entry, "metrics", "")


def run_daemon(role: str, options: argparse.Namespace, entries: str,
               data_of: Callable[[Any, Any], pathlib.Path], build: Callable[[DaemonContext], Node]) -> int:
    """The life of every daemon: configuration (a fault exits 2 with one
    line), node id, the node's loop until SIGTERM/SIGINT, the ready file
    while it serves, and a clean shutdown. Start-up faults exit 1, among
    them a metrics address that cannot be served on.

    A worker names its /metrics URL among its addresses, after its own
    endpoints (it has none the cluster file gives): a scraper finds it
    there, through `uds nodes --long`."""
    from uds.daemon.metrics import DaemonMetrics
    from uds.daemon.node_facts import gather_node_facts, host_addresses
    from uds.wire.transport import Transport, TransportError
    try:
        cluster, entry, keys = open_cluster(options.cluster, role, entries, getattr(options, "index", 0))
        transport = Transport(keys)
    except (ConfigurationError, TransportError) as fault:
        print(f"{role}: {fault}", file=sys.stderr)
        return 2
    log = setup_logging(role, options.verbose)
    stop = stop_event_on_signals()
    data = data_of(cluster, entry)
    metrics = DaemonMetrics(role)
    try:
        address = metrics_address(cluster, entry)
        if address:
            metrics.serve(address)
            log.info("metrics on %s", metrics.url())
        listening = listening_endpoints(entry) if entry is not None else [metrics.url(host_addresses())]
        node_id = load_node_id(data)
        facts = gather_node_facts(data, listening)
        node = build(DaemonContext(options, cluster, entry, transport, node_id, data, log, facts, metrics))
    except Exception as fault:  # noqa: BLE001 - any start-up fault is reported in one line
        log.debug("start-up failed", exc_info=True)
        print(f"{role}: cannot start: {fault}", file=sys.stderr)
        transport.close()
        return 1
    log.info("node %s started, data in %s", node_id.hex(), data)
    try:
        node.run(stop.is_set, lambda: announce_ready(data))
    finally:
        withdraw_ready(data)
        # /metrics is served from a daemon thread, which ends with the
        # process: stopping it first would only wait for its poll interval.
        try:
            node.close()
        finally:
            transport.close()
    log.info("stopped")
    return 0


def wake_pipe() -> tuple[int, int]:
    """A non-blocking pipe (read end, write end) by which helper threads wake
    a loop that polls the read end."""
    read_end, write_end = os.pipe()
    for descriptor in (read_end, write_end):
        os.set_blocking(descriptor, False)
    return read_end, write_end


def wake(write_end: int) -> None:
    try:
        os.write(write_end, b"\0")
    except BlockingIOError:
        pass  # the pipe is full, so the loop is awake anyway


def drain(read_end: int) -> None:
    try:
        while os.read(read_end, 4096):
            pass
    except BlockingIOError:
        pass


def guarded(log: logging.Logger, count: Callable[[str], None], step: Callable[..., Any], *args: Any) -> None:
    """Run one step of a daemon's loop; a fault in it is logged and counted as
    `internal_errors`, never the end of the daemon (a peer's odd but valid
    data must not be able to stop it)."""
    try:
        step(*args)
    except Exception:
        log.exception("%s failed", getattr(step, "__name__", "a step"))
        count("internal_errors")
