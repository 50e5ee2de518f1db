"""Storage throughput, measured in one run: puts and gets of a FILE_MiB file
with R = 2 over three storage daemons (storage/replicas.py) against the
same through one node's StorageClient, and against the raw loopback rate
of plain ZeroMQ (a DEALER asking a ROUTER for the same bytes, no CURVE, no
disk). Prints one JSON line (MiB/s).

- put_r2 / put_one_node: a local file (in the page cache) stored, hashed
  once; R = 2 writes the bytes twice, to two nodes at once, each fsynced.
- get_r2 / get_one_node: the whole file into memory, checked against its id.
- fetch_*: the worker's way, 1 MiB blocks each checked against the
  manifest: one thread in order (ReplicatedBlockSource, StorageBlockSource),
  then FETCH_THREADS threads, with and without `spread` (consecutive
  blocks starting at different replicas).
- raw_loopback: 4 MiB frames, READS_IN_FLIGHT outstanding, as the storage
  client asks for them.
Each figure is the best of REPEATS. Every daemon runs on this machine, so
the figures share its cores with the client.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import zmq  # noqa: E402

from daemons import ClusterLayout  # noqa: E402
from uds.storage.client import READ_PIECE_BYTES, READS_IN_FLIGHT, StorageClient  # noqa: E402
from uds.storage.directory import StorageDirectory  # noqa: E402
from uds.storage.replicas import ReplicatedStorage  # noqa: E402
from uds.wire.enums import NodeRole  # noqa: E402
from uds.wire.ids import BLOCK_BYTES, new_id  # noqa: E402
from uds.wire.transport import Transport  # noqa: E402
from uds.worker.blocks import ReplicatedBlockSource, StorageBlockSource  # noqa: E402

MiB = 1 << 20
FILE_BYTES = int(os.environ.get("UDS_BENCH_FILE_MIB", "128")) * MiB
REPEATS = int(os.environ.get("UDS_BENCH_REPEATS", "2"))
NODES = 3
REPLICAS = 2
FETCH_THREADS = 4


def mib_per_s(byte_count: int, seconds: float) -> float:
    return round(byte_count / MiB / seconds, 1)


def best(measure, repeats: int = REPEATS) -> float:
    return max(measure() for _ in range(repeats))


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def raw_loopback_rate(byte_count: int) -> float:
    """Plain ZeroMQ over tcp loopback: a ROUTER answering each request with
    a 4 MiB frame, READS_IN_FLIGHT requests outstanding."""
    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    payload = os.urandom(READ_PIECE_BYTES)
    pieces = -(-byte_count // READ_PIECE_BYTES)

    def serve() -> None:
        for _ in range(pieces):
            peer, _request = router.recv_multipart()
            router.send_multipart([peer, payload], copy=False)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    started = time.perf_counter()
    asked = 0
    for _ in range(min(READS_IN_FLIGHT, pieces)):
        dealer.send(b"read")
        asked += 1
    received = 0
    while received < pieces:
        frame = dealer.recv(copy=False)
        assert len(frame) == READ_PIECE_BYTES
        received += 1
        if asked < pieces:
            dealer.send(b"read")
            asked += 1
    seconds = time.perf_counter() - started
    server.join(10)
    dealer.close(linger=0)
    router.close(linger=0)
    return mib_per_s(pieces * READ_PIECE_BYTES, seconds)


def fetch_all(source, file_id: bytes, threads: int) -> float:
    offsets = range(0, FILE_BYTES, BLOCK_BYTES)
    source.fetch(file_id, 0, BLOCK_BYTES)               # connect (and fetch the manifest) first
    if threads == 1:
        return mib_per_s(FILE_BYTES, timed(lambda: [source.fetch(file_id, offset, BLOCK_BYTES)
                                                    for offset in offsets]))
    with ThreadPoolExecutor(threads) as pool:
        return mib_per_s(FILE_BYTES, timed(lambda: list(pool.map(
            lambda offset: source.fetch(file_id, offset, BLOCK_BYTES), offsets))))


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    figures: dict = {"benchmark": "storage", "file_MiB": FILE_BYTES // MiB, "nodes": NODES, "replicas": REPLICAS}
    with tempfile.TemporaryDirectory(prefix="uds-storage-bench-") as folder:
        work = pathlib.Path(folder)
        layout = ClusterLayout.create(work / "cluster", storage=NODES, storage_policy={"replicas": REPLICAS})
        try:
            for index in range(NODES):
                layout.start("storage", name=str(index), wait=False)
            for daemon in layout.started:
                daemon.wait_ready()
            with Transport(layout.keys(NodeRole.CLIENT)) as transport:
                addresses = [entry.address for entry in layout.cluster.storage]
                storage = ReplicatedStorage(transport, new_id(), StorageDirectory(addresses), REPLICAS)
                single = StorageClient(transport, addresses[0], new_id())
                try:
                    figures.update(measure(work, storage, single))
                finally:
                    storage.close()
                    single.close()
        finally:
            layout.cleanup()
    figures["raw_loopback_MiBps"] = best(lambda: raw_loopback_rate(FILE_BYTES))
    for name in ("put_r2", "put_one_node", "get_r2", "get_one_node", "fetch_r2_one_thread"):
        figures[f"{name}_ratio_to_raw"] = round(figures[f"{name}_MiBps"] / figures["raw_loopback_MiBps"], 3)
    print(json.dumps(figures))


def measure(work: pathlib.Path, storage: ReplicatedStorage, single: StorageClient) -> dict:
    figures = {}
    puts_r2, puts_one = [], []
    ids = []
    for round_number in range(REPEATS):        # fresh content each time: a present file costs nothing
        path = work / f"input-{round_number}.bin"
        path.write_bytes(os.urandom(FILE_BYTES))
        path.read_bytes()
        puts_r2.append(mib_per_s(FILE_BYTES, timed(lambda: ids.append(storage.put_file(path)[0]))))
        other = work / f"single-{round_number}.bin"
        other.write_bytes(os.urandom(FILE_BYTES))
        other.read_bytes()
        puts_one.append(mib_per_s(FILE_BYTES, timed(lambda: single.put_file(other))))
        path.unlink()
        other.unlink()
    figures["put_r2_MiBps"], figures["put_one_node_MiBps"] = max(puts_r2), max(puts_one)
    file_id = ids[0]
    figures["get_r2_MiBps"] = best(lambda: mib_per_s(FILE_BYTES, timed(lambda: storage.get(file_id))))
    holder = next(client_address for client_address in storage.read_addresses(file_id))
    with StorageClient(storage._transport, holder, new_id()) as reader:
        figures["get_one_node_MiBps"] = best(lambda: mib_per_s(FILE_BYTES, timed(lambda: reader.get(file_id))))
        plain = StorageBlockSource(lambda: StorageClient(storage._transport, holder, new_id()))
        try:
            figures["fetch_one_node_one_thread_MiBps"] = best(lambda: fetch_all(plain, file_id, 1))
            figures[f"fetch_one_node_{FETCH_THREADS}_threads_MiBps"] = best(
                lambda: fetch_all(plain, file_id, FETCH_THREADS))
        finally:
            plain.close()
    replicated, spread = ReplicatedBlockSource(storage), ReplicatedBlockSource(storage, spread=True)
    figures["fetch_r2_one_thread_MiBps"] = best(lambda: fetch_all(replicated, file_id, 1))
    figures[f"fetch_r2_{FETCH_THREADS}_threads_MiBps"] = best(lambda: fetch_all(replicated, file_id, FETCH_THREADS))
    figures[f"fetch_r2_spread_{FETCH_THREADS}_threads_MiBps"] = best(lambda: fetch_all(spread, file_id, FETCH_THREADS))
    return figures


if __name__ == "__main__":
    main()
