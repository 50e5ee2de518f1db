"""Malformed, unexpected and unauthenticated requests to every daemon with a
socket: an error reply or nothing, and the daemon keeps serving."""
import pytest
import zmq

from uds import wire
from uds.wire.enums import NodeRole
from uds.wire.keys import role_of_name
from uds.wire.transport import Transport, recv_message, send_message

NO_REPLY_WAIT_MS = 700


def _address(cluster, role):
    loaded = cluster.layout.cluster
    return {"master": loaded.masters[0].address, "loadbalancer": loaded.loadbalancers[0].address,
            "storage": loaded.storage[0].address}[role]


def _ask(socket, frames, timeout_ms=5000):
    send_message(socket, frames)
    if not socket.poll(timeout_ms, zmq.POLLIN):
        return None
    received = recv_message(socket, None)
    return wire.decode(received.frames) if received else None


def _stats(socket):
    reply = _ask(socket, wire.encode(wire.StatsQuery.make(bytes(16), request_id=77)))
    assert isinstance(reply, wire.StatsReply), reply
    return reply.counters


@pytest.mark.parametrize("role", ["master", "loadbalancer", "storage"])
def test_malformed_and_unexpected_requests_get_errors(shared_cluster, role):
    with Transport(shared_cluster.layout.keys()) as transport:
        socket = transport.client_socket(zmq.DEALER, _address(shared_cluster, role), role_of_name(role))
        for frames in ([b"garbage"], [b"\x03" + bytes(40)], [bytes(100)] * 3,
                       [wire.encode(wire.FileRequest.make(bytes(16), file=bytes(16)))[0][:30]]):
            reply = _ask(socket, frames)
            assert isinstance(reply, wire.Error), (frames, reply)
            assert reply.error_code == wire.ErrorCode.MALFORMED
            assert reply.reason
        unexpected = wire.ChunkEventsAck.make(bytes(16), epoch=1, batch_id=1)
        if role != "master":
            reply = _ask(socket, wire.encode(unexpected))
            assert isinstance(reply, wire.Error) and reply.error_code == wire.ErrorCode.UNEXPECTED
        assert _stats(socket)  # still serving


def _null_socket(context, address):
    socket = context.socket(zmq.DEALER)
    socket.linger = 0
    socket.connect(address)
    return socket


def _foreign_curve_socket(context, address, server_key):
    public, secret = zmq.curve_keypair()
    socket = context.socket(zmq.DEALER)
    socket.linger = 0
    socket.curve_publickey, socket.curve_secretkey, socket.curve_serverkey = public, secret, server_key
    socket.connect(address)
    return socket


@pytest.mark.parametrize("role", ["master", "loadbalancer", "storage"])
def test_unauthenticated_clients_get_nothing(shared_cluster, role):
    keys = shared_cluster.layout.keys()
    address = _address(shared_cluster, role)
    context = zmq.Context()
    try:
        for socket in (_null_socket(context, address),
                       _foreign_curve_socket(context, address, keys.public_key(role_of_name(role)))):
            try:
                # A rejected handshake may leave the socket with no pipe to
                # queue on; a blocking send would then wait forever.
                socket.send_multipart(wire.encode(wire.StatsQuery.make(bytes(16), request_id=1)),
                                      flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
            assert not socket.poll(NO_REPLY_WAIT_MS, zmq.POLLIN)
            socket.close()
    finally:
        context.destroy(linger=0)
    with Transport(keys) as transport:
        counters = _stats(transport.client_socket(zmq.DEALER, address, role_of_name(role)))
        rejected = counters.get("transport_handshakes_rejected", counters.get("handshakes_rejected", 0))
        assert rejected >= 2, counters
