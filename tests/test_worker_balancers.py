"""A worker between two load balancers, on real ZeroMQ sockets: two fake
balancers (ROUTER sockets of this test, with the balancers' keys) in front
of a real worker, with a real storage node for its programs. The worker
greets and heartbeats both, obeys the highest epoch, drops and counts an
assignment of a lower one, and sends its reports, resent ones included, to
the balancer of the highest epoch, while chunks keep running through the
change. The sandbox is off: nothing here is about containment."""
from __future__ import annotations

import pathlib
import threading
import time

import pytest
import zmq

from daemons import free_port, wait_until
from uds import wire
from uds.daemon.runtime import wake_pipe
from uds.storage.client import StorageClient
from uds.wire.enums import ChunkState, NodeRole
from uds.wire.transport import Transport, recv_message, send_message
from uds.worker.node import WorkerNode

WAIT_S = 20.0
HEARTBEAT_S = 0.1
JOB = bytes(range(16))
BALANCER_ID = b"B" * 16
# Runs until the file named by its first argument appears.
GATED = b'#!/bin/sh\nwhile [ ! -e "$1" ]; do sleep 0.02; done\n'


class FakeBalancer:
    """A ROUTER that records what the worker sends it and answers as told."""

    def __init__(self, transport: Transport, address: str) -> None:
        self.socket = transport.server_socket(zmq.ROUTER, address)
        self.address = address
        self.received: list[wire.Message] = []
        self.peer: bytes | None = None

    def pump(self) -> None:
        """Take in whatever has arrived."""
        while self.socket.poll(0):
            received = recv_message(self.socket, None)
            if received is None:
                return
            self.peer = received.peer
            self.received.append(wire.decode(received.frames))

    def wait_for(self, what: str, predicate, timeout: float = WAIT_S) -> wire.Message:
        """The first message received (now or until `timeout`) that `predicate` accepts."""
        def found():
            self.pump()
            return next((message for message in self.received if predicate(message)), None)
        return wait_until(found, what, timeout)

    def send(self, message: wire.Message) -> None:
        assert self.peer is not None, "the worker has not spoken to this balancer"
        assert send_message(self.socket, wire.encode(message), peer=self.peer)

    def answer_hello(self, epoch: int) -> None:
        hello = self.wait_for(f"a hello at {self.address}", lambda m: isinstance(m, wire.Hello))
        self.send(wire.HelloReply.make(BALANCER_ID, request_id=hello.request_id, epoch=epoch,
                                       heartbeat_interval_ms=int(HEARTBEAT_S * 1000), lease_ms=2000))

    def assign(self, epoch: int, program: tuple[bytes, int], chunk: int, gate: pathlib.Path) -> None:
        self.send(wire.WorkerRequest.make(
            BALANCER_ID, job=JOB, program_length=program[1], num_input_files=0, epoch=epoch,
            program=list(program), args=[str(gate)], inputs={}, chunk_count=8, timeout_s=WAIT_S,
            assignments=[{"chunk": chunk, "attempt": 1, "inputs": {}}]))

    def statuses(self, chunk: int) -> list[wire.WorkerStatus]:
        self.pump()
        return [m for m in self.received if isinstance(m, wire.WorkerStatus) and m.chunk == chunk]

    def final_status(self, chunk: int) -> wire.WorkerStatus:
        return self.wait_for(f"the final status of chunk {chunk} at {self.address}",
                             lambda m: isinstance(m, wire.WorkerStatus) and m.chunk == chunk
                             and m.state == ChunkState.SUCCEEDED)

    def heartbeat_running(self, chunk: int) -> wire.Heartbeat:
        return self.wait_for(f"a heartbeat at {self.address} listing chunk {chunk}",
                             lambda m: isinstance(m, wire.Heartbeat)
                             and any(entry[1] == chunk for entry in m.running))


@pytest.fixture
def bench(daemons, tmp_path):
    """Storage, two fake balancers and the program, stored."""
    storage = daemons.start("storage")
    balancer_transport = Transport(daemons.keys(NodeRole.LOADBALANCER))
    client_transport = Transport(daemons.keys(NodeRole.CLIENT))
    try:
        balancers = [FakeBalancer(balancer_transport, f"tcp://127.0.0.1:{free_port()}") for _ in range(2)]
        store = StorageClient(client_transport, daemons.cluster.storage[0].address, b"C" * 16)
        program = store.put_bytes(GATED)
        store.close()
        yield daemons, storage, balancers, program
    finally:
        client_transport.close()
        balancer_transport.close()


@pytest.fixture
def worker(bench, tmp_path):
    """A WorkerNode in a thread of this test, connected to both balancers."""
    layout, _storage, balancers, _program = bench
    transport = Transport(layout.keys(NodeRole.WORKER))
    wake_read, wake_write = wake_pipe()
    data = tmp_path / "worker"
    data.mkdir()
    node = WorkerNode(b"W" * 16, data, [balancer.address for balancer in balancers],
                      layout.cluster.storage[0].address, transport, slots=4, cache_bytes=1 << 28,
                      heartbeat_interval_s=HEARTBEAT_S, wake_read=wake_read, wake_write=wake_write)
    stopping = threading.Event()
    loop = threading.Thread(target=node.run, args=(stopping.is_set, lambda: None), daemon=True)
    loop.start()
    try:
        yield node
    finally:
        stopping.set()
        loop.join(timeout=10)
        node.close()
        transport.close()


def test_the_worker_obeys_the_highest_epoch_and_reports_to_its_balancer(bench, worker, tmp_path):
    _layout, _storage, (first, second), program = bench
    first.answer_hello(epoch=1)
    second.answer_hello(epoch=0)                # a standby
    gate = tmp_path / "gate"
    first.assign(1, program, chunk=0, gate=gate)
    # Both balancers learn what runs and what the cache gained, the standby too.
    for balancer in (first, second):
        balancer.heartbeat_running(0)
        balancer.wait_for("the program in a heartbeat's cache news",
                          lambda m: isinstance(m, wire.Heartbeat)
                          and any(entry[0] == program[0] for entry in m.cache_added))

    second.assign(2, program, chunk=1, gate=gate)   # the standby took over
    second.heartbeat_running(1)
    first.assign(1, program, chunk=2, gate=gate)    # the old active, too late
    wait_until(lambda: worker.stats().get("stale_epoch_dropped") == 1, "the stale assignment dropped")
    assert worker.core.epoch == 2 and worker.core.followed == 1

    gate.touch()
    for chunk in (0, 1):
        status = second.final_status(chunk)
        assert status.epoch == 2
    # Chunk 0 kept running through the change; nothing final went to the old
    # active, and the stale assignment never ran.
    assert not [m for m in first.statuses(0) if m.state != ChunkState.STARTED]
    assert not first.statuses(1) and not first.statuses(2) and not second.statuses(2)
    second.pump()
    assert not any(entry[1] == 2 for m in second.received if isinstance(m, wire.Heartbeat)
                   for entry in m.running)
    assert worker.stats().get("attempts_cancelled", 0) == 0


def test_an_unacknowledged_report_is_resent_to_a_new_active_at_once(bench, worker, tmp_path):
    _layout, _storage, (first, second), program = bench
    first.answer_hello(epoch=1)
    second.answer_hello(epoch=0)
    gate = tmp_path / "gate"
    gate.touch()
    first.assign(1, program, chunk=0, gate=gate)
    report = first.final_status(0)
    assert report.epoch == 1 and not second.statuses(0)
    # The standby becomes active and says so; the old active never acknowledged.
    took_over = time.monotonic()
    second.send(wire.HelloReply.make(BALANCER_ID, request_id=0, epoch=2,
                                     heartbeat_interval_ms=int(HEARTBEAT_S * 1000), lease_ms=2000))
    resent = second.final_status(0)
    assert time.monotonic() - took_over < 1.0       # at once, not at the next resend
    assert (resent.epoch, resent.attempt) == (2, 1)
    # An acknowledgement from the old epoch is dropped; the new one's is taken.
    first.send(wire.StatusAck.make(BALANCER_ID, epoch=1, attempt_count=1,
                                   attempts=[[JOB, 0, 1, int(ChunkState.SUCCEEDED)]]))
    wait_until(lambda: worker.stats().get("stale_epoch_dropped") == 1, "the stale acknowledgement dropped")
    assert worker.core.unacknowledged()
    second.send(wire.StatusAck.make(BALANCER_ID, epoch=2, attempt_count=1,
                                    attempts=[[JOB, 0, 1, int(ChunkState.SUCCEEDED)]]))
    wait_until(lambda: not worker.core.unacknowledged(), "the acknowledgement of epoch 2 taken")


def test_a_worker_daemon_greets_every_balancer_of_its_cluster_file(bench):
    layout, _storage, balancers, _program = bench
    text = layout.path.read_text()
    start = text.index("[[loadbalancers]]")
    end = text.index("[[storage]]")
    entries = "".join(f'[[loadbalancers]]\naddress = "{balancer.address}"\ndata = "data/loadbalancer-{index}"\n\n'
                      for index, balancer in enumerate(balancers))
    layout.path.write_text(text[:start] + entries + text[end:])
    layout.start("worker", "--unsafe-no-sandbox", name="w0")
    for balancer in balancers:
        balancer.answer_hello(epoch=1)
        balancer.wait_for("a heartbeat", lambda m: isinstance(m, wire.Heartbeat))
