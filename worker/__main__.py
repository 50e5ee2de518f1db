"""python -m uds.worker: a worker daemon. See doc/worker.md."""
from __future__ import annotations

import argparse
import pathlib
import socket
import sys

from uds.daemon.runtime import ConfigurationError, DaemonContext, add_common_arguments, run_daemon, wake_pipe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m uds.worker",
        description="uds worker: runs chunk attempts the load balancer assigns, showing their inputs "
                    "through a FUSE mount that fetches blocks from storage on first read.")
    add_common_arguments(parser, "")
    parser.add_argument("--name", default=socket.gethostname(),
                        help="worker name; its data folder is the cluster's workers.data/NAME "
                             "(default: the host name)")
    parser.add_argument("--data", metavar="DIR", help="data folder (overrides the cluster file)")
    parser.add_argument("--slots", type=int, help="chunks run at once (default: the cluster file's)")
    parser.add_argument("--cache-bytes", type=int, help="block cache size cap (default: the cluster file's)")
    parser.add_argument("--cpus", help="cpus offered to chunks, e.g. 4 or 1.5 (default: this machine's)")
    parser.add_argument("--memory", help="memory offered to chunks, e.g. 8G (default: this machine's)")
    parser.add_argument("--disk", help="disk offered to chunks, e.g. 100G (default: the data folder's free space)")
    parser.add_argument("--slot-uids", metavar="FIRST-LAST",
                        help="uids programs run as, one per slot and two spare (default: the cluster "
                             "file's workers.slot_uids, else a block above 200000 chosen by node id)")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run programs as the worker's own user, unconfined, where the sandbox "
                             "(bubblewrap, cgroups, root) cannot be built; `uds nodes` says so")
    return parser


def build(context: DaemonContext):
    from uds.storage.directory import StorageDirectory
    from uds.storage.replicas import ReplicatedStorage
    from uds.wire.cluster import default_limits, storage_policy
    from uds.wire.resources import ResourceSpecError
    from uds.worker.capacity import worker_capacity
    from uds.worker.host import SandboxSettings
    from uds.worker.node import WorkerNode
    from uds.worker.sandbox import SandboxUnavailable, parse_uid_range
    options, cluster = context.options, context.cluster
    if options.slots is not None and options.slots < 1:
        raise ConfigurationError("--slots must be at least 1")
    if options.cache_bytes is not None and options.cache_bytes < 1:
        raise ConfigurationError("--cache-bytes must be positive")
    slots = options.slots or cluster.workers.slots
    uid_text = options.slot_uids or cluster.workers.slot_uids
    try:
        uids = parse_uid_range(uid_text) if uid_text else None
    except ValueError as fault:
        raise ConfigurationError(str(fault)) from None
    sandbox = SandboxSettings(enabled=not options.unsafe_no_sandbox, slot_uids=uids,
                              defaults=default_limits(cluster), hidden=_private_folders(cluster), slots=slots)
    try:
        capacity = worker_capacity(context.data, options.cpus, options.memory, options.disk)
    except ResourceSpecError as fault:
        raise ConfigurationError(f"--{fault}") from None
    wake_read, wake_write = wake_pipe()
    # Every [[storage]] entry seeds the membership; the masters' view replaces it.
    storage = ReplicatedStorage(context.transport, context.node_id,
                                StorageDirectory([entry.address for entry in cluster.storage]),
                                storage_policy(cluster).replicas)
    try:
        return WorkerNode(context.node_id, context.data, [entry.address for entry in cluster.loadbalancers],
                          storage, context.transport, slots=slots,
                          cache_bytes=options.cache_bytes or cluster.workers.cache_bytes,
                          heartbeat_interval_s=cluster.workers.heartbeat_interval_s,
                          wake_read=wake_read, wake_write=wake_write, sandbox=sandbox,
                          capacity=capacity, masters=[entry.address for entry in cluster.masters],
                          facts=context.facts, metrics=context.metrics)
    except SandboxUnavailable as fault:
        storage.close()
        raise ConfigurationError(f"cannot build the sandbox programs run in: {fault}. Fix that, or start "
                                 "the worker with --unsafe-no-sandbox to run programs unconfined") from None


def _private_folders(cluster) -> tuple[pathlib.Path, ...]:
    """Folders of this cluster a chunk must not see, whichever node of this
    machine they belong to: the keys and every role's data."""
    return (cluster.keys, cluster.workers.data, *(entry.data for entry in cluster.masters),
            *(entry.data for entry in cluster.loadbalancers), *(entry.data for entry in cluster.storage))


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)

    def data_of(cluster, entry) -> pathlib.Path:
        return pathlib.Path(options.data).resolve() if options.data else cluster.worker_data(options.name)

    return run_daemon("worker", options, "", data_of, build)


if __name__ == "__main__":
    sys.exit(main())
