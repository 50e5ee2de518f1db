"""What master/state.py must do with a command it accepts, written out
independently of it, for tests/test_master_state.py.

`check_accepted(before, after, command, outcome, now)` asserts that a command
answered with an ok outcome was well formed, field by field, with this
module's own checks (so garbage taken as ok fails), and that the outcome and
the change of state are exactly the ones the command calls for.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from uds.master import workflow
from uds.master.commands import _workflow_problem
from uds.master.commands import (
    CancelJob, CancelOutcome, ChunkEvent, ChunkEventOutcome, DispatchAttempts, DispatchOutcome,
    Event, NodeLost, NodeOutcome, NodeSeen, NodeView, ReadyAttempt, SubmitJob, SubmitOutcome,
)
from uds.master.state import MAX_CHUNKS_PER_JOB, POISON_LIMIT, ClusterState
from uds.wire.enums import ChunkState, JobState, NodeRole
from uds.wire.errors import WireError
from uds.wire.records import NO_RESULT, ChunkResult
from uds.wire.resources import ResourceLimits

LIMIT_FIELDS = tuple(field.name for field in dataclasses.fields(ResourceLimits))

FINAL = {"succeeded", "failed", "cancelled", "cached"}
IN_FLIGHT = {"dispatched", "running"}


# -- chunk events: the transition rules, as the tests read them ---------------

def expected_event_status(sent: ChunkEvent, chunk, worker_started_at: float | None = None) -> str:
    """The status of a chunk event of any attempt, given the chunk's view
    and the started_at of its worker's node record (None: not known)."""
    if sent.attempt != chunk.attempt:
        return "stale"
    if chunk.phase in FINAL:
        return "final"
    if chunk.phase in ("queued", "delayed", "waiting"):
        return "invalid"
    if chunk.phase == "running" and sent.state == ChunkState.STARTED:
        return "duplicate"
    if (sent.state == ChunkState.STARTED and worker_started_at is not None
            and 0 < sent.worker_started_at < worker_started_at):
        return "stale"      # from a process the worker has replaced since
    return "applied"


def expected_event_phase(sent: ChunkEvent, chunk, max_retries: int) -> tuple[str, int]:
    """(phase, attempt) after an applied event of the chunk's current attempt."""
    state = ChunkState(sent.state)
    requeued = ("queued", chunk.attempt + 1)
    if state == ChunkState.STARTED:
        return "running", chunk.attempt
    if state in (ChunkState.FAILED, ChunkState.TIMED_OUT):
        return requeued if chunk.retries_used < max_retries else ("failed", chunk.attempt)
    if state == ChunkState.LOST:
        return requeued if chunk.lost_count + 1 < POISON_LIMIT else ("failed", chunk.attempt)
    if state == ChunkState.REJECTED:
        return "delayed", chunk.attempt + 1     # the cluster's fault: after a backoff, never poison
    if state == ChunkState.CANCELLED:
        return requeued                         # taken back by a balancer
    return state.name.lower(), chunk.attempt


# -- well-formed values --------------------------------------------------------

def _is_id(value: Any) -> bool:
    return type(value) is bytes and len(value) == 16


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_enum_value(value: Any, enum: type) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in {int(m) for m in enum}


def _is_seconds(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


def _is_ref(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and _is_id(value[0]) and _is_count(value[1])


def _is_file_map(value: Any) -> bool:
    return type(value) is dict and all(type(name) is str and _is_ref(ref) for name, ref in value.items())


def _ref(value) -> tuple[bytes, int]:
    return (value[0], value[1])


def _file_map(value: dict) -> dict:
    return {name: _ref(ref) for name, ref in value.items()}


def _accepted_garbage(command: Any, field: str) -> AssertionError:
    return AssertionError(f"accepted as ok with a malformed {field}: {command!r}")


def _require(condition: bool, command: Any, field: str) -> None:
    if not condition:
        raise _accepted_garbage(command, field)


# -- one check per command type ------------------------------------------------

def _new_events(before: ClusterState, after: ClusterState) -> list[Event]:
    _, last_seq = before.events_after(0, 0)
    return after.events_after(last_seq, 1_000_000)[0]


def _job_views(state: ClusterState) -> dict:
    return {summary.job: state.job_view(summary.job) for summary in state.jobs(1_000_000)}


def _check_submit(before, after, command: SubmitJob, outcome, now):
    _require(_is_id(command.job), command, "job")
    _require(type(command.name) is str, command, "name")
    _require(_is_ref(command.program), command, "program")
    _require(isinstance(command.args, (tuple, list)) and all(type(a) is str for a in command.args),
             command, "args")
    _require(_is_file_map(command.inputs), command, "inputs")
    _require(type(command.chunk_count) is int and 1 <= command.chunk_count <= MAX_CHUNKS_PER_JOB,
             command, "chunk_count")
    _require(isinstance(command.chunk_inputs, (tuple, list))
             and all(_is_file_map(inputs) for inputs in command.chunk_inputs)
             and len(command.chunk_inputs) in (0, command.chunk_count), command, "chunk_inputs")
    _require(_is_seconds(command.timeout_s) and command.timeout_s > 0, command, "timeout_s")
    _require(_is_count(command.max_retries), command, "max_retries")
    _require(type(command.limits) is ResourceLimits and all(
        _is_count(getattr(command.limits, name)) for name in LIMIT_FIELDS), command, "limits")
    _require(type(command.network) is bool, command, "network")
    _require(not _workflow_problem(command), command, "workflow fields")
    job, count = command.job, command.chunk_count
    spec = dict(job=job, program=_ref(command.program), args=list(command.args),
                inputs=_file_map(command.inputs), chunk_count=count, timeout_s=float(command.timeout_s),
                limits=command.limits.as_body(), network=command.network)
    if before.job_view(job) is not None:
        # Only the very same spec may be resubmitted, and it changes nothing.
        assert outcome == SubmitOutcome(created=False)
        assert before.job_spec(job) == spec
        assert after == before
        return
    _require(_fits_an_alive_worker(before, command.limits), command, "limits (no worker could run it)")
    if workflow.waits(command) or command.deadline is not None:
        # Waiting, deadlines and refs have their own model (tests/test_master_workflow.py).
        assert outcome.ok and after.job_view(job) is not None
        return
    assert outcome == SubmitOutcome(created=True)
    assert after.job_spec(job) == spec
    view = after.job_view(job)
    assert (view.state, view.chunk_count, view.name, view.submitted_at, view.finished_at, view.error) == (
        JobState.QUEUED, count, command.name, now, None, "")
    assert [(c.phase, c.attempt, c.worker, c.result) for c in view.chunks] == [("queued", 1, None, NO_RESULT)] * count
    chunk_inputs = [_file_map(inputs) for inputs in command.chunk_inputs] or [{}] * count
    assert after.ready_attempts(10 * MAX_CHUNKS_PER_JOB)[-count:] == [
        ReadyAttempt(job, index, 1, chunk_inputs[index]) for index in range(count)]
    label = f"{command.name}: " if command.name else ""
    assert [(e.kind, e.job, e.at, e.detail) for e in _new_events(before, after)] == [
        ("job_submitted", job, now, f"{label}{count} chunks")]
    others = _job_views(after)
    del others[job]
    assert others == _job_views(before)


def _fits_an_alive_worker(state: ClusterState, limits: ResourceLimits) -> bool:
    """Whether some alive worker's whole capacity holds the request, or no
    worker is alive at all (0 on either side: nothing asked, not measured)."""
    workers = [view for view in state.nodes() if view.role == NodeRole.WORKER and view.state == "alive"]
    asked = (limits.millicpus, limits.memory_bytes, limits.disk_bytes)
    return not workers or any(
        all(not need or not have or need <= have
            for need, have in zip(asked, (view.millicpus, view.memory_bytes, view.disk_bytes)))
        for view in workers)


def _check_dispatch(before, after, command: DispatchAttempts, outcome, now):
    entries = command.attempts if isinstance(command.attempts, (tuple, list)) else ()
    expected, taken = [], set()
    for entry in entries:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 3 and _is_id(entry[0])):
            continue
        job, index, attempt = entry
        view = before.job_view(job)
        if view is None or type(index) is not int or not 0 <= index < view.chunk_count:
            continue
        chunk = view.chunks[index]
        if chunk.phase == "queued" and type(attempt) is int and attempt == chunk.attempt \
                and (job, index) not in taken:
            taken.add((job, index))
            expected.append((job, index, attempt))
    assert outcome == DispatchOutcome(dispatched=tuple(expected), skipped=len(entries) - len(expected))
    if not expected:
        assert after == before
    for job, index, attempt in expected:
        assert (after.job_view(job).chunks[index].phase, after.job_view(job).chunks[index].attempt) == (
            "dispatched", attempt)
    assert [(e.kind, e.job, e.chunk, e.attempt) for e in _new_events(before, after)] == [
        ("chunk_dispatched", *entry) for entry in expected]


def _check_chunk_event(before, after, command: ChunkEvent, outcome, now):
    _require(_is_id(command.job) and before.job_view(command.job) is not None, command, "job")
    view = before.job_view(command.job)
    _require(type(command.chunk) is int and 0 <= command.chunk < view.chunk_count, command, "chunk")
    _require(type(command.attempt) is int, command, "attempt")
    _require(_is_enum_value(command.state, ChunkState), command, "state")
    _require(_is_id(command.worker), command, "worker")
    _require(_is_seconds(command.worker_started_at), command, "worker_started_at")
    chunk = view.chunks[command.chunk]
    known = _node(before, command.worker)
    status = expected_event_status(command, chunk, known.started_at if known else None)
    if status != "applied":
        assert outcome == ChunkEventOutcome(status=status, phase=chunk.phase)
        assert after == before
        return
    state = ChunkState(command.state)
    checked = None
    if state != ChunkState.STARTED:
        _require(isinstance(command.result, ChunkResult), command, "result")
        try:
            checked = command.result.checked()
        except WireError:
            _require(False, command, "result fields")
    max_retries = before.job_records[command.job].spec.max_retries
    phase, attempt = expected_event_phase(command, chunk, max_retries)
    after_view = after.job_view(command.job)
    changed = after_view.chunks[command.chunk]
    assert (changed.phase, changed.attempt) == (phase, attempt)
    finished = after_view.finished_at is not None
    assert outcome == ChunkEventOutcome(phase=phase, job_finished=finished)
    if phase in FINAL:
        assert changed.worker == command.worker
        # A chunk failed for good carries the state's reason, not the worker's text.
        assert dataclasses.replace(changed.result, error="") == dataclasses.replace(checked, error="")
    assert [c for i, c in enumerate(after_view.chunks) if i != command.chunk] == [
        c for i, c in enumerate(view.chunks) if i != command.chunk]


def _check_cancel(before, after, command: CancelJob, outcome, now):
    _require(_is_id(command.job) and before.job_view(command.job) is not None, command, "job")
    view = before.job_view(command.job)
    if view.finished_at is not None:
        assert outcome == CancelOutcome(changed=False)
        assert after == before
        return
    assert outcome == CancelOutcome(changed=True, cancelled_attempts=tuple(
        (c.chunk, c.attempt, c.worker) for c in view.chunks if c.phase in IN_FLIGHT))
    cancelled = after.job_view(command.job)
    assert (cancelled.state, cancelled.finished_at) == (JobState.CANCELLED, now)
    assert [c.phase for c in cancelled.chunks] == [
        c.phase if c.phase in FINAL else "cancelled" for c in view.chunks]


def _node(state: ClusterState, node: bytes) -> NodeView | None:
    return next((view for view in state.nodes() if view.node == node), None)


def _check_node_seen(before, after, command: NodeSeen, outcome, now):
    _require(_is_id(command.node), command, "node")
    _require(_is_enum_value(command.role, NodeRole), command, "role")
    _require(type(command.host) is str and type(command.address) is str, command, "host or address")
    _require(_is_count(command.slots) and _is_count(command.cache_bytes), command, "slots or cache_bytes")
    _require(_is_seconds(command.started_at), command, "started_at")
    _require(all(_is_count(getattr(command, name)) for name in ("millicpus", "memory_bytes", "disk_bytes")),
             command, "millicpus, memory_bytes or disk_bytes")
    _require(type(command.sandbox) is str, command, "sandbox")
    known = _node(before, command.node)
    joined = known is None or known.state == "lost"
    details = (int(command.role), command.host, command.address, command.slots, command.cache_bytes,
               float(command.started_at))
    offered = (command.millicpus, command.memory_bytes, command.disk_bytes, command.sandbox)
    updated = not joined and details + offered != (
        known.role, known.host, known.address, known.slots, known.cache_bytes, known.started_at,
        known.millicpus, known.memory_bytes, known.disk_bytes, known.sandbox)
    assert outcome == NodeOutcome(changed=joined, updated=updated)
    assert _node(after, command.node) == NodeView(
        command.node, *details, state="alive", changed_at=now if joined else known.changed_at,
        millicpus=command.millicpus, memory_bytes=command.memory_bytes, disk_bytes=command.disk_bytes,
        sandbox=command.sandbox)
    new_process = known is None or known.started_at != float(command.started_at)
    events = [(e.kind, e.node) for e in _new_events(before, after)]
    # A join, or a new process of a node still alive (restarted before it was found lost).
    head = [("node_joined", command.node)] if joined or new_process else []
    assert events[:len(head)] == head
    # A new process of a node loses what its node ran: each RUNNING chunk on
    # it is requeued (chunk_lost) or, poisoned, failed with its job maybe.
    for kind, node in events[len(head):]:
        assert new_process and (kind, node) in {("chunk_lost", command.node), ("chunk_failed", command.node),
                                                ("job_failed", None)}, events


def _check_node_lost(before, after, command: NodeLost, outcome, now):
    _require(_is_id(command.node) and _node(before, command.node) is not None, command, "node")
    known = _node(before, command.node)
    was_alive = known.state == "alive"
    assert outcome == NodeOutcome(changed=was_alive)
    if not was_alive:
        assert after == before
        return
    lost = _node(after, command.node)
    assert (lost.state, lost.changed_at) == ("lost", now)
    assert [(e.kind, e.node) for e in _new_events(before, after)] == [("node_lost", command.node)]


_CHECKS = {
    SubmitJob: _check_submit, DispatchAttempts: _check_dispatch, ChunkEvent: _check_chunk_event,
    CancelJob: _check_cancel, NodeSeen: _check_node_seen, NodeLost: _check_node_lost,
}


def check_accepted(before: ClusterState, after: ClusterState, command: Any, outcome: Any,
                   now: float) -> None:
    """`command` was answered ok: it must have been well formed, and have
    done exactly what it calls for."""
    assert outcome.ok and outcome.error == "" and outcome.error_code == 0, outcome
    check = _CHECKS.get(type(command))
    if check is None:
        raise _accepted_garbage(command, "type")
    check(before, after, command, outcome, now)
