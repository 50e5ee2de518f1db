"""What the load balancer's scheduler takes in and gives out.

Events are what the shell feeds `Scheduler.handle()`; effects are what it
returns, each carried out by the shell as one message (see
doc/loadbalancer.md). Plain frozen data: nothing here does anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping, NamedTuple, Union

from uds.wire import messages
from uds.wire.capacity import Capacity
from uds.wire.enums import NodeRole
from uds.wire.records import NO_FACTS, NO_WORKER, ChunkEvent, FileRef, NodeFacts  # noqa: F401  (used as scheduler.X)
from uds.wire.resources import NO_LIMITS, ResourceLimits


class AttemptKey(NamedTuple):
    job: bytes
    chunk: int
    attempt: int


class Assignment(NamedTuple):
    """One entry of worker_request.assignments."""

    chunk: int
    attempt: int
    inputs: dict[str, FileRef]

    def to_record(self) -> dict[str, Any]:
        return {"chunk": self.chunk, "attempt": self.attempt, "inputs": dict(self.inputs)}


def _file_map(value: Mapping[str, Any]) -> dict[str, FileRef]:
    return {name: (bytes(ref[0]), int(ref[1])) for name, ref in value.items()}


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a worker needs to know about a job (JOB_SPEC of chunk_dispatch)."""

    job: bytes
    program: FileRef
    args: tuple[str, ...]
    inputs: dict[str, FileRef]
    chunk_count: int
    timeout_s: float
    limits: ResourceLimits = NO_LIMITS      # the cluster's defaults filled in by the masters
    network: bool = False

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> JobSpec:
        """Raises wire.resources.ResourceSpecError on limits it cannot read."""
        return cls(job=record["job"], program=(record["program"][0], record["program"][1]),
                   args=tuple(record["args"]), inputs=_file_map(record["inputs"]),
                   chunk_count=record["chunk_count"], timeout_s=record["timeout_s"],
                   limits=ResourceLimits.from_body(record["limits"]), network=record["network"])

    def to_record(self) -> dict[str, Any]:
        return {"job": self.job, "program": self.program, "args": list(self.args),
                "inputs": dict(self.inputs), "chunk_count": self.chunk_count,
                "timeout_s": self.timeout_s, "limits": self.limits.as_body(), "network": self.network}

    def request_fields(self) -> dict[str, Any]:
        """The job's fields of a worker_request, beside its assignments."""
        return dict(job=self.job, program_length=self.program[1], num_input_files=len(self.inputs),
                    chunk_count=self.chunk_count, timeout_s=self.timeout_s, program=list(self.program),
                    args=list(self.args), inputs={name: list(ref) for name, ref in self.inputs.items()},
                    limits=self.limits.as_body(), network=self.network)

    @property
    def request(self) -> Capacity:
        """What each attempt reserves on the worker that runs it."""
        return Capacity.requested(self.limits)


@dataclass(frozen=True, slots=True)
class DispatchAttempt:
    """One attempt the master wants run (DISPATCH_ATTEMPT of chunk_dispatch)."""

    job: bytes
    chunk: int
    attempt: int
    inputs: dict[str, FileRef] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> DispatchAttempt:
        return cls(job=record["job"], chunk=record["chunk"], attempt=record["attempt"],
                   inputs=_file_map(record["inputs"]))

    @property
    def key(self) -> AttemptKey:
        return AttemptKey(self.job, self.chunk, self.attempt)


# ---- events: what the shell feeds in -------------------------------------

@dataclass(frozen=True, slots=True)
class WorkerHello:
    worker: bytes
    slots: int
    cache_bytes: int          # cache capacity
    host: str
    address: str
    started_at: float         # of the worker process: a new value means it restarted
    capacity: Capacity = Capacity()   # cpus, memory and disk it offers (0: not measured)
    sandbox: str = ""
    facts: NodeFacts = NO_FACTS       # version, machine, addresses

    @classmethod
    def of_message(cls, message: messages.Hello) -> "WorkerHello":
        return cls(worker=message.node_uuid, slots=message.slots, cache_bytes=message.cache_bytes,
                   host=message.host, address=message.address, started_at=message.start_time_ms / 1000.0,
                   capacity=Capacity(message.millicpus, message.memory_bytes, message.disk_bytes),
                   sandbox=message.sandbox, facts=NodeFacts.from_body(message))


@dataclass(frozen=True, slots=True)
class WorkerHeartbeat:
    worker: bytes
    running: tuple[tuple[bytes, int, int], ...] = ()    # (job, chunk, attempt)
    cache_added: tuple[FileRef, ...] = ()
    cache_removed: tuple[bytes, ...] = ()

    @classmethod
    def of_message(cls, message: messages.Heartbeat) -> "WorkerHeartbeat":
        return cls(worker=message.node_uuid,
                   running=tuple((job, chunk, attempt) for job, chunk, attempt in message.running),
                   cache_added=tuple((file_id, size) for file_id, size in message.cache_added),
                   cache_removed=tuple(message.cache_removed))


@dataclass(frozen=True, slots=True)
class Dispatched:
    jobs: tuple[JobSpec, ...]
    attempts: tuple[DispatchAttempt, ...]

    @classmethod
    def of_message(cls, message: messages.ChunkDispatch) -> "Dispatched":
        return cls(jobs=tuple(JobSpec.from_record(record) for record in message.jobs),
                   attempts=tuple(DispatchAttempt.from_record(record) for record in message.attempts))


@dataclass(frozen=True, slots=True)
class CancelRequested:
    job: bytes
    attempts: tuple[tuple[int, int], ...] = ()    # (chunk, attempt); empty = the whole job

    @classmethod
    def of_message(cls, message: messages.ChunkCancel) -> "CancelRequested":
        return cls(job=message.job_uuid, attempts=tuple((chunk, attempt) for chunk, attempt in message.attempts))


@dataclass(frozen=True, slots=True)
class Tick:
    pass


# A worker's status on a chunk attempt comes in as the wire's ChunkEvent.
Event = Union[WorkerHello, WorkerHeartbeat, Dispatched, ChunkEvent, CancelRequested, Tick]


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker, as a NODE record of node_report shows it."""

    node: bytes
    host: str
    address: str
    slots: int
    free_slots: int           # 0 until the first heartbeat after hello
    running: int
    cache_bytes: int          # capacity
    started_at: float
    last_seen_s: float
    state: str = "alive"
    capacity: Capacity = Capacity()
    sandbox: str = ""
    facts: NodeFacts = NO_FACTS

    def to_record(self) -> dict[str, Any]:
        record = {item.name: getattr(self, item.name) for item in fields(self)
                  if item.name not in ("capacity", "facts")}
        record.update(role=int(NodeRole.WORKER), millicpus=self.capacity.millicpus,
                      memory_bytes=self.capacity.memory_bytes, disk_bytes=self.capacity.disk_bytes,
                      lease_epoch=0, figures={}, **self.facts.as_body())
        return record


# ---- effects: what the shell carries out, one message each ---------------

@dataclass(frozen=True, slots=True)
class AssignChunks:           # -> worker_request to worker
    worker: bytes
    job_spec: JobSpec
    assignments: tuple[Assignment, ...]


@dataclass(frozen=True, slots=True)
class ForwardToMaster:        # -> one CHUNK_EVENT of the next chunk_events batch to the master
    event: ChunkEvent


@dataclass(frozen=True, slots=True)
class CancelOnWorker:         # -> chunk_cancel to worker
    worker: bytes
    job: bytes
    attempts: tuple[tuple[int, int], ...]     # (chunk, attempt), never empty


@dataclass(frozen=True, slots=True)
class WorkerJoined:           # -> node_report to the master: [view.to_record()]
    worker: bytes
    view: WorkerView


@dataclass(frozen=True, slots=True)
class WorkerLost:             # -> node_report to the master: [view.to_record()]
    worker: bytes
    view: WorkerView          # as last seen, state "lost"


@dataclass(frozen=True, slots=True)
class AskHello:               # -> error ERR_UNEXPECTED to worker: say hello first
    worker: bytes


@dataclass(frozen=True, slots=True)
class Note:                   # -> a log line
    text: str


Effect = Union[AssignChunks, ForwardToMaster, CancelOnWorker, WorkerJoined, WorkerLost, AskHello, Note]


class UnknownEventError(TypeError):
    """handle() got something that is not one of this module's events."""
