"""python -m uds.storage: the storage daemon.

Serves the blobs of one [[storage]] entry of the cluster file until SIGTERM
or SIGINT. Configuration faults print one line on stderr and exit 2; an
unusable data folder or address exits 1. See doc/storage.md.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from uds.daemon.metrics import prefixed
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


GAUGE_DOCS = {
    "used_bytes": "Bytes of the blobs kept (as of the last inventory, every few seconds).",
    "free_bytes": "Free bytes of the data folder's filesystem.",
    "capacity_bytes": "Size of the data folder's filesystem.",
    "blobs": "Blobs kept (as of the last inventory).",
    "repair_pending": "Files the repair scan under way has still to look at.",
    "uploads_open": "Uploads begun and not yet ended.",
    "repair_pulls_queued": "Repair pulls waiting for their turn.",
}


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
        if context.metrics is not None:
            context.metrics.counters_from(self.counter_figures)
            context.metrics.gauges_from(self.gauge_figures, GAUGE_DOCS)

    # -- /metrics: read from the HTTP server's thread, copies only ------------

    def counter_figures(self) -> dict[str, int]:
        duties = self.duties
        return {**self.service.counters, **duties.keeper.counters, **duties.puller.counters,
                **duties.scrubber.counters, "corrupt_blobs": duties.corrupt_blobs,
                "temp_files_removed": self.store.temp_files_removed,
                **prefixed("transport_", self.service.transport.counters.snapshot())}

    def gauge_figures(self) -> dict[str, int]:
        """The disk's figures (a statfs) and the last inventory's."""
        figures = self.duties.keeper.heartbeat_figures()
        return {"used_bytes": figures["used_bytes"], "free_bytes": figures["free_bytes"],
                "capacity_bytes": figures["capacity_bytes"], "blobs": figures["blob_count"],
                "repair_pending": figures["repair_pending"], "uploads_open": len(self.service.uploads),
                "repair_pulls_queued": self.duties.puller.waiting}

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
