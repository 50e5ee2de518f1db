"""Which storage nodes there are: the membership that placement
(storage/placement.py) orders, as a client or a worker knows it.

Rules:
- The cluster file's [[storage]] addresses seed it: each alive, its free
  space unknown. Everything works with the seed alone.
- The masters' view replaces it when they have one: `refresh()` asks them
  (through `ask_nodes`, which the owner supplies with its own sockets and a
  short timeout) for their NODE records, at most every `interval_s`. A
  storage record carries the node's state and its figures, free_bytes among
  them. A seed address the masters do not list is one they have not heard
  from yet (a node just started, whose first heartbeat is not in), not one
  they declared lost: it stays alive, free space unknown. Were it counted
  lost, a put made in that moment would take fewer replicas than R.
- A failed ask changes nothing: the last view stays in force, and refresh()
  never raises. A reply that lists no storage node (masters that do not
  track storage) leaves the seed in force too.
- Thread-safe: one lock guards the view; the ask runs outside it.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from uds.storage.placement import ALIVE, LOST, StorageMember
from uds.wire.enums import NodeRole

log = logging.getLogger("storage.directory")

# The masters are asked at most this often; a storage node's heartbeat is
# 1 s and it is declared lost after 10 s, so a few seconds is fresh enough.
REFRESH_INTERVAL_S = 3.0
# The figure of a storage node's NODE record that placement uses.
FREE_BYTES_FIGURE = "free_bytes"

AskNodes = Callable[[], Sequence[dict]]


def members_from_records(records: Iterable[dict], seed: Sequence[str]) -> list[StorageMember] | None:
    """The membership a nodes_reply describes, or None if it lists no
    storage node. Seed addresses it leaves out are kept, alive: not heard
    from yet is not lost."""
    listed: dict[str, StorageMember] = {}
    for record in records:
        if record.get("role") != NodeRole.STORAGE or not record.get("address"):
            continue
        free = record.get("figures", {}).get(FREE_BYTES_FIGURE)
        state = ALIVE if record.get("state") == ALIVE else LOST
        listed[record["address"]] = StorageMember(record["address"], record.get("node", b""), state,
                                                  None if free is None else max(0, int(free)))
    if not listed:
        return None
    for address in seed:
        listed.setdefault(address, StorageMember(address))
    return list(listed.values())


class StorageDirectory:
    """The storage membership; see the module's rules."""

    def __init__(self, seed: Sequence[str], ask_nodes: AskNodes | None = None,
                 interval_s: float = REFRESH_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not seed:
            raise ValueError("a storage directory needs at least one [[storage]] address")
        self.seed = tuple(seed)
        self.interval_s = interval_s
        self._ask_nodes = ask_nodes
        self._clock = clock
        self._lock = threading.Lock()
        self._members = [StorageMember(address) for address in self.seed]
        self._asked_at: float | None = None
        self._from_masters = False

    def members(self) -> list[StorageMember]:
        """The current view (a copy)."""
        with self._lock:
            return list(self._members)

    def addresses(self) -> list[str]:
        """Every known node's address: the seed's, then any the masters added."""
        with self._lock:
            known = [member.address for member in self._members]
        return list(self.seed) + [address for address in known if address not in self.seed]

    @property
    def from_masters(self) -> bool:
        """Whether the view came from the masters (else it is the seed)."""
        with self._lock:
            return self._from_masters

    def live_count(self) -> int:
        with self._lock:
            return sum(member.alive for member in self._members)

    def refresh(self, force: bool = False) -> bool:
        """Ask the masters for their view unless asked less than interval_s
        ago (or `force`); whether the view came from them this time."""
        if self._ask_nodes is None:
            return False
        with self._lock:
            now = self._clock()
            if not force and self._asked_at is not None and now - self._asked_at < self.interval_s:
                return False
            self._asked_at = now
        try:
            records = self._ask_nodes()
        except Exception as fault:  # noqa: BLE001 - masters unreachable: the last view stands
            log.debug("storage membership not refreshed: %s", fault)
            return False
        return self.update(records)

    def update(self, records: Iterable[dict]) -> bool:
        """Take the masters' NODE records; whether they listed storage nodes."""
        members = members_from_records(records, self.seed)
        if members is None:
            return False
        with self._lock:
            self._members = members
            self._from_masters = True
        return True


class DirectoryRefresher:
    """A thread that keeps a StorageDirectory fresh (a worker's): it asks
    `ask_nodes` every interval until stopped, and keeps the last view when
    that fails. `ask_nodes` runs on this thread only, so its sockets belong
    to it; `close` runs there too, at the end."""

    def __init__(self, directory: StorageDirectory, ask_nodes: AskNodes,
                 close: Callable[[], None] = lambda: None) -> None:
        self.directory = directory
        self._ask_nodes = ask_nodes
        self._close = close
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storage-directory", daemon=True)

    def start(self) -> "DirectoryRefresher":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self.directory.update(self._ask_nodes())
                except Exception as fault:  # noqa: BLE001 - masters unreachable: the last view stands
                    log.debug("storage membership not refreshed: %s", fault)
                self._stopping.wait(self.directory.interval_s)
        finally:
            self._close()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
