"""Repair, the receiver's side: the thread that pulls a blob from another
storage node and stores it as a put would.

Rules:
- Work comes in as a PullJob: the file, its length, the nodes to pull
  from in order, and who waits for the outcome. A job for a file already
  queued joins it (its waiters and sources are added); at most
  PULLS_QUEUED files wait, beyond that `request` answers False (the service
  replies ERR_BUSY, and the holder offers the file again at its next scan).
- A pull asks the source for the manifest (checked against the id by the
  client), reads the file in pieces, checks every block against the
  manifest before writing it, and the store checks the whole id once more
  before the rename: a source that lies or rots stores nothing here.
- Bytes pulled keep to the repair rate (storage/pacing.py).
- The outcome goes to every waiter through `reply(peer, message)`, which
  the service loop sends (the ROUTER is the loop's alone).
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from uds import wire
from uds.storage.blobstore import BlobStore, NoSpace
from uds.storage.client import StorageClient, StorageError
from uds.storage.pacing import Pacer
from uds.wire import ErrorCode, Message, PutStatus
from uds.wire.ids import BLOCK_BYTES
from uds.wire.limits import MAX_DATA_FRAME_BYTES
from uds.wire.transport import Transport

# Files waiting for a pull, beyond the one being pulled.
PULLS_QUEUED = 64
# Bytes per ranged read in a pull: whole blocks, four data frames, which the
# client asks for at once (READS_IN_FLIGHT), so the round trips overlap.
PULL_PIECE_BYTES = 4 * (MAX_DATA_FRAME_BYTES - MAX_DATA_FRAME_BYTES % BLOCK_BYTES)
# A source silent this long for one request is given up (the next is tried).
PULL_TIMEOUT_S = 20.0

COUNTER_NAMES = ("repaired_files", "repaired_bytes", "repair_pulls_failed", "repair_requests_refused")

log = logging.getLogger("storage.repair")
Reply = Callable[[bytes, Message], None]


class PullFailed(Exception):
    """No source gave a good copy; the message says what each did."""


@dataclass
class PullJob:
    file_id: bytes
    length: int
    sources: list[str]
    waiters: list[tuple[bytes, int]] = field(default_factory=list)   # (peer, request_id)


def pull_blob(client: StorageClient, store: BlobStore, file_id: bytes, length: int,
              pacer: Pacer, sleep: Callable[[float], None] = time.sleep,
              clock: Callable[[], float] = time.monotonic) -> None:
    """Copy one blob from the node behind `client` into `store`, every
    block verified; raises StorageError (the source) or a BlobStoreError."""
    manifest = client.manifest(file_id)
    if manifest.size != length:
        raise PullFailed(f"{client.address} holds {file_id.hex()} as {manifest.size} bytes, "
                         f"not the {length} offered")
    writer = store.begin_put(file_id, length)
    try:
        for offset in range(0, length, PULL_PIECE_BYTES):
            piece = client.read(file_id, offset, min(PULL_PIECE_BYTES, length - offset))
            for start in range(0, len(piece), BLOCK_BYTES):
                index = (offset + start) // BLOCK_BYTES
                if not manifest.block_matches(index, piece[start:start + BLOCK_BYTES]):
                    raise PullFailed(f"{client.address}: block {index} of {file_id.hex()} "
                                     "does not match its manifest")
            writer.write(piece)
            sleep(pacer.spent(len(piece), clock()))
        writer.finish()
    except BaseException:
        writer.abort()
        raise


class Puller(threading.Thread):
    """The one thread that pulls blobs for repair, one at a time."""

    def __init__(self, transport: Transport, node_id: bytes, store: BlobStore, bytes_per_s: int,
                 reply: Reply, queued: int = PULLS_QUEUED) -> None:
        super().__init__(name="storage-puller", daemon=True)
        self.transport = transport
        self.node_id = node_id
        self.store = store
        self.pacer = Pacer(bytes_per_s)
        self.reply = reply
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._jobs: dict[bytes, PullJob] = {}          # queued or being pulled, by file
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._queued = queued
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def waiting(self) -> int:
        return len(self._jobs)

    def request(self, file_id: bytes, length: int, sources: list[str],
                waiter: tuple[bytes, int] | None = None) -> bool:
        """Pull `file_id` from the first of `sources` that has a good copy;
        False if the queue is full."""
        with self._lock:
            job = self._jobs.get(file_id)
            if job is None:
                if len(self._jobs) > self._queued:
                    self.counters["repair_requests_refused"] += 1
                    return False
                job = self._jobs[file_id] = PullJob(file_id, length, [])
                self._queue.put(file_id)
            job.sources += [source for source in sources if source not in job.sources]
            if waiter is not None:
                job.waiters.append(waiter)
        return True

    def stop(self) -> None:
        self._stopping.set()
        self._queue.put(None)

    def run(self) -> None:
        clients: dict[str, StorageClient] = {}
        try:
            while not self._stopping.is_set():
                file_id = self._queue.get()
                if file_id is None:
                    break
                job = self._jobs[file_id]
                try:
                    outcome = self._pull(job, clients)
                except Exception as fault:  # noqa: BLE001 - a failed pull must not end the thread
                    log.exception("pull of %s", file_id.hex())
                    outcome = wire.Error.replying(self.node_id, 0, int(wire.MessageType.FILE_REPLICATE),
                                                  ErrorCode.INTERNAL, f"repair pull failed: {fault}")
                with self._lock:
                    waiters = self._jobs.pop(file_id).waiters
                for peer, request_id in waiters:
                    self.reply(peer, _addressed(outcome, request_id))
        finally:
            for client in clients.values():
                client.close()

    def _pause(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            raise PullFailed("the node is stopping")

    def _pull(self, job: PullJob, clients: dict[str, StorageClient]) -> Message:
        def answer(status: PutStatus) -> Message:
            return wire.FilePutReply.make(self.node_id, request_id=0, file=job.file_id, status=int(status))

        if self.store.has(job.file_id):
            return answer(PutStatus.PRESENT)
        faults = []
        for source in list(job.sources):
            if self._stopping.is_set():
                break
            client = clients.get(source)
            if client is None:
                client = clients[source] = StorageClient(self.transport, source, self.node_id,
                                                         timeout_s=PULL_TIMEOUT_S)
            log.debug("pulling %s (%d bytes) from %s", job.file_id.hex(), job.length, source)
            try:
                pull_blob(client, self.store, job.file_id, job.length, self.pacer, self._pause)
            except NoSpace as fault:
                self.counters["repair_pulls_failed"] += 1
                return wire.Error.replying(self.node_id, 0, int(wire.MessageType.FILE_REPLICATE),
                                           ErrorCode.TOO_LARGE, str(fault))
            except (StorageError, PullFailed) as fault:
                faults.append(str(fault))
                if not isinstance(fault, StorageError) or fault.error_code is None:
                    # A timeout or a broken reply may leave stale replies on
                    # the socket: start afresh with this source next time.
                    clients.pop(source).close()
                continue
            except Exception as fault:  # noqa: BLE001 - a hash or length mismatch, a disk fault
                faults.append(f"{source}: {type(fault).__name__}: {fault}")
                continue
            self.counters["repaired_files"] += 1
            self.counters["repaired_bytes"] += job.length
            log.info("repaired %s (%d bytes) from %s", job.file_id.hex(), job.length, source)
            return answer(PutStatus.STORED)
        self.counters["repair_pulls_failed"] += 1
        reason = "; ".join(faults) or "stopping"
        log.warning("could not repair %s: %s", job.file_id.hex(), reason)
        return wire.Error.replying(self.node_id, 0, int(wire.MessageType.FILE_REPLICATE),
                                   ErrorCode.UNKNOWN_FILE, f"no good copy of {job.file_id.hex()}: {reason}")


def _addressed(message: Message, request_id: int) -> Message:
    return dataclasses.replace(message, request_id=request_id)
