"""Turning the state's views into reply messages."""
from __future__ import annotations

from typing import Any

import wire
from master.state import Event, JobView, NodeView


def job_status_reply(node_id: bytes, request_id: int, job: bytes, view: JobView) -> wire.JobStatusReply:
    return wire.JobStatusReply.make(node_id, request_id=request_id, **view.reply_fields())


def node_records(nodes: list[NodeView], live: dict[bytes, dict], now: float) -> list[dict[str, Any]]:
    """NODE records: the replicated table, with the balancer's live figures
    for workers it reported."""
    records = []
    for view in nodes:
        report = live.get(view.node)
        if report is not None:
            records.append(view.as_record(free_slots=report["free_slots"], running=report["running"],
                                          last_seen_s=report["last_seen_s"]))
        else:
            records.append(view.as_record())
    return records


def event_records(events: list[Event]) -> list[dict[str, Any]]:
    return [event._asdict() for event in events]
