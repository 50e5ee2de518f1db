"""python -m uds.master: a master daemon (one member of the Raft group). See doc/master.md."""
from __future__ import annotations

import argparse
import sys

from uds.daemon.runtime import DaemonContext, add_common_arguments, run_daemon, wake_pipe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m uds.master",
        description="uds master: one member of the Raft group that holds jobs, chunks, nodes and "
                    "the event log; the leader accepts jobs and dispatches chunks.")
    add_common_arguments(parser, "masters")
    return parser


def build(context: DaemonContext):
    from uds.master.node import MasterNode
    from uds.master.replicated import RaftGroup
    from uds.wire.cluster import default_limits, retention, scheduling, storage_policy
    entry = context.entry
    partners = [master.raft for master in context.cluster.masters if master.raft != entry.raft]
    wake_read, wake_write = wake_pipe()
    raft = RaftGroup(entry.raft, partners, context.data, context.transport.keys, wake_write)
    try:
        return MasterNode(context.node_id, entry.address, raft, context.transport, wake_read,
                          client_addresses={master.raft: master.address for master in context.cluster.masters},
                          default_limits=default_limits(context.cluster), retention=retention(context.cluster),
                          storage_policy=storage_policy(context.cluster), scheduling=scheduling(context.cluster),
                          cluster_path=context.cluster.path, facts=context.facts,
                          metrics=context.metrics)
    except Exception:
        raft.destroy()
        raise


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return run_daemon("master", options, "masters", lambda cluster, entry: entry.data, build)


if __name__ == "__main__":
    sys.exit(main())
