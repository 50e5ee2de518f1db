"""FUSE read throughput of a 256 MiB input against a page-cached local read of
the same bytes, measured in the same run. Prints one JSON line (MiB/s).

- first_read: an empty block cache behind a fresh chunk directory, so every
  block comes from the source: the real storage daemon through
  StorageBlockSource when it starts, else a local file ("source": "local").
- reread_page_cache: the same file again; the kernel keeps its pages.
- reread_block_cache: the same input under another chunk directory (a new
  inode, so the kernel asks us again), served from the block cache on disk;
  best of three, dropping each inode's pages after it is read.
- local_read: the same bytes from a local file in the page cache: the limit.
- storage_fetch_single_stream (with the daemon): 1 MiB fetches from one
  thread over one connection, one at a time, no FUSE: the fetch as it was
  before reads went over parallel streams.
- storage_fetch_parallel: StorageClient.read_into a reused 64 MiB buffer, over its
  READ_STREAMS connections (READS_IN_FLIGHT pieces in flight), one thread.
  Both fetches are best of FETCH_REPEATS, taken in turn so that both see the
  same machine; the first read is compared with each.
- fetch_cpu_ms_per_MiB: CPU time of this process and the storage daemon
  together per MiB of the parallel fetch (CURVE on both ends, mostly); with
  the cores' count it gives fetch_cpu_limit_MiBps, what the machine could
  fetch if nothing else ran. first_read_cpu_ms_per_MiB: the same for the
  first read (this process, which holds the mount and the reader, and the
  daemon). load_average: at the start and the end.
- The cost of checking blocks against the file's manifest, as time with the
  checks over time without (1.0: free), each pair measured in this run, the
  "without" side by replacing the cache's block check with one that accepts
  anything (the manifest is still fetched):
  verify_cost_first_read (every block fetched and checked on arrival),
  verify_cost_reread_after_restart (a new BlockCache over the same cache
  folder, as after a worker restart: every block read back from disk and
  checked once) and verify_cost_reread_checked (blocks already checked in this
  process: only the inode's identity is compared on each read).
Every read is 1 MiB read(2) calls into one reused buffer (FUSE splits them
into 128 KiB requests). Memory is touched first: this VM backs memory at
~3 s/GiB on first touch, which would otherwise land inside the timings.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from uds.wire.ids import BlockManifest, file_hasher, new_id  # noqa: E402
from uds.worker import cache as cache_module  # noqa: E402
from uds.worker.blocks import BlockSource  # noqa: E402
from uds.worker.cache import BlockCache  # noqa: E402
from uds.worker.fusefs import FuseMount  # noqa: E402

MiB = 1 << 20
FILE_BYTES = 256 * MiB
READ_BYTES = MiB
WARM_UP_BYTES = 3072 * MiB  # local copy, blob, cache file, two inodes' pages, buffers: ~2 GiB, with room
REREAD_REPEATS = 3
FETCH_REPEATS = 3
PARALLEL_READ_BYTES = 64 * MiB


class LocalFileSource:
    """A BlockSource reading a local file: used when no storage daemon runs."""

    def __init__(self, path: pathlib.Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._manifest = manifest_of_file(str(path))

    def fetch(self, file_id: bytes, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def manifest(self, file_id: bytes) -> BlockManifest:
        return self._manifest

    def where(self) -> str:
        return "local file"

    def close(self) -> None:
        os.close(self._fd)


def warm_up_memory() -> None:
    block = bytearray(WARM_UP_BYTES)
    block[::4096] = b"\1" * (WARM_UP_BYTES // 4096)  # one write per page backs it
    del block


def timed_read(path: str, buffer: bytearray) -> tuple[float, int]:
    """Seconds to read `path` to its end, and the bytes read."""
    view = memoryview(buffer)
    total = 0
    with open(path, "rb", buffering=0) as stream:
        started = time.perf_counter()
        while count := stream.readinto(view):
            total += count
        return time.perf_counter() - started, total


def drop_page_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def manifest_of_file(path: str) -> BlockManifest:
    hasher = file_hasher()
    with open(path, "rb", buffering=0) as stream:
        while block := stream.read(8 * MiB):
            hasher.update(block)
    return hasher.manifest()


def id_of_file(path: str) -> bytes:
    return manifest_of_file(path).file_id()


@contextlib.contextmanager
def mounted(work: pathlib.Path, cache_folder: str, source: BlockSource, verify: bool = True):
    """A mount over a BlockCache in work/cache_folder; with verify=False the cache's
    block check accepts anything (for measuring what the check costs)."""
    checking = cache_module.block_is_valid
    if not verify:
        cache_module.block_is_valid = lambda *args: True
    cache = BlockCache(work / cache_folder, source, capacity_bytes=4 * FILE_BYTES)
    mount = FuseMount(work / "mnt", cache)
    try:
        mount.start()
        yield mount, cache
    finally:
        mount.stop()
        cache.close()
        cache_module.block_is_valid = checking


def read_new_inodes(mount: FuseMount, file_id: bytes, buffer: bytearray, prefix: str) -> float:
    """Best of REREAD_REPEATS reads, each through a new inode, so the kernel asks us each time."""
    best = float("inf")
    for attempt in range(REREAD_REPEATS):
        again = os.path.join(mount.add_chunk(f"{prefix}-{attempt}", {"input": (file_id, FILE_BYTES)}), "input")
        best = min(best, timed_read(again, buffer)[0])
        drop_page_cache(again)
    return best


def read_once(mount: FuseMount, file_id: bytes, buffer: bytearray, name: str) -> float:
    path = os.path.join(mount.add_chunk(name, {"input": (file_id, FILE_BYTES)}), "input")
    seconds, count = timed_read(path, buffer)
    assert count == FILE_BYTES, "short read through FUSE"
    drop_page_cache(path)
    return seconds


def mib_per_s(seconds: float) -> float:
    return round(FILE_BYTES / MiB / seconds, 1)


@contextlib.contextmanager
def storage_source(work: pathlib.Path, local_copy: pathlib.Path):
    """(source, file id, description, extra figures); the daemon is stopped on exit."""
    try:
        from uds.storage.client import StorageClient
        from daemons import ClusterLayout
        from uds.wire.transport import Transport
        from uds.worker.blocks import StorageBlockSource
    except ImportError as error:
        yield _local(local_copy, f"storage client unavailable: {error}")
        return
    layout = ClusterLayout.create(work / "cluster")
    transport = None
    source = None
    try:
        try:
            daemon = layout.start("storage")
            transport = Transport(layout.keys())
            address, node_id = layout.cluster.storage[0].address, new_id()
            with StorageClient(transport, address, node_id) as uploader:
                file_id, _ = uploader.put_file(local_copy)
        except Exception as error:  # no working daemon yet: measure against a local file
            yield _local(local_copy, f"storage daemon failed: {error!r}")
            return
        source = StorageBlockSource(lambda: StorageClient(transport, address, node_id))
        yield source, file_id, "storage", lambda: fetch_figures(
            lambda streams: StorageClient(transport, address, node_id, streams=streams), file_id,
            daemon.pid), lambda: cpu_seconds(daemon.pid)
    finally:
        if source is not None:
            source.close()
        if transport is not None:
            transport.close()
        layout.cleanup()


def _local(local_copy: pathlib.Path, why: str):
    source = LocalFileSource(local_copy)
    return source, id_of_file(str(local_copy)), "local", lambda: {"why_local": why}, lambda: 0.0


def fetch_single_stream(client, file_id: bytes) -> float:
    """Seconds to fetch the file in 1 MiB reads, one at a time."""
    started = time.perf_counter()
    for offset in range(0, FILE_BYTES, READ_BYTES):
        client.read(file_id, offset, READ_BYTES)
    return time.perf_counter() - started


def fetch_parallel(client, file_id: bytes, buffer: bytearray) -> float:
    """Seconds to fetch the file in long reads over the client's streams."""
    started = time.perf_counter()
    for offset in range(0, FILE_BYTES, len(buffer)):
        client.read_into(file_id, offset, buffer)
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fetch_figures(make_client, file_id: bytes, daemon_pid: int) -> dict:
    from uds.storage.client import READ_PIECE_BYTES, READ_STREAMS
    single_s = parallel_s = float("inf")
    cpu_ms_per_mib = float("inf")
    buffer = bytearray(PARALLEL_READ_BYTES)  # zero-filled, so touched before any timing
    with make_client(1) as single, make_client(READ_STREAMS) as parallel:
        single.read(file_id, 0, READ_BYTES)  # connect first
        parallel.read(file_id, 0, 2 * READ_PIECE_BYTES)  # every stream
        for _ in range(FETCH_REPEATS):
            single_s = min(single_s, fetch_single_stream(single, file_id))
            cpu_before = time.process_time() + cpu_seconds(daemon_pid)
            seconds = fetch_parallel(parallel, file_id, buffer)
            cpu_spent = time.process_time() + cpu_seconds(daemon_pid) - cpu_before
            parallel_s = min(parallel_s, seconds)
            cpu_ms_per_mib = min(cpu_ms_per_mib, cpu_spent * 1000 / (FILE_BYTES / MiB))
    return {
        "storage_fetch_single_stream_MiBps": mib_per_s(single_s),
        "storage_fetch_parallel_MiBps": mib_per_s(parallel_s),
        "storage_fetch_streams": READ_STREAMS,
        "parallel_ratio_to_single_stream": round(single_s / parallel_s, 3),
        "fetch_cpu_ms_per_MiB": round(cpu_ms_per_mib, 2),
        "fetch_cpu_limit_MiBps": round(os.cpu_count() * 1000 / cpu_ms_per_mib, 1),
    }


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    load_at_start = os.getloadavg()
    warm_up_memory()
    buffer = bytearray(READ_BYTES)
    with tempfile.TemporaryDirectory(prefix="uds-fuse-bench-") as folder:
        work = pathlib.Path(folder)
        local_copy = work / "input.bin"
        local_copy.write_bytes(os.urandom(FILE_BYTES))
        timed_read(str(local_copy), buffer)  # into the page cache
        local_s = min(timed_read(str(local_copy), buffer)[0] for _ in range(REREAD_REPEATS))

        with storage_source(work, local_copy) as (source, file_id, source_name, measure_fetch, source_cpu):
            extra = measure_fetch()
            with mounted(work, "cache", source) as (mount, cache):
                first = os.path.join(mount.add_chunk("first", {"input": (file_id, FILE_BYTES)}), "input")
                cpu_before = time.process_time() + source_cpu()
                first_s, first_bytes = timed_read(first, buffer)
                first_cpu_s = time.process_time() + source_cpu() - cpu_before
                reread_s = min(timed_read(first, buffer)[0] for _ in range(REREAD_REPEATS))
                assert first_bytes == FILE_BYTES and id_of_file(first) == file_id, "wrong bytes through FUSE"
                drop_page_cache(first)  # frees warm pages for the next inode to reuse
                cached_s = read_new_inodes(mount, file_id, buffer, "again")
                counters = cache.counters()
            with mounted(work, "cache-unchecked", source, verify=False) as (mount, cache):
                first_unchecked_s = read_once(mount, file_id, buffer, "first")
                cached_unchecked_s = read_new_inodes(mount, file_id, buffer, "again")
            restart_s = restart_unchecked_s = float("inf")
            for _ in range(REREAD_REPEATS):  # alternated, so that both sides see the same machine
                with mounted(work, "cache", source) as (mount, cache):  # as after a worker restart
                    restart_s = min(restart_s, read_once(mount, file_id, buffer, "restarted"))
                    assert cache.counters().blocks_checked_on_disk == FILE_BYTES // MiB, "a block checked twice"
                with mounted(work, "cache-unchecked", source, verify=False) as (mount, cache):
                    restart_unchecked_s = min(restart_unchecked_s, read_once(mount, file_id, buffer, "restarted"))

    figures = {
        "benchmark": "fuse_read",
        "source": source_name,
        "file_MiB": FILE_BYTES // MiB,
        "first_read_MiBps": mib_per_s(first_s),
        "first_read_cpu_ms_per_MiB": round(first_cpu_s * 1000 / (FILE_BYTES / MiB), 2),
        "reread_page_cache_MiBps": mib_per_s(reread_s),
        "reread_block_cache_MiBps": mib_per_s(cached_s),
        "local_read_MiBps": mib_per_s(local_s),
        "first_read_ratio_to_local": round(local_s / first_s, 3),
        "reread_page_cache_ratio_to_local": round(local_s / reread_s, 3),
        "reread_block_cache_ratio_to_local": round(local_s / cached_s, 3),
        "bytes_fetched": counters.bytes_fetched,
        "verify_cost_first_read": round(first_s / first_unchecked_s, 3),
        "verify_cost_reread_after_restart": round(restart_s / restart_unchecked_s, 3),
        "verify_cost_reread_checked": round(cached_s / cached_unchecked_s, 3),
        "reread_after_restart_MiBps": mib_per_s(restart_s),
        "first_read_unchecked_MiBps": mib_per_s(first_unchecked_s),
        "reread_after_restart_unchecked_MiBps": mib_per_s(restart_unchecked_s),
        **extra,
        "load_average": [round(load, 2) for load in (*load_at_start, *os.getloadavg())],
    }
    for fetch in ("single_stream", "parallel"):  # the first read's own limits: fetching alone
        if f"storage_fetch_{fetch}_MiBps" in extra:
            figures[f"first_read_ratio_to_fetch_{fetch}"] = round(
                figures["first_read_MiBps"] / extra[f"storage_fetch_{fetch}_MiBps"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
