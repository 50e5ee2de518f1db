"""worker/fusefs.py: a real mount under tmp_path, backed by an in-memory source.
Every test unmounts and stops its threads and processes, even when it fails."""
from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass

import pytest

from daemons import ROOT, unmount_under
from test_block_cache import MemorySource, wait_until
from uds.worker.cache import BLOCK_BYTES, BlockCache
from uds.worker.fusefs import FuseMount, clear_stale_mount

MiB = 1 << 20
FUSE_READ_BYTES = 128 * 1024


@dataclass
class Mounted:
    mount: FuseMount
    cache: BlockCache
    source: MemorySource

    def add(self, dir_name: str, files: dict[str, bytes]) -> str:
        inputs = {name: (self.source.add(content), len(content)) for name, content in files.items()}
        return self.mount.add_chunk(dir_name, inputs)


@pytest.fixture(scope="module")
def big_content() -> bytes:
    return os.urandom(MiB) * 64  # 64 MiB; repeating blocks keep the setup cheap


@pytest.fixture
def mounted(tmp_path):
    source = MemorySource()
    cache = BlockCache(tmp_path / "cache", source, capacity_bytes=1 << 30)
    mount = FuseMount(tmp_path / "mnt", cache, workers=4)
    try:
        mount.start()
        yield Mounted(mount, cache, source)
    finally:
        mount.stop()
        cache.close()
        unmount_under(tmp_path)


def read_at(path: str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def test_listing_attributes_and_full_read(mounted):
    first, second = os.urandom(3 * MiB + 5), b"hello\n"
    directory = mounted.add("job-1.0.0", {"data.bin": first, "greeting.txt": second})
    assert os.listdir(mounted.mount.mountpoint) == ["job-1.0.0"]
    assert sorted(os.listdir(directory)) == ["data.bin", "greeting.txt"]
    status = os.stat(os.path.join(directory, "data.bin"))
    assert status.st_size == len(first) and oct(status.st_mode & 0o7777) == "0o444"
    with open(os.path.join(directory, "data.bin"), "rb") as stream:
        assert stream.read() == first
    with open(os.path.join(directory, "greeting.txt"), "rb") as stream:
        assert stream.read() == second
    read, fetched = mounted.mount.chunk_counters("job-1.0.0")
    assert read >= len(first) + len(second) and fetched == len(first) + len(second)
    with pytest.raises(FileNotFoundError):
        os.stat(os.path.join(directory, "missing"))


def test_the_first_read_of_a_chunk_directory_is_noticed_once(mounted):
    noticed: list[str] = []
    inputs = {}
    for name, content in (("a", os.urandom(3 * MiB)), ("b", b"small")):
        inputs[name] = (mounted.source.add(content), len(content))
    directories = {dir_name: mounted.mount.add_chunk(dir_name, inputs, lambda d=dir_name: noticed.append(d))
                   for dir_name in ("c-0-1", "c-1-1")}
    first = directories["c-0-1"]
    assert sorted(os.listdir(first)) == ["a", "b"] and os.stat(os.path.join(first, "a")).st_size == 3 * MiB
    with open(os.path.join(first, "b"), "rb"):
        pass
    assert noticed == []                        # a listing, a stat, an open: no read yet
    for name in ("a", "b", "a"):
        with open(os.path.join(first, name), "rb") as stream:
            stream.read()
    assert noticed == ["c-0-1"]
    assert read_at(os.path.join(directories["c-1-1"], "b"), 0, 5) == b"small"
    assert noticed == ["c-0-1", "c-1-1"]


def test_small_read_in_a_large_file_fetches_a_block_or_two_and_rereads_fetch_nothing(mounted, big_content):
    directory = mounted.add("c", {"big": big_content})
    path = os.path.join(directory, "big")
    offset = 37 * MiB + 1000
    assert read_at(path, offset, 4096) == big_content[offset:offset + 4096]
    assert 1 <= mounted.source.calls <= 2 and mounted.source.bytes <= 2 * BLOCK_BYTES
    calls = mounted.source.calls
    other = mounted.add("d", {"big": big_content})  # another inode: misses the page cache, hits ours
    assert read_at(os.path.join(other, "big"), offset, 4096) == big_content[offset:offset + 4096]
    assert mounted.source.calls == calls
    assert mounted.mount.chunk_counters("d")[1] == 0


def test_two_readers_of_the_same_missing_block_cause_one_fetch(mounted):
    mounted.source.delay_s = 0.2
    content = os.urandom(4 * MiB)
    paths = [os.path.join(mounted.add(name, {"in": content}), "in") for name in ("a", "b")]
    results = {}

    def read(path: str) -> None:
        results[path] = read_at(path, 2 * MiB + 64, 4096)

    threads = [threading.Thread(target=read, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert list(results.values()) == [content[2 * MiB + 64:2 * MiB + 64 + 4096]] * 2
    assert mounted.source.calls == 1


def test_a_sequential_reader_gets_read_ahead(mounted):
    content = os.urandom(32 * MiB)
    path = os.path.join(mounted.add("c", {"in": content}), "in")
    file_id = mounted.source.add(content)
    with open(path, "rb", buffering=0) as stream:
        assert stream.read(2 * MiB) == content[:2 * MiB]
        assert wait_until(lambda: max(mounted.source.blocks_fetched(file_id)) >= 2 + 4)
        assert stream.read() == content[2 * MiB:]
    assert mounted.source.blocks_fetched(file_id) == list(range(32))  # no block twice


def test_corrupt_data_gives_eio_and_the_mount_keeps_working(mounted):
    bad, good = os.urandom(3 * MiB), os.urandom(MiB)
    directory = mounted.add("c", {"bad": bad, "good": good})
    bad_id = mounted.source.add(bad)
    mounted.source.flips[bad_id] = MiB + 77  # one byte of the middle block
    received = bytearray()
    fd = os.open(os.path.join(directory, "bad"), os.O_RDONLY)
    try:
        with pytest.raises(OSError) as failure:
            while chunk := os.read(fd, FUSE_READ_BYTES):
                received += chunk
    finally:
        os.close(fd)
    assert failure.value.errno == errno.EIO
    assert len(received) <= MiB and received == bad[:len(received)]  # not one wrong byte
    assert mounted.cache.counters().corrupt_blocks >= 1
    with pytest.raises(OSError) as again:  # the source is still corrupt: every reader fails
        read_at(os.path.join(directory, "bad"), MiB, 10)
    assert again.value.errno == errno.EIO
    with open(os.path.join(directory, "good"), "rb") as stream:
        assert stream.read() == good
    [fault] = mounted.mount.chunk_faults("c")
    assert fault.startswith(f"input 'bad' ({bad_id.hex()}): {bad_id.hex()} block 1 from memory source")


def test_an_unexpected_handler_fault_gives_eio_and_the_mount_keeps_working(mounted):
    faulty, good = os.urandom(MiB), os.urandom(MiB)
    directory = mounted.add("c", {"faulty": faulty, "good": good})
    mounted.source.faulty.add(mounted.source.add(faulty))
    for _ in range(2):
        with pytest.raises(OSError) as failure:
            read_at(os.path.join(directory, "faulty"), 0, 100)
        assert failure.value.errno == errno.EIO
    assert read_at(os.path.join(directory, "good"), 0, MiB) == good
    assert os.listdir(directory) == sorted(["faulty", "good"])


def test_writes_are_refused(mounted):
    directory = mounted.add("c", {"in": b"data"})
    path = os.path.join(directory, "in")
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
        with pytest.raises(OSError) as failure:
            os.open(path, flags)
        assert failure.value.errno in (errno.EROFS, errno.EACCES)
    for attempt in (lambda: os.open(os.path.join(directory, "new"), os.O_CREAT | os.O_WRONLY),
                    lambda: os.mkdir(os.path.join(directory, "sub")),
                    lambda: os.unlink(path),
                    lambda: os.rename(path, path + ".2"),
                    lambda: os.chmod(path, 0o666)):
        with pytest.raises(OSError) as failure:
            attempt()
        assert failure.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    assert read_at(path, 0, 10) == b"data"


def test_remove_chunk_hides_the_directory_but_open_files_finish(mounted):
    content = os.urandom(2 * MiB)
    directory = mounted.add("c", {"in": content})
    kept = mounted.add("d", {"other": b"x"})
    stream = open(os.path.join(directory, "in"), "rb", buffering=0)
    try:
        head = stream.read(MiB)
        read, _ = mounted.mount.remove_chunk("c")
        assert read >= MiB
        assert os.listdir(mounted.mount.mountpoint) == ["d"]
        assert wait_until(lambda: not os.path.exists(directory), timeout_s=3.0)
        with pytest.raises(FileNotFoundError):
            open(os.path.join(directory, "in"), "rb")
        assert head + stream.read() == content
    finally:
        stream.close()
    assert os.listdir(kept) == ["other"]
    with pytest.raises(KeyError):
        mounted.mount.chunk_counters("c")


KILLED_MOUNT_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_block_cache import MemorySource
    from uds.worker.cache import BlockCache
    from uds.worker.fusefs import FuseMount
    mount = FuseMount({mountpoint!r}, BlockCache({cache!r}, MemorySource(), 1 << 30))
    mount.start()
    mount.add_chunk("c", {{}})
    print("ready", flush=True)
    time.sleep(60)
""")


def test_clear_stale_mount_recovers_from_a_killed_daemon(tmp_path):
    mountpoint = tmp_path / "mnt"
    script = KILLED_MOUNT_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), mountpoint=str(mountpoint),
                                        cache=str(tmp_path / "dead-cache"))
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    source = MemorySource()
    cache = BlockCache(tmp_path / "cache", source, 1 << 30)
    mount = FuseMount(mountpoint, cache)
    try:
        assert select.select([process.stdout], [], [], 30)[0], "the mounting process never got ready"
        assert process.stdout.readline() == b"ready\n"
        assert os.listdir(mountpoint) == ["c"]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        with pytest.raises(OSError) as dead:  # not stat: the root's attributes may still be cached
            os.listdir(mountpoint)
        assert dead.value.errno == errno.ENOTCONN
        assert clear_stale_mount(mountpoint) is True
        assert clear_stale_mount(mountpoint) is False
        mount.start()
        content = b"alive again"
        directory = mount.add_chunk("e", {"in": (source.add(content), len(content))})
        assert read_at(os.path.join(directory, "in"), 0, 100) == content
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        process.stdout.close()
        mount.stop()
        cache.close()
        unmount_under(tmp_path)


def test_handlers_count_lookups_and_forget_removed_inodes(tmp_path):
    """The handlers called as the kernel would, without a mount: inodes of a removed chunk
    live until the kernel forgets them, and a fault inside a handler becomes EIO."""
    import llfuse

    source = MemorySource()
    cache = BlockCache(tmp_path / "cache", source, 1 << 30)
    try:
        operations = FuseMount(tmp_path / "mnt", cache)._operations
        content = b"abc"
        operations.add_chunk(b"c", {"in": (source.add(content), len(content))})
        directory = operations.lookup(llfuse.ROOT_INODE, b"c", None)
        entry = operations.lookup(directory.st_ino, b"in", None)
        operations.lookup(directory.st_ino, b"in", None)
        assert entry.st_size == 3 and operations.getattr(entry.st_ino, None).st_size == 3
        operations.remove_chunk(b"c")
        with pytest.raises(llfuse.FUSEError) as missing:
            operations.lookup(llfuse.ROOT_INODE, b"c", None)
        assert missing.value.errno == errno.ENOENT
        assert operations.getattr(entry.st_ino, None).st_size == 3  # the kernel may still ask
        operations.forget([(entry.st_ino, 1)])
        assert operations.getattr(entry.st_ino, None).st_size == 3  # one lookup left
        operations.forget([(entry.st_ino, 1), (directory.st_ino, 1), (12345, 1)])
        for inode in (entry.st_ino, directory.st_ino):
            with pytest.raises(llfuse.FUSEError) as gone:
                operations.getattr(inode, None)
            assert gone.value.errno == errno.ENOENT

        operations._attributes = None  # any bug inside a handler
        with pytest.raises(llfuse.FUSEError) as fault:
            operations.getattr(llfuse.ROOT_INODE, None)
        assert fault.value.errno == errno.EIO
    finally:
        cache.close()
