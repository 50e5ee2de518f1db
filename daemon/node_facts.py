"""What a node says of itself to the masters (wire.records.NodeFacts): the uds
version it runs, the machine's cpus, memory and the size of the disk that
holds its data folder, and the addresses it is reached at.

Rules: gathered once, when the daemon starts (`gather_node_facts`), and sent
as they are in every hello or heartbeat after: nothing here runs per
message. A figure that cannot be read is 0 ("not known"), an address that
cannot be listed is left out; reading them never stops a daemon.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import pathlib
import socket
import struct
from typing import Iterable, Sequence

from uds.wire.messages import MAX_NODE_ADDRESSES
from uds.wire.records import NodeFacts

MEMINFO = pathlib.Path("/proc/meminfo")
IF_INET6 = pathlib.Path("/proc/net/if_inet6")
# linux/sockios.h: the IPv4 address of one interface.
SIOCGIFADDR = 0x8915
# wire/messages.py NODE_FACTS: software is Str(64), each address Str(1024).
SOFTWARE_MAX_CHARS = 64
ADDRESS_MAX_CHARS = 1024


def software_version() -> str:
    """The uds version this process runs: the package's own `__version__`
    (what is loaded, even from a checkout newer than the installed metadata)."""
    import uds
    return str(getattr(uds, "__version__", ""))[:SOFTWARE_MAX_CHARS]


def machine_cpus() -> int:
    """Cpus this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 0


def machine_memory_bytes(meminfo: pathlib.Path | None = None) -> int:
    """MemTotal of /proc/meminfo (or `meminfo`); 0 where there is none."""
    try:
        for line in (meminfo or MEMINFO).read_text().splitlines():
            if line.startswith("MemTotal:"):
                parts = line.split()
                return int(parts[1]) * 1024 if parts[2:] == ["kB"] else int(parts[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def disk_size_bytes(folder: pathlib.Path | None) -> int:
    """The size of the file system holding `folder` (or its nearest existing
    parent); 0 for a node without one, or where it cannot be read."""
    stats = None if folder is None else file_system_of(folder)
    return 0 if stats is None else stats.f_blocks * stats.f_frsize


def file_system_of(folder: pathlib.Path) -> os.statvfs_result | None:
    """The statvfs of the file system holding `folder`, or of its nearest
    existing parent; None where it cannot be read."""
    path = pathlib.Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return os.statvfs(path)
    except OSError:
        return None


def _ipv4_addresses() -> list[str]:
    """The IPv4 address of each interface that has one."""
    found = []
    try:
        interfaces = socket.if_nameindex()
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return []
    with probe:
        for _, name in interfaces:
            try:
                answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue            # down, or no IPv4 address
            found.append(socket.inet_ntoa(answer[20:24]))
    return found


def _ipv6_addresses() -> list[str]:
    """Every IPv6 address of /proc/net/if_inet6 (32 hex digits first on each line)."""
    try:
        lines = IF_INET6.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        digits = line.split()[0] if line.split() else ""
        try:
            found.append(str(ipaddress.IPv6Address(bytes.fromhex(digits))))
        except ValueError:
            continue
    return found


def host_addresses(candidates: Iterable[str] | None = None) -> list[str]:
    """This host's IP addresses others may reach it at: IPv4 first, without
    loopback and link-local ones, unless those are all there is. `candidates`
    replaces what the interfaces say (for tests)."""
    listed = list(candidates) if candidates is not None else [*_ipv4_addresses(), *_ipv6_addresses()]
    parsed = []
    for text in listed:
        try:
            parsed.append(ipaddress.ip_address(text))
        except ValueError:
            continue
    reachable = [address for address in parsed if not (address.is_loopback or address.is_link_local)]
    chosen = reachable or [address for address in parsed if address.is_loopback]
    chosen.sort(key=lambda address: address.version)        # stable: IPv4 before IPv6
    return [str(address) for address in chosen]


def node_addresses(listening: Sequence[str], hosts: Sequence[str]) -> tuple[str, ...]:
    """The node's own endpoints first, then the host's addresses, each once,
    at most MAX_NODE_ADDRESSES of them."""
    ordered: list[str] = []
    for address in (*listening, *hosts):
        if address and address not in ordered and len(address) <= ADDRESS_MAX_CHARS:
            ordered.append(address)
    return tuple(ordered[:MAX_NODE_ADDRESSES])


def gather_node_facts(data: pathlib.Path | None, listening: Sequence[str] = ()) -> NodeFacts:
    """This node's facts: `data` is its data folder (None: it has none),
    `listening` the endpoints it serves on (a worker serves none)."""
    return NodeFacts(software=software_version(), cpus=machine_cpus(),
                     machine_memory_bytes=machine_memory_bytes(), machine_disk_bytes=disk_size_bytes(data),
                     addresses=node_addresses(listening, host_addresses()))
