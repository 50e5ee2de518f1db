"""Storage nodes' cluster duties with real daemons: repair onto a file's
replica set, the scrub, and collection checked with a leader. No master
runs here: membership comes from the cluster file (or from a fake leader,
a ROUTER holding the masters' key, where a test needs one)."""
import os
import time

import pytest
import zmq

from daemons import ROOT, ClusterLayout, wait_until
from uds import wire
from uds.storage.duties import HEARTBEAT_FIGURES
from uds.storage.client import StorageClient, UnknownFileError
from uds.storage.placement import StorageMember, replica_set
from uds.wire import ErrorCode
from uds.wire.enums import NodeRole
from uds.wire.ids import file_id_of, new_id
from uds.wire.transport import Transport, recv_message, send_message

CLIENT_NODE = new_id()
REPLY_TIMEOUT_S = 5.0
# A put to one node of three is on its whole replica set within this: the
# first scan runs at start and then every repair_interval_s (1 s here),
# and a pull of a few MiB takes well under a second.
REPAIR_WITHIN_S = 15.0
# The scrub re-hashes everything every 0.2 s at 1 GiB/s here.
SCRUB_FINDS_WITHIN_S = 15.0
FAST_DUTIES = {"replicas": 2, "heartbeat_interval_s": 0.5, "lost_after_s": 5.0,
               "repair_interval_s": 1.0, "repair_bytes_per_s": 1 << 30,
               "scrub_bytes_per_s": 1 << 30, "scrub_interval_s": 0.2,
               "gc_grace_s": 600.0, "gc_interval_s": 3600.0}


def start_nodes(root, count, **policy):
    layout = ClusterLayout.create(root, storage=count, storage_policy={**FAST_DUTIES, **policy})
    nodes = [layout.start("storage", name=str(index), wait=False) for index in range(count)]
    for node in nodes:
        node.wait_ready()
    return layout, nodes


@pytest.fixture
def three(tmp_path):
    layout, nodes = start_nodes(tmp_path / "cluster", 3)
    try:
        yield layout, nodes
    finally:
        layout.cleanup()


@pytest.fixture
def one(tmp_path):
    """One node: no other replica to repair from."""
    layout, nodes = start_nodes(tmp_path / "cluster", 1)
    try:
        yield layout, nodes[0]
    finally:
        layout.cleanup()


@pytest.fixture
def transport(tmp_path):
    """Built lazily from the layout of the test's cluster."""
    opened = []

    def make(layout, role=NodeRole.CLIENT):
        opened.append(Transport(layout.keys(role)))
        return opened[-1]

    yield make
    for each in opened:
        each.close()


def blob_path(node, file_id):
    return node.data / "blobs" / file_id.hex()[:2] / file_id.hex()[2:]


def exchange(sock, message, timeout_s=REPLY_TIMEOUT_S):
    sock.send_multipart(wire.encode(message))
    if not sock.poll(timeout_s * 1000):
        return None
    return wire.decode(sock.recv_multipart())


def test_a_put_to_one_node_is_repaired_onto_its_replica_set(three, transport):
    layout, nodes = three
    addresses = [entry.address for entry in layout.cluster.storage]
    shared = transport(layout)
    data = os.urandom(3 * 1024 * 1024 + 17)
    with StorageClient(shared, addresses[0], CLIENT_NODE, timeout_s=REPLY_TIMEOUT_S) as first:
        file_id, size = first.put_bytes(data)
    homes = replica_set(file_id, [StorageMember(address) for address in addresses], 2)
    holders = {address: StorageClient(shared, address, CLIENT_NODE, timeout_s=REPLY_TIMEOUT_S)
               for address in addresses}
    try:
        wait_until(lambda: all(holders[home.address].stat(file_id) == size for home in homes),
                   "the file on both members of its replica set", REPAIR_WITHIN_S)
        for home in homes:
            assert holders[home.address].get(file_id) == data
        pulled = sum(holders[home.address].stats()["repaired_files"] for home in homes)
        assert pulled == sum(home.address != addresses[0] for home in homes)
        if addresses[0] in {home.address for home in homes}:
            others = [address for address in addresses if address not in {h.address for h in homes}]
            assert holders[others[0]].stat(file_id) is None      # never copied beyond R
        offered = holders[addresses[0]].stats()
        assert offered["repair_scans"] >= 1 and offered["repair_offers_confirmed"] >= 1
    finally:
        for client in holders.values():
            client.close()


def test_a_copy_outside_the_replica_set_is_trimmed_once_every_home_holds_it(three, transport):
    layout, nodes = three
    addresses = [entry.address for entry in layout.cluster.storage]
    members = [StorageMember(address) for address in addresses]
    while True:        # a file whose replica set leaves out node 0
        data = os.urandom(100_000)
        if addresses[0] not in {home.address for home in replica_set(file_id_of(data), members, 2)}:
            break
    shared = transport(layout)
    with StorageClient(shared, addresses[0], CLIENT_NODE, timeout_s=REPLY_TIMEOUT_S) as outsider:
        file_id, size = outsider.put_bytes(data)
        wait_until(lambda: outsider.stat(file_id) is None, "the copy on node 0 trimmed", REPAIR_WITHIN_S)
        assert outsider.stats()["trimmed_blobs"] == 1
    for address in addresses[1:]:
        with StorageClient(shared, address, CLIENT_NODE, timeout_s=REPLY_TIMEOUT_S) as home:
            assert home.get(file_id) == data


def test_file_replicate_from_a_client_key_is_refused(three, transport):
    layout, nodes = three
    address = layout.cluster.storage[1].address
    sock = transport(layout).client_socket(zmq.DEALER, address, NodeRole.STORAGE)
    offer = wire.FileReplicate.make(CLIENT_NODE, request_id=7, file=new_id(), file_length=10,
                                    source=layout.cluster.storage[0].address)
    reply = exchange(sock, offer)
    assert isinstance(reply, wire.Error) and reply.error_code == ErrorCode.FORBIDDEN
    assert reply.request_id == 7
    sock.close()


def test_file_replicate_of_a_blob_the_source_lacks_fails_and_stores_nothing(three, transport):
    layout, nodes = three
    addresses = [entry.address for entry in layout.cluster.storage]
    sock = transport(layout, NodeRole.STORAGE).client_socket(zmq.DEALER, addresses[1], NodeRole.STORAGE)
    missing = new_id()
    reply = exchange(sock, wire.FileReplicate.make(CLIENT_NODE, request_id=3, file=missing, file_length=10,
                                                   source=addresses[0]), timeout_s=30)
    assert isinstance(reply, wire.Error) and reply.error_code == ErrorCode.UNKNOWN_FILE
    assert not blob_path(nodes[1], missing).exists()
    sock.close()


def test_a_corrupt_blob_is_moved_aside_and_repaired_from_a_replica(three, transport):
    layout, nodes = three
    addresses = [entry.address for entry in layout.cluster.storage]
    shared = transport(layout)
    data = os.urandom(2 * 1024 * 1024 + 5)
    with StorageClient(shared, addresses[0], CLIENT_NODE, timeout_s=REPLY_TIMEOUT_S) as first:
        file_id, size = first.put_bytes(data)
    homes = replica_set(file_id, [StorageMember(address) for address in addresses], 2)
    victim = next(home.address for home in homes if home.address != addresses[0])
    victim_node = nodes[addresses.index(victim)]
    with StorageClient(shared, victim, CLIENT_NODE, timeout_s=REPLY_TIMEOUT_S) as storage:
        wait_until(lambda: storage.stat(file_id) == size, "the repair onto the victim", REPAIR_WITHIN_S)
        path = blob_path(victim_node, file_id)
        with open(path, "r+b") as blob:       # flip bytes in the second block
            blob.seek(1024 * 1024 + 100)
            original = blob.read(8)
            blob.seek(1024 * 1024 + 100)
            blob.write(bytes(b ^ 0xFF for b in original))
        corrupt = victim_node.data / "corrupt" / file_id.hex()
        wait_until(corrupt.exists, "the scrub moving the blob aside", SCRUB_FINDS_WITHIN_S)
        wait_until(lambda: storage.stats()["repaired_files"] >= 2, "the pull of a good copy", REPAIR_WITHIN_S)
        assert storage.get(file_id) == data
        counters = storage.stats()
        assert counters["corrupt_blobs"] == 1 and counters["scrubbed_blobs"] >= 1
    assert corrupt.read_bytes() != data


def test_a_corrupt_blob_with_no_other_copy_is_never_served(one, transport):
    layout, node = one
    shared = transport(layout)
    data = os.urandom(100_000)
    with StorageClient(shared, layout.cluster.storage[0].address, CLIENT_NODE,
                       timeout_s=REPLY_TIMEOUT_S) as storage:
        file_id, size = storage.put_bytes(data)
        with open(blob_path(node, file_id), "r+b") as blob:
            blob.seek(500)
            blob.write(b"\0rot\0")
        wait_until(lambda: storage.stats()["corrupt_blobs"] == 1, "the scrub finding the damage",
                   SCRUB_FINDS_WITHIN_S)
        assert storage.stat(file_id) is None
        with pytest.raises(UnknownFileError):
            storage.read(file_id, 0, 10)
        with pytest.raises(UnknownFileError):
            storage.manifest(file_id)
        # A good copy put again is served again.
        assert storage.put_bytes(data) == (file_id, size)
        assert storage.get(file_id) == data


class FakeLeader:
    """A ROUTER with the masters' key at the first master's address: answers
    heartbeats with a membership, and hands gc_check to the test."""

    def __init__(self, layout, transport, index=0):
        self.layout = layout
        self.socket = transport.server_socket(zmq.ROUTER, layout.cluster.masters[index].address)
        self.heartbeats = []
        self.node = new_id()

    lost = frozenset()         # indexes of the [[storage]] entries the leader says are lost

    def members(self):
        members = []
        for index, entry in enumerate(self.layout.cluster.storage):
            node_id = (self.layout.data_of("storage", str(index)) / "node_id").read_text().strip()
            members.append({"node": bytes.fromhex(node_id), "address": entry.address,
                            "state": "lost" if index in self.lost else "alive", "free_bytes": 1 << 30})
        return members

    def next_gc_check(self, timeout_s=REPLY_TIMEOUT_S * 2):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            check = self.serve_one(0.1)
            if check is not None:
                return check
        raise TimeoutError("no gc_check came")

    def serve_until(self, predicate, what, timeout_s):
        """Answer heartbeats until predicate() holds."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.serve_one(0.05)
            if predicate():
                return
        raise TimeoutError(f"{what} not reached in {timeout_s}s")

    def serve_one(self, timeout_s):
        """Answer a heartbeat if one comes; a gc_check, if one comes, is returned."""
        if not self.socket.poll(timeout_s * 1000):
            return None
        received = recv_message(self.socket, None)
        if received is None:
            return None
        message = wire.decode(received.frames)
        if isinstance(message, wire.StorageHeartbeat):
            self.heartbeats.append(message)
            self.send(received.peer, wire.StorageHeartbeatReply.make(
                self.node, request_id=message.request_id, heartbeat_interval_ms=500, nodes=self.members()))
        elif isinstance(message, wire.GcCheck):
            return received.peer, message
        return None

    def send(self, peer, message):
        assert send_message(self.socket, wire.encode(message), peer)


def gc_candidates_set(check):
    return {bytes(file_id) for file_id in check.files}


def test_collection_deletes_only_what_the_leader_clears_and_nothing_used_since(one, transport):
    layout, node = one
    address = layout.cluster.storage[0].address
    leader = FakeLeader(layout, transport(layout, NodeRole.MASTER))
    shared = transport(layout)
    runner = shared.client_socket(zmq.DEALER, address, NodeRole.STORAGE)
    with StorageClient(shared, address, CLIENT_NODE, timeout_s=REPLY_TIMEOUT_S) as storage:
        old = {}
        for name in (b"a", b"b", b"c"):
            file_id, _ = storage.put_bytes(name * 1000)
            old[name] = file_id
            past = time.time() - 7200          # unused for two hours, grace is 10 minutes
            os.utime(blob_path(node, file_id), (past, past))
        fresh, _ = storage.put_bytes(b"d" * 1000)

        # A dry run reports what the leader clears and deletes nothing.
        runner.send_multipart(wire.encode(wire.GcRun.make(CLIENT_NODE, request_id=1, dry_run=1)))
        peer, check = leader.next_gc_check()
        assert gc_candidates_set(check) == set(old.values())
        leader.send(peer, wire.GcCheckReply.make(leader.node, request_id=check.request_id,
                                                 files=[old[b"a"], old[b"b"]]))
        assert runner.poll(REPLY_TIMEOUT_S * 1000)
        report = wire.decode(runner.recv_multipart())
        assert isinstance(report, wire.GcRunReply) and report.dry_run == 1
        assert report.blobs_examined == 3 and report.bytes == 2000
        assert {bytes(entry[0]) for entry in report.files} == {old[b"a"], old[b"b"]}
        assert all(blob_path(node, file_id).exists() for file_id in [*old.values(), fresh])

        # A real pass: b is stat'ed and c put again between the listing and
        # the leader's answer, so only a goes, though the leader clears all.
        runner.send_multipart(wire.encode(wire.GcRun.make(CLIENT_NODE, request_id=2, dry_run=0)))
        peer, check = leader.next_gc_check()
        assert gc_candidates_set(check) == set(old.values())
        assert storage.stat(old[b"b"]) == 1000
        assert storage.put_bytes(b"c" * 1000)[0] == old[b"c"]
        leader.send(peer, wire.GcCheckReply.make(leader.node, request_id=check.request_id,
                                                 files=[*old.values(), fresh, new_id()]))
        assert runner.poll(REPLY_TIMEOUT_S * 1000)
        report = wire.decode(runner.recv_multipart())
        assert isinstance(report, wire.GcRunReply) and report.dry_run == 0
        assert [(bytes(entry[0]), entry[1]) for entry in report.files] == [(old[b"a"], 1000)]
        assert not blob_path(node, old[b"a"]).exists()
        assert storage.stat(old[b"a"]) is None
        for kept in (old[b"b"], old[b"c"], fresh):
            assert storage.stat(kept) == 1000
        counters = storage.stats()
        assert counters["gc_deleted_blobs"] == 1 and counters["gc_deleted_bytes"] == 1000
        assert counters["gc_kept_in_use"] == 2

        # Another holder's repair offer does not bring the collected blob
        # back (it would then come and go for ever), a put does.
        peer_node = transport(layout, NodeRole.STORAGE).client_socket(zmq.DEALER, address, NodeRole.STORAGE)
        offer = wire.FileReplicate.make(CLIENT_NODE, request_id=9, file=old[b"a"], file_length=1000,
                                        source="tcp://127.0.0.1:1")
        refused = exchange(peer_node, offer)
        assert isinstance(refused, wire.Error) and refused.error_code == ErrorCode.INVALID
        peer_node.close()
        assert storage.put_bytes(b"a" * 1000) == (old[b"a"], 1000)
        assert storage.get(old[b"a"]) == b"a" * 1000
    assert leader.heartbeats and leader.heartbeats[0].address == address
    figures = leader.heartbeats[-1].figures
    assert set(HEARTBEAT_FIGURES) <= figures.keys() and figures["capacity_bytes"] > 0
    runner.close()


def test_collection_deletes_nothing_when_the_leader_refuses(one, transport):
    layout, node = one
    address = layout.cluster.storage[0].address
    leader = FakeLeader(layout, transport(layout, NodeRole.MASTER))
    shared = transport(layout)
    runner = shared.client_socket(zmq.DEALER, address, NodeRole.STORAGE)
    with StorageClient(shared, address, CLIENT_NODE, timeout_s=REPLY_TIMEOUT_S) as storage:
        file_id, _ = storage.put_bytes(b"x" * 1000)
    past = time.time() - 7200
    os.utime(blob_path(node, file_id), (past, past))
    runner.send_multipart(wire.encode(wire.GcRun.make(CLIENT_NODE, request_id=5, dry_run=0)))
    peer, check = leader.next_gc_check()
    # What the masters without collection answer today.
    leader.send(peer, wire.Error.replying(leader.node, check.request_id, check.message_type,
                                          ErrorCode.UNEXPECTED, "a master does not accept gc_check"))
    assert runner.poll(REPLY_TIMEOUT_S * 1000)
    reply = wire.decode(runner.recv_multipart())
    assert isinstance(reply, wire.Error) and reply.error_code == ErrorCode.BUSY and reply.request_id == 5
    assert blob_path(node, file_id).exists()
    runner.close()


def test_a_node_the_leader_declares_lost_is_replaced_in_the_replica_sets(three, transport):
    layout, nodes = three
    addresses = [entry.address for entry in layout.cluster.storage]
    everyone = [StorageMember(address) for address in addresses]
    while True:        # a file whose homes among all three are nodes 0 and 2
        data = os.urandom(50_000)
        if {home.address for home in replica_set(file_id_of(data), everyone, 2)} == {addresses[0], addresses[2]}:
            break
    leader = FakeLeader(layout, transport(layout, NodeRole.MASTER))
    leader.lost = frozenset({2})
    nodes[2].kill9()
    shared = transport(layout)
    with StorageClient(shared, addresses[0], CLIENT_NODE, timeout_s=REPLY_TIMEOUT_S) as first, \
            StorageClient(shared, addresses[1], CLIENT_NODE, timeout_s=REPLY_TIMEOUT_S) as second:
        file_id, size = first.put_bytes(data)
        leader.serve_until(lambda: second.stat(file_id) == size, "the copy on node 1, node 2's stand-in",
                           REPAIR_WITHIN_S)
        assert second.get(file_id) == data
        assert first.stats()["membership_changes"] >= 1
        assert first.stat(file_id) == size            # a home still: never trimmed


def test_a_periodic_pass_collects_what_the_leader_clears(tmp_path, transport):
    layout, (node,) = start_nodes(tmp_path / "cluster", 1, gc_interval_s=1.0)
    try:
        leader = FakeLeader(layout, transport(layout, NodeRole.MASTER))
        with StorageClient(transport(layout), layout.cluster.storage[0].address, CLIENT_NODE,
                           timeout_s=REPLY_TIMEOUT_S) as storage:
            file_id, _ = storage.put_bytes(b"stale" * 100)
            past = time.time() - 7200
            os.utime(blob_path(node, file_id), (past, past))
            peer, check = leader.next_gc_check(timeout_s=10)      # no gc_run: the node's own pass
            assert [bytes(f) for f in check.files] == [file_id]
            leader.send(peer, wire.GcCheckReply.make(leader.node, request_id=check.request_id, files=[file_id]))

            def collected() -> bool:
                # On a loaded machine the node's next pass (a second on) may
                # start before the first reply lands: answer it as well, and
                # its heartbeats, until the blob is gone.
                asked = leader.serve_one(0.05)
                if asked is not None:
                    peer, check = asked
                    leader.send(peer, wire.GcCheckReply.make(leader.node, request_id=check.request_id,
                                                             files=[f for f in check.files if bytes(f) == file_id]))
                return storage.stat(file_id) is None

            wait_until(collected, "the stale blob collected", REPLY_TIMEOUT_S * 2)
            counters = storage.stats()
            assert counters["gc_runs"] == 0 and counters["gc_deleted_blobs"] == 1
    finally:
        layout.cleanup()


def test_every_counter_of_a_node_is_in_the_documentation(one, transport):
    layout, node = one
    with StorageClient(transport(layout), layout.cluster.storage[0].address, CLIENT_NODE,
                       timeout_s=REPLY_TIMEOUT_S) as storage:
        counters = set(storage.stats())
    documented = (ROOT / "doc" / "storage.md").read_text()
    transports = ("handshakes_", "messages_dropped_", "sends_dropped", "peers_")    # doc/transport.md's
    missing = sorted(name for name in counters
                     if f"`{name}`" not in documented and not name.startswith(transports))
    assert missing == []


def test_collection_follows_a_followers_hint_to_the_leader(tmp_path, transport):
    layout = ClusterLayout.create(tmp_path / "cluster", masters=2, storage_policy=FAST_DUTIES)
    try:
        node = layout.start("storage")
        masters = transport(layout, NodeRole.MASTER)
        follower = masters.server_socket(zmq.ROUTER, layout.cluster.masters[0].address)
        leader = FakeLeader(layout, masters, index=1)
        leader_address = layout.cluster.masters[1].address
        address = layout.cluster.storage[0].address
        with StorageClient(transport(layout), address, CLIENT_NODE, timeout_s=REPLY_TIMEOUT_S) as storage:
            file_id, _ = storage.put_bytes(b"old" * 100)
        past = time.time() - 7200
        os.utime(blob_path(node, file_id), (past, past))
        runner = transport(layout).client_socket(zmq.DEALER, address, NodeRole.STORAGE)
        runner.send_multipart(wire.encode(wire.GcRun.make(CLIENT_NODE, request_id=4, dry_run=0)))
        refused = 0
        deadline = time.monotonic() + 10
        check = None
        while check is None and time.monotonic() < deadline:
            if follower.poll(20):          # the follower refuses everything, naming the leader
                received = recv_message(follower, None)
                message = wire.decode(received.frames)
                refused += 1
                send_message(follower, wire.encode(wire.Error.replying(
                    leader.node, message.request_id, message.message_type, ErrorCode.NOT_LEADER,
                    wire.not_leader_reason(leader_address))), received.peer)
            check = leader.serve_one(0.02)
        assert check is not None, "the gc_check never reached the leader"
        peer, request = check
        leader.send(peer, wire.GcCheckReply.make(leader.node, request_id=request.request_id, files=[file_id]))
        assert runner.poll(REPLY_TIMEOUT_S * 1000)
        report = wire.decode(runner.recv_multipart())
        assert isinstance(report, wire.GcRunReply) and [bytes(f[0]) for f in report.files] == [file_id]
        assert refused >= 1 and not blob_path(node, file_id).exists()
        runner.close()
    finally:
        layout.cleanup()
