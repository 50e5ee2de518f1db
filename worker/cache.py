"""The worker's on-disk block cache of input files, shared by every chunk (doc/worker-fuse.md).

Rules:
- Files are cached in BLOCK_BYTES blocks: a sparse CACHE/partial/<hex id> plus
  a set of present blocks, renamed to CACHE/complete/<hex id> (0o444) once
  every block is present. CACHE is the worker's alone (0o700).
- No byte is served from a block that has not been checked against the file's
  manifest (worker/manifests.py) in this process: a fetched block is checked
  before it is written (CorruptBlock names the file, the block and the source;
  nothing is kept), and a block read back from disk is checked on its first
  read, then marked in `checked`. A complete file's inode identity (inode,
  size, mtime, ctime) is compared on every read: if anything wrote to it, every
  mark is dropped and each block is checked again. A block that fails on disk
  deletes the file and its reads raise CorruptFile (new reads too, while it
  stays pinned).
- One lock guards all state and is never held across a fetch, a hash or a
  wait; waiters sleep on one Condition. A block is fetched by one thread only.
- Least recently used files that are neither pinned nor being filled are
  evicted to stay under capacity_bytes; if none is left, the cache overshoots.
- Blocks after a sequential reader are fetched ahead by worker/readahead.py
  (Readahead, which BlockCache inherits), through the same fetch path.
- On start partial files are deleted; complete ones are kept, with nothing
  marked checked (writes are not fsynced: a power cut may leave holes).
"""
from __future__ import annotations

import logging
import os
import pathlib
import shutil
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from uds.wire import ids
from uds.wire.ids import BlockManifest, id_from_hex

from .blocks import BlockSource, CorruptBlock, ShortBlock
from .manifests import ManifestStore, block_is_valid
from .readahead import READAHEAD_BLOCKS, READAHEAD_THREADS, Readahead

log = logging.getLogger(__name__)

BLOCK_BYTES = ids.BLOCK_BYTES  # 1 MiB: the unit of verification; 8 FUSE reads per fetch
COMPLETE_IN_FLIGHT = 4  # block fetches in flight for ensure_complete
MAX_IDLE_OPEN_FILES = 64  # descriptors kept open for complete files nobody is reading


class CacheError(Exception):
    """The cache could not serve a request."""


class CorruptFile(CacheError):
    """A block of the cached copy on the worker's disk no longer matches its
    hash (something wrote to it); the copy has been deleted."""


class CopyWithdrawn(CorruptFile):
    """A read of a file whose cached copy failed its check while its chunks still
    run: they all fail alike, and the next user fetches it afresh."""


class CacheClosed(CacheError):
    """The cache was closed while the request was in progress."""


@dataclass(frozen=True)
class CacheCounters:
    bytes_fetched: int
    bytes_served_from_cache: int
    evictions: int
    corrupt_files: int
    disk_bytes: int
    capacity_bytes: int
    corrupt_blocks: int = 0  # fetched blocks that failed their check: never kept
    blocks_checked_on_disk: int = 0  # blocks read back from disk and checked


@dataclass(eq=False)
class _CachedFile:
    file_id: bytes
    size: int
    path: pathlib.Path
    fd: int
    present: set[int]
    disk_bytes: int = 0  # bytes of present blocks
    complete: bool = False  # lives in complete/
    users: int = 0  # threads using fd; it is closed only when this is 0
    retired: bool = False  # no longer in the cache (evicted or corrupt)
    corrupt: bool = False
    fetching: set[int] = field(default_factory=set)
    checked: set[int] = field(default_factory=set)  # blocks whose bytes on disk are known good
    checking: set[int] = field(default_factory=set)  # blocks being read back and checked right now
    identity: tuple[int, ...] | None = None  # a complete file's inode as last checked
    generation: int = 0  # bumped when `identity` changes: older checks no longer count
    next_offset: int = -1  # where the previous read ended, to spot sequential readers
    run_bytes: int = 0  # bytes read in the current sequential run
    readahead_upto: int = -1  # highest block handed to read-ahead

    @property
    def block_count(self) -> int:
        return -(-self.size // BLOCK_BYTES)

    def block_length(self, index: int) -> int:
        return min(BLOCK_BYTES, self.size - index * BLOCK_BYTES)


class BlockCache(Readahead):
    def __init__(self, root: pathlib.Path | str, source: BlockSource, capacity_bytes: int,
                 readahead_blocks: int = READAHEAD_BLOCKS) -> None:
        self.root = pathlib.Path(root)
        self._partial_dir = self.root / "partial"
        self._complete_dir = self.root / "complete"
        self._source = source
        self._capacity_bytes = capacity_bytes
        self._readahead_blocks = readahead_blocks
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._manifests = ManifestStore(self.root / "manifests", source)
        self._files: dict[bytes, _CachedFile] = {}
        self._lru: OrderedDict[bytes, None] = OrderedDict()  # every entry, least recently used first
        self._idle: OrderedDict[bytes, _CachedFile] = OrderedDict()  # complete, fd open, no users
        self._pins: dict[bytes, int] = {}
        self._poisoned: set[bytes] = set()
        self._added: dict[bytes, int] = {}
        self._removed: set[bytes] = set()
        self._disk_bytes = 0
        self._readahead_pending = 0
        self._over_capacity_logged = False
        self._closed = False
        self._bytes_fetched = self._bytes_served_from_cache = self._evictions = self._corrupt_files = 0
        self._corrupt_blocks = self._blocks_checked_on_disk = 0
        self._readahead_pool = ThreadPoolExecutor(READAHEAD_THREADS, thread_name_prefix="cache-readahead")
        self._bulk_pool = ThreadPoolExecutor(COMPLETE_IN_FLIGHT, thread_name_prefix="cache-complete")
        self._restore()

    # ----- public API -------------------------------------------------------------------------

    def read(self, file_id: bytes, size: int, offset: int, length: int) -> tuple[bytes, int]:
        """Up to `length` bytes at `offset`, and the bytes this read made the cache fetch
        (its own fetches plus the read-ahead it started)."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        length = min(length, size - offset)
        if length <= 0:
            return b"", 0
        first, last = offset // BLOCK_BYTES, (offset + length - 1) // BLOCK_BYTES
        entry = self._acquire(file_id, size)
        try:
            manifest = self._manifests.get(file_id, size)
            fetched = 0
            from_cache = length
            if not entry.complete:
                with self._lock:
                    missing = [i for i in range(first, last + 1) if i not in entry.present]
                from_cache -= sum(_overlap(offset, length, i) for i in missing)
                fetched += self._schedule_readahead(entry, manifest, offset, length, last)
                for index in missing:
                    fetched += self._fetch_block(entry, manifest, index)
            data = None
            for index in range(first, last + 1):
                block = self._check_on_disk(entry, manifest, index)
                if block is not None and first == last:  # serve the very bytes that were checked
                    start = offset - index * BLOCK_BYTES
                    data = block[start:start + length]
            if data is None:
                data = os.pread(entry.fd, length, offset)
            with self._lock:
                self._bytes_served_from_cache += from_cache
            return data, fetched
        finally:
            self._release(entry)

    def ensure_complete(self, file_id: bytes, size: int) -> pathlib.Path:
        """Fetch every missing block, verify, and return the complete file's path.
        Pin the file first if the path must outlive the next eviction."""
        entry = self._acquire(file_id, size)
        try:
            manifest = self._manifests.get(file_id, size)
            with self._lock:
                missing = [i for i in range(entry.block_count) if i not in entry.present]
            futures = [self._bulk_pool.submit(self._fetch_block, entry, manifest, i) for i in missing]
            wait(futures)  # all of them, even after a failure: they use entry.fd
            for future in futures:
                future.result()
            for index in range(entry.block_count):
                self._check_on_disk(entry, manifest, index)
            with self._lock:
                self._complete_locked(entry)
                self._check_usable(entry)
                if not entry.complete:  # cannot happen to a file in use; never return a partial path
                    raise CacheError(f"{entry.file_id.hex()} left the cache before it was complete")
                return entry.path
        finally:
            self._release(entry)

    def pin(self, file_id: bytes) -> None:
        """Keep the file from eviction until a matching unpin (refcounted)."""
        with self._lock:
            self._pins[file_id] = self._pins.get(file_id, 0) + 1

    def unpin(self, file_id: bytes) -> None:
        with self._lock:
            count = self._pins.get(file_id, 0)
            if count <= 0:
                log.warning("unpin of %s, which is not pinned", file_id.hex())
                return
            if count > 1:
                self._pins[file_id] = count - 1
                return
            del self._pins[file_id]
            self._poisoned.discard(file_id)  # the next user of a corrupt file gets a fresh fetch
            self._evict_locked()

    def drain_changes(self) -> tuple[list[tuple[bytes, int]], list[bytes]]:
        """Complete files added and removed since the previous call (for heartbeats)."""
        with self._lock:
            added, removed = list(self._added.items()), sorted(self._removed)
            self._added, self._removed = {}, set()
        return added, removed

    def complete_files(self) -> list[tuple[bytes, int]]:
        with self._lock:
            entries = (self._files[file_id] for file_id in self._lru)
            return [(entry.file_id, entry.size) for entry in entries if entry.complete]

    def counters(self) -> CacheCounters:
        with self._lock:
            return CacheCounters(self._bytes_fetched, self._bytes_served_from_cache, self._evictions,
                                 self._corrupt_files, self._disk_bytes, self._capacity_bytes,
                                 self._corrupt_blocks, self._blocks_checked_on_disk)

    def close(self) -> None:
        """Stop read-ahead and wake every waiter with CacheClosed. Idempotent."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()
        self._readahead_pool.shutdown(wait=True)  # queued tasks see _closed and only drop their claims
        self._bulk_pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for entry in self._files.values():
                if entry.users == 0:
                    _close_fd(entry)

    # ----- entries ----------------------------------------------------------------------------

    def _restore(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # the worker's alone: no chunk may read or plant a cached file
        shutil.rmtree(self._partial_dir, ignore_errors=True)
        self._partial_dir.mkdir(parents=True)
        self._complete_dir.mkdir(parents=True, exist_ok=True)
        found = []
        for path in self._complete_dir.iterdir():
            try:
                file_id = id_from_hex(path.name)
                status = path.lstat()
            except (ValueError, OSError):
                log.warning("removing unexpected cache file %s", path)
                path.unlink(missing_ok=True)
                continue
            found.append((status.st_mtime, file_id, status.st_size, path))
        with self._lock:
            for _, file_id, size, path in sorted(found):  # oldest first: LRU order by completion time
                entry = _CachedFile(file_id, size, path, fd=-1, present=set(), disk_bytes=size, complete=True)
                entry.present.update(range(entry.block_count))
                self._files[file_id] = entry
                self._lru[file_id] = None
                self._disk_bytes += size
            self._evict_locked()
            self._manifests.keep_only(set(self._files))
        log.info("block cache at %s: %d complete files, %d bytes", self.root, len(found), self._disk_bytes)

    def _acquire(self, file_id: bytes, size: int) -> _CachedFile:
        with self._lock:
            self._check_open()
            if file_id in self._poisoned:
                raise CopyWithdrawn(f"the worker's cached copy of {file_id.hex()} failed its check: "
                                    f"no reads of it until its chunks end")
            entry = self._files.get(file_id)
            if entry is not None and entry.size != size:
                raise CacheError(f"{file_id.hex()} is {entry.size} bytes in the cache, asked as {size}")
            if entry is not None and entry.fd < 0:
                try:
                    entry.fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
                except OSError as fault:  # deleted behind our back: forget it and fetch again
                    log.warning("cache file %s is unusable (%s): fetching it again", entry.path, fault)
                    self._discard_locked(entry, corrupt=False)
                    entry = None
            if entry is None:
                path = self._partial_dir / file_id.hex()
                path.unlink(missing_ok=True)  # whatever is there, ours or not, is not opened
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                os.ftruncate(fd, size)  # sparse: blocks take space only once written
                entry = self._files[file_id] = _CachedFile(file_id, size, path, fd, present=set())
                self._lru[file_id] = None
            entry.users += 1
            self._idle.pop(file_id, None)
            self._lru.move_to_end(file_id)
            return entry

    def _release(self, entry: _CachedFile) -> None:
        with self._lock:
            entry.users -= 1
            if entry.users > 0:
                return
            if entry.retired or self._closed:
                _close_fd(entry)
            elif not entry.complete and entry.disk_bytes == 0:  # every fetch failed: keep nothing
                self._discard_locked(entry, corrupt=False)
            elif entry.complete and entry.fd >= 0:
                self._idle[entry.file_id] = entry
                while len(self._idle) > MAX_IDLE_OPEN_FILES:
                    _close_fd(self._idle.popitem(last=False)[1])
            self._evict_locked()  # a file in use could not be evicted until now

    def _discard_locked(self, entry: _CachedFile, corrupt: bool) -> None:
        entry.retired, entry.corrupt = True, corrupt
        if self._files.get(entry.file_id) is entry:
            del self._files[entry.file_id]
        self._idle.pop(entry.file_id, None)
        self._lru.pop(entry.file_id, None)
        if entry.complete and self._added.pop(entry.file_id, None) is None:  # the balancer knew of it
            self._removed.add(entry.file_id)
        self._disk_bytes -= entry.disk_bytes
        entry.path.unlink(missing_ok=True)  # under the lock, so a new entry's file is never hit
        self._manifests.forget(entry.file_id)
        if entry.users == 0:
            _close_fd(entry)
        if corrupt:
            self._corrupt_files += 1
            if self._pins.get(entry.file_id):
                self._poisoned.add(entry.file_id)
        self._changed.notify_all()

    def _evict_locked(self) -> None:
        if self._disk_bytes <= self._capacity_bytes:
            self._over_capacity_logged = False
            return
        for file_id in list(self._lru):
            entry = self._files[file_id]
            if self._pins.get(file_id) or (entry.users and not entry.complete):
                continue  # pinned, or being filled right now
            self._discard_locked(entry, corrupt=False)
            self._evictions += 1
            if self._disk_bytes <= self._capacity_bytes:
                return
        if not self._over_capacity_logged:
            self._over_capacity_logged = True
            log.warning("block cache holds %d bytes, over its capacity of %d: the rest is pinned or in use",
                        self._disk_bytes, self._capacity_bytes)

    def _check_open(self) -> None:
        if self._closed:
            raise CacheClosed("the block cache is closed")

    def _check_usable(self, entry: _CachedFile) -> None:
        self._check_open()
        if entry.corrupt:
            raise CorruptFile(f"the worker's cached copy of {entry.file_id.hex()} failed its check: deleted")

    # ----- fetching ---------------------------------------------------------------------------

    def _fetch_block(self, entry: _CachedFile, manifest: BlockManifest | None, index: int) -> int:
        """Make block `index` present, fetching it or waiting for the thread that is.
        Returns the bytes this call fetched."""
        with self._lock:
            while True:
                self._check_usable(entry)
                if index in entry.present:
                    return 0
                if index not in entry.fetching:
                    entry.fetching.add(index)
                    break
                self._changed.wait()
        return self._fetch_claimed(entry, manifest, index)

    def _fetch_claimed(self, entry: _CachedFile, manifest: BlockManifest | None, index: int) -> int:
        """Fetch, check and store a block this thread has claimed in `entry.fetching`."""
        offset, length = index * BLOCK_BYTES, entry.block_length(index)
        data = None
        try:
            data = self._source.fetch(entry.file_id, offset, length)
            if len(data) != length:
                raise ShortBlock(f"{entry.file_id.hex()} block {index}: {len(data)} bytes, expected {length}")
            if not block_is_valid(entry.file_id, entry.size, manifest, index, data):
                with self._lock:
                    self._corrupt_blocks += 1
                raise CorruptBlock(f"{entry.file_id.hex()} block {index} from {self._source.where()} "
                                   f"does not match its hash: not kept, not served")
            if os.pwrite(entry.fd, data, offset) != length:
                raise OSError(f"short write to {entry.path}")
        except BaseException:
            data = None
            raise
        finally:
            with self._lock:
                entry.fetching.discard(index)
                if data is not None:
                    self._bytes_fetched += length
                    if not entry.retired:
                        entry.present.add(index)
                        entry.checked.add(index)
                        entry.disk_bytes += length
                        self._disk_bytes += length
                        self._complete_locked(entry)
                        self._evict_locked()
                self._changed.notify_all()
        return length

    # ----- verification -----------------------------------------------------------------------

    def _complete_locked(self, entry: _CachedFile) -> None:
        """Once every block is present (each was checked on arrival), move the file to complete/."""
        if entry.complete or entry.retired or len(entry.present) != entry.block_count:
            return
        complete_path = self._complete_dir / entry.file_id.hex()
        os.fchmod(entry.fd, 0o444)
        os.rename(entry.path, complete_path)
        entry.complete, entry.path = True, complete_path
        entry.identity = _identity(entry.fd)
        self._removed.discard(entry.file_id)
        self._added[entry.file_id] = entry.size
        self._changed.notify_all()

    def _check_on_disk(self, entry: _CachedFile, manifest: BlockManifest | None,
                       index: int) -> bytes | None:
        """Make sure block `index` on disk is good before a byte of it is served: the
        block's bytes if this call read and checked them, None if it was known good."""
        if entry.complete:
            identity = _identity(entry.fd)
            with self._lock:
                if identity != entry.identity:  # written to since it was checked, or never checked
                    if entry.identity is not None:
                        log.error("cached file %s changed on disk: checking every block again", entry.path)
                    entry.identity, entry.checked = identity, set()
                    entry.generation += 1
        with self._lock:
            while True:  # one thread checks a block; concurrent readers of it wait for the answer
                self._check_usable(entry)
                if index in entry.checked:
                    return None
                if index not in entry.checking:
                    entry.checking.add(index)
                    break
                self._changed.wait()
            generation = entry.generation
        try:
            block = os.pread(entry.fd, entry.block_length(index), index * BLOCK_BYTES)
            valid = block_is_valid(entry.file_id, entry.size, manifest, index, block)
        finally:
            with self._lock:
                entry.checking.discard(index)
                self._changed.notify_all()
        with self._lock:
            self._blocks_checked_on_disk += 1
            if valid:
                if entry.generation == generation:
                    entry.checked.add(index)
                return block
            log.error("cached file %s block %d does not match its hash: deleted", entry.path, index)
            if not entry.retired:
                self._discard_locked(entry, corrupt=True)
        raise CorruptFile(f"the worker's cached copy of {entry.file_id.hex()} block {index} does not "
                          f"match its hash (written to on the worker's disk): deleted")


def _identity(fd: int) -> tuple[int, ...]:
    status = os.fstat(fd)
    return status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns


def _overlap(offset: int, length: int, index: int) -> int:
    start, end = index * BLOCK_BYTES, (index + 1) * BLOCK_BYTES
    return max(0, min(end, offset + length) - max(start, offset))


def _close_fd(entry: _CachedFile) -> None:
    if entry.fd >= 0:
        os.close(entry.fd)
        entry.fd = -1
