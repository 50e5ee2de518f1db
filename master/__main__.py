"""python -m master: a master daemon (one member of the Raft group). See doc/master.md."""
from __future__ import annotations

import argparse
import fcntl
import os
import sys

import zmq

from master.node import MasterNode
from master.replicated import RaftGroup
from wire.daemon import (
    ConfigurationError, announce_ready, load_node_id, open_cluster, setup_logging,
    stop_event_on_signals, withdraw_ready,
)
from wire.transport import Transport, TransportError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m master",
        description="uds master: one member of the Raft group that holds jobs, chunks, nodes and "
                    "the event log; the leader accepts jobs and dispatches chunks.")
    parser.add_argument("--cluster", metavar="FILE", required=True, help="cluster file (TOML)")
    parser.add_argument("--index", type=int, default=0, metavar="N",
                        help="which [[masters]] entry this is (default 0)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    try:
        cluster, entry, keys = open_cluster(options.cluster, "masters", options.index)
        transport = Transport(keys)
    except (ConfigurationError, TransportError) as fault:
        print(f"master: {fault}", file=sys.stderr)
        return 2
    log = setup_logging("master", options.verbose)
    stop = stop_event_on_signals()
    partners = [master.raft for index, master in enumerate(cluster.masters) if index != options.index]
    wake_read, wake_write = os.pipe()
    for descriptor in (wake_read, wake_write):
        fcntl.fcntl(descriptor, fcntl.F_SETFL, fcntl.fcntl(descriptor, fcntl.F_GETFL) | os.O_NONBLOCK)
    raft = None
    try:
        node_id = load_node_id(entry.data)
        raft = RaftGroup(entry.raft, partners, entry.data, keys, wake_write)
        node = MasterNode(node_id, entry.address, raft, transport, wake_read)
    except (OSError, zmq.ZMQError) as fault:
        print(f"master: cannot start: {fault}", file=sys.stderr)
        if raft is not None:
            raft.destroy()
        transport.close()
        return 1
    log.info("node %s at %s (raft %s, %d partners)", node_id.hex(), entry.address, entry.raft, len(partners))
    try:
        node.run(stop.is_set, lambda: announce_ready(entry.data))
    finally:
        withdraw_ready(entry.data)
        raft.destroy()
        transport.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
