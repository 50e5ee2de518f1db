"""A real master and storage nodes' messages to it, sent with a storage
node's key: a heartbeat registers the node, `uds nodes` lists it with its
figures, silence makes it lost; pins and retained jobs keep files out of a
gc_check's answer, and unreferenced files are in it."""
from __future__ import annotations

import os
import time

import pytest
import zmq

from daemons import ClusterLayout, wait_until
from uds import client, wire
from uds.wire.enums import ErrorCode, NodeRole
from uds.wire.transport import Transport, recv_message, send_message

HEARTBEAT_S = 0.2
LOST_AFTER_S = 1.0
REPLY_TIMEOUT_MS = 5000
STORE = os.urandom(16)
FIGURES = {"capacity_bytes": 10_000, "used_bytes": 4_000, "free_bytes": 6_000, "blob_count": 3,
           "repair_pending": 0, "repaired_files": 1, "repaired_bytes": 100, "scrubbed_blobs": 3,
           "corrupt_blobs": 0, "gc_deleted_blobs": 0, "gc_deleted_bytes": 0}


@pytest.fixture
def master(tmp_path):
    layout = ClusterLayout.create(tmp_path / "cluster", storage_policy={
        "heartbeat_interval_s": HEARTBEAT_S, "lost_after_s": LOST_AFTER_S, "gc_grace_s": 60.0})
    try:
        layout.start("master")
        yield layout
    finally:
        layout.cleanup()


class Speaker:
    """A DEALER to the master with the key of `role`."""

    def __init__(self, layout: ClusterLayout, role: NodeRole) -> None:
        self.transport = Transport(layout.keys(role))
        self.socket = self.transport.client_socket(zmq.DEALER, layout.cluster.masters[0].address, NodeRole.MASTER)
        self.request_id = 0

    def ask(self, make) -> wire.Message:
        """Send `make(request_id)` until the master answers as the leader."""
        def answered():
            self.request_id += 1
            send_message(self.socket, wire.encode(make(self.request_id)))
            assert self.socket.poll(REPLY_TIMEOUT_MS, zmq.POLLIN), "no reply"
            reply = wire.decode(recv_message(self.socket, None).frames)
            if isinstance(reply, wire.Error) and reply.error_code in (ErrorCode.BUSY, ErrorCode.NOT_LEADER):
                return None
            return reply
        return wait_until(answered, "an answer from the leader", timeout=30.0)

    def close(self) -> None:
        self.socket.close(linger=0)
        self.transport.close()


def test_storage_membership_pins_and_gc_check_through_a_real_master(master):
    storage, asking = Speaker(master, NodeRole.STORAGE), Speaker(master, NodeRole.CLIENT)
    connection = client.connect(master.path, timeout=20)
    started_ms = int(time.time()) * 1000
    beat = lambda rid: wire.StorageHeartbeat.make(  # noqa: E731
        STORE, request_id=rid, start_time_ms=started_ms, host="store-host", address="tcp://127.0.0.1:7399",
        version=1, figures=FIGURES)
    try:
        reply = storage.ask(beat)
        assert isinstance(reply, wire.StorageHeartbeatReply), reply
        assert reply.heartbeat_interval_ms == int(HEARTBEAT_S * 1000)
        assert reply.nodes == [dict(node=STORE, address="tcp://127.0.0.1:7399", state="alive", free_bytes=6_000)]
        [listed] = [node for node in connection.nodes() if node["node"] == STORE]
        assert (listed["role"], listed["state"], listed["host"], listed["figures"]) == (
            NodeRole.STORAGE, "alive", "store-host", FIGURES)

        pinned, referenced, free = os.urandom(16), os.urandom(16), os.urandom(16)
        until_ms = int((time.time() + 3600) * 1000)
        pin = asking.ask(lambda rid: wire.FilePin.make(connection.node_id, request_id=rid, until_ms=until_ms,
                                                       files=[pinned]))
        assert isinstance(pin, wire.FilePinReply) and pin.file_count == 1, pin
        submitted = asking.ask(lambda rid: wire.JobSubmit.make(
            connection.node_id, request_id=rid, job=os.urandom(16), chunk_count=1, program=[referenced, 10],
            args=[], inputs={}, chunk_inputs=[], timeout_s=60.0, max_retries=0, name="holds a file"))
        assert isinstance(submitted, wire.JobSubmitReply), submitted
        check = storage.ask(lambda rid: wire.GcCheck.make(STORE, request_id=rid, files=[pinned, referenced, free]))
        assert isinstance(check, wire.GcCheckReply) and check.files == [free], check

        # Silent for lost_after_s: lost, in the table and in the event log.
        wait_until(lambda: any(node["node"] == STORE and node["state"] == "lost" for node in connection.nodes()),
                   "the silent storage node lost", timeout=LOST_AFTER_S + 10.0)
        events = connection.events(node=STORE).events
        assert [event.kind for event in events] == ["node_joined", "node_lost"]
        # Its next heartbeat brings it back.
        reply = storage.ask(beat)
        assert reply.nodes[0]["state"] == "alive"
        assert connection.master_stats()["storage_nodes_lost"] == 1
    finally:
        connection.close()
        storage.close()
        asking.close()
