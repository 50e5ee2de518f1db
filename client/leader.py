"""Requests to the leader of the masters, for any process that asks them
something and waits for the answer: the client library (client/api.py) and
a worker keeping its storage membership fresh (storage/directory.py).

The link finds the leader by itself (wire/leader_search.py): it asks the
masters in turn, follows an ERR_NOT_LEADER that names the leader, takes a
master silent for SILENCE_S for gone, and backs off with jitter once none
of them served (doc/client.md). Every request carries a request id and is
resent with the same id when no answer comes, which is safe because the
masters apply it once. A master whose connection drops while it holds a
request (it was killed) is left at once, without waiting out the request's
own wait (a held status or events query may wait 20 s).

Rules: a LeaderLink belongs to one thread (it owns DEALER sockets, made on
first use); make one per thread from a shared Transport.
"""
from __future__ import annotations

import os
import random
import time
from typing import Any, Callable, Sequence

import zmq

from uds import wire
from uds.errors import AuthenticationRefused, InvalidJobError, RemoteError, RequestTimeout, UnknownJobError
from uds.wire.enums import NodeRole
from uds.wire.leader_search import LeaderSearch
from uds.wire.transport import Transport, connected, disconnects, recv_message, refusal, send_message

# A master that holds a request is sent it again after this long without
# an answer (another master may be asked meanwhile).
RESEND_AFTER_S = 2.0
# A master that says nothing this long after a request (beyond any wait the
# request asked for) is taken for gone and the next one is asked: well under
# the request timeout, and near the masters' election timeouts (0.25-0.6 s).
SILENCE_S = 0.5
# After a round in which no master served: back off from this, doubling,
# jittered, to at most the cap.
BACKOFF_FIRST_S = 0.05
BACKOFF_CAP_S = 0.5
# How often a wait looks whether a master refused our key: a refusal is
# reported within this, not after the whole timeout.
REFUSAL_CHECK_S = 0.1


class LeaderLink:
    """Requests to whichever master leads; see the module's rules."""

    def __init__(self, transport: Transport, node_id: bytes, addresses: Sequence[str]) -> None:
        self.node_id = node_id
        self._transport = transport
        self._masters: list[zmq.Socket | None] = [None] * len(addresses)
        self._search = LeaderSearch(tuple(addresses), random.Random(int.from_bytes(os.urandom(8), "big")),
                                    silence_s=SILENCE_S, backoff_first_s=BACKOFF_FIRST_S,
                                    backoff_cap_s=BACKOFF_CAP_S)
        self._next_request_id = 1

    @property
    def target(self) -> int:
        """The master asked first: the leader as far as this link knows."""
        return self._search.target

    def _master_socket(self, index: int | None = None) -> zmq.Socket:
        """The DEALER to master `index` (by default the one asked first),
        made on first use and kept: a master left behind may still answer."""
        index = self._search.target if index is None else index
        while len(self._masters) <= index:          # a master learned from a leader hint
            self._masters.append(None)
        if self._masters[index] is None:
            self._masters[index] = self._transport.client_socket(zmq.DEALER, self._search.addresses[index],
                                                                 NodeRole.MASTER)
        return self._masters[index]

    def ask(self, make: Callable[[int], wire.Message], expected: type, timeout: float,
            patience_s: float = 0.0) -> Any:
        """Send the request to the leader, finding it first, and return its
        answer of type `expected`; raise what an error answer means, or
        RequestTimeout. `patience_s`: how long the master may hold the
        request by its own terms (a status that waits for a job's end).

        The same frames (request id, job id) go to each master tried, and
        again to one that holds them unanswered for RESEND_AFTER_S; an answer
        from any master that was sent them counts."""
        request_id = self._next_request_id
        self._next_request_id += 1
        frames = wire.encode(make(request_id))
        search = self._search
        deadline = time.monotonic() + timeout
        holding: dict[int, float] = {}      # master index -> when it was last sent the request
        drops: dict[int, int] = {}          # master index -> its connection's drops when it was sent it
        while True:
            now = time.monotonic()
            target = search.due(now)
            if target is not None:
                if target not in holding or now - holding[target] >= RESEND_AFTER_S:
                    socket = self._master_socket(target)
                    drops.setdefault(target, disconnects(socket))
                    send_message(socket, frames, counters=self._transport)
                    holding[target] = now
                search.asked(now)
            wake_in = min(REFUSAL_CHECK_S, deadline - now,
                          search.wait_s(now) if target is None else search.silence_s + patience_s)
            answered = self._next_answer(holding, request_id, max(0.0, wake_in))
            now = time.monotonic()
            if answered is not None:
                index, reply = answered
                search.heard_from(index, now)
                if isinstance(reply, wire.Error) and reply.error_code in (wire.ErrorCode.NOT_LEADER,
                                                                          wire.ErrorCode.BUSY):
                    holding.pop(index, None)       # refused: it holds nothing, and may be asked again
                    search.refused(index, wire.leader_hint(reply), now)
                    continue
                search.served(index, now)
                if isinstance(reply, wire.Error):
                    self._raise_error(reply)
                if isinstance(reply, expected):
                    return reply
                continue
            if target is not None and target in holding \
                    and disconnects(self._master_socket(target)) > drops[target]:
                # It hung up holding the request (it stopped): do not wait out the request's wait.
                del holding[target], drops[target]
                search.hung_up(target, now)
                continue
            # A wait the request asked for counts only while the master can
            # hold it: not while its connection is down (a dead master
            # named again by a stale hint).
            up = target is not None and connected(self._master_socket(target))
            search.overdue(now, patience_s if up else 0.0)
            if now >= deadline:
                asked = ", ".join(search.addresses[index] for index in sorted(holding)) or "none"
                raise RequestTimeout(f"no answer from the masters in {timeout:g}s "
                                     f"(waiting on: {asked})")

    def _next_answer(self, holding: dict[int, float], request_id: int,
                     timeout_s: float) -> tuple[int, wire.Message] | None:
        """The next answer to `request_id` from a master holding it, as
        (index, message); None if none comes within `timeout_s`. Answers to
        earlier, abandoned requests are dropped on the way."""
        sockets = {self._master_socket(index): index for index in holding}
        if not sockets:
            time.sleep(timeout_s)
            return None
        poller = zmq.Poller()
        for socket in sockets:
            if (reason := refusal(socket)) is not None:
                raise AuthenticationRefused(reason)
            poller.register(socket, zmq.POLLIN)
        for socket, _ in poller.poll(int(timeout_s * 1000) + 1):
            while (received := recv_message(socket, self._transport)) is not None:
                try:
                    reply = wire.decode(received.frames)
                except wire.WireError:
                    continue
                if getattr(reply, "request_id", None) == request_id:
                    return sockets[socket], reply
        return None

    def _raise_error(self, reply: wire.Error) -> None:
        """Raise what an error from the leader means."""
        if reply.error_code == wire.ErrorCode.UNKNOWN_JOB:
            raise UnknownJobError(reply.error_code, reply.reason)
        if reply.error_code == wire.ErrorCode.INVALID:
            raise InvalidJobError(reply.reason)
        raise RemoteError(reply.error_code, reply.reason)

    def close(self) -> None:
        for socket in self._masters:
            if socket is not None:
                socket.close(linger=0)
        self._masters = [None] * len(self._masters)
