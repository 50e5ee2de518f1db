"""syncobj_conf: real pysyncobj nodes on 127.0.0.1, password on the wire."""

import pickle
import socket
import struct
import time
import zlib

import pytest
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.syncobj import SyncObjException

from uds.master.raft import syncobj_conf
from uds.wire.enums import NodeRole
from uds.wire.keys import KeyFolder, create_cluster_keys

DEADLINE_S = 5.0
# Short enough to keep the suite fast, long enough for a leader election.
WRONG_PASSWORD_WAIT_S = 1.5


class Counter(SyncObj):
    def __init__(self, self_address, partners, conf):
        super().__init__(self_address, partners, conf)
        self.value = 0

    @replicated
    def incr(self):
        self.value += 1
        return self.value


class Touch:
    """Unpickling this creates a file: proof that a payload was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_until(predicate, timeout=DEADLINE_S):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s")
        time.sleep(0.02)


@pytest.fixture
def keys(tmp_path):
    return KeyFolder(create_cluster_keys(tmp_path / "keys"), NodeRole.MASTER)


@pytest.fixture
def nodes():
    """Started SyncObj nodes, destroyed at the end whatever happens."""
    started = []

    def start(addresses, index, conf):
        node = Counter(addresses[index], addresses[:index] + addresses[index + 1:], conf)
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            node.destroy()


def addresses_for(count):
    return [f"127.0.0.1:{port}" for port in free_ports(count)]


def test_conf_uses_the_key_folder_password_and_defaults(keys):
    conf = syncobj_conf(keys)
    assert conf.password == keys.raft_password()
    assert conf.appendEntriesUseBatch is False
    assert conf.raftMinTimeout == 0.25
    assert conf.raftMaxTimeout == 0.6
    assert conf.dynamicMembershipChange is True       # uds admin masters add|remove
    assert conf.leaderFallbackTimeout == conf.raftMinTimeout     # not pysyncobj's 30 s


def test_conf_passes_options_through(keys, tmp_path):
    def on_ready():
        pass

    conf = syncobj_conf(
        keys, journalFile=str(tmp_path / "journal"), fullDumpFile=str(tmp_path / "dump"),
        onReady=on_ready, raftMaxTimeout=0.9, appendEntriesUseBatch=True,
    )
    assert conf.journalFile == str(tmp_path / "journal")
    assert conf.fullDumpFile == str(tmp_path / "dump")
    assert conf.onReady is on_ready
    assert conf.raftMaxTimeout == 0.9
    assert conf.appendEntriesUseBatch is True


@pytest.mark.parametrize("password", [None, ""])
def test_conf_refuses_no_password(keys, password):
    with pytest.raises(ValueError, match="password"):
        syncobj_conf(keys, password=password)


def test_conf_refuses_misspelled_and_invalid_options(keys):
    with pytest.raises(ValueError, match="raftMinTimout"):
        syncobj_conf(keys, raftMinTimout=1.0)
    with pytest.raises(ValueError, match="invalid"):
        syncobj_conf(keys, raftMinTimeout=2.0)  # above raftMaxTimeout


def test_nodes_with_the_same_password_replicate(keys, nodes):
    addresses = addresses_for(3)
    counters = [nodes(addresses, i, syncobj_conf(keys)) for i in range(3)]
    assert all(c.encryptor is not None for c in counters)
    assert counters[0].incr(sync=True, timeout=DEADLINE_S) == 1
    assert counters[2].incr(sync=True, timeout=DEADLINE_S) == 2
    wait_until(lambda: [c.value for c in counters] == [2, 2, 2])


def test_node_with_another_password_cannot_join(keys, nodes, tmp_path):
    stranger_keys = KeyFolder(create_cluster_keys(tmp_path / "stranger"), NodeRole.MASTER)
    addresses = addresses_for(3)
    members = [nodes(addresses, i, syncobj_conf(keys)) for i in range(2)]
    stranger = nodes(addresses, 2, syncobj_conf(stranger_keys))

    assert members[0].incr(sync=True, timeout=DEADLINE_S) == 1
    wait_until(lambda: [m.value for m in members] == [1, 1])
    with pytest.raises(SyncObjException):
        stranger.incr(sync=True, timeout=WRONG_PASSWORD_WAIT_S)
    assert stranger.value == 0
    assert stranger._getLeader() is None
    assert [m.value for m in members] == [1, 1]


def _send_raw_pickle(address, payload):
    """Speak pysyncobj's framing (length + zlib(pickle)) without a password.
    Returns the open connection, so the caller can watch what the node does."""
    host, port = address.split(":")
    data = zlib.compress(pickle.dumps(payload))
    conn = socket.create_connection((host, int(port)), timeout=DEADLINE_S)
    conn.sendall(struct.pack("i", len(data)) + data)
    return conn


def _hung_up(conn) -> bool:
    """Whether the node closed the connection within DEADLINE_S."""
    conn.settimeout(DEADLINE_S)
    try:
        return conn.recv(1) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def test_password_stops_unpickling_of_strangers_data(keys, nodes, tmp_path):
    # Control: without a password pysyncobj unpickles what it is sent.
    (open_address,) = addresses_for(1)
    open_node = nodes([open_address], 0, SyncObjConf(autoTick=True))
    open_node.waitBinded()
    open_marker = tmp_path / "unpickled-without-password"
    with _send_raw_pickle(open_address, Touch(open_marker)):
        wait_until(open_marker.exists)

    (address,) = addresses_for(1)
    node = nodes([address], 0, syncobj_conf(keys))
    node.waitBinded()
    marker = tmp_path / "unpickled-with-password"
    with _send_raw_pickle(address, Touch(marker)) as conn:
        # A node with a password fails to decrypt the frame and hangs up
        # before it could unpickle anything of it.
        assert _hung_up(conn)
    assert not marker.exists()


def test_the_journal_is_synced_before_a_commit_is_handed_over(keys, tmp_path, monkeypatch):
    """pysyncobj never syncs its journal mmap; the group does, before the
    node loop may answer anyone."""
    import os

    import uds.master.replicated
    from uds.master.replicated import RaftGroup

    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        real_fsync(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), group.commits.qsize()))

    read_end, write_end = os.pipe()
    group = RaftGroup(addresses_for(1)[0], [], tmp_path, keys, write_end)
    try:
        wait_until(lambda: group.is_leader)
        monkeypatch.setattr(uds.master.replicated.os, "fsync", recording_fsync)
        group.propose(1, [], 1.0)
        commit = group.commits.get(timeout=DEADLINE_S)
        assert commit.token == 1 and commit.outcomes == []
        # The journal file, synced once, before the commit was queued.
        assert synced == [(str(tmp_path / "raft.journal"), 0)] and group.journal_syncs == 1
    finally:
        monkeypatch.undo()
        group.destroy()
        os.close(read_end)
        os.close(write_end)
