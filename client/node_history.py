"""A node's history: its record as the masters keep it (role, host, boot
time, version, machine, addresses, alive or lost) and its events from the
replicated event log, oldest first: its joins and losses, the lease grants
of a balancer, and the chunk events naming a worker (the attempts it ran).

A node is named by its full id, a prefix of it, or its host name; a name
that fits no node, or more than one, is an error that says so. The events
come from the leader, which picks those naming the node
(`Connection.events(node=...)`, client/events.py), a page at a time until
the log's end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from uds.client.events import PAGE_EVENTS, Event
from uds.errors import ClientError


class UnknownNodeError(ClientError, LookupError):
    """No node the masters know has that id, id prefix or host name."""


class AmbiguousNodeError(ClientError, LookupError):
    """More than one node has that id prefix or host name."""


@dataclass(frozen=True)
class NodeHistory:
    """One node's NODE record (wire/messages.py NODE, as `Connection.nodes()`
    lists it) and its events, oldest first. `gap`: (from, to), the seqs of
    events the log dropped before they were read, any of which may have
    named the node; None when the log still holds every one."""

    record: dict
    events: list[Event]
    gap: tuple[int, int] | None = None


def _short(record: dict) -> str:
    from uds.wire.enums import NodeRole
    return f"{record['node'].hex()[:8]} ({NodeRole(record['role']).name.lower()} on {record['host']})"


def find_node(records: Sequence[dict], name: str) -> dict:
    """The one record that `name` names: a full id, an id prefix (case does
    not matter) or a host name. Raises UnknownNodeError or AmbiguousNodeError,
    each naming `name`."""
    wanted = name.strip()
    lowered = wanted.lower()
    exact = [record for record in records if record["node"].hex() == lowered]
    if exact:
        return exact[0]
    matches = [record for record in records
               if wanted and (record["node"].hex().startswith(lowered) or record["host"] == wanted)]
    if not matches:
        raise UnknownNodeError(f"unknown node {name!r}: no node's id, id prefix or host name is that")
    if len(matches) > 1:
        shown = ", ".join(_short(record) for record in matches[:8])
        more = f" and {len(matches) - 8} more" if len(matches) > 8 else ""
        raise AmbiguousNodeError(f"node {name!r} is ambiguous: it names {len(matches)} nodes ({shown}{more}); "
                                 f"give more of the id")
    return matches[0]


def node_events(connection: Any, node: bytes) -> tuple[list[Event], tuple[int, int] | None]:
    """Every event of the log that names `node`, oldest first, and the seqs
    the log dropped that might have (the first page's gap: later pages start
    after it), or None."""
    events: list[Event] = []
    after, gap = 0, None
    while True:
        page = connection.events(after=after, limit=PAGE_EVENTS, node=node)
        gap = gap or page.gap
        events.extend(page.events)
        if page.through_seq <= after or page.through_seq >= page.last_seq:
            return events, gap
        after = page.through_seq


def node_history(connection: Any, name: str) -> NodeHistory:
    """The record and events of the node `name` names (see find_node)."""
    record = find_node(connection.nodes(), name)
    events, gap = node_events(connection, record["node"])
    return NodeHistory(record=record, events=events, gap=gap)
