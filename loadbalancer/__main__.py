"""python -m uds.loadbalancer: the load balancer daemon. See doc/loadbalancer.md."""
from __future__ import annotations

import argparse
import sys

from uds.daemon.runtime import DaemonContext, add_common_arguments, run_daemon


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m uds.loadbalancer",
        description="uds load balancer: takes chunk attempts from the master and places each on "
                    "the worker that caches most of its inputs; watches worker heartbeats.")
    add_common_arguments(parser, "loadbalancers")
    return parser


def build(context: DaemonContext):
    from uds.loadbalancer.node import LoadBalancerNode
    workers = context.cluster.workers
    return LoadBalancerNode(context.node_id, context.entry.address,
                            [master.address for master in context.cluster.masters], context.transport,
                            heartbeat_interval_s=workers.heartbeat_interval_s, lease_s=workers.lease_s,
                            facts=context.facts, metrics=context.metrics)


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return run_daemon("loadbalancer", options, "loadbalancers", lambda cluster, entry: entry.data, build)


if __name__ == "__main__":
    sys.exit(main())
