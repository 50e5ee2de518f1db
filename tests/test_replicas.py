"""Several storage nodes as real processes, used through ReplicatedStorage:
puts land on the file's replica set, reads fail over past a killed node, a
full node is passed over, and a cluster-wide full disk says so."""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time

import pytest

from daemons import ClusterLayout, wait_until
from uds.storage.client import NotEnoughReplicas, StorageClient
from uds.storage.directory import StorageDirectory
from uds.storage.placement import StorageMember, replica_set
from uds.storage.replicas import FAILED_MEMORY_S, NoGoodCopy, ReplicatedStorage
from uds.wire.enums import NodeRole
from uds.wire.ids import BLOCK_BYTES, file_id_of, new_id
from uds.wire.transport import Transport
from uds.worker.blocks import CorruptBlock, ReplicatedBlockSource

MiB = 1 << 20
NODES = 3
# A dead node costs at most the probe timeout once: a read after a kill -9 takes far less than the 30 s default.
FAILOVER_BOUND_S = 10.0


@contextlib.contextmanager
def small_filesystem(folder, size="2m"):
    """A tmpfs of `size` at `folder`, for a node whose disk is full; skips without root."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small filesystem here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def layout(tmp_path):
    layout = ClusterLayout.create(tmp_path / "cluster", storage=NODES, storage_policy={"replicas": 2})
    try:
        yield layout
    finally:
        layout.cleanup()


def start_nodes(layout, indexes=range(NODES)):
    started = {index: layout.start("storage", name=str(index), wait=False) for index in indexes}
    for daemon in started.values():
        daemon.wait_ready()
    return started


@pytest.fixture
def storage(layout):
    with Transport(layout.keys(NodeRole.CLIENT)) as transport:
        directory = StorageDirectory([entry.address for entry in layout.cluster.storage])
        replicated = ReplicatedStorage(transport, new_id(), directory, replicas=2, timeout_s=10.0)
        try:
            yield replicated
        finally:
            replicated.close()


def holders(layout, file_id):
    """The addresses of the nodes with the file's blob on disk."""
    name = file_id.hex()
    return {entry.address for entry in layout.cluster.storage
            if (entry.data / "blobs" / name[:2] / name[2:]).is_file()}


def temp_files(layout):
    return [path for entry in layout.cluster.storage if (entry.data / "tmp").is_dir()
            for path in (entry.data / "tmp").iterdir()]


def content_first_on(address, addresses, size, not_on=()):
    """Random content of `size` bytes whose replica set (R = 2) starts at `address`."""
    members = [StorageMember(a) for a in addresses]
    while True:
        content = os.urandom(size)
        order = [member.address for member in replica_set(file_id_of(content), members, 2)]
        if order[0] == address and not set(order) & set(not_on):
            return content


def test_a_put_with_two_replicas_lands_on_exactly_the_replica_set(layout, storage, tmp_path):
    start_nodes(layout)
    members = storage.directory.members()
    for size in (0, 1000, 3 * MiB + 7):
        content = os.urandom(size)
        source = tmp_path / f"file-{size}"
        source.write_bytes(content)
        seen = []
        file_id, stored = storage.put_file(source, progress=lambda done, total: seen.append((done, total)))
        assert (file_id, stored) == (file_id_of(content), size)
        assert holders(layout, file_id) == {member.address for member in replica_set(file_id, members, 2)}
        assert seen[-1] == (size, size)
        assert storage.get(file_id) == content
    assert temp_files(layout) == []


def test_reads_fail_over_when_a_node_holding_the_file_is_killed(layout, storage, tmp_path):
    daemons = start_nodes(layout)
    addresses = [entry.address for entry in layout.cluster.storage]
    content = content_first_on(addresses[0], addresses, 3 * MiB + 5)
    file_id, _ = storage.put_bytes(content)
    assert addresses[0] in holders(layout, file_id)
    daemons[0].kill9()
    started = time.monotonic()
    assert storage.get(file_id) == content
    assert storage.stat(file_id) == len(content)
    source = ReplicatedBlockSource(storage)
    manifest = source.manifest(file_id)
    for index in range(manifest.block_count):
        offset = index * BLOCK_BYTES
        length = min(BLOCK_BYTES, len(content) - offset)
        assert source.fetch(file_id, offset, length) == content[offset:offset + length]
        assert source.where() != f"storage {addresses[0]}"
    assert time.monotonic() - started < FAILOVER_BOUND_S
    # The dead node went to the end of the order: the next read does not wait for it at all.
    started = time.monotonic()
    assert storage.read(file_id, 0, 10) == content[:10]
    assert time.monotonic() - started < min(1.0, FAILED_MEMORY_S)


def test_a_corrupt_replica_is_passed_over_and_blamed_only_when_every_copy_is_bad(layout, storage):
    start_nodes(layout)
    addresses = [entry.address for entry in layout.cluster.storage]
    content = content_first_on(addresses[1], addresses, 2 * MiB + 3)
    file_id, _ = storage.put_bytes(content)
    name = file_id.hex()
    blobs = [entry.data / "blobs" / name[:2] / name[2:] for entry in layout.cluster.storage
             if entry.address in holders(layout, file_id)]
    first = layout.cluster.storage[1].data / "blobs" / name[:2] / name[2:]
    with open(first, "r+b") as disk:                       # the first replica's disk rots
        disk.seek(MiB + 9)
        disk.write(bytes([content[MiB + 9] ^ 1]))
    source = ReplicatedBlockSource(storage)
    assert source.fetch(file_id, MiB, BLOCK_BYTES) == content[MiB:2 * MiB]
    assert source.where() != f"storage {addresses[1]}"
    assert storage.get(file_id) == content
    for blob in blobs:                                     # now every replica is bad
        with open(blob, "r+b") as disk:
            disk.seek(MiB + 9)
            disk.write(bytes([content[MiB + 9] ^ 1]))
    with pytest.raises(CorruptBlock) as failure:
        source.fetch(file_id, MiB, BLOCK_BYTES)
    assert str(failure.value).startswith(f"{name} block 1 from storage tcp://")
    with pytest.raises(NoGoodCopy):
        storage.get(file_id)


def test_a_full_node_is_skipped_for_the_next_in_order(layout, storage):
    with small_filesystem(layout.cluster.storage[0].data):
        start_nodes(layout)
        addresses = [entry.address for entry in layout.cluster.storage]
        content = content_first_on(addresses[0], addresses, 4 * MiB)
        file_id, _ = storage.put_bytes(content)
        assert holders(layout, file_id) == set(addresses[1:])      # both others, not the full one
        assert storage.get(file_id) == content
        assert temp_files(layout) == []


def test_every_node_full_is_a_clear_error_and_leaves_nothing_behind(layout, storage):
    with contextlib.ExitStack() as stack:
        for entry in layout.cluster.storage:
            stack.enter_context(small_filesystem(entry.data))
        start_nodes(layout)
        content = os.urandom(4 * MiB)
        with pytest.raises(NotEnoughReplicas) as failure:
            storage.put_bytes(content)
        told = str(failure.value)
        assert "no storage node can take 4.0 MiB" in told, told
        for entry in layout.cluster.storage:
            assert f"{entry.address} (full: " in told, told
        assert temp_files(layout) == []
        assert holders(layout, file_id_of(content)) == set()


def test_a_dead_node_is_named_when_too_few_nodes_take_a_file(layout, storage):
    start_nodes(layout, indexes=[0])
    addresses = [entry.address for entry in layout.cluster.storage]
    started = time.monotonic()
    with pytest.raises(NotEnoughReplicas) as failure:
        storage.put_bytes(os.urandom(1000))
    told = str(failure.value)
    assert told.startswith("storage cluster: only 1 of 2 storage nodes took 1000 B"), told
    assert f"{addresses[1]} (no answer)" in told and f"{addresses[2]} (no answer)" in told, told
    assert time.monotonic() - started < FAILOVER_BOUND_S


def test_a_node_that_has_the_file_is_not_sent_it_again(layout, storage):
    start_nodes(layout)
    content = os.urandom(2 * MiB)
    file_id, _ = storage.put_bytes(content)
    with Transport(layout.keys(NodeRole.CLIENT)) as transport:
        received = {}
        for address in holders(layout, file_id):
            with StorageClient(transport, address, new_id()) as client:
                received[address] = client.stats()["bytes_received"]
        storage.put_bytes(content)
        for address, before in received.items():
            with StorageClient(transport, address, new_id()) as client:
                assert client.stats()["bytes_received"] == before


def test_a_job_succeeds_from_the_other_replica_when_a_node_holding_its_input_is_killed(tmp_path):
    """A whole cluster over three storage nodes: the worker reads the input
    from the replica that lives and stores the output on two live nodes."""
    from uds import client
    layout = ClusterLayout.create(tmp_path / "whole", storage=NODES, storage_policy={"replicas": 2})
    try:
        nodes = start_nodes(layout)
        others = [layout.start("master", wait=False), layout.start("loadbalancer", wait=False),
                  layout.start("worker", name="w0", wait=False)]
        for daemon in others:
            daemon.wait_ready()
        addresses = [entry.address for entry in layout.cluster.storage]
        with client.connect(layout.path, timeout=20) as connection:
            # The file must be on addresses[0] before the kill: wait until the
            # masters list every node, so that the put goes by their view.
            wait_until(lambda: sum(node["role"] == NodeRole.STORAGE and node["state"] == "alive"
                                   for node in connection.nodes()) == NODES, "masters that list every node")
            content = content_first_on(addresses[0], addresses, 3 * MiB + 1)
            file_id = connection.put(content)
            assert addresses[0] in holders(layout, bytes.fromhex(file_id))
            nodes[0].kill9()
            job = connection.submit_job(b"#!/bin/sh\nsha256sum < $UDS_INPUTS/in > $UDS_OUTPUT/out\n",
                                        inputs={"in": file_id}, timeout=60)
            status = job.wait(timeout=90)
            assert status.state == "succeeded", status
            output = status.chunks[0].outputs["out"]
            assert connection.get(output).split()[0].decode() == hashlib.sha256(content).hexdigest()
            assert holders(layout, bytes.fromhex(output)) == set(addresses[1:])
    finally:
        layout.cleanup()


def test_a_touch_stats_every_live_node_and_never_raises(layout, storage):
    daemons = start_nodes(layout)
    content = os.urandom(5000)
    file_id, _ = storage.put_bytes(content)
    assert storage.touch(file_id) == len(content)
    assert storage.touch(new_id()) is None
    for daemon in daemons.values():
        daemon.kill9()
    assert storage.touch(file_id) is None
