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
    """The service and the store it serves, run and closed together."""

    def __init__(self, context: DaemonContext) -> None:
        from uds.storage.blobstore import BlobStore
        from uds.storage.service import StorageService
        self.store = BlobStore(context.data)
        try:
            self.service = StorageService(context.transport, context.entry.address, self.store, context.node_id)
        except Exception:
            self.store.close()
            raise

    def run(self, stop: Callable[[], bool], on_serving: Callable[[], None]) -> None:
        self.service.run(stop, on_serving)

    def close(self) -> None:
        try:
            self.service.close()
        finally:
            self.store.close()


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return run_daemon("storage", options, "storage", lambda cluster, entry: entry.data, StorageNode)


if __name__ == "__main__":
    sys.exit(main())
