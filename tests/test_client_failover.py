"""The client finds the leader among stand-in masters (real sockets and
keys, no daemons): it follows the address in ERR_NOT_LEADER, leaves a
silent master after SILENCE_S, and sends every master the same frames."""
from __future__ import annotations

import threading
import time

import pytest
import zmq

from daemons import ClusterLayout
from uds import client, wire
from uds.client import api
from uds.wire.enums import ErrorCode, NodeRole
from uds.wire.transport import Transport, recv_message, send_message

MASTER = bytes(16)


class StandInMasters:
    """Masters that behave as told: "dead" (nothing listens), "silent"
    (reads, never answers), ("follower", index) naming master `index` as
    the leader, "leader" (answers a nodes query with no nodes)."""

    def __init__(self, layout: ClusterLayout, behaviours: list) -> None:
        self.layout = layout
        self.behaviours = behaviours
        self.received: list[tuple[int, float, bytes]] = []    # master, when, frames
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> "StandInMasters":
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def run(self) -> None:
        addresses = [master.address for master in self.layout.cluster.masters]
        with Transport(self.layout.keys(NodeRole.MASTER)) as transport:
            sockets = {transport.server_socket(zmq.ROUTER, address): index
                       for index, address in enumerate(addresses) if self.behaviours[index] != "dead"}
            poller = zmq.Poller()
            for socket in sockets:
                poller.register(socket, zmq.POLLIN)
            self.ready.set()
            while not self.stop.is_set():
                for socket, _ in poller.poll(20):
                    while (received := recv_message(socket, None)) is not None:
                        index = sockets[socket]
                        self.received.append((index, time.monotonic(), b"".join(map(bytes, received.frames))))
                        self.answer(socket, received, index, addresses)
            for socket in sockets:
                socket.close(linger=0)

    def answer(self, socket: zmq.Socket, received, index: int, addresses: list[str]) -> None:
        asked = wire.decode(received.frames)
        behaviour = self.behaviours[index]
        if behaviour == "leader":
            reply = wire.NodesReply.make(MASTER, request_id=asked.request_id, nodes=[])
        elif isinstance(behaviour, tuple):
            reply = wire.Error.replying(MASTER, asked.request_id, asked.message_type, ErrorCode.NOT_LEADER,
                                        wire.not_leader_reason(addresses[behaviour[1]]))
        else:
            return
        send_message(socket, wire.encode(reply), peer=received.peer)


@pytest.fixture
def layout(tmp_path):
    return ClusterLayout.create(tmp_path / "cluster", masters=3)


def asked_in_order(masters: StandInMasters) -> list[int]:
    return [index for index, _, _ in masters.received]


def test_a_dead_first_master_is_left_after_the_silence_and_the_hint_followed_at_once(layout):
    with StandInMasters(layout, ["dead", ("follower", 2), "leader"]) as masters, \
            client.connect(layout.path, timeout=10) as connection:
        started = time.monotonic()
        assert connection.nodes() == []
        took = time.monotonic() - started
        assert asked_in_order(masters) == [1, 2]
        assert api.SILENCE_S <= took < api.SILENCE_S + 1.0
        (_, followed_at, first), (_, led_at, second) = masters.received
        assert first == second                           # the same request id, the same frames
        assert led_at - followed_at < 0.2                 # the hint at once
        # The leader is remembered: the next request goes straight to it.
        started = time.monotonic()
        assert connection.nodes() == []
        assert asked_in_order(masters)[2:] == [2] and time.monotonic() - started < 0.2


def test_a_hint_at_a_silent_master_costs_one_silence_then_the_next_is_asked(layout):
    with StandInMasters(layout, [("follower", 1), "silent", "leader"]) as masters, \
            client.connect(layout.path, timeout=10) as connection:
        started = time.monotonic()
        assert connection.nodes() == []
        assert asked_in_order(masters) == [0, 1, 2]
        assert api.SILENCE_S <= time.monotonic() - started < api.SILENCE_S + 1.0
        assert len({frames for _, _, frames in masters.received}) == 1


def test_followers_that_name_no_live_leader_end_in_a_timeout_with_backoff(layout):
    with StandInMasters(layout, [("follower", 1), ("follower", 0), "silent"]) as masters, \
            client.connect(layout.path, timeout=2) as connection:
        with pytest.raises(client.RequestTimeout):
            connection.nodes()
        asked = asked_in_order(masters)
        assert set(asked) == {0, 1, 2}
        # Backed off between rounds, and the silent one was not asked again
        # before RESEND_AFTER_S: far fewer than a busy loop would send.
        assert len(asked) < 60
        assert asked.count(2) == 1
