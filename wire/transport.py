"""ZeroMQ sockets for uds. This is the only module that creates sockets
(with wire/handshakes.py, whose thread owns their monitor sockets).

Rules, so that no socket in the project can be opened without them:

* Every socket is CURVE-encrypted with the key pair of this process's role
  (wire/keys.py), on both sides; a connecting socket pins the public key of
  the role it connects to.
* A server admits only peers whose public key is in the key folder's
  `public/`, and tags each connection with the role that key belongs to;
  one ZAP authenticator per Transport enforces that. The
  authenticator starts before any socket exists and stops after all are
  closed, because libzmq *accepts any CURVE client* when no ZAP handler is
  running.
* Every socket has MAXMSGSIZE (MAX_FRAME_BYTES plus CURVE's framing),
  LINGER and both high-water marks from wire.limits. A frame over
  MAX_FRAME_BYTES makes libzmq disconnect that peer.
* Rejected handshakes are counted (monitor thread), as are messages dropped
  for breaking MAX_FRAMES_PER_MESSAGE / MAX_MESSAGE_BYTES and sends dropped
  because the peer is slow or gone. Nothing here raises on peer misbehaviour.
* recv_message / send_message never block.

Received.role: the sender's role. On a server socket it is the ZAP User-Id
our authenticator set (the role's name, on every frame including the ROUTER
routing id); on a connecting socket it is the role whose key it pinned, the
only peer that can complete the handshake.

A connecting socket whose handshake the server refuses learns it from its
monitor at once: `refusal(socket)` says so in a sentence, so a caller can
fail in well under a second instead of waiting out its timeout.

A Transport's sockets follow libzmq's rule of one thread per socket; close()
must only run once the threads using them have stopped.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from uds.wire.enums import NodeRole
from uds.wire.handshakes import REJECTED_EVENTS, HandshakeMonitor
from uds.wire.keys import UPSTREAM_ROLE, KeyFolder, KeyFolderError, role_name
from uds.wire.limits import (
    LINGER_MS,
    MAX_FRAME_BYTES,
    MAX_FRAMES_PER_MESSAGE,
    MAX_MESSAGE_BYTES,
    RECEIVE_HIGH_WATER_MARK,
    SEND_HIGH_WATER_MARK,
)

# pyzmq's authenticator matches the socket's ZAP domain *literally* against
# configure_curve's domain ('*' only stands for an empty domain), so both
# sides use this one name; a mismatch would reject every client.
ZAP_DOMAIN = "uds"

# libzmq applies MAXMSGSIZE to the encrypted CURVE MESSAGE command, which is
# the frame plus "\x07MESSAGE" (8) + nonce (8) + flags (1) + MAC (16) bytes.
# Without this allowance a frame of exactly MAX_FRAME_BYTES is refused.
CURVE_MESSAGE_OVERHEAD_BYTES = 33
MAX_WIRE_FRAME_BYTES = MAX_FRAME_BYTES + CURVE_MESSAGE_OVERHEAD_BYTES

# ZeroMQ I/O threads of a context the Transport makes. CURVE encrypts and
# decrypts on the I/O thread that owns the connection, so one thread caps a
# process at one core of crypto (~350-500 MiB/s here, against ~2 GiB/s
# without CURVE). libzmq gives each new connection, accepted or made, to the
# least loaded I/O thread, so a storage node serving several connections and
# a client reading over several (storage/client.py's streams) spread the
# crypto over this many cores.
IO_THREADS = 2

# Below this pyzmq copying is cheaper than tracking a zero-copy buffer.
ZERO_COPY_MIN_BYTES = 64 * 1024

_ROLE_OF_TAG = {role_name(role): role for role in NodeRole}

COUNTER_NAMES = (
    "handshakes_rejected",
    *REJECTED_EVENTS.values(),
    "handshakes_succeeded",
    "peers_disconnected",
    "messages_dropped_too_many_frames",
    "messages_dropped_too_large",
    "sends_dropped",
    "handshakes_refused_by_peer",
)


class TransportError(Exception):
    """A Transport could not be set up (authenticator, monitor, closed)."""


class Counters(Mapping[str, int]):
    """Named event counts. Increments take a lock; reads need none.

    Handshake counters count attempts, not peers: a rejected client keeps
    reconnecting. `handshakes_rejected_no_detail` also counts peers that
    hung up mid-handshake (libzmq cannot tell the two apart).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTER_NAMES, 0)

    def increment(self, *names: str) -> None:
        """Add one to each name, atomically (a total and its breakdown agree)."""
        with self._lock:
            for name in names:
                self._values[name] = self._values.get(name, 0) + 1

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def snapshot(self) -> dict[str, int]:
        """A consistent copy: totals match their breakdowns."""
        with self._lock:
            return dict(self._values)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._values))

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Counters({dict(self._values)!r})"


@dataclasses.dataclass(frozen=True)
class Received:
    """One whole message. `frames` are views into zmq frames, not copies."""

    peer: bytes | None
    role: NodeRole | None
    frames: list[memoryview]


class RoleSocket(zmq.Socket):
    """A zmq socket that knows whom it talks to: `server_role` is the role
    whose key a connecting socket pinned (None on a bound one),
    `refused` the reason its last handshake was refused, if it was,
    `connected` whether a connection is up (its handshake done, not dropped
    since), and `disconnects` how many of its connections dropped."""

    server_role: NodeRole | None = None
    refused: str | None = None
    connected: bool = False
    disconnects: int = 0


def disconnects(socket: zmq.Socket) -> int:
    """How many established connections of this connecting socket have
    dropped so far (the server stopped, or the network cut it)."""
    return socket.disconnects


def connected(socket: zmq.Socket) -> bool:
    """Whether this connecting socket has a connection up: a handshake
    done and not dropped since. False while libzmq tries to reconnect."""
    return socket.connected


def refusal(socket: zmq.Socket) -> str | None:
    """Why the server refused this connecting socket's handshake, in one
    sentence, or None while it has not (or has since accepted it)."""
    return getattr(socket, "refused", None)


class _RoleAuthenticator(ThreadAuthenticator):
    """Admits the keys it is given and tags each connection with the role
    of its key, as the ZAP User-Id."""

    def __init__(self, context: zmq.Context) -> None:
        super().__init__(context)
        self.roles: dict[bytes, NodeRole] = {}

    def callback(self, domain: str, z85_key: bytes) -> bool:
        return z85_key in self.roles

    def curve_user_id(self, client_public_key: bytes) -> str:
        # The key may have left `roles` since `callback` admitted it (a
        # reload in between): no tag, so the dispatcher refuses its messages.
        role = self.roles.get(z85.encode(client_public_key))
        return "" if role is None else role_name(role)


class Transport:
    """Makes and owns every socket of one process (or one component)."""

    def __init__(self, keys: KeyFolder, context: zmq.Context | None = None,
                 io_threads: int = IO_THREADS) -> None:
        """`io_threads` sizes the context made here; a given `context` keeps its own."""
        self.keys = keys
        self.counters = Counters()
        self._owns_context = context is None
        self._context = zmq.Context(io_threads=io_threads) if context is None else context
        if self._owns_context:
            # Default for any socket made on it (the authenticator's too), so
            # one closed by the garbage collector cannot hang term().
            self._context.setsockopt(zmq.LINGER, LINGER_MS)
        self._sockets: set[zmq.Socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._auth = _RoleAuthenticator(self._context)
        try:
            try:
                self._auth.start()
            except zmq.ZMQError as e:
                # libzmq allows one ZAP handler per context (a fixed inproc name).
                raise TransportError(
                    f"cannot start the ZAP authenticator ({e}); "
                    "is another Transport using this context?"
                ) from e
            self.reload_admitted_keys()
        except TransportError:
            self._abort()
            raise
        self._monitor = HandshakeMonitor(self._context, self.counters)
        self._monitor.start()

    @property
    def context(self) -> zmq.Context:
        return self._context

    def reload_admitted_keys(self) -> None:
        """Re-read public/ after keys were added or removed there."""
        # pyzmq's loader only logs a bad certificate, so check it ourselves.
        try:
            admitted = self.keys.admitted_roles()
        except KeyFolderError as e:
            raise TransportError(f"cannot load admitted keys: {e}") from e
        if not admitted:
            raise TransportError(f"no admitted public keys in {self.keys.public_dir}")
        self._auth.roles = admitted  # one assignment: the ZAP thread sees the old or the new set
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self._auth)

    def server_socket(self, kind: int, bind: str) -> zmq.Socket:
        """A CURVE server socket bound to `bind` (port 0 or `*` allowed).

        The endpoint actually bound is `socket.last_endpoint`.
        """
        public, secret = self.keys.keypair()

        def setup(sock: zmq.Socket) -> None:
            sock.curve_server = True
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.zap_domain = ZAP_DOMAIN.encode()
            if kind == zmq.ROUTER:
                # Unknown peer -> EHOSTUNREACH instead of a silent drop.
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            # Monitor before bind so no handshake can slip past the counters.
            self._watch(sock, connecting=False)
            sock.bind(bind)

        return self._new_socket(kind, setup)

    def client_socket(
        self, kind: int, connect: str, server_role: NodeRole | None = None
    ) -> zmq.Socket:
        """A CURVE client socket connected to `connect`, pinning the public
        key of `server_role` (by default this role's upstream, see
        wire.keys.UPSTREAM_ROLE). A refused handshake shows in `refusal`."""
        public, secret = self.keys.keypair()
        role = NodeRole(server_role) if server_role is not None else UPSTREAM_ROLE[self.keys.role]
        server_key = self.keys.public_key(role)

        def setup(sock: zmq.Socket) -> None:
            sock.server_role = role
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.curve_serverkey = server_key
            self._watch(sock, connecting=True, name=f"{role_name(role)} at {connect}")
            sock.connect(connect)

        return self._new_socket(kind, setup)

    def _watch(self, sock: zmq.Socket, connecting: bool, name: str = "") -> None:
        if not self._monitor.watch(sock, connecting, name):
            raise TransportError("transport monitor thread did not respond")

    def _new_socket(self, kind: int, setup: Callable[[zmq.Socket], None]) -> zmq.Socket:
        with self._lock:
            if self._closed:
                raise TransportError("transport is closed")
            # Sockets closed by their users need not be remembered.
            self._sockets = {s for s in self._sockets if not s.closed}
        sock = self._context.socket(kind, socket_class=RoleSocket)
        try:
            sock.setsockopt(zmq.LINGER, LINGER_MS)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_WIRE_FRAME_BYTES)
            sock.setsockopt(zmq.SNDHWM, SEND_HIGH_WATER_MARK)
            sock.setsockopt(zmq.RCVHWM, RECEIVE_HIGH_WATER_MARK)
            setup(sock)
        except BaseException:
            sock.close(linger=0)
            raise
        with self._lock:
            if not self._closed:
                self._sockets.add(sock)
                return sock
        sock.close(linger=0)  # close() ran meanwhile and would miss it
        raise TransportError("transport is closed")

    def close(self) -> None:
        """Close every socket, stop auth and monitor, end the context if ours."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            if not sock.closed:
                sock.close()
        self._monitor.stop()
        self._abort()

    def _abort(self) -> None:
        self._auth.stop()
        if self._owns_context:
            # destroy() also closes any stray socket, so term() cannot hang.
            self._context.destroy(linger=LINGER_MS)

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


CountersLike = Transport | Counters | None


def _counters_of(target: CountersLike) -> Counters | None:
    return target.counters if isinstance(target, Transport) else target


def recv_message(socket: zmq.Socket, counters: CountersLike) -> Received | None:
    """Receive one whole message without blocking, or None.

    None means nothing was waiting, or the message broke a limit and was
    drained and counted. On ROUTER sockets the routing id is `peer` and is
    not counted against the limits.
    """
    try:
        first = socket.recv(zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return None
    parts = _parts(socket, first)
    peer = next(parts).bytes if socket.type == zmq.ROUTER else None
    frames: list[zmq.Frame] = []
    total_bytes = 0
    dropped_as: str | None = None
    for frame in parts:
        if dropped_as is not None:
            continue  # drain the rest of a rejected message, storing nothing
        frames.append(frame)
        total_bytes += len(frame)
        if len(frames) > MAX_FRAMES_PER_MESSAGE:
            dropped_as = "messages_dropped_too_many_frames"
        elif total_bytes > MAX_MESSAGE_BYTES:
            dropped_as = "messages_dropped_too_large"
        if dropped_as is not None:
            frames.clear()
    if dropped_as is not None:
        sink = _counters_of(counters)
        if sink is not None:
            sink.increment(dropped_as)
        return None
    role = _ROLE_OF_TAG.get(_user_id(first)) or getattr(socket, "server_role", None)
    return Received(peer=peer, role=role, frames=[f.buffer for f in frames])


def recv_messages(socket: zmq.Socket, counters: CountersLike, limit: int) -> Iterator[Received]:
    """The messages waiting on `socket`, at most `limit` of them, so that a
    busy socket cannot keep a loop from its timers. Never blocks."""
    for _ in range(limit):
        received = recv_message(socket, counters)
        if received is None:
            return
        yield received


def _parts(socket: zmq.Socket, first: zmq.Frame) -> Iterator[zmq.Frame]:
    frame = first
    yield frame
    while frame.more:
        # libzmq delivers multipart messages atomically: once the first part
        # is here the rest is too, so NOBLOCK cannot fail with EAGAIN.
        frame = socket.recv(zmq.NOBLOCK, copy=False)
        yield frame


def _user_id(frame: zmq.Frame) -> str | None:
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:
        return None  # no ZAP involved (e.g. inproc) or no metadata


def send_message(
    socket: zmq.Socket,
    frames: Sequence[bytes | bytearray | memoryview | zmq.Frame],
    peer: bytes | None = None,
    counters: CountersLike = None,
) -> bool:
    """Send one whole message without blocking; False if it was dropped.

    Dropped means the send queue is full (zmq.Again) or, on a ROUTER with
    ROUTER_MANDATORY, `peer` is not connected (EHOSTUNREACH); both are
    counted as `sends_dropped`. If the first part fails nothing was sent.
    High-water marks are only checked on a message's first part, so a later
    part can only fail if the peer vanishes mid-message, and libzmq never
    delivers a partial message: a DEALER-like socket rolls back the queued
    parts and fails with EAGAIN (we return False); a ROUTER silently drops
    the rest and reports success (we return True for a peer that is gone).
    Large buffers go zero-copy and must not be modified after the call.
    """
    parts: list[bytes | bytearray | memoryview | zmq.Frame] = list(frames)
    if peer is not None:
        parts.insert(0, peer)
    if not parts:
        raise ValueError("send_message needs at least one frame")
    # Check every part before sending any: a TypeError after a SNDMORE part
    # would leave half a message on the socket, glued to the next one.
    for part in parts:
        if not isinstance(part, (bytes, bytearray, memoryview, zmq.Frame)):
            raise TypeError(f"frames must be bytes-like, not {type(part).__name__}")
    last = len(parts) - 1
    for index, part in enumerate(parts):
        flags = zmq.NOBLOCK if index == last else zmq.NOBLOCK | zmq.SNDMORE
        size = part.nbytes if isinstance(part, memoryview) else len(part)
        try:
            socket.send(part, flags, copy=size < ZERO_COPY_MIN_BYTES)
        except zmq.ZMQError as e:
            if e.errno not in (zmq.EAGAIN, zmq.EHOSTUNREACH):
                raise
            sink = _counters_of(counters)
            if sink is not None:
                sink.increment("sends_dropped")
            return False
    return True
