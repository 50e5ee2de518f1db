"""Where the worker's block cache gets bytes it does not have.

Rules:
- A `BlockSource` is called from several threads at once (FUSE handlers,
  read-ahead, `ensure_complete`), so every implementation is thread-safe.
- A source returns exactly the bytes asked for or raises a `BlockSourceError`
  subclass; it never verifies content: the cache checks every block against
  the file's manifest before it keeps or serves a byte of it.
- `where()` names the source for people (the storage node's address), so that
  a corrupt block can be blamed on where it came from.
- `StorageBlockSource` keeps one `StorageClient` per thread, because a ZeroMQ
  socket belongs to the thread that made it.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable, Protocol

from uds.wire.ids import BlockManifest

if TYPE_CHECKING:  # the storage client is imported only to name its type
    from uds.storage.client import StorageClient


class BlockSourceError(Exception):
    """A block could not be fetched; the read that needed it fails."""


class BlockUnavailable(BlockSourceError):
    """The source could not deliver the block (missing file, storage down, timeout)."""


class ShortBlock(BlockSourceError):
    """The source returned a different number of bytes than asked for."""


class CorruptBlock(BlockSourceError):
    """A block from the source does not match the file's manifest (or id): it
    was neither kept nor served. The message names the file, block and source."""


class CorruptManifest(BlockSourceError):
    """The source's manifest of a file does not hash to the file's id."""


class BlockSource(Protocol):
    def fetch(self, file_id: bytes, offset: int, length: int) -> bytes:
        """Exactly `length` bytes of file `file_id` from `offset`; thread-safe."""
        ...

    def manifest(self, file_id: bytes) -> BlockManifest:
        """The file's block manifest, as the source has it (the caller checks it)."""
        ...

    def where(self) -> str:
        """Where blocks come from, for people: "storage tcp://host:port"."""
        ...


class StorageBlockSource:
    """Fetches blocks from the storage daemons through one client per thread."""

    def __init__(self, make_client: Callable[[], "StorageClient"]) -> None:
        self._make_client = make_client
        self._local = threading.local()
        self._clients_lock = threading.Lock()
        self._clients: list["StorageClient"] = []  # every client made, so close() reaches them all
        self._closed = False

    def _client(self) -> "StorageClient":
        client = getattr(self._local, "client", None)
        if client is None:
            with self._clients_lock:
                if self._closed:
                    raise BlockUnavailable("block source is closed")
                client = self._make_client()
                self._clients.append(client)
            self._local.client = client
        return client

    def fetch(self, file_id: bytes, offset: int, length: int) -> bytes:
        from uds.storage.client import StorageError  # imported late: client may be absent in unit tests

        try:
            data = self._client().read(file_id, offset, length)
        except StorageError as error:
            raise BlockUnavailable(f"{file_id.hex()} [{offset}, +{length}): {error}") from error
        if len(data) != length:
            raise ShortBlock(f"{file_id.hex()} [{offset}, +{length}): got {len(data)} bytes")
        return data

    def manifest(self, file_id: bytes) -> BlockManifest:
        from uds.storage.client import CorruptDataError, StorageError

        try:
            return self._client().manifest(file_id)
        except CorruptDataError as error:
            raise CorruptManifest(str(error)) from error
        except StorageError as error:
            raise BlockUnavailable(f"manifest of {file_id.hex()}: {error}") from error

    def where(self) -> str:
        try:
            return f"storage {self._client().address}"
        except BlockSourceError:
            return "storage (closed)"

    def close(self) -> None:
        """Close every thread's client. Call once no thread fetches any more."""
        with self._clients_lock:
            self._closed = True
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
