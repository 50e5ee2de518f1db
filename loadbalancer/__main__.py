"""python -m loadbalancer: the load balancer daemon. See doc/loadbalancer.md."""
from __future__ import annotations

import argparse
import sys

import zmq

from loadbalancer.node import LoadBalancerNode
from wire.daemon import (
    ConfigurationError, announce_ready, load_node_id, open_cluster, setup_logging,
    stop_event_on_signals, withdraw_ready,
)
from wire.transport import Transport, TransportError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadbalancer",
        description="uds load balancer: takes chunk attempts from the master and places each on "
                    "the worker that caches most of its inputs; watches worker heartbeats.")
    parser.add_argument("--cluster", metavar="FILE", required=True, help="cluster file (TOML)")
    parser.add_argument("--index", type=int, default=0, metavar="N",
                        help="which [[loadbalancers]] entry to run (default 0)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    try:
        cluster, entry, keys = open_cluster(options.cluster, "loadbalancers", options.index)
        transport = Transport(keys)
    except (ConfigurationError, TransportError) as fault:
        print(f"loadbalancer: {fault}", file=sys.stderr)
        return 2
    log = setup_logging("loadbalancer", options.verbose)
    stop = stop_event_on_signals()
    try:
        node_id = load_node_id(entry.data)
        node = LoadBalancerNode(node_id, entry.address, [master.address for master in cluster.masters],
                                transport, heartbeat_interval_s=cluster.workers.heartbeat_interval_s,
                                lease_s=cluster.workers.lease_s)
    except (OSError, zmq.ZMQError) as fault:
        print(f"loadbalancer: cannot start: {fault}", file=sys.stderr)
        transport.close()
        return 1
    log.info("node %s serving workers at %s", node_id.hex(), entry.address)
    try:
        node.run(stop.is_set, lambda: announce_ready(entry.data))
    finally:
        withdraw_ready(entry.data)
        transport.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
