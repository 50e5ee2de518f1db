"""python -m storage: the storage daemon.

Serves the blobs of one [[storage]] entry of the cluster file until SIGTERM
or SIGINT. Configuration faults print one line on stderr and exit 2.
See doc/storage.md.
"""
from __future__ import annotations

import argparse
import sys

import zmq

from storage.blobstore import BlobStore
from storage.service import StorageService
from wire import cluster as cluster_file
from wire.daemon import (
    announce_ready, load_node_id, setup_logging, stop_event_on_signals, withdraw_ready,
)
from wire.keys import KeyFolder, KeyFolderError
from wire.transport import Transport, TransportError

EXIT_CONFIGURATION = 2
EXIT_CANNOT_SERVE = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m storage",
        description="uds storage daemon: keeps immutable blobs addressed by their content "
                    "hash and serves puts, stats and ranged reads over CURVE-authenticated "
                    "ZeroMQ. Data lives in the `data` folder of its [[storage]] entry.",
    )
    parser.add_argument("--cluster", metavar="FILE", required=True,
                        help="cluster file (TOML) naming the address, data folder and keys")
    parser.add_argument("--index", metavar="N", type=int, default=0,
                        help="which [[storage]] entry of the cluster file to serve (default 0)")
    parser.add_argument("--verbose", action="store_true", help="log every request (debug level)")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    try:
        cluster = cluster_file.load(options.cluster)
        if not 0 <= options.index < len(cluster.storage):
            raise cluster_file.ClusterFileError(
                f"{cluster.path}: --index {options.index}, but there are "
                f"{len(cluster.storage)} [[storage]] entries")
        entry = cluster.storage[options.index]
        keys = KeyFolder(cluster.keys)
    except (cluster_file.ClusterFileError, KeyFolderError) as fault:
        print(f"storage: {fault}", file=sys.stderr)
        return EXIT_CONFIGURATION

    log = setup_logging("storage", options.verbose)
    stop = stop_event_on_signals()
    try:
        node_id = load_node_id(entry.data)
        store = BlobStore(entry.data)
    except (OSError, ValueError) as fault:
        print(f"storage: cannot use data folder {entry.data}: {fault}", file=sys.stderr)
        return EXIT_CANNOT_SERVE
    try:
        transport = Transport(keys)
    except TransportError as fault:
        print(f"storage: {fault}", file=sys.stderr)
        store.close()
        return EXIT_CONFIGURATION
    try:
        try:
            service = StorageService(transport, entry.address, store, node_id)
        except zmq.ZMQError as fault:
            log.error("cannot bind %s: %s", entry.address, fault)
            return EXIT_CANNOT_SERVE
        announce_ready(entry.data)
        log.info("node %s serving %s at %s", node_id.hex(), entry.data, service.endpoint)
        try:
            service.serve(stop)
        finally:
            withdraw_ready(entry.data)
            service.close()
        log.info("stopped")
        return 0
    finally:
        transport.close()
        store.close()


if __name__ == "__main__":
    sys.exit(main())
