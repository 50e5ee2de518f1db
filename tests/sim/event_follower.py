"""A subscriber to the masters' event log, as client/events.py follows it:
held events_query requests to the leader, each starting after the last seq
the previous reply covered, found through the real LeaderSearch, across
leader changes, crashes, freezes and cut-offs.

What it received is checked (`problems`) against the log the masters agree
on: every event exactly once, in seq order, each equal to the event the
replicated log holds at that seq, and nothing skipped that was not reported
as a gap. A leader that answered from an uncommitted or lost entry, a
follower's stale log, or a resume that skips or repeats would break one of
these.
"""
from __future__ import annotations

from collections import deque
from typing import Any

from uds import wire
from uds.client.api import BACKOFF_CAP_S, BACKOFF_FIRST_S, SILENCE_S
from uds.wire.leader_search import LeaderSearch

from .host import Host
from .loop import Simulation

# A held query waits this long for a matching event: short, so that a leader
# that died with the query costs the follower little more than this.
WAIT_S = 1.0
PAGE = 200


class EventFollower(Host):
    def __init__(self, sim: Simulation, name: str, masters: tuple[str, ...]) -> None:
        super().__init__(sim, name)
        self.node_id = name.encode().ljust(16, b"\0")
        self.search = LeaderSearch(masters, sim.random, silence_s=SILENCE_S,
                                   backoff_first_s=BACKOFF_FIRST_S, backoff_cap_s=BACKOFF_CAP_S)
        self.cursor = 0                         # the last seq a reply covered
        self.received: list[dict[str, Any]] = []
        self.gaps: list[tuple[int, int]] = []
        self.replies = 0
        self.request_id = 0
        self.asked: int | None = None           # the master holding the current request
        self.stopped = False

    def start(self) -> None:
        self._ask()

    def stop(self) -> None:
        self.stopped = True

    def _ask(self) -> None:
        if self.stopped:
            return
        now = self.sim.now
        target = self.search.due(now)
        if target is None:
            self.later(max(0.0, self.search.wait_s(now)), self._ask)
            return
        self.request_id += 1
        self.asked = target
        self.send(self.search.addresses[target], wire.EventsQuery.make(
            self.node_id, request_id=self.request_id, after_seq=self.cursor, limit=PAGE,
            wait_ms=int(WAIT_S * 1000)))
        self.search.asked(now)
        self.later(WAIT_S + self.search.silence_s + 0.01, self._check_silence, self.request_id)

    def _check_silence(self, request_id: int) -> None:
        if request_id != self.request_id or self.asked is None:
            return
        if self.search.overdue(self.sim.now, patience_s=WAIT_S):
            self.asked = None
            self._ask()
        else:
            self.later(0.05, self._check_silence, request_id)

    def on_message(self, source: str, message: wire.Message) -> None:
        if getattr(message, "request_id", None) != self.request_id or self.asked is None:
            return
        index = self.search.index_of(source)
        if index != self.asked:
            return
        now = self.sim.now
        self.search.heard_from(index, now)
        self.asked = None
        if isinstance(message, wire.Error):
            self.search.refused(index, wire.leader_hint(message), now)
            self._ask()
            return
        if not isinstance(message, wire.EventsReply):
            return
        self.search.served(index, now)
        self.replies += 1
        if message.gap_to:
            self.gaps.append((message.gap_from, message.gap_to))
        self.received.extend(message.events)
        self.cursor = max(self.cursor, message.through_seq)
        self._ask()

    def problems(self, log: deque) -> list[str]:
        """What breaks the rules above, given a log the masters hold (a
        deque of master.commands.Event with contiguous seqs)."""
        found: list[str] = []
        seqs = [event["seq"] for event in self.received]
        if any(later <= earlier for earlier, later in zip(seqs, seqs[1:])):
            found.append(f"seqs not strictly increasing: {seqs[:50]}")
        first_kept = log[0].seq if log else 1
        by_seq = {event.seq: event for event in log}
        expected = 1
        for event in self.received:
            seq = event["seq"]
            if seq > expected and not any(low <= expected and seq - 1 <= high for low, high in self.gaps):
                if expected >= first_kept:
                    found.append(f"events {expected}..{seq - 1} skipped without a gap")
            expected = seq + 1
            held = by_seq.get(seq)
            if held is not None and held._asdict() != event:
                found.append(f"event {seq} received as {event}, the log holds {held._asdict()}")
        return found
