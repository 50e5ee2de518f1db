"""Immutable blobs on disk, addressed by their file id.

Layout under the data folder:

    blobs/ab/cdef0123...         a blob: its id in hex, the first 2 characters as folder
    blobs/ab/cdef0123....blocks  its manifest: the 32-byte hash of each 1 MiB block
    tmp/<id>-<random>.part       an upload (or a manifest) in progress
    corrupt/<id>                 a blob the scrub found damaged, kept for a person to look at

Rules: a file appears under blobs/ only complete, fsynced, and with content
that hashes to its name (write to tmp/, fsync, check, rename, fsync the
folder), so a crash at any moment leaves either nothing or the whole blob.
The manifest is computed in the same pass that checks the upload and is
renamed into place just before its blob, so a stored blob has one; a blob
found without one (or with one that does not hash to the id) gets it
recomputed from its content on the first request. Anything in tmp/ at
start-up is a crashed upload and is deleted. Blobs never change once
stored, which is why open descriptors and sizes can be cached.

A blob's mtime is its last use (doc/storage.md, collection): `touch` sets
it, and `delete_if_idle` deletes only a blob whose mtime is still older
than its cutoff. Both, the descriptor cache and every removal hold one
lock, so that the service loop, the scrub, repair and collection threads
may share a store: a touch either comes before a deletion (which then
keeps the blob) or after it (and finds nothing).
"""
from __future__ import annotations

import collections
import logging
import os
import pathlib
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from uds.wire.ids import BLOCK_BYTES, ID_BYTES, BlockManifest, FileHasher, ManifestMismatch

BLOBS_FOLDER = "blobs"
TEMP_FOLDER = "tmp"
CORRUPT_FOLDER = "corrupt"
TEMP_SUFFIX = ".part"
MANIFEST_SUFFIX = ".blocks"

# Descriptors kept open for reads. Enough for the files that a few workers
# read at once, far below a default limit of 1024 descriptors.
OPEN_FILES_CACHED = 64

log = logging.getLogger("storage.blobstore")


class BlobStoreError(Exception):
    """A request the store cannot satisfy; the message says why."""


class UnknownFile(BlobStoreError):
    """No blob with this id."""


class RangeError(BlobStoreError):
    """Offset and length reach outside the blob."""


class LengthMismatch(BlobStoreError):
    """An upload received another number of bytes than announced."""


class HashMismatch(BlobStoreError):
    """An upload's content does not hash to the id it claimed."""


class NoSpace(BlobStoreError):
    """The disk has less free space than the announced upload needs."""


class CorruptBlob(BlobStoreError):
    """A stored blob's content no longer hashes to its id: the disk damaged it."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One stored blob as its directory entry shows it."""
    file_id: bytes
    size: int
    mtime: float        # unix time of its last use


def _check_id(file_id: bytes) -> None:
    if len(file_id) != ID_BYTES:
        raise ValueError(f"a file id is {ID_BYTES} bytes, got {len(file_id)}")


def _fsync_folder(folder: pathlib.Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: pathlib.Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


class PutWriter:
    """One upload in progress: pieces go to a temporary file and the hasher."""

    def __init__(self, store: BlobStore, file_id: bytes, length: int,
                 temp_path: pathlib.Path) -> None:
        self.file_id = file_id
        self.length = length
        self.received = 0
        self.temp_path = temp_path
        self._store = store
        self._hasher = FileHasher()
        self._fd: int | None = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def write(self, piece: bytes | memoryview) -> None:
        if self._fd is None:
            raise BlobStoreError(f"upload of {self.file_id.hex()} is already finished")
        view = memoryview(piece).cast("B")
        size = len(view)
        if self.received + size > self.length:
            raise LengthMismatch(f"{self.file_id.hex()}: {self.received + size} bytes "
                                 f"exceed the announced {self.length}")
        self._hasher.update(view)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.received += size

    def finish(self) -> None:
        """Make the blob durable under its id; raise (and delete) if it is wrong."""
        if self._fd is None:
            raise BlobStoreError(f"upload of {self.file_id.hex()} is already finished")
        try:
            if self.received != self.length:
                raise LengthMismatch(f"{self.file_id.hex()}: received {self.received} of "
                                     f"{self.length} announced bytes")
            manifest = self._hasher.manifest()
            digest = manifest.file_id()
            if digest != self.file_id:
                raise HashMismatch(f"content of {self.length} bytes hashes to {digest.hex()}, "
                                   f"not to the claimed id {self.file_id.hex()}")
            os.fsync(self._fd)
        except BaseException:
            self.abort()
            raise
        os.close(self._fd)
        self._fd = None
        self._store._install(self.file_id, self.temp_path, manifest)

    def abort(self) -> None:
        """Give up: close and delete the temporary file. Safe to repeat."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            try:
                self.temp_path.unlink()
            except FileNotFoundError:
                pass


class BlobStore:
    """The blobs of one storage node, under `root`."""

    def __init__(self, root: pathlib.Path, open_files_cached: int = OPEN_FILES_CACHED) -> None:
        self.root = pathlib.Path(root)
        self.blobs = self.root / BLOBS_FOLDER
        self.temp = self.root / TEMP_FOLDER
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.temp.mkdir(parents=True, exist_ok=True)
        self._open_files_cached = open_files_cached
        # file id -> (descriptor, size), least recently used first.
        self._open: collections.OrderedDict[bytes, tuple[int, int]] = collections.OrderedDict()
        self._lock = threading.RLock()
        self.temp_files_removed = self._remove_temp_files()

    def _remove_temp_files(self) -> int:
        removed = 0
        for leftover in self.temp.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info("removed %d leftover temporary file(s) from %s", removed, self.temp)
        return removed

    def path_of(self, file_id: bytes) -> pathlib.Path:
        _check_id(file_id)
        hex_id = file_id.hex()
        return self.blobs / hex_id[:2] / hex_id[2:]

    def has(self, file_id: bytes) -> bool:
        with self._lock:
            return file_id in self._open or self.path_of(file_id).is_file()

    def size(self, file_id: bytes) -> int:
        return self._descriptor(file_id)[1]

    def read(self, file_id: bytes, offset: int, length: int) -> bytes:
        with self._lock:    # so that no removal closes the descriptor mid-read
            fd, size = self._descriptor(file_id)
            if offset < 0 or length < 0 or offset + length > size:
                raise RangeError(f"{file_id.hex()}: bytes {offset}..{offset + length} are outside "
                                 f"the file of {size} bytes")
            data = os.pread(fd, length, offset)
        if len(data) != length:
            # The blob shrank on disk: someone else's doing, never ours.
            raise BlobStoreError(f"{file_id.hex()}: short read of {len(data)} of {length} bytes")
        return data

    def manifest(self, file_id: bytes) -> BlockManifest:
        """The blob's block manifest, checked against its id; recomputed (and
        kept) if its file is missing or wrong. CorruptBlob if the blob itself
        no longer hashes to its id."""
        _, size = self._descriptor(file_id)
        try:
            manifest = BlockManifest(size, self._manifest_path(file_id).read_bytes())
            manifest.check(file_id, size)
            return manifest
        except (OSError, ManifestMismatch) as fault:
            log.info("%s: recomputing its manifest (%s)", file_id.hex(), fault)
        manifest = self._compute_manifest(file_id)
        temp_path = self.temp / f"{file_id.hex()}-{secrets.token_hex(4)}{MANIFEST_SUFFIX}"
        _write_durably(temp_path, manifest.hashes)
        os.replace(temp_path, self._manifest_path(file_id))
        _fsync_folder(self._manifest_path(file_id).parent)
        return manifest

    def _compute_manifest(self, file_id: bytes) -> BlockManifest:
        hasher = FileHasher()
        with self._lock:
            fd, size = self._descriptor(file_id)
            for offset in range(0, size, BLOCK_BYTES):
                hasher.update(os.pread(fd, min(BLOCK_BYTES, size - offset), offset))
        manifest = hasher.manifest()
        if manifest.size != size or manifest.file_id() != file_id:
            raise CorruptBlob(f"{file_id.hex()}: the stored blob of {size} bytes no longer hashes to its id")
        return manifest

    def _manifest_path(self, file_id: bytes) -> pathlib.Path:
        blob = self.path_of(file_id)
        return blob.with_name(blob.name + MANIFEST_SUFFIX)

    def begin_put(self, file_id: bytes, length: int) -> PutWriter:
        _check_id(file_id)
        free = shutil.disk_usage(self.temp).free
        if length > free:
            raise NoSpace(f"{file_id.hex()}: {length} bytes announced, {free} free on disk")
        temp_path = self.temp / f"{file_id.hex()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
        return PutWriter(self, file_id, length, temp_path)

    def blob_count(self) -> int:
        return sum(1 for _ in self.list_blobs())

    def list_blobs(self) -> Iterator[BlobInfo]:
        """Every stored blob, in no particular order. A blob removed while
        the listing runs may or may not be in it."""
        for folder in os.scandir(self.blobs):
            if not folder.is_dir(follow_symlinks=False) or len(folder.name) != 2:
                continue
            for entry in os.scandir(folder.path):
                if entry.name.endswith(MANIFEST_SUFFIX):
                    continue
                try:
                    file_id = bytes.fromhex(folder.name + entry.name)
                    status = entry.stat(follow_symlinks=False)
                except (ValueError, OSError):
                    continue
                if len(file_id) == ID_BYTES:
                    yield BlobInfo(file_id, status.st_size, status.st_mtime)

    def touch(self, file_id: bytes) -> None:
        """Mark the blob used now (its mtime); nothing if it is gone."""
        with self._lock:
            try:
                os.utime(self.path_of(file_id))
            except FileNotFoundError:
                pass

    def delete_if_idle(self, file_id: bytes, cutoff: float) -> int | None:
        """Delete the blob if its last use is still before `cutoff` (unix
        time); its size if deleted, None if it was used since or is gone."""
        with self._lock:
            try:
                status = self.path_of(file_id).stat()
            except FileNotFoundError:
                return None
            if status.st_mtime >= cutoff:
                return None
            self._forget(file_id)
            self._manifest_path(file_id).unlink(missing_ok=True)
            self.path_of(file_id).unlink(missing_ok=True)
            return status.st_size

    def remove(self, file_id: bytes) -> int | None:
        """Delete the blob whatever its last use (a copy beyond its replica
        set); its size, or None if it was not here."""
        return self.delete_if_idle(file_id, float("inf"))

    def quarantine(self, file_id: bytes) -> bool:
        """Move a damaged blob to corrupt/, out of reach of every read; False
        if it was not here."""
        with self._lock:
            self._forget(file_id)
            corrupt = self.root / CORRUPT_FOLDER
            corrupt.mkdir(exist_ok=True)
            try:
                os.replace(self.path_of(file_id), corrupt / file_id.hex())
            except FileNotFoundError:
                return False
            self._manifest_path(file_id).unlink(missing_ok=True)
            _fsync_folder(self.path_of(file_id).parent)
            return True

    def _forget(self, file_id: bytes) -> None:
        cached = self._open.pop(file_id, None)
        if cached is not None:
            os.close(cached[0])

    def close(self) -> None:
        with self._lock:
            while self._open:
                _, (fd, _) = self._open.popitem()
                os.close(fd)

    def _install(self, file_id: bytes, temp_path: pathlib.Path, manifest: BlockManifest) -> None:
        final = self.path_of(file_id)
        manifest_temp = temp_path.with_suffix(MANIFEST_SUFFIX)
        _write_durably(manifest_temp, manifest.hashes)
        folder_existed = final.parent.is_dir()
        final.parent.mkdir(exist_ok=True)
        # Replacing an identical blob (two uploads of one file racing) is harmless.
        # The manifest goes first: a crash between the two leaves a manifest
        # without its blob, which nothing reads and the next put replaces.
        os.replace(manifest_temp, self._manifest_path(file_id))
        os.replace(temp_path, final)
        _fsync_folder(final.parent)
        if not folder_existed:
            _fsync_folder(self.blobs)

    def _descriptor(self, file_id: bytes) -> tuple[int, int]:
        with self._lock:
            cached = self._open.get(file_id)
            if cached is not None:
                self._open.move_to_end(file_id)
                return cached
            try:
                fd = os.open(self.path_of(file_id), os.O_RDONLY)
            except FileNotFoundError:
                raise UnknownFile(f"no file {file_id.hex()} on this node") from None
            entry = (fd, os.fstat(fd).st_size)
            self._open[file_id] = entry
            if len(self._open) > self._open_files_cached:
                _, (oldest_fd, _) = self._open.popitem(last=False)
                os.close(oldest_fd)
            return entry
