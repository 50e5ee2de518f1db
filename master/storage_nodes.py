"""Storage membership, the leader's side: which storage nodes it hears from,
their figures, and when one has been silent long enough to be lost.

A storage node's `storage_heartbeat` is also its hello. Who is a storage
node, at which address, alive or lost, is replicated (the NodeSeen and
NodeLost commands, as for every role); what each last said of itself (its
figures) and when, is this leader's soft state, `StorageNodes`.

Rules of this module:
- Pure: nothing here reads the clock or touches sockets; `now` comes in.
- A heartbeat registers its node (NodeSeen) when the masters do not know
  it, know it lost, know another process of it (a new started_at), or know
  it at another address (`needs_registration`).
- A node is lost after `lost_after_s` without a heartbeat. A new leader
  knows nobody's last heartbeat: it starts every node's silence from the
  moment it took office, and holds no figures until the next heartbeat.
- At most one NodeSeen and one NodeLost per node is in flight at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from uds.master.commands import NodeView
from uds.wire.cluster import endpoint_problem
from uds.wire.enums import NodeRole

# Figures kept of one node: the wire's bound on its heartbeat's map.
MAX_FIGURES = 64


def address_problem(address: str) -> str:
    """Why a storage node cannot be reached at `address`, or ""."""
    problem = endpoint_problem(address)
    return f"storage address {problem}" if problem else ""


def needs_registration(known: NodeView | None, address: str, started_at: float) -> bool:
    """Whether a heartbeat from a node the masters know as `known` calls for a NodeSeen."""
    return (known is None or known.state != "alive" or known.started_at != started_at
            or known.address != address)


@dataclass(slots=True)
class Heard:
    """What a storage node last said of itself, and when (the leader's clock)."""

    at: float
    figures: dict[str, int]


class StorageNodes:
    """The leader's soft state of the storage nodes (see the module's rules)."""

    def __init__(self) -> None:
        self.office_since = 0.0
        self._heard: dict[bytes, Heard] = {}
        self.registering: set[bytes] = set()    # NodeSeen queued or proposed
        self.losing: set[bytes] = set()         # NodeLost queued or proposed

    def take_office(self, now: float) -> None:
        """A new leader: every node's silence starts now, and no figures are known."""
        self.office_since = now
        self._heard.clear()

    def heard(self, node: bytes, figures: dict[str, Any], now: float) -> None:
        kept = {str(name): int(value) for name, value in list(figures.items())[:MAX_FIGURES]}
        self._heard[node] = Heard(now, kept)

    def figures(self, node: bytes) -> dict[str, int]:
        heard = self._heard.get(node)
        return {} if heard is None else dict(heard.figures)

    def last_seen_s(self, node: bytes, now: float) -> float:
        """Seconds since its last heartbeat (since taking office if none came)."""
        heard = self._heard.get(node)
        return max(0.0, now - (self.office_since if heard is None else heard.at))

    def silent_since(self, node: bytes) -> float:
        heard = self._heard.get(node)
        return max(self.office_since, heard.at) if heard is not None else self.office_since

    def silent(self, views: Iterable[NodeView], now: float, lost_after_s: float) -> list[bytes]:
        """Alive storage nodes silent for `lost_after_s` or more, and not
        already being declared lost, in the order `views` lists them."""
        return [view.node for view in views
                if view.role == NodeRole.STORAGE and view.state == "alive" and view.node not in self.losing
                and now >= self.silent_since(view.node) + lost_after_s]

    def next_silence_due(self, views: Iterable[NodeView], lost_after_s: float) -> float | None:
        """When the next alive storage node falls silent for `lost_after_s`."""
        return min((self.silent_since(view.node) + lost_after_s for view in views
                    if view.role == NodeRole.STORAGE and view.state == "alive" and view.node not in self.losing),
                   default=None)

    def membership(self, views: Iterable[NodeView]) -> list[dict[str, Any]]:
        """STORAGE_MEMBER records: every storage node the masters know."""
        return [dict(node=view.node, address=view.address, state=view.state,
                     free_bytes=max(0, self.figures(view.node).get("free_bytes", 0)))
                for view in views if view.role == NodeRole.STORAGE]
