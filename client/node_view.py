"""What `uds nodes` prints of each node's facts, and what `uds nodes
--history NODE` prints of one node.

The facts (wire.records.NodeFacts) are what each node said of itself when
it joined: the uds version it runs, the machine's cpus, memory and the disk
of its data folder, and its addresses (its own endpoints first, then its
host's). A figure a node did not report prints as "-".
"""
from __future__ import annotations

import time
from typing import Any, Sequence

from uds.client.events import Event
from uds.client.node_history import NodeHistory
from uds.units import size_text
from uds.wire.enums import NodeRole

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def _count(value: int) -> str:
    return str(value) if value else "-"


def _size(value: int) -> str:
    return size_text(value) if value else "-"


def _addresses(record: dict, long: bool) -> str:
    addresses = list(record.get("addresses", ()))
    if not addresses:
        return "-"
    if long or len(addresses) == 1:
        return ", ".join(addresses)
    return f"{addresses[0]} (+{len(addresses) - 1}, see --long)"


def role_name(record: dict) -> str:
    return NodeRole(record["role"]).name.lower()


def print_facts_table(records: Sequence[dict], long: bool = False, say: Any = print) -> None:
    """One line per node: its id, version, cpus, memory, disk and addresses
    (the first one and a count of the rest, or every one with `long`)."""
    say(f"{'node':<34}{'version':<10}{'cpus':>5}{'memory':>12}{'disk':>12}  addresses")
    for record in records:
        say(f"{record['node'].hex():<34}{(record.get('software') or '-')[:9]:<10}{_count(record.get('cpus', 0)):>5}"
            f"{_size(record.get('machine_memory_bytes', 0)):>12}{_size(record.get('machine_disk_bytes', 0)):>12}"
            f"  {_addresses(record, long)}")


def _when(at: float) -> str:
    return time.strftime(TIME_FORMAT, time.localtime(at)) if at else "-"


def _lease_or_offer(record: dict) -> list[tuple[str, str]]:
    """What only some roles have: a balancer's lease, a worker's offer."""
    if record["role"] == NodeRole.LOADBALANCER:
        epoch = record.get("lease_epoch", 0)
        return [("lease", f"held, epoch {epoch}" if epoch else "not held (standby)")]
    if record["role"] == NodeRole.WORKER:
        return [("offers", f"{record['slots']} slots, {record['millicpus'] / 1000:g} cpus, "
                           f"{_size(record['memory_bytes'])} memory, {_size(record['disk_bytes'])} disk"),
                ("sandbox", record.get("sandbox") or "-")]
    return []


def event_line(event: Event) -> str:
    """One event: its seq, date and time, kind, then what it names besides
    the node (`uds events` prints the time of day alone, and the node)."""
    return "  ".join([f"{event.seq:>8}", _when(event.at), f"{event.kind:<16}", *event.named(node=False)]).rstrip()


def print_history(history: NodeHistory, say: Any = print) -> None:
    """The node's record, then its events, oldest first."""
    record = history.record
    lines = [("node", record["node"].hex()), ("role", role_name(record)), ("host", record["host"]),
             ("state", record["state"]), ("address", record.get("address") or "-"),
             ("boot time", f"{_when(record['started_at'])} (its process started)"),
             ("version", record.get("software") or "-"), ("cpus", _count(record.get("cpus", 0))),
             ("memory", _size(record.get("machine_memory_bytes", 0))),
             ("disk", _size(record.get("machine_disk_bytes", 0))),
             ("addresses", _addresses(record, long=True)), *_lease_or_offer(record)]
    for name, value in lines:
        say(f"{name + ':':<12}{value}")
    say("")
    if history.gap:
        first, last = history.gap
        say(f"(events {first}..{last} were dropped from the masters' log: some of this node's may be among them)")
    if not history.events:
        say("no events name this node")
        return
    count = len(history.events)
    say(f"{count} event{'' if count == 1 else 's'}, oldest first:")
    for event in history.events:
        say(event_line(event))
