"""The storage membership a client or worker keeps (storage/directory.py),
pins (client/pins.py and `c.put(pin=)`), the storage lines of `uds nodes`,
`uds put --pin` errors, and `uds dev --storage 3`."""
from __future__ import annotations

import time

import pytest

from test_cli import uds
from uds import wire
from uds.client import devcluster
from uds.client.pins import BadPinError, pin_seconds, pin_until_ms
from uds.client.storage_view import print_gc, print_storage_table
from uds.storage.directory import DirectoryRefresher, StorageDirectory
from uds.storage.placement import LOST, StorageMember
from uds.storage.replicas import _UploadProgress
from uds.wire.enums import NodeRole
from uds.wire.message_class import MAX_TIME_MS

SEED = ["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"]


def storage_record(address, state="alive", **figures):
    return dict(node=b"n" * 16, role=int(NodeRole.STORAGE), address=address, state=state, figures=figures)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_seed_stands_until_the_masters_list_storage_nodes():
    asked = []
    answers = [[dict(role=int(NodeRole.WORKER), address="tcp://w", state="alive", figures={})]]
    clock = Clock()
    directory = StorageDirectory(SEED, ask_nodes=lambda: asked.append(1) or answers.pop(0), clock=clock)
    assert directory.members() == [StorageMember(address) for address in SEED]
    assert directory.refresh() is False and not directory.from_masters   # workers only: seed stays
    assert directory.members() == [StorageMember(address) for address in SEED]
    answers.append([storage_record(SEED[1], free_bytes=5000), storage_record("tcp://new:1", state="lost")])
    assert directory.refresh() is False and len(asked) == 1              # asked less than interval_s ago
    clock.now += directory.interval_s
    assert directory.refresh() is True and directory.from_masters
    members = {member.address: member for member in directory.members()}
    assert members[SEED[1]] == StorageMember(SEED[1], b"n" * 16, "alive", 5000)
    assert members["tcp://new:1"].state == LOST
    assert members[SEED[0]] == StorageMember(SEED[0])   # in the file, not heard from yet: not lost
    assert directory.live_count() == 2
    assert directory.addresses() == [*SEED, "tcp://new:1"]


def test_unreachable_masters_keep_the_last_view_and_never_raise():
    clock = Clock()
    answers = [[storage_record(SEED[0], free_bytes=1)]]

    def ask():
        if not answers:
            raise TimeoutError("no answer from the masters in 1s")
        return answers.pop(0)

    directory = StorageDirectory(SEED, ask_nodes=ask, clock=clock)
    assert directory.refresh() is True
    view = directory.members()
    clock.now += 60
    assert directory.refresh() is False
    assert directory.members() == view


def test_a_refresher_thread_keeps_the_directory_fresh_and_stops():
    directory = StorageDirectory(SEED, interval_s=0.01)
    closed = []
    calls = []

    def ask():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("masters away")
        return [storage_record(address, free_bytes=len(calls)) for address in SEED]

    refresher = DirectoryRefresher(directory, ask, close=lambda: closed.append(True)).start()
    deadline = time.monotonic() + 10
    while not directory.from_masters and time.monotonic() < deadline:
        time.sleep(0.01)
    refresher.stop()
    assert directory.from_masters and closed == [True]


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), (" 3d ", 259200)])
def test_a_pin_is_a_whole_number_and_a_unit(text, seconds):
    assert pin_seconds(text) == seconds
    assert pin_until_ms(text, 1000.0) == 1_000_000 + seconds * 1000


@pytest.mark.parametrize("text", ["", "1", "d", "1.5h", "-1d", "1w", "0s", "1 d", "10 minutes"])
def test_a_bad_pin_says_what_a_pin_looks_like(text):
    with pytest.raises(BadPinError) as refused:
        pin_seconds(text)
    assert "30s, 10m, 2h, 1d" in str(refused.value) or "more than zero" in str(refused.value)


def test_a_pin_past_what_the_masters_keep_is_refused():
    with pytest.raises(BadPinError, match="beyond"):
        pin_until_ms(f"{MAX_TIME_MS // 86_400_000 + 1}d", time.time())


def test_put_with_a_pin_stores_then_asks_the_leader_to_pin(tmp_path, monkeypatch):
    from uds.client.api import Connection
    path = devcluster.write_cluster_file(tmp_path, workers=1, slots=1)
    connection = Connection(path)
    try:
        stored, asked = [], []
        monkeypatch.setattr(connection, "_put", lambda source, progress=None: stored.append(source) or (b"f" * 16, 3))

        def ask(make, expected, patience_s=0.0):
            message = make(7)
            asked.append((message, expected))
            return wire.FilePinReply.make(connection.node_id, request_id=7, file_count=1)

        monkeypatch.setattr(connection, "_ask", ask)
        before = int(time.time() * 1000)
        assert connection.put(b"abc", pin="2h") == (b"f" * 16).hex()
        [(message, expected)] = asked
        assert expected is wire.FilePinReply and isinstance(message, wire.FilePin)
        assert message.files == [b"f" * 16]
        assert before + 7_200_000 <= message.until_ms <= int(time.time() * 1000) + 7_200_000
        assert wire.decode(wire.encode(message)) == message
        with pytest.raises(BadPinError):            # refused before anything is stored
            connection.put(b"abc", pin="soon")
        assert stored == [b"abc"]
    finally:
        connection.close()


def test_uds_put_refuses_a_bad_pin_before_connecting(tmp_path):
    data = tmp_path / "data"
    data.write_bytes(b"x")
    result = uds("--cluster", str(tmp_path / "nowhere.toml"), "put", "--pin", "1 week", str(data), check=False)
    assert result.returncode == 1
    assert result.stderr.decode().startswith("uds: pin '1 week' is not a duration"), result.stderr
    missing = uds("--cluster", str(tmp_path / "nowhere.toml"), "put", "--pin", "1d", str(tmp_path / "none"),
                  check=False)
    assert missing.returncode == 1 and b"no such file" in missing.stderr


def test_the_storage_table_prints_each_nodes_figures():
    lines = []
    nodes = [storage_record("tcp://b:2", used_bytes=3 << 20, free_bytes=1 << 30, blob_count=7, repair_pending=2,
                            repaired_files=5, corrupt_blobs=1),
             storage_record("tcp://a:1", state="lost"),
             dict(node=b"w" * 16, role=int(NodeRole.WORKER), address="tcp://w", state="alive", figures={})]
    print_storage_table(nodes, say=lines.append)
    assert lines[0].split() == ["storage", "state", "used", "free", "blobs", "repair", "pending", "repaired",
                                "corrupt"]
    assert lines[1].split() == ["tcp://a:1", "lost", "-", "-", "-", "-", "-", "-"]
    assert lines[2].split() == ["tcp://b:2", "alive", "3.0", "MiB", "1.0", "GiB", "7", "2", "5", "1"]
    assert all(line.startswith("  ") for line in lines[1:])
    none = []
    print_storage_table(nodes[2:], say=none.append)
    assert "no storage node" in none[0]


def test_gc_output_lists_each_node_and_the_total():
    from uds.storage.client import StorageTimeout
    reply = wire.GcRunReply.make(b"s" * 16, request_id=1, dry_run=1, blobs_examined=10, bytes=3 << 20,
                                 files=[(b"a" * 16, 1 << 20), (b"b" * 16, 2 << 20)])
    lines = []
    failed = print_gc([("tcp://a:1", reply), ("tcp://b:2", StorageTimeout("tcp://b:2", "no reply"))], True,
                      say=lines.append)
    assert failed == 1
    assert lines[0] == "tcp://a:1: would delete 2 of 10 blobs, 3.0 MiB"
    assert lines[1] == f"  {(b'a' * 16).hex()}  1.0 MiB"
    assert lines[3].startswith("tcp://b:2: no collection")
    assert lines[-1] == "total: would delete 2 blobs, 3.0 MiB; 1 nodes did not answer"


def test_upload_progress_follows_the_slowest_replica_under_way():
    shown = []
    progress = _UploadProgress(100, lambda done, total: shown.append((done, total)))
    progress.start("a")
    progress.start("b")
    progress.update("a", 60)
    progress.update("b", 30)
    progress.update("a", 100)
    progress.finish("a", stored=True)
    progress.finish("b", stored=False)         # b failed: c starts from zero
    progress.start("c")
    progress.update("c", 40)
    progress.update("c", 100)
    progress.finish("c", stored=True)
    assert shown == [(0, 100), (30, 100), (40, 100), (100, 100)]


def test_the_dev_cluster_file_holds_one_entry_per_storage_node_and_the_replicas(tmp_path):
    from uds.wire import cluster as cluster_file
    loaded = cluster_file.load(devcluster.write_cluster_file(tmp_path, workers=1, slots=1, storage=3))
    assert [entry.data.name for entry in loaded.storage] == ["storage-0", "storage-1", "storage-2"]
    assert len({entry.address for entry in loaded.storage}) == 3
    assert cluster_file.storage_policy(loaded).replicas == 2
    single = cluster_file.load(devcluster.write_cluster_file(tmp_path / "one", workers=1, slots=1))
    assert cluster_file.storage_policy(single).replicas == 1


@pytest.mark.parametrize("storage, replicas, told", [("0", None, "--storage must be at least 1"),
                                                     ("2", "3", "--replicas must be between 1 and --storage (2)")])
def test_bad_storage_counts_are_one_line_errors(tmp_path, storage, replicas, told):
    words = ["dev", "--detach", "--storage", storage, "--dir", str(tmp_path / "dev")]
    result = uds(*words, *(["--replicas", replicas] if replicas else []), check=False)
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [f"uds: {told}" + ("" if replicas is None else ", not 3")]


def test_uds_dev_storage_3_starts_three_nodes_and_stores_twice(tmp_path, monkeypatch):
    from uds import client
    folder = tmp_path / "dev"
    monkeypatch.setattr(devcluster, "READY_TIMEOUT_S", 30.0)
    try:
        started = devcluster.start(folder, workers=1, slots=1, detach=True, storage=3,
                                   worker_options=["--cpus", "1", "--memory", "1G"])
        nodes = [process for process in started if process.role == "storage"]
        assert [process.name for process in nodes] == ["storage-0", "storage-1", "storage-2"]
        with client.connect(folder) as connection:
            file_id = connection.put(b"twice, please")
            name = file_id
            on_disk = [process.name for process in nodes
                       if (process.data / "blobs" / name[:2] / name[2:]).is_file()]
            assert len(on_disk) == 2, on_disk
            job = connection.submit_job(b"#!/bin/sh\ncat $UDS_INPUTS/in > $UDS_OUTPUT/out\n",
                                        inputs={"in": file_id}, timeout=60)
            status = job.wait(timeout=90)
            assert status.state == "succeeded", status
            assert connection.get(status.chunks[0].outputs["out"]) == b"twice, please"
        listed = uds("nodes", cluster_dir=folder).stdout.decode()
        assert sum(line.startswith("storage at ") and "reachable" in line for line in listed.splitlines()) == 3
    finally:
        devcluster.stop(folder)
        from daemons import unmount_under
        unmount_under(folder)
