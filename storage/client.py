"""A synchronous client of one storage node.

    with StorageClient(transport, cluster.storage[0].address, node_id) as storage:
        file_id, size = storage.put_file("input.csv")
        content = storage.get(file_id)          # checked against file_id

Rules: one StorageClient belongs to one thread (it owns its DEALER sockets);
make one per thread from a shared Transport. A read of more than one piece
goes over up to `streams` connections to the node at once, because CURVE
runs each connection's encryption on one ZeroMQ I/O thread: one connection
is one core of crypto on each side (wire/transport.py's IO_THREADS). Every
other request uses the first connection. Every request carries a fresh
request id and a reply is matched to it; a reply for another or an older
request (one that timed out, say) is dropped. An `error` reply raises a
`StorageError` subclass with the node's error code and reason; no reply for
`timeout_s` raises `StorageTimeout`. Nothing here blocks on a send: it polls
for POLLOUT with the same timeout, which also throttles an upload to what
the node absorbs. Everything read is checked against its file id before
`get` or `get_to_file` returns it.
"""
from __future__ import annotations

import itertools
import logging
import os
import pathlib
import secrets
import time
from collections.abc import Callable, Iterable, Iterator

import zmq

from uds import wire
from uds.errors import AuthenticationRefused, ClientError
from uds.wire import ErrorCode, Message, PutStatus, WireError
from uds.wire.ids import BLOCK_BYTES, BlockManifest, FileHasher, ManifestMismatch, file_hasher, file_id_of
from uds.wire.limits import MAX_DATA_FRAME_BYTES
from uds.wire.enums import NodeRole
from uds.wire.transport import Transport, recv_message, refusal, send_message

# Upload pieces: big enough that per-message costs vanish, small enough that
# the queue below holds little memory.
PUT_PIECE_BYTES = 1024 * 1024
# Messages the socket may queue before a send waits for POLLOUT. Lowered from
# the transport's 10,000 so that an upload holds at most ~16 MiB in memory.
SEND_QUEUE_MESSAGES = 16
# Ranged reads: one data frame each, this many outstanding at once (pyzmq
# measured ~1.9 GiB/s with 8 x 1 MiB; 4 x 4 MiB is the same bytes in flight).
READ_PIECE_BYTES = MAX_DATA_FRAME_BYTES
READS_IN_FLIGHT = 4
# Connections one client reads a long range over (see the rules above). The
# extra ones are made at the first read that can use them.
READ_STREAMS = 2
# Block size when hashing a local file before its upload.
HASH_BLOCK_BYTES = 1024 * 1024
DEFAULT_TIMEOUT_S = 30.0
# How often a wait looks whether the node refused our key: a refusal is
# reported within this, not after the whole timeout.
REFUSAL_CHECK_MS = 100

Progress = Callable[[int, int], None]
log = logging.getLogger("client.storage")


class StorageError(ClientError):
    """A storage request failed. `error_code` is the node's ErrorCode, or
    None for faults found on this side (timeout, corrupt data)."""

    def __init__(self, address: str, reason: str, error_code: int | None = None) -> None:
        code = "" if error_code is None else f" [{_code_name(error_code)}]"
        super().__init__(f"storage {address}: {reason}{code}")
        self.address = address
        self.reason = reason
        self.error_code = error_code


class StorageTimeout(StorageError):
    """The node did not answer (or take a message) within the timeout."""


class CorruptDataError(StorageError):
    """Bytes read from the node do not hash to the id they were read as."""


class BadReplyError(StorageError):
    """The node's reply does not fit the request (wrong file, offset or length)."""


class UnknownFileError(StorageError):
    """ERR_UNKNOWN_FILE: the node has no file with this id."""


class OutOfRangeError(StorageError):
    """ERR_RANGE: offset and length outside the file, or an upload of the wrong length."""


class HashMismatchError(StorageError):
    """ERR_HASH_MISMATCH: the uploaded bytes do not hash to the id."""


class TooLargeError(StorageError):
    """ERR_TOO_LARGE: more than one data frame, or more than the node's free disk."""


class StorageBusyError(StorageError):
    """ERR_BUSY: the node has too many uploads open; retry later."""


class RequestRejectedError(StorageError):
    """ERR_MALFORMED, ERR_UNEXPECTED, ERR_INVALID: the node refused the request."""


class StorageInternalError(StorageError):
    """ERR_INTERNAL and anything unforeseen: a fault on the node."""


class NotEnoughReplicas(StorageError):
    """Fewer storage nodes than the file needs could take it, or none had a
    good copy of it; the message names each node tried and what it said."""

    def __init__(self, reason: str) -> None:
        super().__init__("cluster", reason)


ERROR_CLASSES: dict[int, type[StorageError]] = {
    ErrorCode.UNKNOWN_FILE: UnknownFileError,
    ErrorCode.RANGE: OutOfRangeError,
    ErrorCode.HASH_MISMATCH: HashMismatchError,
    ErrorCode.TOO_LARGE: TooLargeError,
    ErrorCode.BUSY: StorageBusyError,
    ErrorCode.MALFORMED: RequestRejectedError,
    ErrorCode.UNEXPECTED: RequestRejectedError,
    ErrorCode.INVALID: RequestRejectedError,
    ErrorCode.INTERNAL: StorageInternalError,
}


def _code_name(error_code: int) -> str:
    try:
        return f"ERR_{ErrorCode(error_code).name}"
    except ValueError:
        return f"error {error_code}"


def hash_file(path: str | os.PathLike[str]) -> tuple[bytes, int]:
    """(file id, size) of a local file."""
    hasher = file_hasher()
    size = 0
    with open(path, "rb") as source:
        while block := source.read(HASH_BLOCK_BYTES):
            hasher.update(block)
            size += len(block)
    return hasher.digest(), size


class StorageClient:
    """Requests to the storage node at `address`, over one DEALER socket, and
    long reads over up to `streams` of them."""

    def __init__(self, transport: Transport, address: str, node_id: bytes,
                 timeout_s: float = DEFAULT_TIMEOUT_S, streams: int = READ_STREAMS) -> None:
        self.address = address
        self.node_id = node_id
        self.timeout_s = timeout_s
        self.streams = max(1, streams)
        self._transport = transport
        self._socket = self._connect()
        self._sockets = [self._socket]      # the read streams; the first serves every request
        self._poller: zmq.Poller | None = None   # over every stream, once there are several
        self._request_ids = itertools.count(1)

    def _connect(self) -> zmq.Socket:
        socket = self._transport.client_socket(zmq.DEALER, self.address, NodeRole.STORAGE)
        # Tightening the transport's high-water mark is safe after connect:
        # libzmq applies it to the existing pipe.
        socket.setsockopt(zmq.SNDHWM, SEND_QUEUE_MESSAGES)
        return socket

    def _read_streams(self, pieces: int) -> list[zmq.Socket]:
        """The connections a read of `pieces` pieces goes over."""
        wanted = min(self.streams, pieces)
        if wanted > len(self._sockets):
            while len(self._sockets) < wanted:
                self._sockets.append(self._connect())
            self._poller = zmq.Poller()
            for socket in self._sockets:
                self._poller.register(socket, zmq.POLLIN)
        return self._sockets[:wanted]

    def close(self) -> None:
        for socket in self._sockets:
            if not socket.closed:
                socket.close()

    def __enter__(self) -> StorageClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- queries ----------------------------------------------------------

    def stat(self, file_id: bytes) -> int | None:
        """The file's size, or None if the node does not have it."""
        reply = self._call(wire.FileStat.make(self.node_id, request_id=self._new_request_id(),
                                              file=file_id), wire.FileStatReply)
        return reply.file_length if reply.present else None

    def manifest(self, file_id: bytes) -> BlockManifest:
        """The file's block hashes, checked against its id (CorruptDataError if
        they do not match it). One round trip per 128 GiB of file."""
        hashes, size, first = [], None, 0
        while True:
            reply = self._call(wire.FileManifest.make(self.node_id, request_id=self._new_request_id(),
                                                      file=file_id, first_block=first), wire.FileManifestReply)
            if reply.file_uuid != file_id or reply.first_block != first or \
                    (size is not None and reply.file_length != size):
                raise BadReplyError(self.address, f"asked for the manifest of {file_id.hex()} from block "
                                    f"{first}, got {reply.file_uuid.hex()} from block {reply.first_block}")
            size = reply.file_length
            hashes.append(bytes(reply.hashes))
            first += reply.block_count
            if first >= -(-size // BLOCK_BYTES) or reply.block_count == 0:
                break
        try:
            manifest = BlockManifest(size, b"".join(hashes))
            manifest.check(file_id, size)
        except ManifestMismatch as fault:
            raise CorruptDataError(self.address, f"manifest: {fault}") from None
        return manifest

    def stats(self) -> dict[str, int]:
        """The node's counters (its own and its transport's)."""
        reply = self._call(wire.StatsQuery.make(self.node_id, request_id=self._new_request_id()),
                           wire.StatsReply)
        return dict(reply.counters)

    # -- uploads ----------------------------------------------------------

    def put_bytes(self, data: bytes | bytearray | memoryview) -> tuple[bytes, int]:
        """Store `data`; (file id, size). One round trip if the node has it."""
        view = memoryview(data).cast("B")
        file_id = file_id_of(view)
        self.put_hashed(file_id, len(view), view)
        return file_id, len(view)

    def put_file(self, path: str | os.PathLike[str],
                 progress: Progress | None = None) -> tuple[bytes, int]:
        """Store a local file; (file id, size). It is hashed first so that a
        file the node already has costs one round trip and no data."""
        file_id, size = hash_file(path)
        self.put_hashed(file_id, size, path, progress)
        return file_id, size

    def put_descriptor(self, descriptor: int,
                       progress: Progress | None = None) -> tuple[bytes, int]:
        """Store the file open as `descriptor`; (file id, size). Through
        /proc/self/fd the very inode is read again, never a path that could
        have been swapped, and hashed exactly as put_file hashes."""
        return self.put_file(f"/proc/self/fd/{descriptor}", progress)

    def put_hashed(self, file_id: bytes, size: int, source: str | os.PathLike[str] | bytes | memoryview,
                   progress: Progress | None = None) -> None:
        """Store content already hashed as (file_id, size): bytes, or a local
        file read again here, so that several nodes can take one hashing's
        result. A source that changed since it was hashed raises
        HashMismatchError or OutOfRangeError."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            view = memoryview(source).cast("B")
            self._put(file_id, size, (view[start:start + PUT_PIECE_BYTES]
                                      for start in range(0, len(view), PUT_PIECE_BYTES)), progress)
            return
        with open(source, "rb") as stream:
            self._put(file_id, size, iter(lambda: stream.read(PUT_PIECE_BYTES), b""), progress)

    def gc_run(self, dry_run: bool) -> wire.GcRunReply:
        """Ask the node for one collection pass now (or what it would delete)."""
        return self._call(wire.GcRun.make(self.node_id, request_id=self._new_request_id(),
                                          dry_run=int(dry_run)), wire.GcRunReply)

    def _put(self, file_id: bytes, size: int, pieces: Iterable[bytes | memoryview],
             progress: Progress | None) -> None:
        request_id = self._new_request_id()
        begin = wire.FilePutBegin.make(self.node_id, request_id=request_id, file=file_id,
                                       file_length=size)
        reply = self._call(begin, wire.FilePutReply)
        if reply.status == PutStatus.PRESENT:
            if progress is not None:
                progress(size, size)
            return
        if reply.status != PutStatus.SEND_DATA:
            raise BadReplyError(self.address, f"put begin answered with status {reply.status}")
        offset = 0
        for piece in pieces:
            self._send(wire.FilePutData.make(self.node_id, request_id=request_id, file=file_id,
                                             offset=offset, data=piece))
            offset += len(piece)
            # The node answers a piece only to say the upload broke: stop early.
            self._check_for_error(request_id)
            if progress is not None:
                progress(offset, size)
        # A source that shrank since it was hashed ends short; the node then
        # answers ERR_RANGE and closes the session instead of waiting for it.
        end = wire.FilePutEnd.make(self.node_id, request_id=request_id, file=file_id)
        try:
            reply = self._call(end, wire.FilePutReply)
        except HashMismatchError as fault:
            raise HashMismatchError(self.address, f"{fault.reason} (did the source change "
                                    "while it was uploaded?)", fault.error_code) from None
        if reply.status != PutStatus.STORED:
            raise BadReplyError(self.address, f"put end answered with status {reply.status}")

    # -- downloads --------------------------------------------------------

    def read(self, file_id: bytes, offset: int, length: int) -> bytes:
        """Exactly `length` bytes from `offset`, in pipelined requests."""
        return b"".join(self._read_pieces(file_id, offset, length))

    def read_into(self, file_id: bytes, offset: int, buffer: bytearray | memoryview) -> int:
        """Fill `buffer` with the file's bytes from `offset`, as `read` does
        but into memory the caller reuses (a fresh buffer per read costs a
        page fault per 4 KiB); the bytes read, len(buffer)."""
        view = memoryview(buffer).cast("B")
        done = 0
        for piece in self._read_pieces(file_id, offset, len(view)):
            view[done:done + len(piece)] = piece
            done += len(piece)
        return done

    def get(self, file_id: bytes) -> bytes:
        """The whole file, checked against its id."""
        size = self._size_or_raise(file_id)
        hasher = file_hasher()
        pieces = []
        for piece in self._read_pieces(file_id, 0, size):
            hasher.update(piece)
            pieces.append(piece)
        self._verify(file_id, hasher)
        return b"".join(pieces)

    def get_to_file(self, file_id: bytes, path: str | os.PathLike[str],
                    progress: Progress | None = None) -> int:
        """Write the whole file to `path` (replacing it only once the content
        checks out); its size."""
        target = pathlib.Path(path)
        size = self._size_or_raise(file_id)
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        hasher = file_hasher()
        done = 0
        try:
            with open(temporary, "wb") as sink:
                for piece in self._read_pieces(file_id, 0, size):
                    hasher.update(piece)
                    sink.write(piece)
                    done += len(piece)
                    if progress is not None:
                        progress(done, size)
            self._verify(file_id, hasher)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        if progress is not None and size == 0:
            progress(0, 0)
        return size

    def _size_or_raise(self, file_id: bytes) -> int:
        size = self.stat(file_id)
        if size is None:
            raise UnknownFileError(self.address, f"no file {file_id.hex()}",
                                   int(ErrorCode.UNKNOWN_FILE))
        return size

    def _verify(self, file_id: bytes, hasher: FileHasher) -> None:
        digest = hasher.digest()
        if digest != file_id:
            raise CorruptDataError(self.address, f"content read as {file_id.hex()} hashes to "
                                                 f"{digest.hex()}")

    def _read_pieces(self, file_id: bytes, offset: int, length: int) -> Iterator[memoryview]:
        """The range in order, as views of the received frames, with up to
        READS_IN_FLIGHT requests outstanding, spread in turn over the read
        streams. Length 0 still asks once, so that an unknown file or a bad
        offset raises."""
        ranges = [(start, min(READ_PIECE_BYTES, offset + length - start))
                  for start in range(offset, offset + length, READ_PIECE_BYTES)] or [(offset, 0)]
        streams = itertools.cycle(self._read_streams(len(ranges)))
        wanted = iter(ranges)
        outstanding: dict[int, tuple[int, int]] = {}   # request id -> (offset, length)
        arrived: dict[int, memoryview] = {}             # offset -> data
        next_offset = offset
        for piece_offset, piece_length in itertools.islice(wanted, READS_IN_FLIGHT):
            self._request_read(file_id, piece_offset, piece_length, outstanding, next(streams))
        while outstanding:
            request_id, reply = self._wait_for(outstanding.keys(), wire.FileReadReply, reading=True)
            piece_offset, piece_length = outstanding.pop(request_id)
            asked = (file_id, piece_offset, piece_length)
            if (reply.file_uuid, reply.offset, reply.length) != asked:
                raise BadReplyError(self.address, f"asked for {piece_length} bytes at "
                                    f"{piece_offset} of {file_id.hex()}, got {reply.length} "
                                    f"at {reply.offset} of {reply.file_uuid.hex()}")
            arrived[piece_offset] = reply.data
            for piece_offset, piece_length in itertools.islice(wanted, 1):
                self._request_read(file_id, piece_offset, piece_length, outstanding, next(streams))
            # Replies come in order on one stream, not across streams: the buffer reorders them.
            while next_offset in arrived:
                data = arrived.pop(next_offset)
                next_offset += len(data)
                if data:
                    yield data

    def _request_read(self, file_id: bytes, offset: int, length: int,
                      outstanding: dict[int, tuple[int, int]], socket: zmq.Socket) -> None:
        request_id = self._new_request_id()
        self._send(wire.FileRead.make(self.node_id, request_id=request_id, file=file_id,
                                      offset=offset, length=length), socket)
        outstanding[request_id] = (offset, length)

    # -- requests and replies ---------------------------------------------

    def _new_request_id(self) -> int:
        return next(self._request_ids)

    def _call(self, request: Message, reply_type: type[Message]) -> Message:
        self._send(request)
        return self._wait_for((request.request_id,), reply_type)[1]

    def _send(self, message: Message, socket: zmq.Socket | None = None) -> None:
        socket = self._socket if socket is None else socket
        frames = wire.encode(message)
        deadline = time.monotonic() + self.timeout_s
        while True:
            self._check_admitted()
            remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if socket.poll(min(remaining_ms, REFUSAL_CHECK_MS), zmq.POLLOUT) and \
                    send_message(socket, frames, counters=self._transport):
                return
            if time.monotonic() >= deadline:
                raise StorageTimeout(self.address, f"could not send {type(message).__name__} "
                                     f"within {self.timeout_s:g} s; is the node running?")

    def _wait_for(self, request_ids: Iterable[int], reply_type: type[Message],
                  reading: bool = False) -> tuple[int, Message]:
        """(request id, reply) of the first reply to one of `request_ids`, on
        the first stream or, `reading`, on any; raises the StorageError of an
        error reply, StorageTimeout if none."""
        wanted = set(request_ids)
        deadline = time.monotonic() + self.timeout_s
        poller = self._poller if reading else None
        while True:
            self._check_admitted()
            remaining_ms = min(max(0, int((deadline - time.monotonic()) * 1000)), REFUSAL_CHECK_MS)
            if poller is None:
                ready = [self._socket] if self._socket.poll(remaining_ms, zmq.POLLIN) else []
            else:
                ready = [socket for socket, _ in poller.poll(remaining_ms)]
            for socket in ready:
                reply = self._receive(wanted, reply_type, socket)
                if reply is not None:
                    return reply
            if not ready and time.monotonic() >= deadline:
                raise StorageTimeout(self.address, f"no reply within {self.timeout_s:g} s; "
                                                   "is the node running and reachable?")

    def _check_admitted(self) -> None:
        for socket in self._sockets:
            reason = refusal(socket)
            if reason is not None:
                raise AuthenticationRefused(reason)

    def _receive(self, wanted: set[int], reply_type: type[Message],
                 socket: zmq.Socket | None = None) -> tuple[int, Message] | None:
        received = recv_message(self._socket if socket is None else socket, self._transport)
        if received is None:
            return None
        try:
            reply = wire.decode(received.frames)
        except WireError as fault:
            log.warning("dropped an undecodable reply from %s: %s", self.address, fault)
            return None
        request_id = getattr(reply, "request_id", None)
        if isinstance(reply, wire.Error) and request_id == 0:
            # The node could not decode what we sent, so it could not name the
            # request; we never use id 0, and one connection has one caller.
            raise RequestRejectedError(self.address, reply.reason, reply.error_code)
        if request_id not in wanted:
            log.debug("dropped a stale %s for request %s", type(reply).__name__, request_id)
            return None
        if isinstance(reply, wire.Error):
            error_class = ERROR_CLASSES.get(reply.error_code, StorageInternalError)
            raise error_class(self.address, reply.reason, reply.error_code)
        if not isinstance(reply, reply_type):
            raise BadReplyError(self.address, f"expected {reply_type.__name__}, "
                                              f"got {type(reply).__name__}")
        return request_id, reply

    def _check_for_error(self, request_id: int) -> None:
        """Raise at once if the node has already refused this upload."""
        while self._socket.poll(0, zmq.POLLIN):
            # Only an error can answer a piece; anything else is stale.
            self._receive({request_id}, wire.Error)
