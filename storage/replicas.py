"""The storage nodes as one store: every file on R of them, read from
whichever has a good copy (doc/storage.md).

    storage = ReplicatedStorage(transport, node_id, StorageDirectory(seed), replicas=2)
    file_id, size = storage.put_file("input.csv")    # on R nodes once this returns
    content = storage.get(file_id)                   # the first node with a good copy

Rules:
- Where a file goes and where it is looked for is storage/placement.py's
  rendezvous order over the directory's membership (storage/directory.py).
- A put is hashed once, then uploaded to R nodes of put_order at once, one
  thread each. A node that refuses for space, does not answer, or fails in
  any other way is replaced by the next in order. The put is acknowledged
  only once R nodes answered PUT_STORED or PUT_PRESENT (a stat that finds
  the file counts as PUT_PRESENT: it touched the blob the same way);
  R = min(replicas, live nodes). Fewer: NotEnoughReplicas, naming every node
  tried and why. A source that changed while it was uploaded fails the put.
- A read tries read_order and moves on at a missing file, a timeout, a
  corrupt copy or any other StorageError; it fails only when no node had a
  good copy, naming what each said.
- A node that did not answer is "recently failed" for FAILED_MEMORY_S: it
  goes to the end of every order, so a dead node costs one short timeout,
  not one per request. Every node but the last tried gets PROBE_TIMEOUT_S
  per reply; the last one, the full timeout.
- Thread-safe: each thread has its own StorageClient per node (a socket
  belongs to one thread); uploads run on a small pool of threads.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import NamedTuple, TypeVar

import zmq

from uds import wire
from uds.storage.client import (
    DEFAULT_TIMEOUT_S, CorruptDataError, HashMismatchError, NotEnoughReplicas, OutOfRangeError, Progress,
    StorageClient, StorageError, StorageTimeout, TooLargeError, UnknownFileError, hash_file,
)
from uds.storage.directory import StorageDirectory
from uds.storage.placement import StorageMember, put_order, read_order
from uds.units import size_text
from uds.wire import ErrorCode
from uds.wire.ids import BlockManifest, file_id_of
from uds.wire.transport import Transport

log = logging.getLogger("client.storage")

# A live node answers a request in milliseconds, a 4 MiB read in tens of
# them: a node silent this long, with another replica left to try, is
# passed over.
PROBE_TIMEOUT_S = 2.0
# A node that did not answer goes to the end of every order this long.
FAILED_MEMORY_S = 10.0
# Upload threads: R at a time per put, for several puts at once.
UPLOAD_THREADS = 8

T = TypeVar("T")


class NoGoodCopy(StorageError):
    """No storage node had a good copy of the file; says what each answered.
    `corrupt_from`: the nodes whose copy failed its check."""

    def __init__(self, reason: str, corrupt_from: Sequence[str] = ()) -> None:
        super().__init__("cluster", reason)
        self.corrupt_from = list(corrupt_from)


def why(fault: BaseException) -> str:
    """What a node's failure was, in a few words, for a list of nodes tried."""
    if isinstance(fault, StorageTimeout):
        return "no answer"
    if isinstance(fault, TooLargeError):
        free = re.search(r"(\d+) free", fault.reason)
        return f"full: {size_text(int(free.group(1)))} free" if free else f"full: {fault.reason}"
    if isinstance(fault, UnknownFileError):
        return "no such file"
    if isinstance(fault, CorruptDataError):
        return f"corrupt copy ({fault.reason})"
    if isinstance(fault, StorageError):
        return fault.reason + ("" if fault.error_code is None else f" [error {fault.error_code}]")
    return f"{type(fault).__name__}: {fault}"


def listing(said: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{address} ({what})" for address, what in said) or "no storage node known"


class Touched(NamedTuple):
    """What a touch found: the file's size (None: no node said it has it),
    how many live nodes answered that they hold it and how many that they
    lack it (a node that did not answer is neither), and R for the live
    membership."""

    size: int | None
    holders: int
    lacking: int
    replicas: int


class ReplicatedStorage:
    """Puts to R storage nodes and reads that fail over; see the module's rules."""

    def __init__(self, transport: Transport, node_id: bytes, directory: StorageDirectory, replicas: int,
                 timeout_s: float = DEFAULT_TIMEOUT_S, probe_timeout_s: float = PROBE_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {replicas}")
        self.node_id = node_id
        self.directory = directory
        self.replicas = replicas
        self.timeout_s = timeout_s
        self.probe_timeout_s = min(probe_timeout_s, timeout_s)
        self._transport = transport
        self._clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[StorageClient] = []     # every thread's, so close() reaches them all
        self._failed_at: dict[str, float] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    # -- membership and order ---------------------------------------------------

    def members(self) -> list[StorageMember]:
        self.directory.refresh()
        return self.directory.members()

    def replicas_among(self, members: Sequence[StorageMember]) -> int:
        """R for this membership: the policy's, or every live node if fewer."""
        return min(self.replicas, sum(member.alive for member in members))

    def read_addresses(self, file_id: bytes, rotate: int = 0) -> list[str]:
        """Where to look for the file: read_order, recently failed nodes last;
        `rotate` turns the order of the first R live ones by that many."""
        members = self.members()
        addresses = self._demoted([member.address for member in read_order(file_id, members)])
        alive = {member.address for member in members if member.alive}
        head = [address for address in addresses[:self.replicas_among(members)] if address in alive]
        if rotate and len(head) > 1:
            turn = rotate % len(head)
            addresses[:len(head)] = head[turn:] + head[:turn]
        return addresses

    def _demoted(self, addresses: list[str]) -> list[str]:
        recent = self._recently_failed()
        return [a for a in addresses if a not in recent] + [a for a in addresses if a in recent]

    def _recently_failed(self) -> set[str]:
        """The nodes that did not answer within FAILED_MEMORY_S."""
        now = self._clock()
        with self._lock:
            return {address for address, at in self._failed_at.items() if now - at < FAILED_MEMORY_S}

    def _note(self, address: str, answered: bool) -> None:
        with self._lock:
            if answered:
                self._failed_at.pop(address, None)
            else:
                self._failed_at[address] = self._clock()

    def _client(self, address: str) -> StorageClient:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        client = clients.get(address)
        if client is None:
            with self._lock:
                if self._closed:
                    raise StorageError(address, "the storage connection is closed")
                try:
                    client = StorageClient(self._transport, address, self.node_id, timeout_s=self.timeout_s)
                except zmq.ZMQError as fault:   # an address ZeroMQ cannot connect to
                    raise StorageError(address, f"cannot connect: {fault}") from None
                self._clients.append(client)
            clients[address] = client
        return client

    @contextlib.contextmanager
    def _client_waiting(self, address: str, timeout_s: float) -> Iterator[StorageClient]:
        """The calling thread's client of `address`, waiting `timeout_s` per
        reply for the block's requests, then the full timeout again."""
        client = self._client(address)
        client.timeout_s = timeout_s
        try:
            yield client
        finally:
            client.timeout_s = self.timeout_s

    # -- puts -------------------------------------------------------------------

    def put_bytes(self, data: bytes | bytearray | memoryview,
                  progress: Progress | None = None) -> tuple[bytes, int]:
        """Store `data` on R nodes; (file id, size)."""
        view = memoryview(data).cast("B")
        file_id = file_id_of(view)
        self.store(file_id, len(view), view, progress)
        return file_id, len(view)

    def put_file(self, path: str | os.PathLike[str], progress: Progress | None = None) -> tuple[bytes, int]:
        """Store a local file on R nodes; (file id, size). Hashed once, read
        again by each upload."""
        file_id, size = hash_file(path)
        self.store(file_id, size, os.fspath(path), progress)
        return file_id, size

    def put_descriptor(self, descriptor: int, progress: Progress | None = None) -> tuple[bytes, int]:
        """Store the file open as `descriptor` (through /proc/self/fd: the very
        inode, never a path that could have been swapped)."""
        return self.put_file(f"/proc/self/fd/{descriptor}", progress)

    def store(self, file_id: bytes, size: int, source: str | memoryview,
              progress: Progress | None = None) -> list[str]:
        """Upload content hashed as (file_id, size) to R nodes; the nodes
        that hold it. See the module's rules."""
        members = self.members()
        wanted = self.replicas_among(members)
        said: list[tuple[str, str]] = [(member.address, f"full: {size_text(member.free_bytes)} free")
                                       for member in members if member.alive and member.free_bytes is not None
                                       and member.free_bytes < size]
        said += [(member.address, "lost") for member in members if not member.alive]
        pending = deque(self._demoted([member.address for member in put_order(file_id, members, size)]))
        if wanted == 0:
            raise NotEnoughReplicas(f"no live storage node to take {size_text(size)}: {listing(said)}")
        tracker = _UploadProgress(size, progress)
        running: dict[Future, str] = {}
        stored: list[str] = []
        fatal: BaseException | None = None
        pool = self._upload_pool()
        while True:
            while fatal is None and pending and len(stored) + len(running) < wanted:
                address = pending.popleft()
                tracker.start(address)
                running[pool.submit(self._upload_to, address, file_id, size, source, tracker)] = address
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                address = running.pop(future)
                fault = future.exception()
                if fault is None:
                    stored.append(address)
                    tracker.finish(address, stored=True)
                    continue
                tracker.finish(address, stored=False)
                if isinstance(fault, (HashMismatchError, OutOfRangeError)) or not isinstance(fault, StorageError):
                    fatal = fatal or fault       # the source changed, or our key was refused
                else:
                    said.append((address, why(fault)))
        if fatal is not None:
            raise fatal
        if len(stored) < wanted:
            where = f" (stored on {', '.join(stored)})" if stored else ""
            lead = (f"no storage node can take {size_text(size)}" if not stored else
                    f"only {len(stored)} of {wanted} storage nodes took {size_text(size)}{where}")
            raise NotEnoughReplicas(f"{lead} of {file_id.hex()}: {listing(said)}")
        return stored

    def _upload_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise StorageError("cluster", "the storage connection is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="storage-upload")
            return self._pool

    def _upload_to(self, address: str, file_id: bytes, size: int, source: str | memoryview,
                   tracker: "_UploadProgress") -> None:
        """Upload thread: a short stat first, so that a dead node costs the
        probe timeout only; a node that has the file is done."""
        try:
            with self._client_waiting(address, self.probe_timeout_s) as client:
                present = client.stat(file_id) == size
            if not present:
                client.put_hashed(file_id, size, source, lambda done, total: tracker.update(address, done))
        except StorageTimeout:
            self._note(address, answered=False)
            raise
        self._note(address, answered=True)

    # -- reads ------------------------------------------------------------------

    def first_good(self, file_id: bytes, action: Callable[[StorageClient], T], what: str,
                   rotate: int = 0) -> T:
        """`action` on the first node in read order for which it succeeds;
        NoGoodCopy (UnknownFileError if every node said it lacks the file)
        naming what each node said, if none does."""
        said: list[tuple[str, str]] = []
        faults: list[BaseException] = []
        addresses = self.read_addresses(file_id, rotate)
        for position, address in enumerate(addresses):
            wait_s = self.timeout_s if position == len(addresses) - 1 else self.probe_timeout_s
            try:
                with self._client_waiting(address, wait_s) as client:
                    result = action(client)
            except StorageError as fault:
                self._note(address, answered=not isinstance(fault, StorageTimeout))
                said.append((address, why(fault)))
                faults.append(fault)
                if not isinstance(fault, UnknownFileError):
                    log.warning("%s of %s from %s failed: %s", what, file_id.hex(), address, fault)
                continue
            self._note(address, answered=True)
            return result
        if faults and all(isinstance(fault, UnknownFileError) for fault in faults):
            raise UnknownFileError("cluster", f"no file {file_id.hex()} on any storage node: {listing(said)}",
                                   int(ErrorCode.UNKNOWN_FILE))
        text = f"{what} of {file_id.hex()}: no storage node has a good copy: {listing(said)}"
        raise NoGoodCopy(text, [fault.address for fault in faults if isinstance(fault, CorruptDataError)])

    def stat(self, file_id: bytes) -> int | None:
        """The file's size, or None if every node answered that it lacks it."""
        def present(client: StorageClient) -> int:
            size = client.stat(file_id)
            if size is None:
                raise UnknownFileError(client.address, "no such file", int(ErrorCode.UNKNOWN_FILE))
            return size
        try:
            return self.first_good(file_id, present, "stat")
        except UnknownFileError:
            return None

    def touch(self, file_id: bytes) -> int | None:
        """Stat the file on every live node that answers (a stat marks a blob
        as used, for collection); its size, or None if none answered that it
        has it. A node that failed lately is left out. Never raises a
        StorageError."""
        return self.touch_holders(file_id)[0]

    def touch_holders(self, file_id: bytes) -> Touched:
        """`touch`, and what the nodes answered (see Touched)."""
        size = None
        holders = lacking = 0
        members = self.members()
        live = {member.address for member in members if member.alive}
        recently_failed = self._recently_failed()
        for address in self.read_addresses(file_id):
            if address not in live or address in recently_failed:
                continue
            try:
                with self._client_waiting(address, self.probe_timeout_s) as client:
                    found = client.stat(file_id)
            except StorageError as fault:
                self._note(address, answered=not isinstance(fault, StorageTimeout))
                continue
            if found is not None:
                size = found
                holders += 1
            else:
                lacking += 1
        return Touched(size, holders, lacking, self.replicas_among(members))

    def get(self, file_id: bytes) -> bytes:
        """The whole file, checked against its id."""
        return self.first_good(file_id, lambda client: client.get(file_id), "get")

    def get_to_file(self, file_id: bytes, path: str | os.PathLike[str], progress: Progress | None = None) -> int:
        """Write the whole file to `path` (replaced only once the content checks out); its size."""
        return self.first_good(file_id, lambda client: client.get_to_file(file_id, path, progress), "get")

    def read(self, file_id: bytes, offset: int, length: int) -> bytes:
        """Exactly `length` bytes from `offset` (not checked: see read_checked)."""
        return self.first_good(file_id, lambda client: client.read(file_id, offset, length), "read")

    def read_checked(self, file_id: bytes, offset: int, length: int, check: Callable[[bytes], bool],
                     first: int = 0) -> tuple[bytes, str]:
        """(bytes, address): a range that passes `check`, from the first node
        whose copy does; a copy that fails is passed over like a missing one.
        `first` rotates the start among the file's first R nodes, so that
        readers of one file spread over its replicas."""
        def checked(client: StorageClient) -> tuple[bytes, str]:
            data = client.read(file_id, offset, length)
            if not check(data):
                raise CorruptDataError(client.address, f"[{offset}, +{length}) does not match its hash")
            return data, client.address
        return self.first_good(file_id, checked, "read", rotate=first)

    def manifest(self, file_id: bytes) -> BlockManifest:
        """The file's manifest, checked against its id, from the first node with a good one."""
        return self.first_good(file_id, lambda client: client.manifest(file_id), "manifest")

    # -- every node -------------------------------------------------------------

    def each_node(self, action: Callable[[StorageClient], T],
                  timeout_s: float | None = None) -> list[tuple[str, T | StorageError]]:
        """`action` on every known node, in turn, each waiting `timeout_s`
        per reply (the probe timeout by default): (address, result or the
        StorageError it raised)."""
        answers: list[tuple[str, T | StorageError]] = []
        for address in self.directory.addresses():
            try:
                with self._client_waiting(address, timeout_s or self.probe_timeout_s) as client:
                    answers.append((address, action(client)))
            except StorageError as fault:
                answers.append((address, fault))
        return answers

    def node_stats(self) -> list[tuple[str, dict[str, int] | StorageError]]:
        """Every node's counters, or why it did not answer."""
        return self.each_node(lambda client: client.stats())

    def stats(self) -> dict[str, int]:
        """The counters of every node that answers, added up."""
        total: dict[str, int] = {}
        for _, answer in self.node_stats():
            if not isinstance(answer, StorageError):
                for name, value in answer.items():
                    total[name] = total.get(name, 0) + value
        return total

    def gc_run(self, dry_run: bool, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[tuple[str, wire.GcRunReply | StorageError]]:
        """Ask every node for one collection pass now (or what it would delete)."""
        return self.each_node(lambda client: client.gc_run(dry_run), timeout_s)

    def close(self) -> None:
        """Close every thread's clients; call once nothing stores or reads any more."""
        with self._lock:
            self._closed = True
            clients, self._clients = self._clients, []
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        for client in clients:
            client.close()


class _UploadProgress:
    """One put's progress over its uploads: the bytes of the slowest replica
    under way (a replaced node starts again from zero)."""

    def __init__(self, size: int, progress: Progress | None) -> None:
        self.size = size
        self._progress = progress
        self._lock = threading.Lock()
        self._done: dict[str, int] = {}
        self._stored = 0
        self._shown = -1

    def start(self, address: str) -> None:
        with self._lock:
            self._done[address] = 0

    def update(self, address: str, done: int) -> None:
        with self._lock:
            if address in self._done:
                self._done[address] = done
                self._show()

    def finish(self, address: str, stored: bool) -> None:
        with self._lock:
            self._done.pop(address, None)
            self._stored += stored
            if stored:              # a failed one is replaced: its successor's bytes will show
                self._show()

    def _show(self) -> None:
        if self._progress is None:
            return
        slowest = min(self._done.values(), default=self.size)
        if slowest != self._shown:
            self._shown = slowest
            self._progress(slowest, self.size)
