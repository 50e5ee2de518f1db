"""What a worker offers a chunk, and whether a chunk's request fits there.

Rules of this module:
- Plain data and pure functions: the masters use them to refuse a job that
  no worker could run and to say why a job waits, the load balancer to place
  each attempt only where its request fits beside what already runs there.
- A request is a job's `ResourceLimits` with the cluster's defaults filled
  in; memory, cpus and disk are what it reserves on a worker. A request of 0
  needs nothing, and a worker that advertises 0 of something did not measure
  it: anything fits there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from uds.wire.resources import ResourceLimits, format_bytes


@dataclass(frozen=True, slots=True)
class Capacity:
    """Cpus (in thousandths), memory and disk: a worker's whole, or what is
    left of it, or what a request reserves."""

    millicpus: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0

    @classmethod
    def requested(cls, limits: ResourceLimits) -> Capacity:
        return cls(limits.millicpus, limits.memory_bytes, limits.disk_bytes)

    def __add__(self, other: Capacity) -> Capacity:
        return Capacity(self.millicpus + other.millicpus, self.memory_bytes + other.memory_bytes,
                        self.disk_bytes + other.disk_bytes)

    def __sub__(self, other: Capacity) -> Capacity:
        return Capacity(self.millicpus - other.millicpus, self.memory_bytes - other.memory_bytes,
                        self.disk_bytes - other.disk_bytes)

    def shortfall(self, request: Capacity, reserved: Capacity | None = None) -> str:
        """"" when `request` fits beside `reserved` in this capacity; else
        what is short, for people ("memory: 8 GiB asked, 2 GiB free")."""
        reserved = reserved or NO_CAPACITY
        for name, label, show, _phrase in _RESOURCES:
            whole, asked = getattr(self, name), getattr(request, name)
            free = whole - getattr(reserved, name)
            if whole and asked and asked > free:
                return f"{label}: {show(asked)} asked, {show(max(0, free))} free of {show(whole)}"
        return ""

    def fits(self, request: Capacity, reserved: Capacity | None = None) -> bool:
        return not self.shortfall(request, reserved)


NO_CAPACITY = Capacity()


def _cpus(millicpus: int) -> str:
    return f"{millicpus / 1000:g} cpus"


# (field, name, how an amount reads, how "N of it" reads)
_RESOURCES = (
    ("memory_bytes", "memory", format_bytes, lambda amount: f"{format_bytes(amount)} of memory"),
    ("millicpus", "cpus", _cpus, _cpus),
    ("disk_bytes", "disk", format_bytes, lambda amount: f"{format_bytes(amount)} of disk"),
)


def unfit_reason(request: Capacity, workers: Iterable[Capacity]) -> str:
    """"" when some worker's whole capacity holds `request`, or when no
    worker is known at all (the job waits for one); else why none does, e.g.
    "no worker has 64 GiB of memory: the largest has 23.4 GiB"."""
    workers = list(workers)
    if not workers or any(worker.fits(request) for worker in workers):
        return ""
    for name, _label, show, phrase in _RESOURCES:
        asked = getattr(request, name)
        if asked and all(0 < getattr(worker, name) < asked for worker in workers):
            largest = max(getattr(worker, name) for worker in workers)
            return f"no worker has {phrase(asked)}: the largest has {show(largest)}"
    # Each is somewhere, but never all of them on one worker.
    asked = [phrase(getattr(request, name)) for name, _label, _show, phrase in _RESOURCES
             if getattr(request, name)]
    return f"no worker has {' and '.join(asked)} together"
