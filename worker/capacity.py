"""What this machine offers chunks: cpus, memory and the free disk of the
worker's data folder, as the worker advertises them in its hello. Each is
measured at start unless given (`python -m uds.worker --cpus --memory
--disk`); a figure that cannot be measured is 0, which the scheduler reads
as "not measured" and never holds against a request.
"""
from __future__ import annotations

import pathlib

from uds.daemon.node_facts import MEMINFO, file_system_of, machine_cpus, machine_memory_bytes
from uds.wire.capacity import Capacity
from uds.wire.resources import ResourceSpecError, parse_size


def detect_millicpus() -> int:
    """Cpus this process may run on, in thousandths."""
    return machine_cpus() * 1000


def detect_memory_bytes(meminfo: pathlib.Path = MEMINFO) -> int:
    """MemTotal of /proc/meminfo; 0 where there is none."""
    return machine_memory_bytes(meminfo)


def detect_disk_bytes(folder: pathlib.Path) -> int:
    """Free bytes of the file system holding `folder` (or its nearest parent)."""
    stats = file_system_of(folder)
    return 0 if stats is None else stats.f_bavail * stats.f_frsize


def worker_capacity(data: pathlib.Path, cpus: float | str | None = None, memory: str | int | None = None,
                    disk: str | int | None = None) -> Capacity:
    """This worker's capacity: each figure given, or measured. Raises
    ResourceSpecError naming a given figure that is not a cpu count or a size."""
    if cpus is None:
        millicpus = detect_millicpus()
    else:
        try:
            value = float(cpus)
        except ValueError:
            raise ResourceSpecError(f"cpus: expected a number such as 4 or 1.5, got {cpus!r}") from None
        if not 0 < value <= 4096:
            raise ResourceSpecError(f"cpus: expected a number above 0 and at most 4096, got {cpus!r}")
        millicpus = int(round(value * 1000))
    return Capacity(
        millicpus=millicpus,
        memory_bytes=detect_memory_bytes() if memory is None else parse_size(memory, "memory"),
        disk_bytes=detect_disk_bytes(data) if disk is None else parse_size(disk, "disk"),
    )
