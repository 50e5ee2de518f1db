"""The worker's FUSE filesystem: one read-only mount for the worker's lifetime.

Rules:
- The root lists one directory per running chunk attempt; each holds that
  chunk's inputs, by the names the job gave them, as read-only regular files.
  Every (directory, name) pair has its own inode, so reads can be counted per
  chunk.
- Every handler runs under llfuse's global lock; `read` releases it while the
  cache works, so lookups and other reads proceed during a fetch.
- Every handler turns an unexpected exception into FUSEError(EIO) and one log
  line: llfuse stops its main loop on any other exception, leaving a dead mount.
- A read the cache cannot serve with checked bytes (a corrupt block, a storage
  node that does not answer) is EIO to the program and a fault of its chunk
  directory, naming the input, its id and the cause (which names the storage
  node): the worker reports the attempt as an infrastructure failure, not as
  the program's exit code (`chunk_faults`).
- A chunk directory may carry a first-read notice: called once, by the
  first read of any of its inputs, with neither lock held (it only hands
  a fact to the worker's loop). Later reads pay one attribute test for it.
- The tree has its own lock, so the worker's main thread may add and remove
  chunks while handlers run. It is never held across a cache read or a wait.
- llfuse keeps its session in module globals: one FuseMount per process at a time.
"""
from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import pathlib
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import llfuse

from .blocks import BlockSourceError
from .cache import BlockCache, CacheError, CopyWithdrawn

log = logging.getLogger(__name__)

FILE_TIMEOUT_S = 3600.0  # inputs never change while their directory exists
DIRECTORY_TIMEOUT_S = 1.0  # chunk directories come and go; removal also invalidates the entry
ROOT_TIMEOUT_S = 1.0
MAX_FUSE_READ_BYTES = 128 * 1024  # the kernel never asks for more in one read: advertised as st_blksize
JOIN_TIMEOUT_S = 10.0
UNMOUNT_TIMEOUT_S = 10.0
MOUNT_OPTIONS = frozenset({"fsname=uds", "subtype=uds", "ro", "default_permissions", "noatime"})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT
STALE_ERRNOS = frozenset({errno.ENOTCONN, errno.ESTALE, errno.ECONNABORTED})

_process_mount_lock = threading.Lock()  # llfuse is process-global


class MountError(Exception):
    """The filesystem could not be mounted or unmounted."""


@dataclass(eq=False)
class _ChunkDir:
    inode: int
    name: bytes
    created_ns: int
    files: dict[bytes, "_InputFile"] = field(default_factory=dict)
    removed: bool = False
    lookups: int = 0
    bytes_read: int = 0
    bytes_fetched: int = 0
    faults: list[tuple[bool, str]] = field(default_factory=list)  # (an echo?, why a read failed)
    first_read_notice: Callable[[], None] | None = None  # taken by the first read


MAX_FAULTS_KEPT = 8  # per chunk directory: the first few say what went wrong


@dataclass(eq=False)
class _InputFile:
    inode: int
    chunk: _ChunkDir
    name: bytes
    file_id: bytes
    size: int
    lookups: int = 0


def _guarded(handler):
    """Answer a request's unexpected failure with EIO instead of stopping llfuse's loop."""
    @functools.wraps(handler)
    def run(self, *args):
        try:
            return handler(self, *args)
        except llfuse.FUSEError:
            raise
        except (CacheError, BlockSourceError) as error:
            log.warning("fuse %s%r: %s: %s", handler.__name__, args[:2], type(error).__name__, error)
            raise llfuse.FUSEError(errno.EIO) from None
        except Exception as error:
            log.error("fuse %s%r failed: %r", handler.__name__, args[:2], error,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            raise llfuse.FUSEError(errno.EIO) from None
    return run


def _never_raises(handler):
    """For handlers that answer no request (forget, destroy): they may not raise at all."""
    @functools.wraps(handler)
    def run(self, *args):
        try:
            return handler(self, *args)
        except BaseException as error:
            log.error("fuse %s failed: %r", handler.__name__, error)
    return run


def _timed_read(handler):
    """Give the mount's `observe_read` the seconds each read took (the
    worker's FUSE read histogram): two clock reads and one call."""
    @functools.wraps(handler)
    def run(self, *args):
        observe = self.observe_read
        if observe is None:
            return handler(self, *args)
        started = time.monotonic()
        try:
            return handler(self, *args)
        finally:
            observe(time.monotonic() - started)
    return run


def _check_name(name: str) -> bytes:
    encoded = os.fsencode(name)
    if not encoded or encoded in (b".", b"..") or b"/" in encoded or b"\0" in encoded or len(encoded) > 255:
        raise ValueError(f"not a usable file name: {name!r}")
    return encoded


class _Operations(llfuse.Operations):
    observe_read = None     # seconds per read -> None (FuseMount.observe_reads)

    def __init__(self, cache: BlockCache) -> None:
        super().__init__()
        self._cache = cache
        self._lock = threading.Lock()  # the tree; never held across a cache read or a wait
        self._inodes = itertools.count(llfuse.ROOT_INODE + 1)
        self._handles = itertools.count(1)
        self._chunks: dict[bytes, _ChunkDir] = {}  # live chunk directories by name
        self._nodes: dict[int, _ChunkDir | _InputFile] = {}  # every inode the kernel may still use
        self._open_files: dict[int, _InputFile] = {}
        self._open_dirs: dict[int, list[tuple[bytes, _ChunkDir | _InputFile]]] = {}
        self._uid, self._gid = os.getuid(), os.getgid()
        self._started_ns = time.time_ns()

    # ----- the worker's side ------------------------------------------------------------------

    def add_chunk(self, name: bytes, inputs: dict[str, tuple[bytes, int]],
                  first_read_notice: Callable[[], None] | None = None) -> None:
        checked = {_check_name(input_name): (file_id, size) for input_name, (file_id, size) in inputs.items()}
        with self._lock:  # the cache's lock is taken inside this one, never the other way round
            if name in self._chunks:
                raise ValueError(f"chunk directory {os.fsdecode(name)!r} exists")
            chunk = _ChunkDir(next(self._inodes), name, time.time_ns(), first_read_notice=first_read_notice)
            for input_name, (file_id, size) in checked.items():
                chunk.files[input_name] = _InputFile(next(self._inodes), chunk, input_name, file_id, size)
                self._cache.pin(file_id)  # before the program can see it
            self._nodes[chunk.inode] = chunk
            self._nodes.update((node.inode, node) for node in chunk.files.values())
            self._chunks[name] = chunk

    def remove_chunk(self, name: bytes) -> tuple[int, int]:
        with self._lock:
            chunk = self._chunks.pop(name)
            chunk.removed = True
            for node in [chunk, *chunk.files.values()]:
                if node.lookups <= 0:
                    self._nodes.pop(node.inode, None)
            counters = chunk.bytes_read, chunk.bytes_fetched
        for node in chunk.files.values():
            self._cache.unpin(node.file_id)
        return counters

    def chunk_counters(self, name: bytes) -> tuple[int, int]:
        with self._lock:
            chunk = self._chunks[name]
            return chunk.bytes_read, chunk.bytes_fetched

    def chunk_faults(self, name: bytes) -> list[str]:
        with self._lock:
            return [text for _, text in sorted(self._chunks[name].faults, key=lambda fault: fault[0])]

    def _record_fault(self, node: _InputFile, error: Exception) -> None:
        # an echo of the fault that withdrew a cached copy, from a concurrent read, sorts last
        text = f"input {os.fsdecode(node.name)!r} ({node.file_id.hex()}): {error}"
        fault = (isinstance(error, CopyWithdrawn), text)
        with self._lock:
            faults = node.chunk.faults
            if fault not in faults and len(faults) < MAX_FAULTS_KEPT:
                faults.append(fault)

    # ----- handlers ---------------------------------------------------------------------------

    def _attributes(self, node: _ChunkDir | _InputFile | None) -> llfuse.EntryAttributes:
        attributes = llfuse.EntryAttributes()
        attributes.st_uid, attributes.st_gid = self._uid, self._gid
        if node is None:
            attributes.st_ino, attributes.st_mode = llfuse.ROOT_INODE, stat.S_IFDIR | 0o555
            attributes.st_nlink = 2
            attributes.attr_timeout = attributes.entry_timeout = ROOT_TIMEOUT_S
            created_ns = self._started_ns
        elif isinstance(node, _ChunkDir):
            attributes.st_ino, attributes.st_mode, attributes.st_nlink = node.inode, stat.S_IFDIR | 0o555, 2
            attributes.attr_timeout = attributes.entry_timeout = DIRECTORY_TIMEOUT_S
            created_ns = node.created_ns
        else:
            attributes.st_ino, attributes.st_mode, attributes.st_nlink = node.inode, stat.S_IFREG | 0o444, 1
            attributes.st_size, attributes.st_blocks = node.size, -(-node.size // 512)
            attributes.attr_timeout = attributes.entry_timeout = FILE_TIMEOUT_S
            created_ns = node.chunk.created_ns
        attributes.st_blksize = MAX_FUSE_READ_BYTES
        attributes.st_atime_ns = attributes.st_mtime_ns = attributes.st_ctime_ns = created_ns
        return attributes

    def _node(self, inode: int) -> _ChunkDir | _InputFile | None:
        if inode == llfuse.ROOT_INODE:
            return None
        node = self._nodes.get(inode)
        if node is None:
            raise llfuse.FUSEError(errno.ENOENT)
        return node

    @_guarded
    def lookup(self, parent_inode: int, name: bytes, ctx=None) -> llfuse.EntryAttributes:
        with self._lock:
            parent = self._node(parent_inode)
            if isinstance(parent, _InputFile):
                raise llfuse.FUSEError(errno.ENOTDIR)
            if name == b".":
                found = parent
            elif name == b"..":
                found = None  # the root
            elif parent is None:
                found = self._chunks.get(name)
                if found is None:
                    raise llfuse.FUSEError(errno.ENOENT)
            else:
                found = None if parent.removed else parent.files.get(name)
                if found is None:
                    raise llfuse.FUSEError(errno.ENOENT)
            if found is not None:
                found.lookups += 1  # each successful lookup is one the kernel will forget
            return self._attributes(found)

    @_guarded
    def getattr(self, inode: int, ctx=None) -> llfuse.EntryAttributes:
        with self._lock:
            return self._attributes(self._node(inode))

    @_guarded
    def opendir(self, inode: int, ctx=None) -> int:
        with self._lock:
            node = self._node(inode)
            if node is None:
                entries = sorted((chunk.name, chunk) for chunk in self._chunks.values())
            elif isinstance(node, _ChunkDir) and not node.removed:
                entries = sorted(node.files.items())
            elif isinstance(node, _ChunkDir):
                raise llfuse.FUSEError(errno.ENOENT)
            else:
                raise llfuse.FUSEError(errno.ENOTDIR)
            handle = next(self._handles)
            self._open_dirs[handle] = entries  # a snapshot, so offsets stay stable while chunks come and go
            return handle

    @_guarded
    def readdir(self, handle: int, offset: int):
        with self._lock:
            entries = self._open_dirs[handle]
            # a list, not a generator: an error raised while llfuse iterates would escape _guarded
            return [(name, self._attributes(node), index + 1)
                    for index, (name, node) in enumerate(entries) if index >= offset]

    @_guarded
    def releasedir(self, handle: int) -> None:
        with self._lock:
            self._open_dirs.pop(handle, None)

    @_guarded
    def open(self, inode: int, flags: int, ctx=None) -> int:
        if flags & WRITE_FLAGS:
            raise llfuse.FUSEError(errno.EROFS)
        with self._lock:
            node = self._node(inode)
            if not isinstance(node, _InputFile):
                raise llfuse.FUSEError(errno.EISDIR)
            if node.chunk.removed:
                raise llfuse.FUSEError(errno.ENOENT)
            handle = next(self._handles)
            self._open_files[handle] = node
            return handle

    @_guarded
    @_timed_read
    def read(self, handle: int, offset: int, length: int) -> bytes:
        with self._lock:
            node = self._open_files.get(handle)
            notice = None
            if node is not None and node.chunk.first_read_notice is not None:
                notice, node.chunk.first_read_notice = node.chunk.first_read_notice, None
        if node is None:
            raise llfuse.FUSEError(errno.EBADF)
        if notice is not None:
            with llfuse.lock_released:
                notice()
        try:
            with llfuse.lock_released:  # a fetch may take milliseconds: let other requests run
                data, fetched = self._cache.read(node.file_id, node.size, offset, length)
        except (CacheError, BlockSourceError) as error:
            self._record_fault(node, error)
            raise
        with self._lock:
            node.chunk.bytes_read += len(data)
            node.chunk.bytes_fetched += fetched
        return data

    @_guarded
    def release(self, handle: int) -> None:
        with self._lock:
            self._open_files.pop(handle, None)

    @_guarded
    def statfs(self, ctx=None) -> llfuse.StatvfsData:
        with self._lock:
            total = sum(node.size for chunk in self._chunks.values() for node in chunk.files.values())
            inodes = len(self._nodes) + 1
        data = llfuse.StatvfsData()
        data.f_bsize, data.f_frsize = MAX_FUSE_READ_BYTES, 4096
        data.f_blocks, data.f_bfree, data.f_bavail = -(-total // 4096), 0, 0
        data.f_files, data.f_ffree, data.f_favail = inodes, 0, 0
        data.f_namemax = 255
        return data

    @_never_raises
    def forget(self, inode_list) -> None:
        with self._lock:
            for inode, count in inode_list:
                node = self._nodes.get(inode)
                if node is None:
                    continue
                node.lookups -= count
                removed = node.removed if isinstance(node, _ChunkDir) else node.chunk.removed
                if node.lookups <= 0 and removed:
                    del self._nodes[inode]

    @_never_raises
    def destroy(self) -> None:
        with self._lock:
            self._open_files.clear()
            self._open_dirs.clear()


class FuseMount:
    """The worker's mount. start() mounts and serves from a daemon thread; stop() unmounts."""

    def __init__(self, mountpoint: pathlib.Path | str, cache: BlockCache, workers: int = 4,
                 allow_other: bool = False) -> None:
        self.mountpoint = pathlib.Path(os.path.abspath(mountpoint))  # no resolve(): it may be a dead mount
        self._operations = _Operations(cache)
        self._workers = workers
        self._options = MOUNT_OPTIONS | ({"allow_other"} if allow_other else set())
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        if not _process_mount_lock.acquire(blocking=False):
            raise MountError("llfuse serves one mount per process and one is active")
        try:
            clear_stale_mount(self.mountpoint)
            self.mountpoint.mkdir(parents=True, exist_ok=True)
            llfuse.init(self._operations, str(self.mountpoint), set(self._options))
        except BaseException as error:
            _process_mount_lock.release()
            raise MountError(f"cannot mount {self.mountpoint}: {error}") from error
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="fuse-main", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        unmount = True
        # llfuse.main ends by sending SIGUSR1 to its worker threads, a signal whose default
        # action kills the process unless handle_signals installed a handler. The workers
        # inherit this thread's mask, so block it here: they leave on unmount anyway (ENODEV).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        try:
            llfuse.main(workers=self._workers, handle_signals=False)
            unmount = not self._stopping  # returned because stop() unmounted it
            if not self._stopping:
                log.error("fuse main loop ended without stop(): %s", self.mountpoint)
        except BaseException as error:
            log.error("fuse main loop failed: %r", error)
        finally:
            try:
                llfuse.close(unmount=unmount)
            except BaseException as error:
                log.error("llfuse.close failed: %r", error)
            _process_mount_lock.release()

    def observe_reads(self, observe) -> None:
        """Give `observe` the seconds each read of the mount takes."""
        self._operations.observe_read = observe

    def stop(self) -> None:
        """Unmount (lazily if something holds it open) and join the serving thread."""
        if self._thread is None:
            return
        self._stopping = True
        if self._thread.is_alive() and not _unmount(self.mountpoint, lazy=False):
            _unmount(self.mountpoint, lazy=True)
        self._thread.join(JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            log.error("fuse main loop still running %.0f s after unmounting %s",
                      JOIN_TIMEOUT_S, self.mountpoint)
        self._thread = None

    def add_chunk(self, dir_name: str, inputs: dict[str, tuple[bytes, int]],
                  first_read_notice: Callable[[], None] | None = None) -> str:
        """Show `inputs` ({name: (file id, size)}) under mountpoint/dir_name; pins them.
        `first_read_notice` is called once, from a FUSE thread, at the first read of one of them."""
        self._operations.add_chunk(_check_name(dir_name), inputs, first_read_notice)
        return str(self.mountpoint / dir_name)

    def remove_chunk(self, dir_name: str) -> tuple[int, int]:
        """Hide the directory and unpin its inputs; returns its final chunk_counters.
        Open files may still be read to the end."""
        name = os.fsencode(dir_name)
        counters = self._operations.remove_chunk(name)
        if self._thread is not None:
            llfuse.invalidate_entry(llfuse.ROOT_INODE, name)  # queued: the kernel drops its dentry soon
        return counters

    def chunk_counters(self, dir_name: str) -> tuple[int, int]:
        """(bytes the chunk's programs read, bytes fetched from the source for those reads)."""
        return self._operations.chunk_counters(os.fsencode(dir_name))

    def chunk_faults(self, dir_name: str) -> list[str]:
        """Why reads of the chunk's inputs failed (each names the input, its id and
        the cause, such as a corrupt block and the storage node it came from)."""
        return self._operations.chunk_faults(os.fsencode(dir_name))


def _fuse_mounts() -> set[str]:
    try:
        lines = pathlib.Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return set()
    mounted = set()
    for line in lines:
        parts = line.split()
        if len(parts) > 2 and parts[2].startswith("fuse"):
            # /proc/mounts escapes space, tab, newline and backslash as octal
            mounted.add(parts[1].encode("latin-1").decode("unicode_escape").encode("latin-1").decode())
    return mounted


def _unmount(path: pathlib.Path, lazy: bool) -> bool:
    commands = [["fusermount", "-u", "-z"], ["umount", "-l"]] if lazy else [["fusermount", "-u"], ["umount"]]
    for command in commands:
        try:
            result = subprocess.run([*command, str(path)], capture_output=True, timeout=UNMOUNT_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if result.returncode == 0:
            return True
    return False


def clear_stale_mount(path: pathlib.Path | str) -> bool:
    """Lazily unmount whatever FUSE mount sits on `path` (a dead worker's, typically).
    Returns True if something was unmounted."""
    path = pathlib.Path(os.path.abspath(path))
    try:
        os.stat(path)
        stale = False
    except FileNotFoundError:
        return False
    except OSError as error:
        stale = error.errno in STALE_ERRNOS
    if not stale and str(path) not in _fuse_mounts():
        return False
    log.warning("unmounting a stale FUSE mount at %s", path)
    if not _unmount(path, lazy=True):
        raise MountError(f"cannot unmount the stale mount at {path}")
    return True
