"""Transport against real CURVE sockets on 127.0.0.1.

Hostile clients are built from raw pyzmq sockets on a separate context: they
play someone who does not use our code.
"""

import threading
import time

import pytest
import zmq

from uds.wire.enums import NodeRole
from uds.wire.keys import KeyFolder, create_cluster_keys
from uds.wire.limits import (
    LINGER_MS,
    MAX_FRAME_BYTES,
    MAX_FRAMES_PER_MESSAGE,
    MAX_MESSAGE_BYTES,
    RECEIVE_HIGH_WATER_MARK,
    SEND_HIGH_WATER_MARK,
)
from uds.wire.transport import (
    IO_THREADS,
    MAX_WIRE_FRAME_BYTES,
    Counters,
    Received,
    Transport,
    TransportError,
    connected,
    disconnects,
    recv_message,
    refusal,
    send_message,
)

DEADLINE_S = 5.0
NOTHING_WITHIN_S = 0.3
POLL_MS = 20


def wait_until(predicate, timeout=DEADLINE_S):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s")
        time.sleep(0.01)


def request(sock, frames, timeout=DEADLINE_S):
    """Send frames on a DEALER; return the reply frames or None on timeout."""
    try:
        # Never block: a socket whose handshake was refused may have no pipe.
        sock.send_multipart(frames, flags=zmq.NOBLOCK)
    except zmq.Again:
        return None
    if not sock.poll(timeout * 1000):
        return None
    return sock.recv_multipart()


class EchoServer(threading.Thread):
    """A ROUTER server that replies [b"echo", *frames] and records requests."""

    def __init__(self, transport):
        super().__init__(name="echo-server", daemon=True)
        self.transport = transport
        self.endpoint = None
        self.received: list[Received] = []
        self.error = None
        self._ready = threading.Event()
        self._stopping = threading.Event()

    def start_and_wait(self):
        self.start()
        assert self._ready.wait(DEADLINE_S), "server did not start"
        if self.error:
            raise self.error
        return self

    def run(self):
        sock = None
        try:
            sock = self.transport.server_socket(zmq.ROUTER, "tcp://127.0.0.1:*")
            self.endpoint = sock.last_endpoint.decode()
            self._ready.set()
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            while not self._stopping.is_set():
                if not poller.poll(POLL_MS):
                    continue
                while (message := recv_message(sock, self.transport)) is not None:
                    self.received.append(message)
                    send_message(
                        sock, [b"echo", *message.frames], peer=message.peer,
                        counters=self.transport,
                    )
        except BaseException as e:  # surfaced by stop()
            self.error = e
            self._ready.set()
        finally:
            if sock is not None:
                sock.close()

    def stop(self):
        self._stopping.set()
        self.join(DEADLINE_S)
        assert not self.is_alive(), "server thread did not stop"
        if self.error:
            raise self.error


@pytest.fixture
def cluster_keys(tmp_path):
    return create_cluster_keys(tmp_path / "keys")


@pytest.fixture
def keys(cluster_keys):
    """A master's keys: its sockets connect to masters, so to its own server."""
    return KeyFolder(cluster_keys, NodeRole.MASTER)


@pytest.fixture
def transport(keys):
    transport = Transport(keys)
    try:
        yield transport
    finally:
        transport.close()


@pytest.fixture
def server(transport):
    server = EchoServer(transport)
    try:
        yield server.start_and_wait()
    finally:
        server.stop()


@pytest.fixture
def rogue():
    """Makes sockets that bypass Transport; all closed at teardown.

    They are kept referenced until then: one garbage-collected with an
    undeliverable message would close with infinite linger and hang term().
    """
    context = zmq.Context()
    sockets = []

    def make(kind=zmq.DEALER):
        sock = context.socket(kind)
        sock.linger = 0
        sockets.append(sock)
        return sock

    try:
        yield make
    finally:
        for sock in sockets:
            sock.close()
        context.term()


def test_admitted_client_gets_a_reply(transport, server, keys):
    client = transport.client_socket(zmq.DEALER, server.endpoint)
    assert request(client, [b"hello", b"world"]) == [b"echo", b"hello", b"world"]
    wait_until(lambda: transport.counters["handshakes_succeeded"] >= 1)
    (message,) = server.received
    assert message.frames == [b"hello", b"world"]
    assert all(isinstance(f, memoryview) for f in message.frames)
    assert message.peer
    # The ZAP handler tags the connection with the role of the key it admitted.
    assert message.role == NodeRole.MASTER


@pytest.mark.parametrize("role", list(NodeRole))
def test_each_role_is_tagged_with_its_own_key(transport, server, cluster_keys, role):
    with Transport(KeyFolder(cluster_keys, role)) as other:
        client = other.client_socket(zmq.DEALER, server.endpoint, NodeRole.MASTER)
        assert request(client, [b"who"]) == [b"echo", b"who"]
    assert server.received[-1].role == role


def test_a_refused_key_is_known_at_once(transport, server, tmp_path):
    stranger = KeyFolder(create_cluster_keys(tmp_path / "stranger"), NodeRole.CLIENT)
    with Transport(stranger) as other:
        client = other.client_socket(zmq.DEALER, server.endpoint, NodeRole.MASTER)
        client.curve_serverkey = transport.keys.public_key(NodeRole.MASTER)
        client.disconnect(server.endpoint)
        client.connect(server.endpoint)  # again, now pinning our server's key
        started = time.monotonic()
        wait_until(lambda: refusal(client) is not None, timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert refusal(client) == f"authentication refused by master at {server.endpoint}: this key is not admitted"
        assert other.counters["handshakes_refused_by_peer"] >= 1
    good = transport.client_socket(zmq.DEALER, server.endpoint)
    assert request(good, [b"ok"]) == [b"echo", b"ok"]
    assert refusal(good) is None


def test_a_connecting_socket_knows_whether_its_connection_is_up(transport, server):
    client = transport.client_socket(zmq.DEALER, server.endpoint)
    assert request(client, [b"up"]) == [b"echo", b"up"]
    wait_until(lambda: connected(client))
    assert disconnects(client) == 0
    server.stop()                 # the server goes: its connection drops
    wait_until(lambda: not connected(client))
    assert disconnects(client) == 1


def test_large_frames_round_trip(transport, server):
    client = transport.client_socket(zmq.DEALER, server.endpoint)
    payload = bytes(range(256)) * 1024  # 256 KiB: sent zero-copy
    assert send_message(client, [b"big", memoryview(payload)]) is True
    assert client.poll(DEADLINE_S * 1000)
    assert client.recv_multipart() == [b"echo", b"big", payload]


def _other_cluster_client(rogue, endpoint, keys, tmp_path):
    # Keys from another cluster's folder: their own server key pinned, so
    # our server cannot even open the HELLO box.
    other = KeyFolder(create_cluster_keys(tmp_path / "other-cluster"), NodeRole.CLIENT)
    sock = rogue()
    sock.curve_publickey, sock.curve_secretkey = other.keypair()
    sock.curve_serverkey = other.public_key(NodeRole.MASTER)
    sock.connect(endpoint)
    return sock


def _null_client(rogue, endpoint, keys, tmp_path):
    sock = rogue()
    sock.connect(endpoint)
    return sock


def _fresh_key_client(rogue, endpoint, keys, tmp_path):
    sock = rogue()
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.curve_serverkey = keys.public_key(NodeRole.MASTER)
    sock.connect(endpoint)
    return sock


# Which breakdown counter a rejection lands in depends on the mechanism and,
# for NULL, on a race: whichever side notices the mechanism mismatch first
# closes, and the server then reports either PROTOCOL or NO_DETAIL (EPIPE).
@pytest.mark.parametrize(
    "make_client, detail_counters",
    [
        (_other_cluster_client, {"handshakes_rejected_protocol"}),
        (_null_client, {"handshakes_rejected_protocol", "handshakes_rejected_no_detail"}),
        (_fresh_key_client, {"handshakes_rejected_auth"}),
    ],
    ids=["key-not-in-folder", "null-mechanism", "fresh-key-pair"],
)
def test_unadmitted_clients_are_rejected_and_counted(
    transport, server, keys, rogue, tmp_path, make_client, detail_counters
):
    client = make_client(rogue, server.endpoint, keys, tmp_path)
    assert request(client, [b"let me in"], timeout=NOTHING_WITHIN_S) is None
    wait_until(lambda: transport.counters["handshakes_rejected"] >= 1)
    counters = transport.counters.snapshot()
    breakdown = {name for name in counters if name.startswith("handshakes_rejected_")}
    assert sum(counters[name] for name in breakdown) == counters["handshakes_rejected"]
    assert sum(counters[name] for name in detail_counters) >= 1, counters
    assert counters["handshakes_succeeded"] == 0
    assert server.received == []
    # The server still serves admitted clients.
    good = transport.client_socket(zmq.DEALER, server.endpoint)
    assert request(good, [b"ok"]) == [b"echo", b"ok"]


def test_oversized_frame_disconnects_peer_and_server_carries_on(transport, server):
    client = transport.client_socket(zmq.DEALER, server.endpoint)
    assert request(client, [b"first"]) == [b"echo", b"first"]
    client.send(b"x" * (MAX_FRAME_BYTES + 1))
    wait_until(lambda: transport.counters["peers_disconnected"] >= 1)
    good = transport.client_socket(zmq.DEALER, server.endpoint)
    assert request(good, [b"still there?"]) == [b"echo", b"still there?"]
    assert [bytes(m.frames[0]) for m in server.received] == [b"first", b"still there?"]


def test_frame_of_exactly_max_frame_bytes_is_accepted(transport, server):
    # libzmq counts CURVE's framing against MAXMSGSIZE; make sure the
    # allowance for it is right to the byte.
    client = transport.client_socket(zmq.DEALER, server.endpoint)
    client.send(b"z" * MAX_FRAME_BYTES)
    assert client.poll(DEADLINE_S * 1000)
    reply = client.recv_multipart(copy=False)
    assert [len(f) for f in reply] == [4, MAX_FRAME_BYTES]


def test_too_many_frames_is_dropped_and_counted(transport, server):
    client = transport.client_socket(zmq.DEALER, server.endpoint)
    client.send_multipart([b"f"] * (MAX_FRAMES_PER_MESSAGE + 1))
    # Same connection: proves the rejected message was drained completely.
    assert request(client, [b"next"]) == [b"echo", b"next"]
    assert transport.counters["messages_dropped_too_many_frames"] == 1
    good = transport.client_socket(zmq.DEALER, server.endpoint)
    assert request(good, [b"good"]) == [b"echo", b"good"]
    assert [m.frames for m in server.received] == [[b"next"], [b"good"]]


def test_max_frames_is_still_accepted(transport, server):
    client = transport.client_socket(zmq.DEALER, server.endpoint)
    frames = [b"%d" % i for i in range(MAX_FRAMES_PER_MESSAGE)]
    assert request(client, frames) == [b"echo", *frames]


def test_too_many_bytes_is_dropped_and_counted(transport, server):
    client = transport.client_socket(zmq.DEALER, server.endpoint)
    frame = b"y" * MAX_FRAME_BYTES  # each frame is legal, the sum is not
    assert 2 * len(frame) > MAX_MESSAGE_BYTES
    client.send_multipart([frame, frame])
    assert request(client, [b"next"]) == [b"echo", b"next"]
    assert transport.counters["messages_dropped_too_large"] == 1
    assert [m.frames for m in server.received] == [[b"next"]]


def test_send_to_unknown_router_peer_returns_false_at_once(transport):
    sock = transport.server_socket(zmq.ROUTER, "tcp://127.0.0.1:0")
    started = time.monotonic()
    assert send_message(sock, [b"hello"], peer=b"nobody", counters=transport) is False
    assert time.monotonic() - started < 0.5
    assert transport.counters["sends_dropped"] == 1


def test_send_on_full_queue_returns_false(transport):
    # Nothing listens there, so messages pile up until the high-water mark.
    with Transport(transport.keys) as other:
        listener = other.server_socket(zmq.ROUTER, "tcp://127.0.0.1:*")
        endpoint = listener.last_endpoint.decode()
    sock = transport.client_socket(zmq.DEALER, endpoint)
    counters = Counters()
    sent = 0
    while send_message(sock, [b"m"], counters=counters):
        sent += 1
        assert sent <= 3 * SEND_HIGH_WATER_MARK, "send never reported a full queue"
    assert counters["sends_dropped"] == 1
    assert sent >= SEND_HIGH_WATER_MARK


def test_send_rejects_non_bytes_before_sending_anything(transport, server):
    client = transport.client_socket(zmq.DEALER, server.endpoint)
    with pytest.raises(TypeError):
        send_message(client, [b"ok", "text"])
    # No half message is left behind to corrupt the next one.
    assert request(client, [b"clean"]) == [b"echo", b"clean"]


def test_non_router_messages_have_no_peer(transport, keys):
    pull = transport.server_socket(zmq.PULL, "tcp://127.0.0.1:*")
    push = transport.client_socket(zmq.PUSH, pull.last_endpoint.decode())
    assert send_message(push, [b"a", bytearray(b"b")]) is True
    assert pull.poll(DEADLINE_S * 1000)
    message = recv_message(pull, None)
    assert message == Received(
        peer=None, role=NodeRole.MASTER, frames=[b"a", b"b"]
    )


def test_recv_returns_none_when_idle(transport):
    sock = transport.server_socket(zmq.ROUTER, "tcp://127.0.0.1:*")
    assert recv_message(sock, transport) is None


@pytest.mark.parametrize("bind", ["tcp://127.0.0.1:0", "tcp://127.0.0.1:*"])
def test_server_socket_options(transport, bind):
    sock = transport.server_socket(zmq.ROUTER, bind)
    endpoint = sock.last_endpoint.decode()
    assert endpoint.startswith("tcp://127.0.0.1:")
    assert int(endpoint.rsplit(":", 1)[1]) > 0
    assert sock.curve_server
    assert sock.getsockopt(zmq.MAXMSGSIZE) == MAX_WIRE_FRAME_BYTES
    assert sock.getsockopt(zmq.LINGER) == LINGER_MS
    assert sock.getsockopt(zmq.SNDHWM) == SEND_HIGH_WATER_MARK
    assert sock.getsockopt(zmq.RCVHWM) == RECEIVE_HIGH_WATER_MARK


def test_a_context_made_here_has_io_threads_and_a_given_one_keeps_its_own(transport, keys):
    assert IO_THREADS > 1     # CURVE runs on them: one would be one core of crypto per process
    assert transport.context.get(zmq.IO_THREADS) == IO_THREADS
    with Transport(keys, io_threads=3) as three:
        assert three.context.get(zmq.IO_THREADS) == 3
    context = zmq.Context(io_threads=1)
    try:
        with Transport(keys, context=context, io_threads=4) as given:
            assert given.context.get(zmq.IO_THREADS) == 1
    finally:
        context.term()


def test_bind_failure_leaves_no_socket_behind(transport):
    sock = transport.server_socket(zmq.ROUTER, "tcp://127.0.0.1:*")
    with pytest.raises(zmq.ZMQError):
        transport.server_socket(zmq.ROUTER, sock.last_endpoint.decode())
    assert len(transport._sockets) == 1


def test_close_closes_everything_and_is_idempotent(keys):
    transport = Transport(keys)
    try:
        server = transport.server_socket(zmq.ROUTER, "tcp://127.0.0.1:*")
        client = transport.client_socket(zmq.DEALER, server.last_endpoint.decode())
        client.send(b"queued")  # must not make close() wait beyond LINGER_MS
        started = time.monotonic()
        transport.close()
        transport.close()
        assert time.monotonic() - started < 2.0
        assert server.closed and client.closed
        assert transport.context.closed
        assert not transport._monitor.is_alive()
        with pytest.raises(TransportError, match="closed"):
            transport.client_socket(zmq.DEALER, "tcp://127.0.0.1:1")
    finally:
        transport.close()


def test_shared_context_is_left_running(keys):
    context = zmq.Context()
    try:
        with Transport(keys, context) as transport:
            transport.server_socket(zmq.ROUTER, "tcp://127.0.0.1:*")
            # One ZAP handler per context: a second Transport must fail loudly.
            with pytest.raises(TransportError, match="authenticator"):
                Transport(keys, context)
        assert not context.closed
    finally:
        context.destroy(linger=0)


def test_keys_added_after_start_need_reload(transport, server, rogue, tmp_path):
    newcomer = KeyFolder(create_cluster_keys(tmp_path / "newcomer"), NodeRole.WORKER)
    client = rogue()
    client.curve_publickey, client.curve_secretkey = newcomer.keypair()
    client.curve_serverkey = transport.keys.public_key(NodeRole.MASTER)
    # Another key of the worker role, e.g. one host's own.
    (transport.keys.public_dir / "worker-newcomer.key").write_bytes(
        (newcomer.public_dir / "worker.key").read_bytes()
    )
    transport.reload_admitted_keys()
    client.connect(server.endpoint)
    assert request(client, [b"hi"]) == [b"echo", b"hi"]
    assert server.received[0].role == NodeRole.WORKER


def test_a_key_file_that_names_no_role_is_refused(transport):
    (transport.keys.public_dir / "junk.key").write_bytes((transport.keys.public_dir / "client.key").read_bytes())
    with pytest.raises(TransportError, match="junk.key: unknown role"):
        transport.reload_admitted_keys()
