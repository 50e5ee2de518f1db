"""The block manifests of the files in the worker's cache, and the check of one
block against its file id (doc/worker-fuse.md, "Verification").

Rules:
- A manifest is used only after it has been checked against the file id and
  size: when it arrives from the source and again whenever it is read back
  from CACHE/manifests/<hex id>, so a damaged or planted manifest file is
  thrown away and fetched again, never believed.
- A file of at most one block has no manifest: its only block is checked
  against the id itself.
- Manifest files are written under a temporary name and renamed; they need no
  fsync, since a torn one fails its check and is fetched again.
- One fetch per file at a time; the lock for it is never held across another
  file's fetch.
"""
from __future__ import annotations

import logging
import os
import pathlib
import secrets
import threading

from uds.wire.ids import (
    BLOCK_BYTES, BlockManifest, ManifestMismatch, block_hash, block_length, file_id_of_blocks, id_from_hex,
)

from .blocks import BlockSource, CorruptManifest

log = logging.getLogger(__name__)


def block_is_valid(file_id: bytes, size: int, manifest: BlockManifest | None, index: int,
                   block: bytes | memoryview) -> bool:
    """Whether `block` holds exactly the bytes of block `index` of the file."""
    if manifest is not None:
        return manifest.block_matches(index, block)
    return len(block) == block_length(size, index) and file_id_of_blocks(size, block_hash(block)) == file_id


class ManifestStore:
    """Checked manifests by file id, in memory and under `root`."""

    def __init__(self, root: pathlib.Path, source: BlockSource) -> None:
        self.root = root
        self._source = source
        self._lock = threading.Lock()
        self._manifests: dict[bytes, BlockManifest] = {}
        self._fetching: dict[bytes, threading.Lock] = {}
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob("*.tmp*"):
            leftover.unlink(missing_ok=True)

    def get(self, file_id: bytes, size: int) -> BlockManifest | None:
        """The file's checked manifest; None for a file of at most one block.
        Raises what the source raises, or CorruptManifest."""
        if size <= BLOCK_BYTES:
            return None
        with self._lock:
            manifest = self._manifests.get(file_id)
            if manifest is not None and manifest.size == size:
                return manifest
            fetch_lock = self._fetching.setdefault(file_id, threading.Lock())
        with fetch_lock:
            with self._lock:
                manifest = self._manifests.get(file_id)
            if manifest is None or manifest.size != size:
                manifest = self._load(file_id, size) or self._fetch(file_id, size)
            with self._lock:
                self._manifests[file_id] = manifest
                self._fetching.pop(file_id, None)
            return manifest

    def forget(self, file_id: bytes) -> None:
        """Drop the manifest of a file that left the cache."""
        with self._lock:
            self._manifests.pop(file_id, None)
        (self.root / file_id.hex()).unlink(missing_ok=True)

    def keep_only(self, file_ids: set[bytes]) -> None:
        """Delete manifest files of files the cache no longer holds (at start)."""
        for path in self.root.iterdir():
            try:
                keep = id_from_hex(path.name) in file_ids
            except ValueError:
                keep = False
            if not keep:
                path.unlink(missing_ok=True)

    def _load(self, file_id: bytes, size: int) -> BlockManifest | None:
        path = self.root / file_id.hex()
        try:
            manifest = BlockManifest(size, path.read_bytes())
            manifest.check(file_id, size)
            return manifest
        except FileNotFoundError:
            return None
        except (OSError, ManifestMismatch) as fault:
            log.warning("cached manifest of %s is unusable (%s): fetching it again", file_id.hex(), fault)
            path.unlink(missing_ok=True)
            return None

    def _fetch(self, file_id: bytes, size: int) -> BlockManifest:
        manifest = self._source.manifest(file_id)
        try:
            manifest.check(file_id, size)
        except ManifestMismatch as fault:
            raise CorruptManifest(f"{fault} (from {self._source.where()})") from None
        path = self.root / file_id.hex()
        temporary = path.with_name(f"{path.name}.tmp{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(manifest.hashes)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(temporary, path)
        return manifest
