"""python -m uds.storage: the storage daemon.

Serves the blobs of one [[storage]] entry of the cluster file until SIGTERM
or SIGINT. Configuration faults print one line on stderr and exit 2; an
unusable data folder or address exits 1. See doc/storage.md.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from uds.daemon.runtime import DaemonContext, add_common_arguments, run_daemon


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m uds.storage",
        description="uds storage daemon: keeps immutable blobs addressed by their content "
                    "hash and serves puts, stats and ranged reads over CURVE-authenticated "
                    "ZeroMQ. Data lives in the `data` folder of its [[storage]] entry.",
    )
    add_common_arguments(parser, "storage")
    return parser


class StorageNode:
    """The service, the store it serves and the threads of its cluster
    duties (storage/duties.py), run and closed together."""

    def __init__(self, context: DaemonContext) -> None:
        from uds.storage.blobstore import BlobStore
        from uds.storage.duties import Duties
        from uds.storage.service import StorageService
        from uds.wire.cluster import storage_policy
        self.store = BlobStore(context.data)
        try:
            self.service = StorageService(context.transport, context.entry.address, self.store, context.node_id)
        except Exception:
            self.store.close()
            raise
        try:
            cluster = context.cluster
            self.duties = Duties(context.transport, context.node_id, context.entry.address, self.store,
                                 storage_policy(cluster), [master.address for master in cluster.masters],
                                 [entry.address for entry in cluster.storage], self.service.post,
                                 facts=context.facts)
        except Exception:
            self.service.close()
            self.store.close()
            raise
        self.service.helpers = self.duties

    def run(self, stop: Callable[[], bool], on_serving: Callable[[], None]) -> None:
        self.duties.start()
        self.service.run(stop, on_serving)

    def close(self) -> None:
        try:
            self.duties.stop()
            self.service.close()
        finally:
            self.store.close()


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return run_daemon("storage", options, "storage", lambda cluster, entry: entry.data, StorageNode)


if __name__ == "__main__":
    sys.exit(main())
