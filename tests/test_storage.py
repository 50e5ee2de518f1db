"""The storage daemon as a real process, driven by the real client and, where
the client would not misbehave, by raw messages on an admitted socket."""
import os
import subprocess
import sys
import time

import pytest
import zmq

from uds import wire
from uds.storage.client import (
    CorruptDataError, OutOfRangeError, StorageClient, StorageInternalError, StorageTimeout,
    UnknownFileError,
)
from daemons import ROOT, free_port, wait_until
from uds.storage.blobstore import (
    BlobStore, CorruptBlob, HashMismatch, LengthMismatch, RangeError, UnknownFile,
)
from uds.wire import ErrorCode, PutStatus
from uds.wire.ids import BLOCK_BYTES, file_id_of, manifest_of, new_id
from uds.wire.enums import NodeRole
from uds.wire.limits import MAX_DATA_FRAME_BYTES
from uds.wire.transport import Transport

REPLY_TIMEOUT_S = 5.0
NOTHING_WITHIN_S = 0.3
TEN_MIB = 10 * 1024 * 1024
NODE = new_id()


@pytest.fixture
def node(daemons):
    return daemons.start("storage")


@pytest.fixture
def transport(daemons):
    with Transport(daemons.keys(NodeRole.CLIENT)) as shared:
        yield shared


@pytest.fixture
def client(daemons, transport, node):
    with StorageClient(transport, daemons.cluster.storage[0].address, NODE,
                       timeout_s=REPLY_TIMEOUT_S) as storage:
        yield storage


@pytest.fixture
def raw(daemons, transport, node):
    """An admitted DEALER for messages the client would never send."""
    return transport.client_socket(zmq.DEALER, daemons.cluster.storage[0].address, NodeRole.STORAGE)


def exchange(sock, frames, timeout_s=REPLY_TIMEOUT_S):
    """Send frames (or a message); the decoded reply, or None if none came."""
    if isinstance(frames, wire.Message):
        frames = wire.encode(frames)
    sock.send_multipart(frames)
    if not sock.poll(timeout_s * 1000):
        return None
    return wire.decode(sock.recv_multipart())


def blob_files(node_process):
    """The blobs on the node's disk, without their manifests."""
    return sorted(p for p in (node_process.data / "blobs").rglob("*")
                  if p.is_file() and not p.name.endswith(".blocks"))


def manifest_files(node_process):
    return sorted((node_process.data / "blobs").rglob("*.blocks"))


def temp_files(node_process):
    return sorted((node_process.data / "tmp").iterdir())


@pytest.mark.parametrize("size", [0, 1000])
def test_put_bytes_then_get_round_trips(client, size):
    data = os.urandom(size)
    file_id, stored = client.put_bytes(data)
    assert (file_id, stored) == (file_id_of(data), size)
    assert client.stat(file_id) == size
    assert client.get(file_id) == data


def test_large_file_goes_in_pieces_both_ways(client, node, tmp_path):
    data = os.urandom(TEN_MIB + 123)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    sent, fetched = [], []
    file_id, size = client.put_file(source, progress=lambda done, total: sent.append((done, total)))
    assert (file_id, size) == (file_id_of(data), len(data))
    assert len(sent) == 11 and sent[-1] == (size, size)   # 1 MiB pieces
    blob = node.data / "blobs" / file_id.hex()[:2] / file_id.hex()[2:]
    assert blob_files(node) == [blob]
    assert manifest_files(node) == [blob.with_name(blob.name + ".blocks")]   # beside it, from the put
    target = tmp_path / "copy.bin"
    assert client.get_to_file(file_id, target, progress=lambda d, t: fetched.append(d)) == size
    assert target.read_bytes() == data
    assert fetched[-1] == size and len(fetched) == 3      # 4 MiB reads
    assert client.get(file_id) == data
    counters = client.stats()
    assert counters["bytes_received"] == size and counters["puts_stored"] == 1
    assert counters["bytes_served"] == 2 * size and counters["reads"] == 6


def test_put_of_a_present_blob_is_one_round_trip(client, raw):
    data = os.urandom(5000)
    file_id, _ = client.put_bytes(data)
    before = client.stats()
    begin = wire.FilePutBegin.make(NODE, request_id=1, file=file_id, file_length=5000)
    reply = exchange(raw, begin)
    assert isinstance(reply, wire.FilePutReply) and reply.status == PutStatus.PRESENT
    assert client.put_bytes(data) == (file_id, 5000)
    after = client.stats()
    assert after["puts_present"] == before["puts_present"] + 2
    assert after["bytes_received"] == before["bytes_received"]
    assert after["puts_begun"] == before["puts_begun"] == 1


def test_ranged_reads_return_exactly_the_bytes_and_count_only_them(client):
    data = os.urandom(MAX_DATA_FRAME_BYTES + 5000)
    file_id, _ = client.put_bytes(data)
    served = client.stats()["bytes_served"]
    assert client.read(file_id, 1000, 5000) == data[1000:6000]
    assert client.read(file_id, len(data), 0) == b""
    # Across the data-frame boundary: two requests in flight.
    assert client.read(file_id, 7, len(data) - 8) == data[7:-1]
    assert client.stats()["bytes_served"] == served + 5000 + len(data) - 8


def test_a_long_read_goes_over_every_stream_and_comes_back_in_order(daemons, transport, node):
    data = os.urandom(5 * MAX_DATA_FRAME_BYTES + 777)
    address = daemons.cluster.storage[0].address
    with StorageClient(transport, address, NODE, timeout_s=REPLY_TIMEOUT_S, streams=3) as reader:
        file_id, _ = reader.put_bytes(data)
        connected = reader.stats()["handshakes_succeeded"]
        assert reader.read(file_id, 0, 5000) == data[:5000]      # one piece: the first stream only
        assert reader.stats()["handshakes_succeeded"] == connected
        assert reader.read(file_id, 3, len(data) - 3) == data[3:]
        # two more streams, once (the node's monitor counts a handshake just after it)
        wait_until(lambda: reader.stats()["handshakes_succeeded"] == connected + 2, "two more streams")
        buffer = bytearray(len(data) - 10)
        assert reader.read_into(file_id, 10, buffer) == len(buffer) and buffer == data[10:]
        assert reader.stats()["handshakes_succeeded"] == connected + 2


def test_read_past_the_end_is_a_range_error(client):
    file_id, size = client.put_bytes(b"0123456789")
    with pytest.raises(OutOfRangeError, match="outside the file of 10 bytes") as caught:
        client.read(file_id, 5, 6)
    assert caught.value.error_code == ErrorCode.RANGE
    with pytest.raises(OutOfRangeError):
        client.read(file_id, 11, 0)
    assert client.read(file_id, 5, 5) == b"56789"


def test_unknown_file_is_a_clear_error(client, raw):
    missing = file_id_of(b"never stored")
    assert client.stat(missing) is None
    for attempt in (lambda: client.get(missing), lambda: client.read(missing, 0, 1)):
        with pytest.raises(UnknownFileError, match=missing.hex()) as caught:
            attempt()
        assert caught.value.error_code == ErrorCode.UNKNOWN_FILE
    reply = exchange(raw, wire.FileRequest.make(NODE, file=missing))
    assert isinstance(reply, wire.Error) and reply.error_code == ErrorCode.UNKNOWN_FILE
    assert reply.failed_type == wire.MessageType.FILE_REQUEST
    # A pipelined read stops at the first error; the errors still on their
    # way answer old requests and must not be taken for the next reply.
    with pytest.raises(UnknownFileError):
        client.read(missing, 0, 3 * MAX_DATA_FRAME_BYTES)
    present, _ = client.put_bytes(b"present")
    assert client.stat(present) == 7 and client.read(present, 0, 7) == b"present"


def test_file_request_returns_a_whole_file_up_to_one_frame(client, raw):
    small = os.urandom(3000)
    small_id, _ = client.put_bytes(small)
    reply = exchange(raw, wire.FileRequest.make(NODE, file=small_id))
    assert isinstance(reply, wire.FileResponse) and bytes(reply.data) == small
    big_id, _ = client.put_bytes(os.urandom(MAX_DATA_FRAME_BYTES + 1))
    reply = exchange(raw, wire.FileRequest.make(NODE, file=big_id))
    assert isinstance(reply, wire.Error) and reply.error_code == ErrorCode.TOO_LARGE
    assert "use file_read" in reply.reason
    counters = client.stats()
    assert counters["file_requests"] == 2 and counters["bytes_served"] == 3000


def put_raw(raw, request_id, file_id, pieces, length):
    """Begin, send pieces at their offsets, end: the end's reply."""
    begin = wire.FilePutBegin.make(NODE, request_id=request_id, file=file_id, file_length=length)
    assert exchange(raw, begin).status == PutStatus.SEND_DATA
    for offset, piece in pieces:
        raw.send_multipart(wire.encode(wire.FilePutData.make(
            NODE, request_id=request_id, file=file_id, offset=offset, data=piece)))
    return exchange(raw, wire.FilePutEnd.make(NODE, request_id=request_id, file=file_id))


def test_content_that_does_not_match_its_id_is_refused_and_not_stored(client, raw, node):
    claimed = file_id_of(b"what I claim")
    reply = put_raw(raw, 1, claimed, [(0, b"what I send!")], 12)
    assert isinstance(reply, wire.Error) and reply.error_code == ErrorCode.HASH_MISMATCH
    assert reply.request_id == 1 and claimed.hex() in reply.reason
    assert client.stat(claimed) is None
    assert blob_files(node) == [] and manifest_files(node) == [] and temp_files(node) == []
    assert client.stats()["hash_mismatches"] == 1


def test_uploads_that_break_the_protocol_are_refused(client, raw, node):
    file_id = file_id_of(b"abcdef")
    short = put_raw(raw, 1, file_id, [(0, b"abc")], 6)
    assert short.error_code == ErrorCode.RANGE and "3 of 6" in short.reason
    # A gap: one error for the bad piece, silence for the rest, the end repeats it.
    first = put_raw(raw, 2, file_id, [(0, b"ab"), (3, b"de"), (5, b"f")], 6)
    assert raw.poll(REPLY_TIMEOUT_S * 1000)
    second = wire.decode(raw.recv_multipart())
    assert first.error_code == second.error_code == ErrorCode.INVALID
    assert first.failed_type == wire.MessageType.FILE_PUT_DATA
    assert second.failed_type == wire.MessageType.FILE_PUT_END
    stray = exchange(raw, wire.FilePutData.make(NODE, request_id=9, file=file_id, offset=0,
                                                data=b"x"))
    assert stray.error_code == ErrorCode.INVALID and "no open put" in stray.reason
    assert temp_files(node) == [] and client.stat(file_id) is None
    assert client.stats()["uploads_open"] == 0


def test_kill9_and_restart_keep_every_blob_and_drop_temp_files(daemons, transport, node):
    address = daemons.cluster.storage[0].address
    blobs = [os.urandom(size) for size in (0, 1, 70_000, 2 * 1024 * 1024 + 3)]
    with StorageClient(transport, address, NODE, timeout_s=REPLY_TIMEOUT_S) as storage:
        ids = [storage.put_bytes(blob)[0] for blob in blobs]
    # An upload cut short by the crash leaves its temporary file behind.
    raw = transport.client_socket(zmq.DEALER, address, NodeRole.STORAGE)
    half = os.urandom(1000)
    begin = wire.FilePutBegin.make(NODE, request_id=1, file=new_id(), file_length=2000)
    assert exchange(raw, begin).status == PutStatus.SEND_DATA
    raw.send_multipart(wire.encode(wire.FilePutData.make(NODE, request_id=1, file=begin.file_uuid,
                                                         offset=0, data=half)))
    assert exchange(raw, wire.StatsQuery.make(NODE, request_id=2)).counters["bytes_received"] > 0
    raw.close()
    assert len(temp_files(node)) == 1
    node.kill9()

    node = daemons.start("storage")
    assert temp_files(node) == []
    with StorageClient(transport, address, NODE, timeout_s=REPLY_TIMEOUT_S) as storage:
        assert [storage.get(file_id) for file_id in ids] == blobs
        assert storage.stats()["temp_files_removed"] == 1
    assert node.stop() == 0
    assert not (node.data / "ready").exists()


def test_get_checks_the_content_against_its_id(client, node):
    file_id, _ = client.put_bytes(b"the real content")
    [blob] = blob_files(node)
    blob.write_bytes(b"the fake content")   # the disk lies, the id does not
    with pytest.raises(CorruptDataError, match=f"read as {file_id.hex()} hashes to"):
        client.get(file_id)


def test_manifest_is_served_checked_and_paged_by_block(client, node, raw):
    data = os.urandom(3 * BLOCK_BYTES + 77)
    file_id, size = client.put_bytes(data)
    assert client.manifest(file_id) == manifest_of(data)
    reply = exchange(raw, wire.FileManifest.make(NODE, request_id=3, file=file_id, first_block=2))
    assert (reply.first_block, reply.block_count, reply.file_length) == (2, 2, size)
    assert bytes(reply.hashes) == manifest_of(data).hashes[64:]
    past = exchange(raw, wire.FileManifest.make(NODE, request_id=4, file=file_id, first_block=5))
    assert isinstance(past, wire.Error) and past.error_code == ErrorCode.RANGE
    empty_id, _ = client.put_bytes(b"")
    assert client.manifest(empty_id).hashes == b""
    with pytest.raises(UnknownFileError):
        client.manifest(file_id_of(b"never stored"))


def test_a_lost_manifest_is_recomputed_and_a_damaged_blob_refused(client, node):
    data = os.urandom(2 * BLOCK_BYTES + 1)
    file_id, _ = client.put_bytes(data)
    [manifest_file] = manifest_files(node)
    manifest_file.write_bytes(b"\0" * 96)              # wrong: recomputed from the blob
    assert client.manifest(file_id) == manifest_of(data)
    assert manifest_file.read_bytes() == manifest_of(data).hashes
    manifest_file.unlink()                              # missing: recomputed and kept
    assert client.manifest(file_id) == manifest_of(data)
    assert manifest_file.exists()
    manifest_file.unlink()
    [blob] = blob_files(node)
    with open(blob, "r+b") as damaged:
        damaged.seek(BLOCK_BYTES + 5)
        damaged.write(bytes([data[BLOCK_BYTES + 5] ^ 1]))
    with pytest.raises(StorageInternalError, match="no longer hashes to its id"):
        client.manifest(file_id)


def test_malformed_messages_get_an_error_and_the_node_carries_on(client, raw):
    valid = wire.encode(wire.StatsQuery.make(NODE, request_id=5))
    bad_body = [wire.encode(wire.StatsReply.make(NODE, request_id=5, role=4, counters={}))[0],
                b"\xc1 not msgpack"]
    for frames, hint in [([b"\xff" + b"garbage!" * 4], "unknown message_type 255"),
                         ([valid[0][:10]], "shorter than the"),
                         (bad_body, "not valid msgpack")]:
        reply = exchange(raw, frames)
        assert isinstance(reply, wire.Error) and reply.error_code == ErrorCode.MALFORMED
        assert hint in reply.reason
    reply = exchange(raw, wire.Hello.make(NODE, request_id=3, role=1, slots=0, cache_bytes=0,
                                          start_time_ms=0, host="h", address="", version=1))
    assert reply.error_code == ErrorCode.UNEXPECTED and reply.request_id == 3
    counters = client.stats()
    assert counters["malformed"] == 3 and counters["unexpected"] == 1
    assert client.put_bytes(b"still serving") == (file_id_of(b"still serving"), 13)


def test_unauthenticated_clients_get_nothing(daemons, client, tmp_path):
    address = daemons.cluster.storage[0].address
    rogue = zmq.Context()
    try:
        null_client = rogue.socket(zmq.DEALER)
        foreign = rogue.socket(zmq.DEALER)
        foreign.curve_publickey, foreign.curve_secretkey = zmq.curve_keypair()
        foreign.curve_serverkey = daemons.keys().public_key(NodeRole.STORAGE)
        query = wire.encode(wire.StatsQuery.make(NODE, request_id=1))
        for sock in (null_client, foreign):
            sock.linger = 0
            sock.connect(address)
            assert exchange(sock, query, timeout_s=NOTHING_WITHIN_S) is None
    finally:
        rogue.destroy(linger=0)
    # The node counts rejections in its monitor thread: give it a moment.
    deadline, queries = time.monotonic() + REPLY_TIMEOUT_S, 0
    while True:
        counters, queries = client.stats(), queries + 1
        if counters["handshakes_rejected"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert counters["handshakes_rejected"] >= 2
    assert counters["handshakes_rejected_auth"] >= 1
    assert counters["stats"] == queries   # the rogues' queries never arrived


def test_a_node_that_does_not_answer_times_out_naming_its_address(transport):
    address = f"tcp://127.0.0.1:{free_port()}"
    with StorageClient(transport, address, NODE, timeout_s=0.2) as storage:
        with pytest.raises(StorageTimeout, match=f"storage {address}: no reply within 0.2 s"):
            storage.stat(new_id())


def test_bad_cluster_file_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "nope.toml"
    result = subprocess.run([sys.executable, "-m", "uds.storage", "--cluster", str(missing)],
                            capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert result.returncode == 2
    assert result.stderr == f"storage: no cluster file at {missing}\n"


# The store on its own: the rules a crash or a liar must not break.

def test_store_checks_length_and_hash_before_anything_appears(tmp_path):
    store = BlobStore(tmp_path)
    content = b"hello world"
    liar = store.begin_put(file_id_of(b"other"), len(content))
    liar.write(content)
    with pytest.raises(HashMismatch):
        liar.finish()
    short = store.begin_put(file_id_of(content), len(content))
    short.write(content[:5])
    with pytest.raises(LengthMismatch):
        short.finish()
    assert list((tmp_path / "tmp").iterdir()) == [] and not store.has(file_id_of(content))
    honest = store.begin_put(file_id_of(content), len(content))
    honest.write(memoryview(content))
    honest.finish()
    assert store.read(file_id_of(content), 6, 5) == b"world"
    with pytest.raises(RangeError):
        store.read(file_id_of(content), 6, 6)
    with pytest.raises(UnknownFile):
        store.size(file_id_of(b"other"))
    store.close()


def test_store_keeps_each_blobs_manifest_beside_it(tmp_path):
    store = BlobStore(tmp_path)
    content = os.urandom(BLOCK_BYTES + 1)
    writer = store.begin_put(file_id_of(content), len(content))
    writer.write(content)
    writer.finish()
    manifest_path = store.path_of(file_id_of(content)).with_suffix(".blocks")
    assert manifest_path.read_bytes() == manifest_of(content).hashes
    assert store.manifest(file_id_of(content)) == manifest_of(content)
    assert store.blob_count() == 1 and list((tmp_path / "tmp").iterdir()) == []
    with open(store.path_of(file_id_of(content)), "r+b") as damaged:
        damaged.write(b"\0")
    manifest_path.unlink()
    with pytest.raises(CorruptBlob):
        store.manifest(file_id_of(content))
    store.close()


def test_store_keeps_few_descriptors_and_clears_temp_on_start(tmp_path):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "leftover.part").write_bytes(b"half")
    store = BlobStore(tmp_path, open_files_cached=2)
    assert store.temp_files_removed == 1 and list((tmp_path / "tmp").iterdir()) == []
    ids = []
    for index in range(5):
        content = bytes([index]) * (index + 1)
        writer = store.begin_put(file_id_of(content), len(content))
        writer.write(content)
        writer.finish()
        ids.append(file_id_of(content))
    for index, file_id in enumerate(ids):
        assert store.read(file_id, 0, index + 1) == bytes([index]) * (index + 1)
    assert len(store._open) == 2
    store.close()
