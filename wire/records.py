"""The records that several messages carry, each declared once with its schema.

A record is one concept under one name in every role: a `ChunkResult` is what
a chunk attempt left behind; a `ChunkEvent` is a worker's report on one
attempt, as the worker sends it (`worker_status`), the load balancer forwards
it (a CHUNK_EVENT of `chunk_events`) and the masters commit it.

Rules of this module:
- Records are frozen, slotted, picklable plain data; the masters keep them in
  their replicated state and their Raft log.
- On the wire a record's fields lie flat in its message's body, so the bodies
  (and csrc/wire.h) are the same as before records existed: `from_body` reads
  them out of a decoded body, `as_body` gives them back.
- Building a record checks nothing. The codec checks what a peer sends;
  `ChunkResult.checked()` checks a record that did not come through it, with
  the same schema.
- A file reference is `(file id, size in bytes)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from uds.wire.enums import ChunkState
from uds.wire.resources import Usage
from uds.wire.schema import (
    FILE_REF, I64, ID, OUTPUT_MAP, SECONDS, U8, U32, U64, Nullable, Record, Schema, Str, record,
)

FileRef = tuple[bytes, int]

# The worker id of an event about an attempt that never reached a worker.
NO_WORKER = bytes(16)

RESULT_FIELDS: dict[str, Schema] = dict(
    exit_code=Nullable(I64), outputs=OUTPUT_MAP, stdout=Nullable(FILE_REF),
    stderr=Nullable(FILE_REF), error=Str(), elapsed_s=SECONDS,
    bytes_from_cache=U64, bytes_from_storage=U64,
    cpu_user_s=SECONDS, cpu_system_s=SECONDS, peak_memory_bytes=U64, output_bytes=U64,
    assigned_at=SECONDS, started_at=SECONDS, first_read_at=SECONDS, ended_at=SECONDS,
    uploaded_at=SECONDS,
)
# The result's fields that date the attempt on its worker's clock (unix
# seconds, 0: not known): when the worker accepted the assignment, started
# the program, saw its first read of an input, saw it end, and had stored
# its outputs and logs. The masters date the rest (dispatched, committed) on
# theirs.
TIMELINE_FIELDS = ("assigned_at", "started_at", "first_read_at", "ended_at", "uploaded_at")
# The result's fields that say what the attempt used (wire.resources.Usage);
# its wall time is elapsed_s.
USAGE_FIELDS = ("bytes_from_cache", "bytes_from_storage", "cpu_user_s", "cpu_system_s",
                "peak_memory_bytes", "output_bytes")
RESULT = record(**RESULT_FIELDS)
EVENT_FIELDS: dict[str, Schema] = dict(job=ID, chunk=U32, attempt=U32, state=U8, worker=ID,
                                        worker_started_at=SECONDS)
CHUNK_EVENT: Record = record(**EVENT_FIELDS, **RESULT_FIELDS)


def _file_ref(ref: Any) -> FileRef:
    return (bytes(ref[0]), ref[1])


def _optional_file_ref(ref: Any) -> FileRef | None:
    return None if ref is None else _file_ref(ref)


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What a chunk attempt left behind, as its worker reported it."""

    exit_code: int | None = None            # None: the program never exited by itself
    outputs: dict[str, FileRef] = field(default_factory=dict)   # path under $UDS_OUTPUT
    stdout: FileRef | None = None           # None: nothing was written
    stderr: FileRef | None = None
    error: str = ""                         # why it failed, for people; "" on success
    elapsed_s: float = 0.0
    bytes_from_cache: int = 0               # inputs read from the worker's block cache
    bytes_from_storage: int = 0             # inputs fetched from storage nodes
    cpu_user_s: float = 0.0                 # 0: not measured
    cpu_system_s: float = 0.0
    peak_memory_bytes: int = 0
    output_bytes: int = 0                   # outputs and logs stored
    assigned_at: float = 0.0                # TIMELINE_FIELDS, on the worker's clock; 0: not known
    started_at: float = 0.0
    first_read_at: float = 0.0              # 0 also when the program read no input
    ended_at: float = 0.0
    uploaded_at: float = 0.0

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ChunkResult:
        """The result fields of a decoded body (other keys are ignored);
        file references become tuples."""
        return cls(
            exit_code=body["exit_code"],
            outputs={name: _file_ref(ref) for name, ref in body["outputs"].items()},
            stdout=_optional_file_ref(body["stdout"]), stderr=_optional_file_ref(body["stderr"]),
            error=body["error"], elapsed_s=body["elapsed_s"],
            bytes_from_cache=body["bytes_from_cache"], bytes_from_storage=body["bytes_from_storage"],
            cpu_user_s=body["cpu_user_s"], cpu_system_s=body["cpu_system_s"],
            peak_memory_bytes=body["peak_memory_bytes"], output_bytes=body["output_bytes"],
            **{name: body.get(name, 0.0) for name in TIMELINE_FIELDS},
        )

    def as_body(self) -> dict[str, Any]:
        """The result fields as a body holds them (sharing the outputs map)."""
        return dict(
            exit_code=self.exit_code, outputs=self.outputs, stdout=self.stdout,
            stderr=self.stderr, error=self.error, elapsed_s=self.elapsed_s,
            bytes_from_cache=self.bytes_from_cache, bytes_from_storage=self.bytes_from_storage,
            cpu_user_s=self.cpu_user_s, cpu_system_s=self.cpu_system_s,
            peak_memory_bytes=self.peak_memory_bytes, output_bytes=self.output_bytes,
            assigned_at=self.assigned_at, started_at=self.started_at, first_read_at=self.first_read_at,
            ended_at=self.ended_at, uploaded_at=self.uploaded_at,
        )

    @property
    def usage(self) -> Usage:
        """What the attempt used, as one record; its wall time is elapsed_s."""
        return Usage(**{name: getattr(self, name) for name in USAGE_FIELDS}, wall_s=self.elapsed_s)

    def checked(self) -> ChunkResult:
        """This result, normalised (tuples for file references, float
        seconds), after checking it against the wire schema. Raises
        WireError naming the first field that breaks it, whatever the values."""
        return ChunkResult.from_body(RESULT.check(self.as_body(), "result"))

    def failure_text(self, state: int) -> str:
        """Why an attempt that ended in `state` failed, for people: the
        worker's own text when it gave one."""
        if self.error:
            return self.error
        if state == ChunkState.TIMED_OUT:
            return "timed out"
        if self.exit_code is not None:
            return f"exit code {self.exit_code}"
        return "failed"


NO_RESULT = ChunkResult()


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What a node says of itself (wire/messages.py NODE_FACTS): its uds
    version, the machine's cpus, memory and disk (0: not known) and every
    address it is reached at."""

    software: str = ""
    cpus: int = 0
    machine_memory_bytes: int = 0
    machine_disk_bytes: int = 0
    addresses: tuple[str, ...] = ()

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> NodeFacts:
        """The facts of a decoded body or message (other keys are ignored)."""
        get = body.get if isinstance(body, Mapping) else lambda name, default: getattr(body, name, default)
        return cls(software=get("software", ""), cpus=get("cpus", 0),
                   machine_memory_bytes=get("machine_memory_bytes", 0),
                   machine_disk_bytes=get("machine_disk_bytes", 0),
                   addresses=tuple(get("addresses", ())))

    def as_body(self) -> dict[str, Any]:
        return dict(software=self.software, cpus=self.cpus, machine_memory_bytes=self.machine_memory_bytes,
                    machine_disk_bytes=self.machine_disk_bytes, addresses=list(self.addresses))


NO_FACTS = NodeFacts()


@dataclass(frozen=True, slots=True)
class ChunkEvent:
    """A worker's report on one chunk attempt: STARTED, or how it ended.

    The attempt number fences it: the masters apply an event only to the
    chunk's current attempt. The load balancer also reports attempts it took
    back (LOST, REJECTED) in the same shape. `worker_started_at` says which
    process of the worker sent it (its hello's start time, in the node
    record's seconds), so that the masters can refuse a STARTED from a
    process the worker has since replaced."""

    job: bytes
    chunk: int
    attempt: int
    state: int                              # wire.enums.ChunkState
    worker: bytes                           # NO_WORKER: the attempt never reached one
    result: ChunkResult = NO_RESULT         # NO_RESULT for STARTED
    worker_started_at: float = 0.0          # 0: made up by the load balancer, not a worker process

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ChunkEvent:
        """From a decoded CHUNK_EVENT."""
        return cls(job=body["job"], chunk=body["chunk"], attempt=body["attempt"], state=body["state"],
                   worker=body["worker"], result=ChunkResult.from_body(body),
                   worker_started_at=body["worker_started_at"])

    def as_body(self) -> dict[str, Any]:
        """The CHUNK_EVENT."""
        return dict(job=self.job, chunk=self.chunk, attempt=self.attempt, state=int(self.state),
                    worker=self.worker, worker_started_at=self.worker_started_at, **self.result.as_body())
