"""Immutable blobs on disk, addressed by their file id.

Layout under the data folder:

    blobs/ab/cdef0123...         a blob: its id in hex, the first 2 characters as folder
    blobs/ab/cdef0123....blocks  its manifest: the 32-byte hash of each 1 MiB block
    tmp/<id>-<random>.part       an upload (or a manifest) in progress

Rules: a file appears under blobs/ only complete, fsynced, and with content
that hashes to its name (write to tmp/, fsync, check, rename, fsync the
folder), so a crash at any moment leaves either nothing or the whole blob.
The manifest is computed in the same pass that checks the upload and is
renamed into place just before its blob, so a stored blob has one; a blob
found without one (or with one that does not hash to the id) gets it
recomputed from its content on the first request. Anything in tmp/ at
start-up is a crashed upload and is deleted. Blobs never change once
stored, which is why open descriptors and sizes can be cached.
"""
from __future__ import annotations

import collections
import logging
import os
import pathlib
import secrets
import shutil

from uds.wire.ids import BLOCK_BYTES, ID_BYTES, BlockManifest, FileHasher, ManifestMismatch

BLOBS_FOLDER = "blobs"
TEMP_FOLDER = "tmp"
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
        return file_id in self._open or self.path_of(file_id).is_file()

    def size(self, file_id: bytes) -> int:
        return self._descriptor(file_id)[1]

    def read(self, file_id: bytes, offset: int, length: int) -> bytes:
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
        fd, size = self._descriptor(file_id)
        hasher = FileHasher()
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
        return sum(1 for folder in self.blobs.iterdir() for path in folder.iterdir()
                   if not path.name.endswith(MANIFEST_SUFFIX))

    def close(self) -> None:
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
