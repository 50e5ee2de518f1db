"""python -m worker: a worker daemon. See doc/worker.md."""
from __future__ import annotations

import argparse
import fcntl
import os
import pathlib
import socket
import sys

from wire.daemon import (
    ConfigurationError, announce_ready, load_node_id, open_cluster, setup_logging,
    stop_event_on_signals, withdraw_ready,
)
from wire.transport import Transport, TransportError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="uds worker: runs chunk attempts the load balancer assigns, showing their inputs "
                    "through a FUSE mount that fetches blocks from storage on first read.")
    parser.add_argument("--cluster", metavar="FILE", required=True, help="cluster file (TOML)")
    parser.add_argument("--name", default=socket.gethostname(),
                        help="worker name; its data folder is the cluster's workers.data/NAME "
                             "(default: the host name)")
    parser.add_argument("--data", metavar="DIR", help="data folder (overrides the cluster file)")
    parser.add_argument("--slots", type=int, help="chunks run at once (default: the cluster file's)")
    parser.add_argument("--cache-bytes", type=int, help="block cache size cap (default: the cluster file's)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    try:
        cluster, _entry, keys = open_cluster(options.cluster, "", 0)
        if options.slots is not None and options.slots < 1:
            raise ConfigurationError("--slots must be at least 1")
        transport = Transport(keys)
    except (ConfigurationError, TransportError) as fault:
        print(f"worker: {fault}", file=sys.stderr)
        return 2
    log = setup_logging("worker", options.verbose)
    stop = stop_event_on_signals()
    data = pathlib.Path(options.data).resolve() if options.data else cluster.worker_data(options.name)
    wake_read, wake_write = os.pipe()
    for descriptor in (wake_read, wake_write):
        fcntl.fcntl(descriptor, fcntl.F_SETFL, fcntl.fcntl(descriptor, fcntl.F_GETFL) | os.O_NONBLOCK)
    from worker.node import WorkerNode
    try:
        node_id = load_node_id(data)
        node = WorkerNode(node_id, data, cluster.loadbalancers[0].address, cluster.storage[0].address,
                          transport, slots=options.slots or cluster.workers.slots,
                          cache_bytes=options.cache_bytes or cluster.workers.cache_bytes,
                          heartbeat_interval_s=cluster.workers.heartbeat_interval_s,
                          wake_read=wake_read, wake_write=wake_write)
    except Exception as fault:  # noqa: BLE001 - any start-up fault is reported in one line
        log.exception("cannot start")
        print(f"worker: cannot start: {fault}", file=sys.stderr)
        transport.close()
        return 1
    log.info("worker %s (%s) with %d slots, data in %s", options.name, node_id.hex(), node.slots, data)
    try:
        node.run(stop.is_set, lambda: announce_ready(data))
    finally:
        withdraw_ready(data)
        node.close()
        transport.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
