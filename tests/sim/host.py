"""What every simulated process shares: a name on the network, timers that
stop when it crashes, and a freeze that holds its messages and timers until
it thaws."""
from __future__ import annotations

from typing import Any, Callable

from uds import wire

from .loop import Simulation


class Host:
    def __init__(self, sim: Simulation, name: str) -> None:
        self.sim = sim
        self.name = name
        self.crashed = False
        self.frozen = False
        self.thawed_at = -1.0              # when it last thawed (-1: never frozen)
        self._held: list[tuple[Callable[..., None], tuple]] = []

    # The network calls this; subclasses handle messages in on_message.
    def receive(self, source: str, message: wire.Message, now: float) -> None:
        self._run(self.on_message, (source, message))

    def on_message(self, source: str, message: wire.Message) -> None:
        raise NotImplementedError

    def later(self, delay_s: float, action: Callable[..., None], *args: Any) -> None:
        self.sim.after(delay_s, self._run, action, args)

    def every(self, period_s: float, action: Callable[[], None]) -> None:
        """Call `action` every `period_s`, first after a random phase."""
        def tick() -> None:
            action()
            self.later(period_s, tick)
        self.later(self.sim.random.random() * period_s, tick)

    def send(self, target: str, message: wire.Message) -> None:
        self.sim.send(self.name, target, message)

    def _run(self, action: Callable[..., None], args: tuple) -> None:
        if self.crashed:
            return
        if self.frozen:
            self._held.append((action, args))
            return
        action(*args)

    def crash(self) -> None:
        self.crashed = True
        self._held.clear()

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False
        self.thawed_at = self.sim.now
        held, self._held = self._held, []
        for action, args in held:
            self._run(action, args)
