"""The worker's messages to and from its load balancer, as the attempts core
sees them: which core event each incoming message is, and the hello,
heartbeat and worker_status that the core's effects become. The shell
(worker/node.py) and the simulation (tests/sim/) both translate through here.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from uds import wire
from uds.wire.capacity import NO_CAPACITY, Capacity
from uds.wire.enums import ErrorCode, NodeRole
from uds.wire.records import NO_FACTS, NodeFacts
from uds.wire.resources import ResourceLimits
from uds.worker import attempts as core
from uds.worker.attempts import AttemptKey


def status_message(node_id: bytes, start_time_ms: int, report: core.Report) -> wire.WorkerStatus:
    """The worker_status that carries a report: the one place it is built.
    `start_time_ms` is this process's, as its hello says it; divided as the
    load balancer divides the hello's, it equals the masters' started_at of
    this process exactly, which is what they fence a STARTED by."""
    key = report.key
    result = replace(report.result, error=report.result.error[:4000])
    return wire.WorkerStatus.reporting(wire.ChunkEvent(job=key.job, chunk=key.chunk, attempt=key.attempt,
                                                       state=int(report.state), worker=node_id, result=result,
                                                       worker_started_at=start_time_ms / 1000.0),
                                       epoch=report.epoch)


def _assigned(message: wire.WorkerRequest, balancer: core.Balancer) -> core.Assigned:
    job = core.JobSpec(message.job_uuid, (message.program[0], message.program[1]), tuple(message.args),
                       {name: (ref[0], ref[1]) for name, ref in message.inputs.items()},
                       message.chunk_count, message.timeout_s,
                       limits=ResourceLimits.from_body(message.limits), network=message.network)
    return core.Assigned(message.epoch, job, tuple(
        core.ChunkAssignment(item["chunk"], item["attempt"],
                             {name: (ref[0], ref[1]) for name, ref in item["inputs"].items()})
        for item in message.assignments), balancer)


# What the balancer's messages are to the core; b is the sending balancer.
_EVENTS_OF_MESSAGES: dict[type, Callable[[Any, int], Any]] = {
    wire.HelloReply: lambda m, b: core.HelloAnswered(m.epoch, b),
    wire.WorkerRequest: _assigned,
    wire.ChunkCancel: lambda m, b: core.CancelReceived(m.epoch, m.job_uuid, tuple(
        (chunk, attempt) for chunk, attempt in m.attempts), b),
    wire.StatusAck: lambda m, b: core.StatusAcknowledged(m.epoch, tuple(
        AttemptKey(job, chunk, attempt) for job, chunk, attempt, _ in m.attempts), b),
    # "hello first": the balancer restarted or forgot us.
    wire.Error: lambda m, b: core.HelloRequired(b) if m.error_code == ErrorCode.UNEXPECTED else None,
}
BALANCER_MESSAGES = tuple(_EVENTS_OF_MESSAGES)


def event_of(message: wire.Message, balancer: core.Balancer = 0) -> Any | None:
    """The core event that a message from balancer number `balancer` (one of
    BALANCER_MESSAGES) is, or None for an error other than "hello first"."""
    return _EVENTS_OF_MESSAGES[type(message)](message, balancer)


def hello_message(node_id: bytes, request_id: int, slots: int, cache_bytes: int, start_time_ms: int,
                  host: str, capacity: Capacity = NO_CAPACITY, sandbox: str = "none",
                  facts: NodeFacts = NO_FACTS) -> wire.Hello:
    """The worker's hello: its slots and cache, what it offers chunks
    (cpus, memory, disk) and how it contains them, and its node facts."""
    return wire.Hello.make(node_id, request_id=request_id, role=int(NodeRole.WORKER), slots=slots,
                           cache_bytes=cache_bytes, start_time_ms=start_time_ms, host=host, address="",
                           version=1, millicpus=capacity.millicpus, memory_bytes=capacity.memory_bytes,
                           disk_bytes=capacity.disk_bytes, sandbox=sandbox[:64], **facts.as_body())


def heartbeat_message(node_id: bytes, effect: core.SendHeartbeat, cache_added: list,
                      cache_removed: list) -> wire.Heartbeat:
    return wire.Heartbeat.make(
        node_id, epoch=effect.epoch, free_slots=effect.free_slots, running_count=len(effect.running),
        running=[list(key) for key in effect.running], cache_added=[list(item) for item in cache_added],
        cache_removed=cache_removed)
