"""The storage daemon's shell: one ROUTER socket, one loop, one dispatch table.

Rules: every message goes through the daemons' one dispatcher
(daemon/dispatch.py) to `self.handlers`; a handler returns the reply (or
None) and raises for refusals, which `ERROR_CODES` turns into an `error`
reply. Sends never block (send_message), and data frames go out as the
bytes read from disk, without another copy.

The ROUTER is this loop's alone. Work that takes long (a repair pull, a
collection pass) runs on the node's other threads (storage/puller.py,
storage/keeper.py); their answers come back through `post`, which queues
the reply and wakes the loop through a pipe, and the loop sends it.
"""
from __future__ import annotations

import logging
import os
import queue
import time
from collections.abc import Callable
from typing import Any

import zmq

from uds import wire
from uds.storage.blobstore import (
    BlobStore, CorruptBlob, HashMismatch, LengthMismatch, NoSpace, PutWriter, RangeError, UnknownFile,
)
from uds.storage.uploads import (
    IncompleteUpload, PieceBeyondLength, PieceDecision, PieceOutOfOrder, TooManyUploads,
    UnknownUpload, UploadAlreadyOpen, UploadFailed, UploadFault, UploadKey, UploadTracker,
)
from uds.wire import ErrorCode, Message, NodeRole, PutStatus
from uds.wire.cluster import endpoint_problem
from uds.daemon.dispatch import Dispatcher, RequestRefused
from uds.daemon.runtime import drain, wake, wake_pipe
from uds.wire.ids import BLOCK_HASH_BYTES
from uds.wire.limits import MAX_DATA_FRAME_BYTES

# Block hashes in one file_manifest_reply: one data frame's worth (128 GiB of file).
MANIFEST_BLOCKS_PER_REPLY = MAX_DATA_FRAME_BYTES // BLOCK_HASH_BYTES
from uds.wire.transport import Received, Transport, recv_messages, send_message

# How long one poll waits; bounds how late a stop signal or an expiry is seen.
POLL_INTERVAL_MS = 200
# How often idle upload sessions are looked for.
EXPIRY_CHECK_INTERVAL_S = 1.0
# Messages handled per wake-up before the loop looks at stop and expiry again.
MESSAGES_PER_WAKEUP = 256

COUNTER_NAMES = (
    "file_requests", "reads", "bytes_served", "manifests", "stats",
    "replicates_received", "replicates_present", "gc_runs",
    "puts_begun", "puts_present", "puts_stored", "bytes_received",
    "hash_mismatches", "uploads_failed", "uploads_expired",
    "malformed", "unexpected", "forbidden", "internal_errors", "errors_sent",
)

log = logging.getLogger("storage")


# Refusals from the store and the upload tracker, and the code that tells the
# peer about each. A class missing here is a bug on our side: ERR_INTERNAL.
ERROR_CODES: dict[type[Exception], ErrorCode] = {
    UnknownFile: ErrorCode.UNKNOWN_FILE,
    RangeError: ErrorCode.RANGE,
    HashMismatch: ErrorCode.HASH_MISMATCH,
    LengthMismatch: ErrorCode.RANGE,
    NoSpace: ErrorCode.TOO_LARGE,
    TooManyUploads: ErrorCode.BUSY,
    UploadAlreadyOpen: ErrorCode.INVALID,
    UnknownUpload: ErrorCode.INVALID,
    PieceOutOfOrder: ErrorCode.INVALID,
    PieceBeyondLength: ErrorCode.RANGE,
    IncompleteUpload: ErrorCode.RANGE,
    UploadFailed: ErrorCode.INTERNAL,
    CorruptBlob: ErrorCode.INTERNAL,
}


Handler = Callable[[Any, bytes, float], Message | None]


class Helpers:
    """The node's other threads, as the loop hands them work: each call
    answers False when it cannot take more (the peer gets ERR_BUSY)."""

    def pull(self, file_id: bytes, length: int, source: str, waiter: tuple[bytes, int]) -> bool:
        raise RequestRefused(ErrorCode.UNEXPECTED, "this node does not repair")

    def put_begun(self, file_id: bytes) -> None:
        """A client or worker puts the file (present here or not)."""

    def collect(self, peer: bytes, request_id: int, dry_run: bool) -> bool:
        raise RequestRefused(ErrorCode.UNEXPECTED, "this node does not collect")

    def corrupt(self, file_id: bytes) -> None:
        """A blob found damaged: take it out of service and bring a good copy."""

    def figures(self) -> dict[str, int]:
        """Their counters, for stats_reply."""
        return {}


class StorageService:
    """Serves one BlobStore on a ROUTER socket bound at `address`."""

    def __init__(self, transport: Transport, address: str, store: BlobStore, node_id: bytes,
                 clock: Callable[[], float] = time.monotonic, helpers: Helpers | None = None) -> None:
        self.transport = transport
        self.address = address
        self.helpers = helpers or Helpers()
        self.store = store
        self.node_id = node_id
        self._clock = clock
        self.uploads = UploadTracker()
        self._writers: dict[UploadKey, PutWriter] = {}
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.handlers: dict[type[Message], Handler] = {
            wire.FileRequest: self.on_file_request,
            wire.FileStat: self.on_file_stat,
            wire.FileRead: self.on_file_read,
            wire.FileManifest: self.on_file_manifest,
            wire.FilePutBegin: self.on_put_begin,
            wire.FilePutData: self.on_put_data,
            wire.FilePutEnd: self.on_put_end,
            wire.StatsQuery: self.on_stats_query,
            wire.FileReplicate: self.on_file_replicate,
            wire.GcRun: self.on_gc_run,
        }
        # Replies from the other threads, and the pipe that wakes the loop for them.
        self._outbox: queue.SimpleQueue[tuple[bytes, Message]] = queue.SimpleQueue()
        self.socket = transport.server_socket(zmq.ROUTER, address)
        self._wake_read, self._wake_write = wake_pipe()
        self.dispatcher = Dispatcher("storage", node_id, self.handlers, self._send, self._count, log,
                                     refusals=ERROR_CODES)

    @property
    def endpoint(self) -> str:
        return self.socket.last_endpoint.decode()

    # -- the loop ---------------------------------------------------------

    def run(self, stop: Callable[[], bool], on_serving: Callable[[], None] = lambda: None) -> None:
        """Serve until stop() is true; on_serving() once the socket is bound."""
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._wake_read, zmq.POLLIN)
        next_expiry = self._clock() + EXPIRY_CHECK_INTERVAL_S
        on_serving()
        while not stop():
            ready = dict(poller.poll(POLL_INTERVAL_MS))
            if self.socket in ready:
                for received in recv_messages(self.socket, self.transport, MESSAGES_PER_WAKEUP):
                    self.handle(received, self._clock())
            if self._wake_read in ready:
                drain(self._wake_read)
                self.send_posted()
            now = self._clock()
            if now >= next_expiry:
                self.expire_uploads(now)
                next_expiry = now + EXPIRY_CHECK_INTERVAL_S

    def handle(self, received: Received, now: float) -> None:
        self.dispatcher.handle(received, now)

    def post(self, peer: bytes, message: Message) -> None:
        """Queue a reply for the loop to send; any thread may call it."""
        self._outbox.put((peer, message))
        if not self.socket.closed:
            wake(self._wake_write)

    def send_posted(self) -> None:
        while True:
            try:
                peer, message = self._outbox.get_nowait()
            except queue.Empty:
                return
            self._send(peer, message)

    def _send(self, peer: bytes | None, message: Message) -> None:
        send_message(self.socket, wire.encode(message), peer, self.transport)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- reads ------------------------------------------------------------

    def on_file_request(self, request: wire.FileRequest, peer: bytes, now: float) -> Message:
        self.counters["file_requests"] += 1
        file_id = request.file_uuid
        size = self.store.size(file_id)
        if size > MAX_DATA_FRAME_BYTES:
            raise RequestRefused(ErrorCode.TOO_LARGE,
                                 f"{file_id.hex()} is {size} bytes, more than one data frame "
                                 f"({MAX_DATA_FRAME_BYTES}); use file_read")
        data = self.store.read(file_id, 0, size)
        self.counters["bytes_served"] += size
        return wire.FileResponse.make(self.node_id, file=file_id, file_length=size, data=data)

    def on_file_stat(self, request: wire.FileStat, peer: bytes, now: float) -> Message:
        try:
            size, present = self.store.size(request.file_uuid), 1
        except UnknownFile:
            size, present = 0, 0
        if present:
            self.store.touch(request.file_uuid)    # a use: collection keeps it a grace period more
        return wire.FileStatReply.make(self.node_id, request_id=request.request_id,
                                       file=request.file_uuid, file_length=size, present=present)

    def on_file_read(self, request: wire.FileRead, peer: bytes, now: float) -> Message:
        self.counters["reads"] += 1
        if request.length > MAX_DATA_FRAME_BYTES:
            raise RequestRefused(ErrorCode.TOO_LARGE,
                                 f"read of {request.length} bytes exceeds one data frame "
                                 f"({MAX_DATA_FRAME_BYTES})")
        data = self.store.read(request.file_uuid, request.offset, request.length)
        self.counters["bytes_served"] += len(data)
        return wire.FileReadReply.make(self.node_id, request_id=request.request_id,
                                       file=request.file_uuid, offset=request.offset,
                                       length=len(data), data=data)

    def on_file_manifest(self, request: wire.FileManifest, peer: bytes, now: float) -> Message:
        self.counters["manifests"] += 1
        file_id = request.file_uuid
        try:
            manifest = self.store.manifest(file_id)
        except CorruptBlob:
            log.error("stored blob %s no longer hashes to its id", file_id.hex())
            self.helpers.corrupt(file_id)
            raise
        first = request.first_block
        if first > manifest.block_count:
            raise RequestRefused(ErrorCode.RANGE, f"{file_id.hex()} has {manifest.block_count} blocks, "
                                                  f"asked from block {first}")
        count = min(manifest.block_count - first, MANIFEST_BLOCKS_PER_REPLY)
        hashes = manifest.hashes[first * BLOCK_HASH_BYTES:(first + count) * BLOCK_HASH_BYTES]
        return wire.FileManifestReply.make(self.node_id, request_id=request.request_id, file=file_id,
                                           file_length=manifest.size, first_block=first,
                                           block_count=count, hashes=hashes)

    # -- puts -------------------------------------------------------------

    def on_put_begin(self, request: wire.FilePutBegin, peer: bytes, now: float) -> Message:
        file_id = request.file_uuid
        self.helpers.put_begun(file_id)
        if self.store.has(file_id):
            self.counters["puts_present"] += 1
            self.store.touch(file_id)
            status = PutStatus.PRESENT
        else:
            key = UploadKey(peer, request.request_id, file_id)
            self.uploads.begin(key, request.file_length, now)
            try:
                self._writers[key] = self.store.begin_put(file_id, request.file_length)
            except BaseException:
                self.uploads.abort(key)
                raise
            self.counters["puts_begun"] += 1
            status = PutStatus.SEND_DATA
        return wire.FilePutReply.make(self.node_id, request_id=request.request_id,
                                      file=file_id, status=int(status))

    def on_put_data(self, piece: wire.FilePutData, peer: bytes, now: float) -> None:
        key = UploadKey(peer, piece.request_id, piece.file_uuid)
        try:
            decision = self.uploads.data(key, piece.offset, len(piece.data), now)
        except UploadFault:
            self._discard_writer(key)
            raise
        if decision is PieceDecision.WRITE:
            try:
                self._writers[key].write(piece.data)
            except Exception as fault:
                self._discard_writer(key)
                self.uploads.fail(key, UploadFailed(key, f"could not store a piece: {fault}"))
                raise
            self.counters["bytes_received"] += len(piece.data)
        return None

    def on_put_end(self, request: wire.FilePutEnd, peer: bytes, now: float) -> Message:
        key = UploadKey(peer, request.request_id, request.file_uuid)
        try:
            self.uploads.end(key, now)
        except UploadFault:
            self._discard_writer(key)
            raise
        writer = self._writers.pop(key)
        try:
            writer.finish()
        except HashMismatch:
            self.counters["hash_mismatches"] += 1
            self.counters["uploads_failed"] += 1
            raise
        except Exception:
            self.counters["uploads_failed"] += 1
            raise
        self.counters["puts_stored"] += 1
        log.debug("stored %s (%d bytes)", key.file_id.hex(), writer.length)
        return wire.FilePutReply.make(self.node_id, request_id=request.request_id,
                                      file=request.file_uuid, status=int(PutStatus.STORED))

    def _discard_writer(self, key: UploadKey) -> None:
        """Delete the temporary file of an upload that cannot succeed any more."""
        writer = self._writers.pop(key, None)
        if writer is not None:
            writer.abort()
            self.counters["uploads_failed"] += 1

    def expire_uploads(self, now: float) -> None:
        for key in self.uploads.expire(now):
            writer = self._writers.pop(key, None)
            if writer is not None:
                writer.abort()
                self.counters["uploads_expired"] += 1
                log.info("%s abandoned after %d bytes", key, writer.received)

    # -- repair and collection ----------------------------------------------

    def on_file_replicate(self, request: wire.FileReplicate, peer: bytes, now: float) -> Message | None:
        """Another node offers a blob this node should hold: PUT_PRESENT at
        once, or a pull on the puller's thread, answered when it is over.
        Not a use of the blob: a present one is not touched (every repair
        scan offers every blob, and would keep it from collection forever)."""
        self.counters["replicates_received"] += 1
        file_id = request.file_uuid
        if self.store.has(file_id):
            self.counters["replicates_present"] += 1
            return wire.FilePutReply.make(self.node_id, request_id=request.request_id, file=file_id,
                                          status=int(PutStatus.PRESENT))
        if request.source == self.address:
            raise RequestRefused(ErrorCode.INVALID, f"file_replicate names this node ({self.address}) "
                                                    "as the source")
        problem = endpoint_problem(request.source)
        if problem:
            raise RequestRefused(ErrorCode.INVALID, f"file_replicate source {problem}")
        if not self.helpers.pull(file_id, request.file_length, request.source, (peer, request.request_id)):
            raise RequestRefused(ErrorCode.BUSY, "too many repair pulls queued; offer it again later")
        return None

    def on_gc_run(self, request: wire.GcRun, peer: bytes, now: float) -> None:
        self.counters["gc_runs"] += 1
        if not self.helpers.collect(peer, request.request_id, bool(request.dry_run)):
            raise RequestRefused(ErrorCode.BUSY, "too many collection runs queued")
        return None

    # -- stats ------------------------------------------------------------

    def on_stats_query(self, request: wire.StatsQuery, peer: bytes, now: float) -> Message:
        self.counters["stats"] += 1
        return wire.StatsReply.make(self.node_id, request_id=request.request_id,
                                    role=int(NodeRole.STORAGE), counters=self.snapshot())

    def snapshot(self) -> dict[str, int]:
        """This node's counters and gauges, its helpers' and its transport's."""
        return {**self.counters, "uploads_open": len(self.uploads),
                "temp_files_removed": self.store.temp_files_removed,
                **self.helpers.figures(), **dict(self.transport.counters)}

    def close(self) -> None:
        """Abandon open uploads (their temporary files go) and close the socket."""
        for writer in self._writers.values():
            writer.abort()
        self._writers.clear()
        self.socket.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
