"""worker/cache.py against an in-memory block source: fetching, sharing, read-ahead,
verification, eviction and restart. `MemorySource` is also used by test_fuse.py."""
from __future__ import annotations

import os
import random
import shutil
import stat
import threading
import time

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uds.wire.ids import BlockManifest, file_id_of, manifest_of
from uds.worker.blocks import BlockUnavailable, CorruptBlock, CorruptManifest
from uds.worker.cache import BLOCK_BYTES, BlockCache, CorruptFile
from uds.worker.readahead import READAHEAD_BLOCKS

MiB = 1 << 20


class MemorySource:
    """A BlockSource over a dict of id -> content that counts what it serves.
    Ids in `corrupt` get one flipped byte per block (`flips` {id: offset} one byte at that
    offset); ids in `faulty` raise RuntimeError; ids in `lying` get a wrong manifest."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.files: dict[bytes, bytes] = {}
        self.delay_s = delay_s
        self.corrupt: set[bytes] = set()
        self.flips: dict[bytes, int] = {}
        self.faulty: set[bytes] = set()
        self.lying: set[bytes] = set()
        self.manifests_served = 0
        self.lock = threading.Lock()
        self.calls = 0
        self.bytes = 0
        self.fetched: list[tuple[bytes, int]] = []  # (file id, offset)
        self.in_flight = self.max_in_flight = 0

    def add(self, content: bytes) -> bytes:
        file_id = file_id_of(content)
        self.files[file_id] = content
        return file_id

    def fetch(self, file_id: bytes, offset: int, length: int) -> bytes:
        with self.lock:
            self.calls += 1
            self.fetched.append((file_id, offset))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            if file_id in self.faulty:
                raise RuntimeError("injected fault")
            if file_id not in self.files:
                raise BlockUnavailable(f"no file {file_id.hex()}")
            data = self.files[file_id][offset:offset + length]
            if file_id in self.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            flip = self.flips.get(file_id, -1)
            if offset <= flip < offset + length:
                data = bytearray(data)
                data[flip - offset] ^= 0x01
                data = bytes(data)
            with self.lock:
                self.bytes += len(data)
            return data
        finally:
            with self.lock:
                self.in_flight -= 1

    def manifest(self, file_id: bytes) -> BlockManifest:
        if file_id in self.faulty:
            raise RuntimeError("injected fault")
        if file_id not in self.files:
            raise BlockUnavailable(f"no file {file_id.hex()}")
        with self.lock:
            self.manifests_served += 1
        manifest = manifest_of(self.files[file_id])
        if file_id in self.lying:
            manifest = BlockManifest(manifest.size, bytes(32) + manifest.hashes[32:])
        return manifest

    def where(self) -> str:
        return "memory source"

    def blocks_fetched(self, file_id: bytes) -> list[int]:
        with self.lock:
            return sorted(offset // BLOCK_BYTES for fetched, offset in self.fetched if fetched == file_id)


def wait_until(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def source() -> MemorySource:
    return MemorySource()


@pytest.fixture
def make_cache(tmp_path):
    caches: list[BlockCache] = []

    def make(source, capacity_bytes: int = 1 << 30, **options) -> BlockCache:
        cache = BlockCache(tmp_path / "cache", source, capacity_bytes, **options)
        caches.append(cache)
        return cache

    try:
        yield make
    finally:
        for cache in caches:
            cache.close()


def test_read_returns_content_and_rereads_come_from_disk(source, make_cache):
    content = os.urandom(3 * MiB + 777)
    file_id = source.add(content)
    cache = make_cache(source)
    for offset, length in [(0, 100), (MiB - 10, 20), (3 * MiB, 10_000), (5, 3 * MiB)]:
        data, _ = cache.read(file_id, len(content), offset, length)
        assert data == content[offset:offset + length]
    calls = source.calls
    assert cache.read(file_id, len(content), 2 * MiB, 4096)[0] == content[2 * MiB:2 * MiB + 4096]
    assert source.calls == calls
    assert cache.read(file_id, len(content), len(content), 10) == (b"", 0)
    counters = cache.counters()
    assert counters.bytes_fetched == len(content) and counters.bytes_served_from_cache >= 4096


def test_small_read_in_a_large_file_fetches_only_its_block(source, make_cache):
    content = os.urandom(MiB) * 64  # 64 MiB
    file_id = source.add(content)
    cache = make_cache(source)
    offset = 40 * MiB + 12345
    data, fetched = cache.read(file_id, len(content), offset, 4096)
    assert data == content[offset:offset + 4096]
    assert source.blocks_fetched(file_id) == [40] and fetched == MiB
    assert cache.read(file_id, len(content), offset, 4096) == (data, 0)
    assert source.calls == 1


def test_concurrent_reads_of_a_missing_block_fetch_it_once(make_cache):
    source = MemorySource(delay_s=0.2)
    content = os.urandom(4 * MiB)
    file_id = source.add(content)
    cache = make_cache(source)
    results = []

    def read() -> None:
        results.append(cache.read(file_id, len(content), 2 * MiB + 100, 1000)[0])

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [content[2 * MiB + 100:2 * MiB + 1100]] * 4
    assert source.calls == 1


def test_sequential_reads_start_read_ahead(source, make_cache):
    content = os.urandom(32 * MiB)
    file_id = source.add(content)
    cache = make_cache(source)
    chunk = 128 * 1024
    cache.read(file_id, len(content), 0, chunk)
    assert source.blocks_fetched(file_id) == [0]  # one read is not yet a sequential reader
    _, fetched = cache.read(file_id, len(content), chunk, chunk)
    expected = list(range(READAHEAD_BLOCKS + 1))
    assert fetched == READAHEAD_BLOCKS * MiB
    assert wait_until(lambda: source.blocks_fetched(file_id) == expected)
    offset = 0
    while offset < len(content):  # the whole file, each block fetched once
        assert cache.read(file_id, len(content), offset, chunk)[0] == content[offset:offset + chunk]
        offset += chunk
    assert source.blocks_fetched(file_id) == list(range(32))
    assert cache.complete_files() == [(file_id, len(content))]


def test_a_corrupt_block_from_the_source_is_neither_kept_nor_served(source, make_cache):
    content = os.urandom(3 * MiB)
    file_id = source.add(content)
    source.corrupt.add(file_id)
    cache = make_cache(source)
    with pytest.raises(CorruptBlock, match=f"{file_id.hex()} block 0 from memory source"):
        cache.read(file_id, len(content), 0, 128 * 1024)
    with pytest.raises(CorruptBlock, match="block 2"):
        cache.read(file_id, len(content), 2 * MiB + 5, 10)
    assert cache.counters().corrupt_blocks == 2 and cache.counters().disk_bytes == 0
    assert not list((cache.root / "complete").iterdir())
    with pytest.raises(CorruptBlock):
        cache.ensure_complete(file_id, len(content))
    source.corrupt.clear()  # the storage node repaired it: the blocks are simply fetched again
    assert cache.read(file_id, len(content), 0, 10)[0] == content[:10]
    assert cache.ensure_complete(file_id, len(content)).read_bytes() == content


@pytest.mark.parametrize("size", [1, 1000, MiB, MiB + 1, 3 * MiB + 4321])
def test_a_flipped_byte_in_any_block_from_the_source_is_never_returned(make_cache, size):
    generator = random.Random(size)
    content = generator.randbytes(size)
    for position in sorted({0, size // 2, size - 1, (size - 1) // MiB * MiB}):
        source = MemorySource()
        file_id = source.add(content)
        source.flips[file_id] = position
        cache = make_cache(source)
        bad_block = position // MiB
        for offset in range(0, size, 128 * 1024):
            length = min(128 * 1024, size - offset)
            if offset // MiB == bad_block:
                with pytest.raises(CorruptBlock):
                    cache.read(file_id, size, offset, length)
            else:
                assert cache.read(file_id, size, offset, length)[0] == content[offset:offset + length]
        cache.close()
        for leftover in (cache.root / "complete").iterdir():
            leftover.chmod(0o644)
            leftover.unlink()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 3 * MiB + 99), st.integers(1, 255))
def test_hypothesis_no_read_ever_returns_a_flipped_byte(make_cache, position, mask):
    content = random.Random(1).randbytes(3 * MiB + 100)
    source = MemorySource()
    file_id = source.add(content)
    source.flips[file_id] = position
    cache = make_cache(source)
    for offset in range(0, len(content), 512 * 1024):
        try:
            data, _ = cache.read(file_id, len(content), offset, 512 * 1024)
        except CorruptBlock:
            assert offset // MiB == position // MiB
            continue
        assert data == content[offset:offset + 512 * 1024]
    cache.close()
    shutil.rmtree(cache.root, ignore_errors=True)  # the next example starts from an empty cache


def test_a_manifest_that_does_not_match_the_id_is_refused(source, make_cache):
    content = os.urandom(2 * MiB + 1)
    file_id = source.add(content)
    source.lying.add(file_id)
    cache = make_cache(source)
    with pytest.raises(CorruptManifest, match="memory source"):
        cache.read(file_id, len(content), 0, 10)
    assert source.calls == 0  # no block is fetched without a good manifest
    source.lying.clear()
    assert cache.read(file_id, len(content), 0, 10)[0] == content[:10]


def test_the_manifest_is_fetched_once_and_kept_on_disk_checked(source, make_cache, tmp_path):
    content = os.urandom(2 * MiB + 1)
    file_id = source.add(content)
    first = make_cache(source)
    first.ensure_complete(file_id, len(content))
    first.read(file_id, len(content), MiB, 10)
    assert source.manifests_served == 1
    first.close()
    manifest_file = tmp_path / "cache" / "manifests" / file_id.hex()
    assert manifest_file.read_bytes() == manifest_of(content).hashes
    second = make_cache(source)
    assert second.read(file_id, len(content), MiB, 10)[0] == content[MiB:MiB + 10]
    assert source.manifests_served == 1  # read back from disk, checked against the id
    second.close()
    manifest_file.write_bytes(bytes(96))  # planted: fails its check and is fetched again
    third = make_cache(source)
    assert third.read(file_id, len(content), 2 * MiB, 1)[0] == content[2 * MiB:]
    assert source.manifests_served == 2


def test_a_cached_file_written_to_while_the_worker_runs_is_caught_on_the_next_read(source, make_cache):
    content = os.urandom(3 * MiB)
    file_id = source.add(content)
    cache = make_cache(source)
    path = cache.ensure_complete(file_id, len(content))
    assert cache.read(file_id, len(content), 2 * MiB, 10)[0] == content[2 * MiB:2 * MiB + 10]
    checked = cache.counters().blocks_checked_on_disk
    assert cache.read(file_id, len(content), 2 * MiB, 10)[0] == content[2 * MiB:2 * MiB + 10]
    assert cache.counters().blocks_checked_on_disk == checked  # known good: not hashed again
    path.chmod(0o644)
    with open(path, "r+b") as attacker:  # the attack: a write into cache/complete/<id>
        attacker.seek(2 * MiB + 3)
        attacker.write(b"X")
    with pytest.raises(CorruptFile, match=f"{file_id.hex()} block 2"):
        cache.read(file_id, len(content), 2 * MiB, 10)
    assert not path.exists() and cache.counters().corrupt_files == 1
    assert cache.read(file_id, len(content), 2 * MiB, 10)[0] == content[2 * MiB:2 * MiB + 10]  # fetched anew


def test_a_damaged_pinned_file_stays_failed_until_unpinned(source, make_cache):
    content = os.urandom(2 * MiB)
    file_id = source.add(content)
    cache = make_cache(source)
    cache.pin(file_id)
    path = cache.ensure_complete(file_id, len(content))
    path.chmod(0o644)
    with open(path, "r+b") as damaged:
        damaged.write(b"\0\0")
    with pytest.raises(CorruptFile):
        cache.read(file_id, len(content), 0, 10)
    with pytest.raises(CorruptFile):  # the same chunk's other readers fail alike
        cache.read(file_id, len(content), 0, 10)
    cache.unpin(file_id)
    assert cache.read(file_id, len(content), 0, 10)[0] == content[:10]


def test_ensure_complete_returns_a_verified_read_only_file(make_cache):
    source = MemorySource(delay_s=0.02)
    content = os.urandom(10 * MiB + 1)
    file_id = source.add(content)
    cache = make_cache(source)
    assert cache.read(file_id, len(content), 3 * MiB, 10)[0] == content[3 * MiB:3 * MiB + 10]
    path = cache.ensure_complete(file_id, len(content))
    assert path == cache.root / "complete" / file_id.hex()
    assert path.read_bytes() == content and stat.S_IMODE(path.stat().st_mode) == 0o444
    assert source.max_in_flight >= 2 and source.blocks_fetched(file_id) == list(range(11))
    assert cache.drain_changes() == ([(file_id, len(content))], [])
    assert cache.drain_changes() == ([], [])
    assert cache.ensure_complete(file_id, len(content)) == path and source.calls == 11

    empty_id = source.add(b"")
    assert cache.ensure_complete(empty_id, 0).read_bytes() == b""


def test_eviction_keeps_the_cap_drops_least_recently_used_and_spares_pinned(source, make_cache):
    ids = [source.add(os.urandom(MiB)) for _ in range(5)]
    cache = make_cache(source, capacity_bytes=3 * MiB)
    cache.pin(ids[0])
    for file_id in ids[:3]:
        cache.ensure_complete(file_id, MiB)
    cache.drain_changes()
    cache.ensure_complete(ids[3], MiB)  # over the cap: ids[1] is the oldest unpinned
    assert {file_id for file_id, _ in cache.complete_files()} == {ids[0], ids[2], ids[3]}
    cache.read(ids[2], MiB, 0, 10)  # now ids[3] is the least recently used
    cache.ensure_complete(ids[4], MiB)
    assert {file_id for file_id, _ in cache.complete_files()} == {ids[0], ids[2], ids[4]}
    counters = cache.counters()
    assert counters.disk_bytes <= 3 * MiB and counters.evictions == 2
    assert cache.drain_changes() == ([(ids[4], MiB)], [ids[1]])  # ids[3] came and went between drains
    assert not (cache.root / "complete" / ids[1].hex()).exists()

    partly_read = source.add(os.urandom(2 * MiB))
    cache.read(partly_read, 2 * MiB, 0, 10)  # a partial file in use is spared: ids[2] goes
    assert {file_id for file_id, _ in cache.complete_files()} == {ids[0], ids[4]}
    cache.read(ids[4], MiB, 0, 10)  # now the unused partial file is the least recently used
    cache.ensure_complete(ids[1], MiB)
    assert not (cache.root / "partial" / partly_read.hex()).exists()
    assert {file_id for file_id, _ in cache.complete_files()} == {ids[0], ids[4], ids[1]}
    assert cache.counters().disk_bytes <= 3 * MiB and cache.drain_changes() == ([(ids[1], MiB)], [ids[2]])


def test_when_everything_is_pinned_the_cache_overshoots_instead_of_failing(source, make_cache):
    ids = [source.add(os.urandom(MiB)) for _ in range(3)]
    cache = make_cache(source, capacity_bytes=MiB)
    for file_id in ids:
        cache.pin(file_id)
        cache.ensure_complete(file_id, MiB)
    assert cache.counters().disk_bytes == 3 * MiB and cache.counters().evictions == 0
    for file_id in ids:
        cache.unpin(file_id)
    assert cache.counters().disk_bytes <= MiB and cache.counters().evictions == 2


def test_restart_keeps_complete_files_and_drops_partial_ones(source, make_cache, tmp_path):
    whole, partial = os.urandom(2 * MiB), os.urandom(3 * MiB)
    whole_id, partial_id = source.add(whole), source.add(partial)
    first = make_cache(source)
    first.ensure_complete(whole_id, len(whole))
    first.read(partial_id, len(partial), MiB, 10)
    first.close()

    calls = source.calls
    second = make_cache(source)
    assert second.complete_files() == [(whole_id, len(whole))]
    assert not list((tmp_path / "cache" / "partial").iterdir())
    assert second.counters().disk_bytes == len(whole)
    assert second.read(whole_id, len(whole), MiB, 100)[0] == whole[MiB:MiB + 100]  # re-verified, not fetched
    assert source.calls == calls
    assert second.read(partial_id, len(partial), MiB, 10)[0] == partial[MiB:MiB + 10]
    assert source.calls == calls + 1


def test_a_complete_file_damaged_on_disk_is_caught_on_first_use_after_restart(source, make_cache, tmp_path):
    content = os.urandom(2 * MiB)
    file_id = source.add(content)
    first = make_cache(source)
    path = first.ensure_complete(file_id, len(content))
    first.close()
    path.chmod(0o644)
    with open(path, "r+b") as damaged:
        damaged.seek(MiB + 5)
        damaged.write(b"\0\0\0")

    second = make_cache(source)
    assert second.read(file_id, len(content), 0, 10)[0] == content[:10]  # block 0 is good
    with pytest.raises(CorruptFile):
        second.read(file_id, len(content), MiB, 10)
    assert not path.exists() and second.drain_changes() == ([], [file_id])
    assert second.ensure_complete(file_id, len(content)).read_bytes() == content


def test_source_errors_propagate_and_failed_read_ahead_is_retried_by_the_reader(source, make_cache):
    content = os.urandom(4 * MiB)
    file_id = source.add(content)
    cache = make_cache(source)
    with pytest.raises(BlockUnavailable):
        cache.read(os.urandom(16), 100, 0, 10)
    chunk = 128 * 1024
    cache.read(file_id, len(content), 0, chunk)
    source.faulty.add(file_id)
    cache.read(file_id, len(content), chunk, chunk)  # sequential: read-ahead of blocks 1-3 fails
    assert wait_until(lambda: source.calls == 2 + 3)
    with pytest.raises(RuntimeError):  # not a BlockSourceError: the FUSE layer's guard turns it into EIO
        cache.read(file_id, len(content), 2 * MiB, 10)
    source.faulty.clear()
    for offset in range(0, len(content), MiB):
        assert cache.read(file_id, len(content), offset, MiB)[0] == content[offset:offset + MiB]
    assert cache.complete_files() == [(file_id, len(content))]


def test_storage_block_source_keeps_one_client_per_thread_and_maps_errors():
    from uds.storage.client import UnknownFileError
    from uds.worker.blocks import ShortBlock, StorageBlockSource

    class FakeClient:
        def __init__(self) -> None:
            self.thread = threading.get_ident()
            self.closed = False

        def read(self, file_id: bytes, offset: int, length: int) -> bytes:
            assert threading.get_ident() == self.thread, "a client used from another thread"
            if file_id == b"missing":
                raise UnknownFileError("tcp://storage", "no such file")
            return b"x" * (length - 1 if file_id == b"short" else length)

        def close(self) -> None:
            self.closed = True

    made: list[FakeClient] = []

    def make_client() -> FakeClient:
        made.append(FakeClient())
        return made[-1]

    source = StorageBlockSource(make_client)
    assert source.fetch(b"f", 0, 3) == b"xxx" and source.fetch(b"f", 3, 3) == b"xxx"
    thread = threading.Thread(target=source.fetch, args=(b"f", 0, 1))
    thread.start()
    thread.join(5)
    assert len(made) == 2
    with pytest.raises(BlockUnavailable):
        source.fetch(b"missing", 0, 1)
    with pytest.raises(ShortBlock):
        source.fetch(b"short", 0, 4)
    source.close()
    assert all(client.closed for client in made)


def test_many_threads_reading_evicting_and_hitting_a_corrupt_file_always_get_right_bytes(make_cache):
    source = MemorySource(delay_s=0.001)
    generator = random.Random(7)
    contents = [generator.randbytes(generator.randint(1, 5 * MiB)) for _ in range(8)]
    ids = [source.add(content) for content in contents]
    source.corrupt.add(ids[0])
    cache = make_cache(source, capacity_bytes=6 * MiB)
    deadline = time.monotonic() + 1.5
    failures: list[str] = []

    def reader(seed: int) -> None:
        choose = random.Random(seed)
        while time.monotonic() < deadline and not failures:
            which = choose.randrange(len(ids))
            content, file_id = contents[which], ids[which]
            try:
                if choose.random() < 0.1:
                    cache.pin(file_id)
                    path = cache.ensure_complete(file_id, len(content))
                    cache.unpin(file_id)
                    assert which == 0 or path.name == file_id.hex()
                    continue
                offset = choose.randrange(len(content))
                for _ in range(choose.choice([1, 6])):  # single reads and short streams
                    data, _ = cache.read(file_id, len(content), offset, 128 * 1024)
                    if which != 0 and data != content[offset:offset + 128 * 1024]:
                        failures.append(f"wrong bytes from file {which} at {offset}")
                    offset += 128 * 1024
            except CorruptBlock:
                if which != 0:
                    failures.append(f"file {which} reported corrupt")
            except Exception as error:
                failures.append(repr(error))

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures and not any(thread.is_alive() for thread in threads)
    cache.close()
    on_disk = {path.name: path.stat().st_size for path in (cache.root / "complete").iterdir()}
    assert set(on_disk) <= {file_id.hex() for file_id in ids[1:]}
    assert cache.counters().corrupt_blocks >= 1
