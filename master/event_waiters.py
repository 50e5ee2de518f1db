"""Held events queries: an events_query with `wait_ms` that finds nothing
new is held, and answered when an event it wants commits or when its wait is
over, whichever comes first; a follower hears of an event one commit after
it happened instead of polling for it.

Rules of this module:
- Pure: the leader says what the new events are and what time it is; this
  module says which waiters to answer. Answering (reading the log) is the
  leader's.
- A waiter is indexed by its job, else by its node, else under "any", so
  that one event costs a look at the waiters that could want it, not at all
  of them; each is checked against its whole filter.
- At most MAX_EVENT_WAITERS are held: beyond that `hold` refuses, and the
  leader answers BUSY.
- A request held already (the same peer and request id: a client resends a
  request it has had no answer to) is held once, with its first deadline.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Iterable

from uds.master.commands import Event
from uds.master.event_log import EventFilter
from uds.master.leader_events import Request

# The longest an events_query may be held (its wait_ms is capped), as
# MAX_STATUS_WAIT_S of master/waiters.py.
MAX_EVENTS_WAIT_S = 30.0
# The most events queries held at once: each costs a few hundred bytes and
# a look per matching event.
MAX_EVENT_WAITERS = 5000


@dataclass(frozen=True, slots=True)
class EventsWaiter:
    request: Request
    after_seq: int              # it wants events after this seq
    wanted: EventFilter
    limit: int
    deadline: float


class EventWaiters:
    def __init__(self, capacity: int = MAX_EVENT_WAITERS) -> None:
        self.capacity = capacity
        self._held: dict[int, EventsWaiter] = {}
        self._keys: dict[Request, int] = {}
        self._by_job: dict[bytes, set[int]] = {}
        self._by_node: dict[bytes, set[int]] = {}
        self._any: set[int] = set()
        self._deadlines: list[tuple[float, int]] = []     # a heap; ids no longer held are skipped
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._held)

    def holds(self, request: Request) -> bool:
        return request in self._keys

    def hold(self, request: Request, after_seq: int, wanted: EventFilter, limit: int, wait_ms: int,
             now: float) -> bool:
        """Hold the query; False when MAX_EVENT_WAITERS are held already."""
        if request in self._keys:
            return True
        if len(self._held) >= self.capacity:
            return False
        deadline = now + min(wait_ms / 1000.0, MAX_EVENTS_WAIT_S)
        self._next_id += 1
        key = self._next_id
        self._held[key] = EventsWaiter(request, after_seq, wanted, limit, deadline)
        self._keys[request] = key
        self._index_of(wanted).add(key)
        heapq.heappush(self._deadlines, (deadline, key))
        return True

    def matched(self, events: Iterable[Event]) -> list[EventsWaiter]:
        """Waiters one of `events` (new events, oldest first) matches, no
        longer held, in the order they came."""
        if not self._held:
            return []
        found: set[int] = set()
        for event in events:
            candidates = [self._any]
            if event.job is not None and event.job in self._by_job:
                candidates.append(self._by_job[event.job])
            if event.node is not None and event.node in self._by_node:
                candidates.append(self._by_node[event.node])
            for keys in candidates:
                for key in keys:
                    if key not in found:
                        waiter = self._held[key]
                        if event.seq > waiter.after_seq and waiter.wanted.matches(event):
                            found.add(key)
            if len(found) == len(self._held):
                break
        return [self._release(key) for key in sorted(found)]

    def due(self, now: float) -> list[EventsWaiter]:
        """Waiters whose wait is over, no longer held."""
        answered = []
        while self._deadlines and (self._deadlines[0][1] not in self._held or self._deadlines[0][0] <= now):
            _deadline, key = heapq.heappop(self._deadlines)
            if key in self._held:
                answered.append(self._release(key))
        return answered

    def release_all(self) -> list[EventsWaiter]:
        """Every waiter, no longer held (the master stopped leading)."""
        answered = [self._release(key) for key in sorted(self._held)]
        self._deadlines.clear()
        return answered

    def next_deadline(self) -> float | None:
        while self._deadlines and self._deadlines[0][1] not in self._held:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def _index_of(self, wanted: EventFilter) -> set[int]:
        if wanted.job is not None:
            return self._by_job.setdefault(wanted.job, set())
        if wanted.node is not None:
            return self._by_node.setdefault(wanted.node, set())
        return self._any

    def _release(self, key: int) -> EventsWaiter:
        waiter = self._held.pop(key)
        del self._keys[waiter.request]
        wanted = waiter.wanted
        if wanted.job is not None:
            self._unindex(self._by_job, wanted.job, key)
        elif wanted.node is not None:
            self._unindex(self._by_node, wanted.node, key)
        else:
            self._any.discard(key)
        return waiter

    @staticmethod
    def _unindex(index: dict[bytes, set[int]], name: bytes, key: int) -> None:
        keys = index[name]
        keys.discard(key)
        if not keys:
            del index[name]
