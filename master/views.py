"""Turning the state's views into reply messages."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from uds import wire
from uds.wire.enums import NodeRole
from uds.master.attempts import AttemptView
from uds.master.commands import Event, FileRef, JobView, NodeView
from uds.master.workflow import dependencies
from uds.wire.enums import ErrorCode

if TYPE_CHECKING:
    from uds.master.queries import StateQueries


def job_status_reply(node_id: bytes, request_id: int, job: bytes, view: JobView) -> wire.JobStatusReply:
    """The reply for a page of the job; reports beyond what one body holds
    are left for the next page."""
    fields = view.reply_fields()
    fit = wire.items_that_fit(fields["chunks"])
    if fit < len(fields["chunks"]):
        fields["chunks"] = fields["chunks"][:fit]
        fields["next_chunk"] = fields["first_chunk"] + fit
    return wire.JobStatusReply.make(node_id, request_id=request_id, **fields)


def node_records(nodes: list[NodeView], live: dict[bytes, dict], now: float,
                 lease: tuple[bytes | None, int] = (None, 0),
                 storage: dict[bytes, tuple[dict, float]] | None = None) -> list[dict[str, Any]]:
    """NODE records: the replicated table, with the balancer's live figures
    for workers it reported. A load balancer's `lease_epoch` is the epoch it
    holds the lease at, 0 for a standby. A storage node's `figures` and
    `last_seen_s` are the leader's (`storage`: node -> (figures, seconds
    since its heartbeat)); {} until it heartbeats to this leader."""
    holder, epoch = lease
    storage = storage or {}
    records = []
    for view in nodes:
        if view.role == NodeRole.STORAGE:
            figures, last_seen_s = storage.get(view.node, ({}, 0.0))
            records.append(view.as_record(last_seen_s=last_seen_s, figures=figures))
            continue
        if view.role == NodeRole.LOADBALANCER:
            records.append({**view.as_record(),
                            "lease_epoch": epoch if view.node == holder else 0})
            continue
        report = live.get(view.node)
        if report is not None:
            records.append(view.as_record(free_slots=report["free_slots"], running=report["running"],
                                          last_seen_s=report["last_seen_s"]))
        else:
            records.append(view.as_record())
    return records


def attempts_reply(node_id: bytes, request_id: int, job: bytes, chunk: int, attempts: list[AttemptView],
                   dropped: int) -> wire.AttemptsReply:
    """The reply listing a chunk's attempts, oldest first: the newest that
    one body holds (the older ones beyond it count as dropped)."""
    records = [attempt.as_record() for attempt in attempts]
    fit = wire.items_that_fit(records[::-1])
    return wire.AttemptsReply.make(node_id, request_id=request_id, job=job, chunk=chunk,
                                   attempts=records[len(records) - fit:],
                                   attempts_dropped=dropped + len(records) - fit)


def event_records(events: list[Event]) -> list[dict[str, Any]]:
    """EVENT records, oldest first, as many as one body holds: a reader asks
    again after the last seq it got."""
    records = [event._asdict() for event in events]
    return records[:wire.items_that_fit(records)]


class JobSpecNotFound(Exception):
    """The job of a job_spec_query is not kept: `code` is the wire's ErrorCode."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def job_spec_fields(state: StateQueries, job: bytes) -> dict[str, Any]:
    """What job `job` was submitted with, as a job_spec_reply's body (copies):
    its name, program, args, job-wide inputs with the refs resolved so far,
    and the jobs it waits for. Raises JobSpecNotFound for a job never known
    or past retention."""
    record = state.job_records.get(job)
    if record is None:
        if state.history_line(job) is not None:
            raise JobSpecNotFound(ErrorCode.UNKNOWN_JOB,
                                  f"job {job.hex()} is past retention: its spec is no longer kept")
        raise JobSpecNotFound(ErrorCode.UNKNOWN_JOB, f"unknown job {job.hex()}")
    spec = record.spec
    return {"name": spec.name, "program": spec.program, "args": list(spec.args),
            "inputs": dict(record.inputs), "after": list(dependencies(spec))}


def job_spec_reply(node_id: bytes, request_id: int, job: bytes, fields: dict[str, Any]) -> wire.JobSpecReply:
    """The reply; inputs beyond what one body holds (a reduce over very many
    chunks) are left out, by name, and counted."""
    inputs: dict[str, FileRef] = fields["inputs"]
    names = sorted(inputs)
    fit = wire.items_that_fit([(name, inputs[name]) for name in names])
    return wire.JobSpecReply.make(node_id, request_id=request_id, job=job, name=fields["name"],
                                  program=fields["program"], args=fields["args"],
                                  inputs={name: inputs[name] for name in names[:fit]},
                                  inputs_dropped=len(names) - fit, after=fields["after"])
