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
- `ReplicatedBlockSource` reads across a file's replicas (storage/replicas.py):
  it moves on to the next replica at an error, a missing file, or a block
  that does not match the file's manifest, which it therefore checks
  itself; the cache checks again. Only when every replica fails does a
  fetch fail, with CorruptBlock if some replica sent a bad block.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Protocol

from uds.wire.ids import BLOCK_BYTES, BlockManifest, block_hash, file_id_of_blocks

if TYPE_CHECKING:  # the storage client is imported only to name its type
    from uds.storage.client import StorageClient
    from uds.storage.replicas import ReplicatedStorage

# Manifests a ReplicatedBlockSource keeps to check blocks with: 32 bytes per
# MiB of file, so this many hash bytes stand for 64 GiB of inputs.
MANIFEST_CACHE_BYTES = 2 << 20


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


class ReplicatedBlockSource:
    """Fetches blocks from whichever replica has them good (see the rules).
    With `spread`, consecutive blocks of a file start at different replicas,
    so that one reader's read-ahead draws on several nodes at once.
    `observe_fetch` is given the seconds each block fetch took (the worker's
    block-fetch histogram), failed ones too."""

    def __init__(self, storage: "ReplicatedStorage", spread: bool = False,
                 observe_fetch: Callable[[float], None] | None = None) -> None:
        self._storage = storage
        self._spread = spread
        self._observe_fetch = observe_fetch
        self._local = threading.local()
        self._lock = threading.Lock()
        self._manifests: OrderedDict[bytes, BlockManifest] = OrderedDict()
        self._manifest_bytes = 0

    def fetch(self, file_id: bytes, offset: int, length: int) -> bytes:
        if self._observe_fetch is None:
            return self._fetch(file_id, offset, length)
        started = time.monotonic()
        try:
            return self._fetch(file_id, offset, length)
        finally:
            self._observe_fetch(time.monotonic() - started)

    def _fetch(self, file_id: bytes, offset: int, length: int) -> bytes:
        from uds.storage.client import StorageError
        from uds.storage.replicas import NoGoodCopy

        check = self._check_for(file_id, offset, length)
        index = offset // BLOCK_BYTES
        try:
            data, address = self._storage.read_checked(file_id, offset, length, check,
                                                       first=index if self._spread else 0)
        except NoGoodCopy as error:
            if error.corrupt_from:
                self._local.address = error.corrupt_from[0]
                raise CorruptBlock(f"{file_id.hex()} block {index} from {self.where()} does not match "
                                   f"its hash: not kept, not served ({error.reason})") from error
            raise BlockUnavailable(f"{file_id.hex()} [{offset}, +{length}): {error}") from error
        except StorageError as error:
            raise BlockUnavailable(f"{file_id.hex()} [{offset}, +{length}): {error}") from error
        self._local.address = address
        if len(data) != length:
            raise ShortBlock(f"{file_id.hex()} [{offset}, +{length}): got {len(data)} bytes")
        return data

    def manifest(self, file_id: bytes) -> BlockManifest:
        from uds.storage.client import StorageError
        from uds.storage.replicas import NoGoodCopy

        try:
            manifest = self._storage.manifest(file_id)
        except NoGoodCopy as error:
            if error.corrupt_from:
                raise CorruptManifest(str(error)) from error
            raise BlockUnavailable(f"manifest of {file_id.hex()}: {error}") from error
        except StorageError as error:
            raise BlockUnavailable(f"manifest of {file_id.hex()}: {error}") from error
        self._remember(file_id, manifest)
        return manifest

    def where(self) -> str:
        """The node the calling thread's last block came from."""
        address = getattr(self._local, "address", None)
        return f"storage {address}" if address else "storage (replicated)"

    def close(self) -> None:
        """The storage connection is its owner's to close."""

    def _check_for(self, file_id: bytes, offset: int, length: int) -> Callable[[bytes], bool]:
        """How to tell a good block: against the file's manifest, or for a
        file of one block against its id. A range that is not one whole
        block cannot be checked: any bytes pass."""
        if offset % BLOCK_BYTES or not 0 < length <= BLOCK_BYTES:
            return lambda data: True
        if offset == 0 and length < BLOCK_BYTES:     # the only block of a file of `length` bytes
            return lambda data: file_id_of_blocks(len(data), block_hash(data)) == file_id
        index = offset // BLOCK_BYTES

        def matches(data: bytes) -> bool:
            digest = block_hash(data)
            if offset == 0 and file_id_of_blocks(len(data), digest) == file_id:
                return True                          # a file of exactly one block
            manifest = self._known_manifest(file_id)
            return (index < manifest.block_count and len(data) == min(BLOCK_BYTES, manifest.size - offset)
                    and manifest.block_hash(index) == digest)
        return matches

    def _known_manifest(self, file_id: bytes) -> BlockManifest:
        with self._lock:
            manifest = self._manifests.get(file_id)
            if manifest is not None:
                self._manifests.move_to_end(file_id)
                return manifest
        return self.manifest(file_id)

    def _remember(self, file_id: bytes, manifest: BlockManifest) -> None:
        with self._lock:
            if file_id in self._manifests:
                return
            self._manifests[file_id] = manifest
            self._manifest_bytes += len(manifest.hashes)
            while self._manifest_bytes > MANIFEST_CACHE_BYTES and len(self._manifests) > 1:
                _, dropped = self._manifests.popitem(last=False)
                self._manifest_bytes -= len(dropped.hashes)

