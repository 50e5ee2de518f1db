"""The simulation's clock, event queue and network.

Rules: nothing here reads the real clock, sleeps, threads or opens sockets.
One `random.Random(seed)` decides everything, so a seed replays exactly.
Every message crosses the network as frames: `wire.encode` when sent,
`wire.decode` when delivered.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from uds import wire

from .trace import describe


class SimNode(Protocol):
    name: str

    def receive(self, source: str, message: wire.Message, now: float) -> None: ...


@dataclass
class NetworkFaults:
    """Per-message odds while faults are on; all zero in the quiet phase."""

    drop: float = 0.0
    duplicate: float = 0.0
    slow: float = 0.0           # odds of a long delay, which reorders
    slow_max_s: float = 0.0


# Every message takes at least this long, plus up to JITTER_S more.
BASE_DELAY_S = 0.001
JITTER_S = 0.004


@dataclass
class Simulation:
    seed: int
    tracing: bool = False
    now: float = 0.0
    random: random.Random = field(init=False)
    trace_lines: list[str] = field(default_factory=list)
    faults: NetworkFaults = field(default_factory=NetworkFaults)
    injected: dict[str, int] = field(default_factory=dict)   # fault kind -> count
    nodes: dict[str, Any] = field(default_factory=dict)      # name -> the node now at that name
    messages: int = 0
    # name -> (when, the other end) of each message it sent or was sent
    # that was dropped or held back
    disturbed: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    _queue: list = field(default_factory=list)
    _sequence: int = 0

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)

    # -- the clock and the queue ---------------------------------------------

    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        """Run `action(*args)` at fake time `when` (ties run in scheduling order)."""
        self._sequence += 1
        heapq.heappush(self._queue, (max(when, self.now), self._sequence, action, args))

    def after(self, delay_s: float, action: Callable[..., None], *args: Any) -> None:
        self.at(self.now + delay_s, action, *args)

    def run_until(self, deadline: float, done: Callable[[], bool],
                  check: Callable[[], None]) -> None:
        """Run events in time order until `done()` or `deadline`, calling
        `check()` after every step."""
        queue = self._queue
        while queue and not done():
            when = queue[0][0]
            if when > deadline:
                break
            _, _, action, args = heapq.heappop(queue)
            self.now = when
            action(*args)
            check()
        self.now = max(self.now, min(deadline, queue[0][0] if queue else deadline))

    def count(self, kind: str) -> None:
        self.injected[kind] = self.injected.get(kind, 0) + 1

    def note(self, text: str) -> None:
        if self.tracing:
            self.trace_lines.append(f"{self.now:9.4f}  {text}")

    # -- the network -----------------------------------------------------------

    def send(self, source: str, target: str, message: wire.Message) -> None:
        frames = wire.encode(message)
        copies = 1
        faults = self.faults
        if faults.drop or faults.duplicate or faults.slow:
            roll = self.random.random()
            if roll < faults.drop:
                self.count("message_dropped")
                self._disturbed(source, target)
                if self.tracing:
                    self.note(f"drop {source} -> {target} {describe(message)}")
                return
            if roll < faults.drop + faults.duplicate:
                self.count("message_duplicated")
                copies = 2
        for _ in range(copies):
            delay = BASE_DELAY_S + self.random.random() * JITTER_S
            if faults.slow and self.random.random() < faults.slow:
                self.count("message_delayed")
                self._disturbed(source, target)
                delay += self.random.random() * faults.slow_max_s
            self.after(delay, self._deliver, source, target, frames)

    def _disturbed(self, source: str, target: str) -> None:
        self.disturbed.setdefault(source, []).append((self.now, target))
        self.disturbed.setdefault(target, []).append((self.now, source))

    def disturbed_between(self, name: str, peers: tuple[str, ...], start: float, end: float) -> bool:
        """Whether a message between `name` and one of `peers`, sent in
        [start, end], was dropped or held back."""
        return any(start <= at <= end and peer in peers for at, peer in self.disturbed.get(name, ()))

    def _deliver(self, source: str, target: str, frames: list[bytes]) -> None:
        node = self.nodes.get(target)
        if node is None:
            self.note(f"lost {source} -> {target}: nobody there")
            return
        message = wire.decode(frames)
        self.messages += 1
        if self.tracing:
            self.note(f"{source} -> {target} {describe(message)}")
        node.receive(source, message, self.now)
