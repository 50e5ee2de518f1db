"""One readable line per message, for the trace of a failing seed."""
from __future__ import annotations

from typing import Any, Callable

from uds import wire
from uds.wire.enums import ChunkState, JobState


def short(node_id: bytes) -> str:
    """The simulation's ids are names padded with zero bytes: show the name."""
    name = node_id.rstrip(b"\0")
    return name.decode() if name.isascii() and name.isalnum() else node_id.hex()[:8]


def attempt_name(key: tuple[bytes, int, int]) -> str:
    return _attempt(*key)


def _attempt(job: bytes, chunk: int, attempt: int, state: int | None = None) -> str:
    text = f"{short(job)}/{chunk}/{attempt}"
    return text if state is None else f"{text}:{ChunkState(state).name}"


def _dispatch(m: wire.ChunkDispatch) -> str:
    return " ".join(_attempt(a["job"], a["chunk"], a["attempt"]) for a in m.attempts)


def _request(m: wire.WorkerRequest) -> str:
    return " ".join(_attempt(m.job_uuid, a["chunk"], a["attempt"]) for a in m.assignments)


def _status(m: wire.WorkerStatus) -> str:
    return _attempt(m.job_uuid, m.chunk, m.attempt, m.state)


def _events(m: wire.ChunkEvents) -> str:
    return f"batch {m.batch_id}: " + " ".join(
        _attempt(e["job"], e["chunk"], e["attempt"], e["state"]) + f"@{short(e['worker'])}"
        for e in m.events)


def _heartbeat(m: wire.Heartbeat) -> str:
    return f"free {m.free_slots} running " + " ".join(_attempt(*item) for item in m.running)


def _status_ack(m: wire.StatusAck) -> str:
    return " ".join(_attempt(*item) for item in m.attempts)


def _cancel(m: wire.ChunkCancel) -> str:
    return " ".join(_attempt(m.job_uuid, chunk, attempt) for chunk, attempt in m.attempts)


def _workflow(m: wire.JobSubmit) -> str:
    """What a submission waits for: after, refs, hold, start, deadline, cache."""
    parts = [f"after {short(job)}" for job in m.after]
    parts += [f"{ref['name']} <- {short(ref['job'])}:{ref['output']}:{_from_chunk(ref['from_chunk'])}"
              for ref in m.refs]
    parts += ["held"] * bool(m.hold) + ["cache"] * bool(m.cache)
    if m.start_at is not None:
        parts.append(f"starts {m.start_at:.4f}")
    if m.deadline is not None:
        parts.append(f"deadline {m.deadline:.4f}")
    return "".join(f", {part}" for part in parts)


def _from_chunk(value: int) -> str:
    return {-1: "same", -2: "all"}.get(value, str(value))


def _node_report(m: wire.NodeReport) -> str:
    return " ".join(f"{short(n['node'])}:{n['state']}" for n in m.nodes)


_DETAILS: dict[type, Callable[[Any], str]] = {
    wire.ChunkDispatch: _dispatch,
    wire.WorkerRequest: _request,
    wire.WorkerStatus: _status,
    wire.ChunkEvents: _events,
    wire.ChunkEventsAck: lambda m: f"batch {m.batch_id}",
    wire.Heartbeat: _heartbeat,
    wire.StatusAck: _status_ack,
    wire.ChunkCancel: _cancel,
    wire.NodeReport: _node_report,
    wire.JobSubmit: lambda m: f"job {short(m.job_uuid)} ({m.chunk_count} chunks{_workflow(m)})",
    wire.JobStatus: lambda m: f"job {short(m.job_uuid)}",
    wire.JobStatusReply: lambda m: f"job {short(m.job_uuid)} {JobState(m.state).name.lower()}"
                                   + (f" ({m.waiting})" if m.waiting else ""),
    wire.JobRelease: lambda m: f"job {short(m.job_uuid)}",
    wire.JobCancel: lambda m: f"job {short(m.job_uuid)}",
    wire.JobSubmitReply: lambda m: f"job {short(m.job_uuid)} created={m.created}",
    wire.Hello: lambda m: f"from {short(m.node_uuid)} started {m.start_time_ms}",
    wire.HelloReply: lambda m: f"epoch {m.epoch}",
    wire.Error: lambda m: f"{wire.ErrorCode(m.error_code).name}: {m.reason}",
}


def describe(message: wire.Message) -> str:
    detail = _DETAILS.get(type(message))
    name = type(message).SPEC.name
    return f"{name} {detail(message)}" if detail else name
