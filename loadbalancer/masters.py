"""The load balancer's link to the masters: one DEALER per master of the
cluster file, and the search for the leader among them
(wire/leader_search.py), which says which one to talk to.

Rules:
- Every socket is made at the start, polled all the time and closed only by
  `close()`, after the loop has ended: none is ever closed while the poller
  holds it or a drain is reading it.
- Only the target is sent anything. What wants an answer (a hello, a
  chunk_events batch) starts the target's silence clock; anything the
  target says stops it. A target silent for SILENCE_S is taken for gone.
- What any master sends is taken, the target's or not: dispatches, grants
  and acknowledgements are sent after a commit, so they are facts whoever
  leads now. Only the target's refusals move the search on, and only a
  grant that extends the lease (a fresh one) brings a master left behind
  back as the target.
"""
from __future__ import annotations

import random
from typing import Sequence

import zmq

from uds.wire.enums import NodeRole
from uds.wire.leader_search import LeaderSearch
from uds.wire.transport import Transport, send_message

# A live leader answers a hello after one commit, in milliseconds; a master
# silent this long is taken for gone. The holder sends a hello every 0.5 s
# (loadbalancer/lease.py) and a batch whenever results come, so a dead
# leader is noticed within 0.9 s, and a new one is elected 0.25-0.6 s after
# the old one stops (master/raft.py).
SILENCE_S = 0.4
# Between rounds in which no master served (an election under way), so that
# the balancer is in step with a new leader soon after it is elected.
BACKOFF_FIRST_S = 0.05
BACKOFF_CAP_S = 0.25


class MasterLink:
    """The sockets to the masters and which of them is the leader."""

    def __init__(self, transport: Transport, addresses: Sequence[str], rng: random.Random) -> None:
        self.transport = transport
        self.search = LeaderSearch(tuple(addresses), rng, silence_s=SILENCE_S,
                                   backoff_first_s=BACKOFF_FIRST_S, backoff_cap_s=BACKOFF_CAP_S)
        self.sockets: list[zmq.Socket] = []
        try:
            for address in addresses:
                self.sockets.append(transport.client_socket(zmq.DEALER, address, NodeRole.MASTER))
        except BaseException:
            self.close()
            raise

    @property
    def target(self) -> int:
        return self.search.target

    @property
    def address(self) -> str:
        return self.search.address

    def due(self, now: float) -> bool:
        """Whether the target may be asked now (not while backing off)."""
        return self.search.due(now) is not None

    def send(self, frames: list, now: float, wants_answer: bool = False) -> bool:
        """Send to the target; False if the message was dropped."""
        sent = send_message(self.sockets[self.search.target], frames, counters=self.transport)
        if wants_answer:
            self.search.asked(now)
        return sent

    def heard_from(self, index: int, now: float) -> None:
        self.search.heard_from(index, now)

    def served(self, index: int, now: float) -> None:
        """Master `index` granted the lease: it leads."""
        self.search.served(index, now)

    def refused(self, index: int, leader_address: str | None, now: float) -> bool:
        """Master `index` answered ERR_NOT_LEADER; True if the target changed.
        A leader outside the cluster file (added to the group since) gets a
        socket of its own; the loop polls it from then on."""
        before = self.search.target
        self.search.refused(index, leader_address, now)
        for address in self.search.addresses[len(self.sockets):]:
            self.sockets.append(self.transport.client_socket(zmq.DEALER, address, NodeRole.MASTER))
        return self.search.target != before or not self.due(now)

    def overdue(self, now: float) -> bool:
        """True, and the next master is the target, if the target was silent too long."""
        return self.search.overdue(now)

    def close(self) -> None:
        for socket in self.sockets:
            socket.close()
