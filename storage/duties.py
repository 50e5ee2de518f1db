"""A storage node's duties beyond serving, and the threads that do them:
the keeper (heartbeat, membership, repair scans, collection passes;
storage/keeper.py), the puller (repair pulls; storage/puller.py) and the
scrub (storage/scrub.py). The service loop hands them work through the
`Helpers` calls; they answer through its `post`.

A damaged blob, found by the scrub or by a manifest request, is moved to
DATA/corrupt/ at once and a good copy is pulled from the other members,
in read order.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from uds.storage.blobstore import BlobStore
from uds.storage.keeper import Keeper
from uds.storage.placement import read_order
from uds.storage.puller import Puller
from uds.storage.scrub import Scrubber
from uds.storage.service import Helpers
from uds.daemon.dispatch import RequestRefused
from uds.wire import ErrorCode, Message
from uds.wire.cluster import StoragePolicy
from uds.wire.records import NO_FACTS, NodeFacts
from uds.wire.transport import Transport

log = logging.getLogger("storage")

# How long a stop waits for each thread (a pull waits on its source's reply).
STOP_WAIT_S = 5.0

# The figures each heartbeat carries to the masters (a subset of stats_reply).
HEARTBEAT_FIGURES = ("capacity_bytes", "used_bytes", "free_bytes", "blob_count", "repair_pending",
                     "repaired_files", "repaired_bytes", "repair_scans", "scrubbed_blobs", "scrub_passes",
                     "corrupt_blobs", "gc_deleted_blobs", "gc_deleted_bytes")


class Duties(Helpers):
    """The three threads of one node, started and stopped together."""

    def __init__(self, transport: Transport, node_id: bytes, address: str, store: BlobStore,
                 policy: StoragePolicy, masters: Sequence[str], storage: Sequence[str],
                 post: Callable[[bytes, Message], None], facts: NodeFacts = NO_FACTS) -> None:
        """`facts`: what this node says of itself in its heartbeats to the masters."""
        self.address = address
        self.store = store
        self._corrupt_lock = threading.Lock()
        self.corrupt_blobs = 0
        self.puller = Puller(transport, node_id, store, policy.repair_bytes_per_s, post)
        self.keeper = Keeper(transport, node_id, address, store, policy, masters, storage, post,
                             figures=self.heartbeat_figures, facts=facts)
        self.scrubber = Scrubber(store, policy.scrub_bytes_per_s, policy.scrub_interval_s, self.corrupt)
        self.threads = (self.puller, self.keeper, self.scrubber)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        for thread in self.threads:
            thread.stop()
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout=STOP_WAIT_S)
        if not self.keeper.is_alive():
            self.keeper.close()

    # -- what the service loop hands over ------------------------------------

    def pull(self, file_id: bytes, length: int, source: str, waiter: tuple[bytes, int]) -> bool:
        if self.keeper.refuses_offer(file_id):
            raise RequestRefused(ErrorCode.INVALID, f"{file_id.hex()} was collected here within the "
                                                    "grace period: not taken back from a repair")
        return self.puller.request(file_id, length, [source], waiter)

    def put_begun(self, file_id: bytes) -> None:
        self.keeper.put_again(file_id)

    def collect(self, peer: bytes, request_id: int, dry_run: bool) -> bool:
        return self.keeper.request_gc(peer, request_id, dry_run)

    def corrupt(self, file_id: bytes) -> None:
        try:
            size = self.store.path_of(file_id).stat().st_size
        except FileNotFoundError:
            return
        if not self.store.quarantine(file_id):
            return
        with self._corrupt_lock:
            self.corrupt_blobs += 1
        sources = [member.address for member in read_order(file_id, self.keeper.members)
                   if member.address != self.address]
        log.error("blob %s moved to corrupt/; pulling a good copy from %s", file_id.hex(),
                  ", ".join(sources) or "nowhere (no other member)")
        if sources:
            self.puller.request(file_id, size, sources)

    # -- figures --------------------------------------------------------------

    def figures(self) -> dict[str, int]:
        return {**self.keeper.counters, **self.puller.counters, **self.scrubber.counters,
                **self.keeper.heartbeat_figures(), "corrupt_blobs": self.corrupt_blobs,
                "repair_pulls_queued": self.puller.waiting}

    def heartbeat_figures(self) -> dict[str, int]:
        figures = self.figures()
        return {name: figures[name] for name in HEARTBEAT_FIGURES}
