"""No daemon dies of a bad message: each gets hundreds of mutated frames and
well-formed messages of every type with arbitrary contents, from an
authenticated peer, and must still serve, and the cluster still run a job.
Each well-formed message comes with the key of a role allowed to send it, so
that it reaches its handler rather than the role check."""
import contextlib
import random
import time

import pytest
import zmq
from hypothesis import HealthCheck, given, settings

from uds import wire
from golden import load_vectors
from strategies import any_message
from uds.wire.enums import MessageType, NodeRole
from uds.wire.keys import role_of_name
from uds.wire.senders import SENDERS
from uds.wire.transport import Transport, recv_message, send_message

MUTATED_MESSAGES = 300
WELL_FORMED_MESSAGES = 150
GOLDEN = [[bytes.fromhex(frame) for frame in frames] for frames in load_vectors().values()]


def _mutated(rng: random.Random) -> list[bytes]:
    frames = list(rng.choice(GOLDEN))
    index = rng.randrange(len(frames))
    frame = bytearray(frames[index])
    if frame and rng.random() < 0.5:
        frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
    else:
        frame = frame[: rng.randrange(len(frame) + 1)] + rng.randbytes(rng.randrange(4))
    frames[index] = bytes(frame)
    return frames


def _address(cluster, role):
    loaded = cluster.layout.cluster
    return {"master": loaded.masters[0].address, "loadbalancer": loaded.loadbalancers[0].address,
            "storage": loaded.storage[0].address}[role]


def _drain(socket):
    while socket.poll(0, zmq.POLLIN):
        recv_message(socket, None)


def _still_serves(socket):
    send_message(socket, wire.encode(wire.StatsQuery.make(bytes(16), request_id=424242)))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if socket.poll(200, zmq.POLLIN):
            received = recv_message(socket, None)
            if received is None:
                continue
            try:
                reply = wire.decode(received.frames)
            except wire.WireError:
                continue
            if isinstance(reply, wire.StatsReply) and reply.request_id == 424242:
                return reply.counters
    raise AssertionError("no stats reply: the daemon stopped serving")


@pytest.mark.parametrize("role", ["master", "loadbalancer", "storage"])
def test_daemon_survives_a_storm_of_bad_messages(cluster, role):
    rng = random.Random(role)
    with contextlib.ExitStack() as stack:
        sockets = {}
        for sender in NodeRole:
            transport = stack.enter_context(Transport(cluster.layout.keys(sender)))
            sockets[sender] = transport.client_socket(zmq.DEALER, _address(cluster, role), role_of_name(role))
        socket = sockets[NodeRole.CLIENT]
        for _ in range(MUTATED_MESSAGES):
            send_message(socket, _mutated(rng))
            _drain(socket)

        @settings(max_examples=WELL_FORMED_MESSAGES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
        @given(any_message)
        def send_well_formed(message):
            frames = wire.encode(message)
            senders = sorted(SENDERS[MessageType(message.message_type)])
            sender = sockets[senders[len(frames[0]) % len(senders)]]
            send_message(sender, frames)
            _drain(sender)

        send_well_formed()
        _still_serves(socket)
    assert cluster.daemons[role].alive(), cluster.daemons[role].log()
    # Well-formed junk may include real submissions, possibly of many chunks
    # ahead in the queue: cancel them, as an operator would.
    for event in cluster.connection.events(kinds=["job_submitted"], limit=10_000).events:
        cluster.connection.cancel_job(event.job)
    # And the cluster as a whole still works.
    job = cluster.connection.submit_job(b"#!/bin/sh\necho still here\n", timeout=30)
    status = job.wait(timeout=60)
    assert status.state == "succeeded", (status, cluster.daemons[role].log()[-3000:])
    assert job.logs(0)[0] == b"still here\n"
