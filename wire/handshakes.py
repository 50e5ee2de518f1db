"""Watching handshakes: the monitor thread of a Transport (wire/transport.py).

Every socket a Transport makes is watched. For a bound socket the thread
counts handshakes accepted and refused; for a connecting socket it notes on
the socket (`refused`) why the server refused our handshake, so that a caller
learns it within its next look instead of at the end of its timeout; and it
notes on the socket whether a connection is up (`connected`) and counts those
that dropped (`disconnects`), so that a caller waiting on a server that died
learns it at once. Only this thread
touches the monitor PAIR sockets.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import queue
import threading
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

MONITOR_REGISTER_TIMEOUT_S = 5.0
MONITOR_JOIN_TIMEOUT_S = 5.0

REJECTED_EVENTS = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshakes_rejected_no_detail",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshakes_rejected_protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshakes_rejected_auth",
}
MONITORED_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED | zmq.EVENT_MONITOR_STOPPED
)

# What a connecting socket's refused handshake means, in `socket.refused`.
_REFUSALS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "this key is not admitted",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the handshake broke the protocol "
                                         "(are both sides using this cluster's keys?)",
}
# A server that cannot open our handshake (we pinned a key it does not hold)
# just hangs up: libzmq reports that without detail. One such hang-up may be
# a server stopping mid-handshake; this many in a row, with none accepted,
# is a refusal.
HANG_UPS_FOR_REFUSAL = 3
_HANG_UP_REFUSAL = ("it ends every handshake; is this the cluster's public key for it "
                    "(does the cluster file hold this cluster's keys)?")


class HandshakeMonitor(threading.Thread):
    """Owns the monitor PAIR sockets of all sockets of a Transport.

    Callers only hand over an inproc address; the PAIR socket is created and
    used in this thread alone. A self-pipe wakes the poll for new work.
    """

    _ids = itertools.count()

    def __init__(self, context: zmq.Context, counters: Any) -> None:
        super().__init__(name="uds-transport-monitor", daemon=True)
        self._context = context
        self._counters = counters
        self._requests: queue.Queue[tuple[str, threading.Event, tuple | None]] = queue.Queue()
        # Monitor PAIR -> (connecting socket, its server's name); bound
        # sockets are not here. Touched by this thread only.
        self._connecting: dict[zmq.Socket, _Connecting] = {}
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()

    def watch(self, sock: zmq.Socket, connecting: bool, name: str = "") -> bool:
        """Count `sock`'s handshakes; for a connecting socket, also note on
        it (`sock.refused`) why the server `name` ("master at tcp://...")
        refused one. False if this thread did not take the socket on."""
        address = f"inproc://uds-monitor-{os.getpid()}-{next(self._ids)}"
        sock.monitor(address, MONITORED_EVENTS)
        attached = threading.Event()
        watched = (sock, name) if connecting else None
        self._requests.put((address, attached, watched))
        os.write(self._wake_w, b"x")
        # Events emitted before the PAIR peer connects are lost, so wait.
        return attached.wait(MONITOR_REGISTER_TIMEOUT_S)

    def stop(self) -> None:
        self._stopping.set()
        os.write(self._wake_w, b"x")
        self.join(MONITOR_JOIN_TIMEOUT_S)
        if not self.is_alive():
            os.close(self._wake_r)
            os.close(self._wake_w)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        pairs: set[zmq.Socket] = set()
        try:
            while not self._stopping.is_set():
                for item, _ in poller.poll():
                    if item == self._wake_r:
                        os.read(self._wake_r, 4096)
                        self._attach_pending(poller, pairs)
                    else:
                        self._handle_event(poller, pairs, item)
        finally:
            for pair in pairs:
                pair.close(linger=0)

    def _attach_pending(self, poller: zmq.Poller, pairs: set[zmq.Socket]) -> None:
        while True:
            try:
                address, attached, watched = self._requests.get_nowait()
            except queue.Empty:
                return
            pair = self._context.socket(zmq.PAIR)
            pair.linger = 0
            pair.connect(address)
            poller.register(pair, zmq.POLLIN)
            pairs.add(pair)
            if watched is not None:
                self._connecting[pair] = _Connecting(*watched)
            attached.set()

    def _handle_event(
        self, poller: zmq.Poller, pairs: set[zmq.Socket], pair: zmq.Socket
    ) -> None:
        try:
            event = parse_monitor_message(pair.recv_multipart(zmq.NOBLOCK))["event"]
        except zmq.Again:
            return
        watched = self._connecting.get(pair)
        if watched is not None and event != zmq.EVENT_MONITOR_STOPPED:
            self._note_outcome(watched, event)
        elif event in REJECTED_EVENTS:
            self._counters.increment("handshakes_rejected", REJECTED_EVENTS[event])
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._counters.increment("handshakes_succeeded")
        elif event == zmq.EVENT_DISCONNECTED:
            self._counters.increment("peers_disconnected")
        elif event == zmq.EVENT_MONITOR_STOPPED:
            # The watched socket was closed.
            poller.unregister(pair)
            pairs.discard(pair)
            self._connecting.pop(pair, None)
            pair.close(linger=0)

    def _note_outcome(self, watched: _Connecting, event: int) -> None:
        sock = watched.socket
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            watched.hang_ups = 0
            sock.refused = None  # admitted now (keys were reloaded)
            sock.connected = True
        elif event in _REFUSALS:
            self._counters.increment("handshakes_refused_by_peer")
            sock.refused = f"authentication refused by {watched.name}: {_REFUSALS[event]}"
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            watched.hang_ups += 1
            if watched.hang_ups >= HANG_UPS_FOR_REFUSAL:
                self._counters.increment("handshakes_refused_by_peer")
                sock.refused = f"authentication refused by {watched.name}: {_HANG_UP_REFUSAL}"
        elif event == zmq.EVENT_DISCONNECTED:
            # An established connection dropped: the server stopped or was cut off.
            sock.connected = False
            sock.disconnects += 1


@dataclasses.dataclass
class _Connecting:
    """A connecting socket the monitor thread watches, and its server's name."""

    socket: zmq.Socket
    name: str
    hang_ups: int = 0
