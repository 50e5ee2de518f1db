"""Storage membership end to end: three real storage nodes heartbeat to a
real master; `uds nodes` lists them with their real figures; a node killed
with -9 is declared lost after lost_after_s, and clients and workers read
from it last; restarted with an empty disk, it is alive again and repair
brings back every file it should hold."""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest

from daemons import ROOT, ClusterLayout, wait_until
from uds import client
from uds.storage.directory import REFRESH_INTERVAL_S, StorageDirectory
from uds.storage.placement import read_order, replica_set
from uds.wire.enums import NodeRole

STORAGE_NODES = 3
HEARTBEAT_S = 0.25
LOST_AFTER_S = 3.0
COMMAND_TIMEOUT_S = 90
READ_INPUT = b"#!/bin/sh\ncat \"$UDS_INPUTS/in.txt\"\n"
# "  tcp://127.0.0.1:PORT  alive  used  free  blobs  repair pending  repaired  corrupt"
STORAGE_ROW = re.compile(r"^  (tcp://127\.0\.0\.1:\d+)\s+(alive|lost)\s+([0-9.]+ [KMG]?i?B)\s+([0-9.]+ [KMG]?i?B)"
                         r"\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$")


def size_bytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]


@pytest.fixture
def layout(tmp_path):
    layout = ClusterLayout.create(tmp_path / "cluster", storage=STORAGE_NODES, storage_policy={
        "heartbeat_interval_s": HEARTBEAT_S, "lost_after_s": LOST_AFTER_S, "repair_interval_s": 1.0,
        "gc_interval_s": 3600.0})
    try:
        yield layout
    finally:
        layout.cleanup()


def uds(layout: ClusterLayout, *args: str) -> str:
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    environment.pop("UDS_CLUSTER", None)
    result = subprocess.run([sys.executable, "-m", "uds.client.cli", "--cluster", str(layout.path), *args],
                            capture_output=True, timeout=COMMAND_TIMEOUT_S, env=environment)
    assert result.returncode == 0, (args, result.stdout.decode(), result.stderr.decode())
    return result.stdout.decode()


def storage_rows(text: str) -> dict[str, tuple]:
    """address -> (state, used bytes, free bytes, blobs) from `uds nodes`."""
    rows = {}
    for line in text.splitlines():
        if match := STORAGE_ROW.match(line):
            rows[match.group(1)] = (match.group(2), size_bytes(match.group(3)), size_bytes(match.group(4)),
                                    int(match.group(5)))
    return rows


def blobs_in(folder: pathlib.Path) -> set[str]:
    return {blob.parent.name + blob.name for blob in (folder / "blobs").glob("*/*")
            if not blob.name.endswith(".blocks")}


def storage_states(connection) -> dict[str, tuple[str, dict]]:
    return {node["address"]: (node["state"], node["figures"]) for node in connection.nodes()
            if node["role"] == NodeRole.STORAGE}


def test_membership_loss_and_repair_of_a_storage_node_with_real_masters(layout):
    storage = [layout.start("storage", name=str(index), wait=False) for index in range(STORAGE_NODES)]
    others = [layout.start("master", wait=False), layout.start("loadbalancer", wait=False),
              layout.start("worker", name="w0", wait=False)]
    for daemon in storage + others:
        daemon.wait_ready()
    addresses = [entry.address for entry in layout.cluster.storage]
    folders = [layout.data_of("storage", str(index)) for index in range(STORAGE_NODES)]
    connection = client.connect(layout.path, timeout=20)
    try:
        # Puts see the masters' membership: all three first, so R is 2.
        wait_until(lambda: [state for state, _ in storage_states(connection).values()] == ["alive"] * STORAGE_NODES,
                   "every storage node registered with the masters")
        files = [connection.put(os.urandom(20_000 + index)) for index in range(9)]
        on_disk = {address: blobs_in(folder) for address, folder in zip(addresses, folders)}
        # R = 2 (a third copy when a node slow under load was passed over)
        assert all(sum(file in held for held in on_disk.values()) >= 2 for file in files), on_disk

        # The masters' figures are the nodes' own: each blob counted where it lies.
        # Compared with the disks as they are at each look: a third copy may
        # be trimmed by repair meanwhile.
        def disk_counts():
            return {address: len(blobs_in(folder)) for address, folder in zip(addresses, folders)}

        def masters_see_the_disks():
            counts = disk_counts()
            seen = {address: (state, figures.get("blob_count"))
                    for address, (state, figures) in storage_states(connection).items()}
            return seen == {address: ("alive", count) for address, count in counts.items()}

        wait_until(masters_see_the_disks, "every node's blob count in the masters' view")

        def nodes_table_shows_the_disks():
            counts, rows = disk_counts(), storage_rows(uds(layout, "nodes"))
            return (rows, counts) if {address: row[::3] for address, row in rows.items()} == {
                address: ("alive", count) for address, count in counts.items()} else None

        rows, counts = wait_until(nodes_table_shows_the_disks, "`uds nodes` showing every node's blobs")
        for address in addresses:
            _state, used, free, _blobs = rows[address]
            assert used >= 20_000 * counts[address] * 0.9 and free > 0, rows[address]

        # kill -9 the first node of one file's read order: lost after lost_after_s.
        victim_file = files[0]
        members = connection.storage.members()
        victim = read_order(bytes.fromhex(victim_file), members)[0].address
        index = addresses.index(victim)
        killed_at = time.monotonic()
        storage[index].kill9()
        wait_until(lambda: storage_states(connection)[victim][0] == "lost", "the killed node lost",
                   timeout=LOST_AFTER_S + 20)
        # Not before lost_after_s of silence, give or take a late heartbeat.
        assert time.monotonic() - killed_at >= LOST_AFTER_S - 1.0
        assert storage_rows(uds(layout, "nodes"))[victim][0] == "lost"

        # A client's StorageDirectory takes the masters' view: the lost node is read last.
        directory = StorageDirectory(addresses, ask_nodes=connection._storage_records)
        assert directory.refresh(force=True)
        assert {member.address: member.state for member in directory.members()}[victim] == "lost"
        assert read_order(bytes.fromhex(victim_file), directory.members())[-1].address == victim
        connection.storage.directory.refresh(force=True)
        assert connection.storage.read_addresses(bytes.fromhex(victim_file))[-1] == victim
        assert connection.get(victim_file)

        # A worker too, once its directory refreshed: it never tries the lost node.
        time.sleep(REFRESH_INTERVAL_S + 0.5)         # the worker's refresh period; it offers no signal
        job = connection.submit_job(READ_INPUT, inputs={"in.txt": victim_file}, timeout=60)
        status = job.wait(timeout=60)
        assert status.state == "succeeded", status
        assert connection.get(status.chunks[0].stdout) == connection.get(victim_file)
        worker_log = (layout.root / "worker-w0.log").read_text(errors="replace")
        assert victim not in worker_log, worker_log[-3000:]

        # Files put while it is down go to the two live nodes.
        later = [connection.put(os.urandom(10_000 + index)) for index in range(6)]
        assert not set(later) & blobs_in(folders[index])

        # It comes back with an empty disk: alive again, and repair brings back
        # every file whose replica set over the three live nodes holds it.
        shutil.rmtree(folders[index] / "blobs")
        storage[index] = layout.start("storage", name=str(index))
        wait_until(lambda: storage_states(connection)[victim][0] == "alive", "the restarted node alive",
                   timeout=30)
        connection.storage.directory.refresh(force=True)
        members = connection.storage.members()
        assert all(member.alive for member in members)
        should_hold = {file for file in files + later
                       if victim in {member.address for member in replica_set(bytes.fromhex(file), members, 2)}}
        assert victim_file in should_hold
        wait_until(lambda: should_hold <= blobs_in(folders[index]), "repair restores the node's files", timeout=60)
        wait_until(lambda: storage_states(connection)[victim][1].get("blob_count", 0) >= len(should_hold),
                   "its new blob count in the masters' view")
        rows = storage_rows(uds(layout, "nodes"))
        assert rows[victim][0] == "alive" and rows[victim][3] >= len(should_hold), rows[victim]
    finally:
        connection.close()
