"""What goes into the masters' replicated state and what comes out of it.

Commands are the entries of the Raft log: frozen, slotted, picklable
dataclasses that `ClusterState.apply` consumes in lists. A worker's report is
committed as the wire's own `ChunkEvent` record, with its `ChunkResult`
(wire/records.py), so the masters never restate their fields. Outcomes are what
`apply` returns for each command, in order. Views are the read-only shapes the
queries return; each one converts itself into the body of its wire record
(`JOB_SPEC`, `DISPATCH_ATTEMPT`, `CHUNK_REPORT`, `EVENT`, `NODE`) so that the
shell never has to know the state's insides.

Ids are 16-byte `bytes`; a file reference is `(file id, size in bytes)`.
Nothing here reads the clock or touches the network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import msgpack
from enum import IntEnum
from typing import Any, NamedTuple

from uds.wire.enums import ChunkState, JobState, NodeRole
from uds.wire.errors import WireError
from uds.wire.ids import ID_BYTES
from uds.wire.records import NO_FACTS, ChunkEvent, ChunkResult, FileRef, NodeFacts
from uds.wire.resources import NO_LIMITS, ResourceLimits, ResourceSpecError


class ChunkPhase(IntEnum):
    """Where a chunk stands as the masters see it (not a worker's ChunkState)."""

    QUEUED = 1       # waiting for the leader to dispatch its current attempt
    DISPATCHED = 2   # committed as sent to the load balancer, not yet started
    RUNNING = 3      # a worker reported STARTED for the current attempt
    SUCCEEDED = 4    # final
    FAILED = 5       # final: retries used up, or poison
    CANCELLED = 6    # final
    WAITING = 7      # its job waits (dependencies, start time, hold), or an identical chunk runs
    DELAYED = 8      # a new attempt waits out its backoff before it is QUEUED
    CACHED = 9       # final: a cached result of an identical chunk (counts as succeeded)

    @property
    def label(self) -> str:
        """The name CHUNK_REPORT uses: "queued", "dispatched", ..."""
        return self.name.lower()


class StateInvariantError(Exception):
    """Our own bookkeeping is inconsistent: a bug, never a peer's fault."""


FINAL_PHASES = frozenset({ChunkPhase.SUCCEEDED, ChunkPhase.FAILED, ChunkPhase.CANCELLED, ChunkPhase.CACHED})
IN_FLIGHT_PHASES = frozenset({ChunkPhase.DISPATCHED, ChunkPhase.RUNNING})


# --------------------------------------------------------------------------
# Commands (Raft log entries)

@dataclass(frozen=True, slots=True)
class SubmitJob:
    """Create a job and its chunks. Idempotent by job id."""

    job: bytes
    name: str
    program: FileRef
    args: tuple[str, ...]
    inputs: dict[str, FileRef]              # job-wide inputs, by file name
    chunk_inputs: tuple[dict[str, FileRef], ...]  # empty, or one map per chunk
    chunk_count: int
    timeout_s: float
    max_retries: int                        # program failures allowed per chunk
    limits: ResourceLimits = NO_LIMITS      # per attempt, the cluster's defaults filled in
    network: bool = False                   # whether its chunks may reach the network
    # Workflows (doc/states.md). Defaults keep entries written before them valid.
    refs: tuple[InputRef, ...] = ()         # inputs that are other jobs' outputs
    after: tuple[bytes, ...] = ()           # jobs that must succeed first (besides those refs name)
    start_at: float | None = None           # unix seconds: no chunk is queued before
    deadline: float | None = None           # unix seconds: what is unfinished then is cancelled, the job fails
    hold: bool = False                      # waits for ReleaseJob
    cache: bool = False                     # reuses and records results by ChunkKey hash
    retry_backoff_s: float = 0.0            # before each retry of an application failure
    poison_after: int = 3                   # workers lost in a row that quarantine a chunk (the leader's setting)

    # Pickled (in log entries and snapshots) as its field values in order.
    # An entry written before a field existed is shorter: the missing
    # fields take their defaults, or every replica would fail on it.
    def __getstate__(self) -> tuple:
        return tuple(getattr(self, field.name) for field in fields(self))

    def __setstate__(self, values: tuple) -> None:
        known = fields(self)
        for field, value in zip(known, values):
            object.__setattr__(self, field.name, value)
        for field in known[len(values):]:
            object.__setattr__(self, field.name, field.default)


class InputRef(NamedTuple):
    """An input that is another job's output (wire INPUT_REF). `chunk` is
    JOB_WIDE or the chunk whose own input it is; `from_chunk` the producing
    chunk, SAME_CHUNK or ALL_CHUNKS (inputs name.0, name.1, ...)."""

    name: str
    chunk: int
    job: bytes
    output: str
    from_chunk: int


JOB_WIDE = -1
SAME_CHUNK = -1
ALL_CHUNKS = -2


@dataclass(frozen=True, slots=True)
class DispatchAttempts:
    """The leader is about to send these (job, chunk, attempt) to the load
    balancer; it commits this first so that a new leader knows they may run."""

    attempts: tuple[tuple[bytes, int, int], ...]


@dataclass(frozen=True, slots=True)
class CancelJob:
    job: bytes


@dataclass(frozen=True, slots=True)
class ReleaseJob:
    """A held job may go on (to waiting for its dependencies or start time, or queued)."""

    job: bytes


@dataclass(frozen=True, slots=True)
class RunTimers:
    """The leader's clock passed a timer the state keeps (`next_timer_at`):
    start times, deadlines and backoffs due by the command's `now` fire."""


@dataclass(frozen=True, slots=True)
class PruneCache:
    """Drop result-cache entries older than `max_age_s` and the oldest
    beyond `max_entries`; their files are released (kept from collection
    for `gc_grace_s`, like a forgotten job's)."""

    max_entries: int
    max_age_s: float
    gc_grace_s: float


@dataclass(frozen=True, slots=True)
class GrantLease:
    """The load balancer `holder` is the active one under `epoch`. A new
    holder comes with the next epoch; the holder renews with its own. No
    time is kept here: the leader times the lease on its own clock from the
    commit (replicas' clocks need not agree)."""

    holder: bytes
    epoch: int


@dataclass(frozen=True, slots=True)
class NodeSeen:
    """A node registered (or re-registered) with the cluster."""

    node: bytes
    role: int                               # wire.enums.NodeRole
    host: str
    address: str
    slots: int
    cache_bytes: int
    started_at: float
    millicpus: int = 0                      # what a worker offers (0: not measured)
    memory_bytes: int = 0
    disk_bytes: int = 0
    sandbox: str = ""                       # how it contains its chunks
    facts: NodeFacts = NO_FACTS             # version, machine, addresses


@dataclass(frozen=True, slots=True)
class NodeLost:
    node: bytes


@dataclass(frozen=True, slots=True)
class ForgetJobs:
    """These finished jobs leave the state, each leaving a history line; the
    newest `history_lines` lines are kept. The leader picks the jobs (its
    retention settings, its `now`); a job not finished is never forgotten,
    whatever the command lists (master/retention.py). Their files are
    recorded as released at the command's `now`, and releases older than
    `gc_grace_s` are dropped (master/collection.py)."""

    jobs: tuple[bytes, ...]
    history_lines: int
    gc_grace_s: float = 0.0                 # absent from entries written before collection: 0


@dataclass(frozen=True, slots=True)
class PinFiles:
    """Keep these files from collection until `until` (unix seconds); a
    later `until` wins. Pins expired more than `gc_grace_s` ago are dropped
    first (master/collection.py)."""

    files: tuple[bytes, ...]
    until: float
    gc_grace_s: float


@dataclass(frozen=True, slots=True)
class PruneCollection:
    """Drop pins and releases more than `gc_grace_s` past. The leader also
    proposes it before it answers gc_checks: once it commits, the state
    holds everything committed before they arrived."""

    gc_grace_s: float


# A worker's report on a chunk attempt is committed as the wire's ChunkEvent itself.
Command = (SubmitJob | DispatchAttempts | ChunkEvent | CancelJob | NodeSeen | NodeLost | GrantLease | ForgetJobs
           | PinFiles | PruneCollection | ReleaseJob | RunTimers | PruneCache)


def file_ref(ref: Any) -> FileRef:
    return (bytes(ref[0]), ref[1])


def file_map(files: dict) -> dict[str, FileRef]:
    return {name: file_ref(ref) for name, ref in files.items()}


def normalised_submit(command: SubmitJob) -> SubmitJob:
    """Tuples for lists, floats for seconds: a resubmission decoded from
    msgpack compares equal to the stored spec. Check it first."""
    return SubmitJob(
        job=bytes(command.job), name=command.name, program=file_ref(command.program),
        args=tuple(command.args), inputs=file_map(command.inputs),
        chunk_inputs=tuple(file_map(inputs) for inputs in command.chunk_inputs),
        chunk_count=command.chunk_count, timeout_s=float(command.timeout_s),
        max_retries=command.max_retries, limits=command.limits, network=command.network,
        refs=tuple(InputRef(ref[0], ref[1], bytes(ref[2]), ref[3], ref[4]) for ref in command.refs),
        after=tuple(bytes(job) for job in command.after),
        start_at=None if command.start_at is None else float(command.start_at),
        deadline=None if command.deadline is None else float(command.deadline),
        hold=command.hold, cache=command.cache, retry_backoff_s=float(command.retry_backoff_s),
        poison_after=command.poison_after,
    )


# --------------------------------------------------------------------------
# Checks. The wire codec has already checked what peers send; these repeat
# what the state relies on, because a committed command that crashed `apply`
# would crash every replica. Each returns the first problem, or "" (a chunk
# result is checked against its wire schema instead, by `checked_result`).

def is_id(value: Any) -> bool:
    return type(value) is bytes and len(value) == ID_BYTES


def unknown_job(job: Any) -> str:
    """The error for a job id the masters do not know, naming it."""
    return f"unknown job {job.hex() if type(job) is bytes else repr(job)}"


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_enum_int(value: Any) -> bool:
    # An int or an IntEnum member, but not a bool: True would pass as 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


def _is_file_ref(value: Any) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 2
            and is_id(value[0]) and _is_count(value[1]))


def _is_file_map(value: Any) -> bool:
    return type(value) is dict and all(
        type(name) is str and _is_file_ref(ref) for name, ref in value.items())


def submit_problem(command: SubmitJob, max_chunks: int) -> str:
    if not is_id(command.job):
        return "job id must be 16 bytes"
    if type(command.name) is not str:
        return "name must be a string"
    if not _is_file_ref(command.program):
        return "program must be a file reference"
    if not isinstance(command.args, (tuple, list)) or not all(type(arg) is str for arg in command.args):
        return "args must be strings"
    if not _is_file_map(command.inputs):
        return "inputs must map file names to file references"
    if type(command.chunk_count) is not int or not 1 <= command.chunk_count <= max_chunks:
        return f"chunk_count must be 1..{max_chunks}"
    if not isinstance(command.chunk_inputs, (tuple, list)) or not all(
            _is_file_map(inputs) for inputs in command.chunk_inputs):
        return "chunk_inputs must be a list of input maps"
    if command.chunk_inputs and len(command.chunk_inputs) != command.chunk_count:
        return f"{len(command.chunk_inputs)} chunk_inputs for {command.chunk_count} chunks"
    if not _is_seconds(command.timeout_s) or command.timeout_s == 0:
        return "timeout_s must be positive"
    if not _is_count(command.max_retries):
        return "max_retries must be a count"
    if type(command.limits) is not ResourceLimits:
        return "limits must be ResourceLimits"
    try:
        command.limits.check()
    except ResourceSpecError as fault:
        return f"limits: {fault}"
    if type(command.network) is not bool:
        return "network must be true or false"
    return _workflow_problem(command)


# The latest start time or deadline (the wire's SECONDS bound, the year 2286).
MAX_TIME_S = 1e10


def _is_ref(value: Any, chunk_count: int) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 5 and type(value[0]) is str
            and value[0] not in ("", ".", "..") and "/" not in value[0] and "\0" not in value[0]
            and type(value[1]) is int and JOB_WIDE <= value[1] < chunk_count
            and is_id(value[2]) and type(value[3]) is str and value[3] != ""
            and type(value[4]) is int and value[4] >= ALL_CHUNKS)


def _workflow_problem(command: SubmitJob) -> str:
    if not isinstance(command.refs, (tuple, list)) or not all(
            _is_ref(ref, command.chunk_count) for ref in command.refs):
        return "refs must be (name, chunk, job, output, from_chunk) references"
    if not isinstance(command.after, (tuple, list)) or not all(is_id(job) for job in command.after):
        return "after must be job ids"
    for name in ("start_at", "deadline"):
        value = getattr(command, name)
        if value is not None and not (_is_seconds(value) and value <= MAX_TIME_S):
            return f"{name} must be unix seconds (at most {MAX_TIME_S:g}) or none"
    if type(command.hold) is not bool or type(command.cache) is not bool:
        return "hold and cache must be true or false"
    if not _is_seconds(command.retry_backoff_s):
        return "retry_backoff_s must be seconds"
    if type(command.poison_after) is not int or command.poison_after < 1:
        return "poison_after must be a positive count"
    return ""


def chunk_event_problem(event: ChunkEvent) -> str:
    """Checks attempt, state, worker and its process's start; the state looks
    up job and chunk itself, and checks the result fields only when it keeps
    them."""
    if type(event.attempt) is not int:
        return "attempt must be an integer"
    if not _is_enum_int(event.state) or event.state not in ChunkState._value2member_map_:
        return f"unknown chunk state {event.state!r}"
    if not is_id(event.worker):
        return "worker id must be 16 bytes"
    if not _is_seconds(event.worker_started_at):
        return "worker_started_at must be seconds"
    return ""


def checked_result(result: Any) -> ChunkResult:
    """The result of a committed event, normalised, once the wire schema
    passed it; raises WireError otherwise."""
    if type(result) is not ChunkResult:
        raise WireError(f"result is a {type(result).__name__}, not a ChunkResult")
    return result.checked()


_RESULT_FIELDS = tuple(field.name for field in fields(ChunkResult))


def pack_result(result: ChunkResult) -> bytes:
    """A checked result as msgpack of its fields in order: a finished
    chunk's record keeps this instead of the objects (a tenth of the size
    of a ChunkResult with its dict, tuples, ids and floats)."""
    return msgpack.packb([getattr(result, name) for name in _RESULT_FIELDS], use_bin_type=True)


def unpack_result(packed: bytes) -> ChunkResult:
    """The result `pack_result` packed, equal to the one it was given. One
    packed before a field existed (an older snapshot) reads it as its default."""
    return ChunkResult.from_body(dict(zip(_RESULT_FIELDS, msgpack.unpackb(packed, raw=False))))


def node_seen_problem(command: NodeSeen) -> str:
    if not is_id(command.node):
        return "node id must be 16 bytes"
    if not _is_enum_int(command.role) or command.role not in NodeRole._value2member_map_:
        return f"unknown node role {command.role!r}"
    if type(command.host) is not str or type(command.address) is not str:
        return "host and address must be strings"
    if not all(_is_count(getattr(command, name))
               for name in ("slots", "cache_bytes", "millicpus", "memory_bytes", "disk_bytes")):
        return "slots, cache_bytes, millicpus, memory_bytes and disk_bytes must be counts"
    if type(command.sandbox) is not str:
        return "sandbox must be a string"
    if not _is_seconds(command.started_at):
        return "started_at must be seconds"
    facts = command.facts
    if not isinstance(facts, NodeFacts) or type(facts.software) is not str or not all(
            _is_count(getattr(facts, name)) for name in ("cpus", "machine_memory_bytes", "machine_disk_bytes")):
        return "facts must be a NodeFacts with a software string and counts"
    if type(facts.addresses) is not tuple or not all(type(address) is str for address in facts.addresses):
        return "facts.addresses must be a tuple of strings"
    return ""


# --------------------------------------------------------------------------
# Outcomes (one per command, in order)

@dataclass(frozen=True, slots=True)
class Outcome:
    """ok=False means the command was refused and changed nothing;
    error_code is a wire.enums.ErrorCode value for the reply (0 when ok)."""

    ok: bool = True
    error: str = ""
    error_code: int = 0


@dataclass(frozen=True, slots=True)
class SubmitOutcome(Outcome):
    created: bool = False                   # False: the job already existed


@dataclass(frozen=True, slots=True)
class DispatchOutcome(Outcome):
    dispatched: tuple[tuple[bytes, int, int], ...] = ()   # (job, chunk, attempt)
    skipped: int = 0                        # listed but no longer QUEUED at that attempt


# ChunkEventOutcome.status values.
EVENT_APPLIED = "applied"
EVENT_DUPLICATE = "duplicate"   # current attempt, but it says nothing new
EVENT_STALE = "stale"           # not the chunk's current attempt (fenced)
EVENT_FINAL = "final"           # the chunk had already finished
EVENT_UNKNOWN = "unknown"       # no such job or chunk (ok=False)
EVENT_INVALID = "invalid"       # an event no dispatched attempt can send (ok=False)


@dataclass(frozen=True, slots=True)
class ChunkEventOutcome(Outcome):
    status: str = EVENT_APPLIED
    phase: str = ""                         # the chunk's phase label afterwards
    job_finished: bool = False              # this event finished the job


@dataclass(frozen=True, slots=True)
class CancelOutcome(Outcome):
    # (chunk, attempt, worker or None) that were DISPATCHED or RUNNING: the
    # shell asks the load balancer to kill them.
    cancelled_attempts: tuple[tuple[int, int, bytes | None], ...] = ()
    changed: bool = False                   # False: already cancelled or finished


@dataclass(frozen=True, slots=True)
class ReleaseOutcome(Outcome):
    changed: bool = False                   # False: not held (released before, or never held)


@dataclass(frozen=True, slots=True)
class TimersOutcome(Outcome):
    # Per job ended by its deadline: (job, ((chunk, attempt, worker or None), ...))
    # for its attempts that were DISPATCHED or RUNNING: the shell asks the
    # load balancer to kill them.
    cancelled: tuple[tuple[bytes, tuple[tuple[int, int, bytes | None], ...]], ...] = ()
    fired: int = 0                          # timers that were due


@dataclass(frozen=True, slots=True)
class PruneCacheOutcome(Outcome):
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class LeaseOutcome(Outcome):
    holder: bytes | None = None             # the holder afterwards
    epoch: int = 0                          # its epoch afterwards
    granted: bool = False                   # a new holder (not a renewal)


@dataclass(frozen=True, slots=True)
class ForgetOutcome(Outcome):
    forgotten: int = 0                      # jobs that left the state
    skipped: int = 0                        # listed but unknown or not finished


@dataclass(frozen=True, slots=True)
class PinOutcome(Outcome):
    pinned: int = 0                         # files the command pins (each once)


@dataclass(frozen=True, slots=True)
class PruneOutcome(Outcome):
    pins_dropped: int = 0
    releases_dropped: int = 0               # files whose release is past the grace


@dataclass(frozen=True, slots=True)
class NodeOutcome(Outcome):
    changed: bool = False                   # joined, came back, or was declared lost
    updated: bool = False                   # an alive node's details changed


# --------------------------------------------------------------------------
# Views (query results)

class Event(NamedTuple):
    """One entry of the sequenced event log; `_asdict()` is an EVENT record."""

    seq: int
    at: float
    kind: str
    job: bytes | None
    chunk: int | None
    attempt: int | None
    node: bytes | None
    detail: str


# Event kinds.
JOB_SUBMITTED = "job_submitted"
CHUNK_DISPATCHED = "chunk_dispatched"
CHUNK_STARTED = "chunk_started"
CHUNK_SUCCEEDED = "chunk_succeeded"
CHUNK_FAILED = "chunk_failed"
CHUNK_RETRIED = "chunk_retried"
CHUNK_LOST = "chunk_lost"
CHUNK_CANCELLED = "chunk_cancelled"
JOB_SUCCEEDED = "job_succeeded"
JOB_FAILED = "job_failed"
JOB_CANCELLED = "job_cancelled"
NODE_JOINED = "node_joined"
NODE_LOST = "node_lost"
LEASE_GRANTED = "lease_granted"
JOB_FORGOTTEN = "job_forgotten"     # past retention: only its history line is kept
JOB_RELEASED = "job_released"       # a held job was released
JOB_READY = "job_ready"             # a job that waited: its chunks are queued
CHUNK_CACHED = "chunk_cached"       # a chunk's result came from the cache or its in-flight twin


class ReadyAttempt(NamedTuple):
    """A chunk attempt to dispatch; `_asdict()` is a DISPATCH_ATTEMPT record."""

    job: bytes
    chunk: int
    attempt: int
    inputs: dict[str, FileRef]              # this chunk's own inputs


class RunningAttempt(NamedTuple):
    job: bytes
    chunk: int
    attempt: int
    worker: bytes


class JobSummary(NamedTuple):
    job: bytes
    name: str
    state: JobState
    submitted_at: float


@dataclass(frozen=True, slots=True)
class ChunkView:
    chunk: int
    phase: str                              # ChunkPhase label
    attempt: int
    worker: bytes | None
    result: ChunkResult                     # NO_RESULT until the chunk is final
    retries_used: int
    lost_count: int
    failures: tuple[str, ...] = ()          # each failed attempt's class, oldest first (FAILURE_CLASSES)

    def as_report(self) -> dict[str, Any]:
        """The CHUNK_REPORT record."""
        return dict(chunk=self.chunk, state=self.phase, attempt=self.attempt, worker=self.worker,
                    failures=list(self.failures), **self.result.as_body())


@dataclass(frozen=True, slots=True)
class JobView:
    job: bytes
    state: JobState
    chunk_count: int
    chunks_succeeded: int
    chunks_failed: int
    name: str
    submitted_at: float
    finished_at: float | None
    error: str                              # the first chunk failure, or ""
    first_chunk: int                        # the first chunk in `chunks`
    chunks: tuple[ChunkView, ...]           # consecutive, from first_chunk on
    limits: ResourceLimits = NO_LIMITS
    network: bool = False
    waiting: str = ""                       # why its chunks cannot run now, or ""
    past_retention: bool = False            # only its history line is kept (master/retention.py)
    chunks_cached: int = 0                  # of chunks_succeeded
    after: tuple[bytes, ...] = ()           # every job it waits for (after= and refs)
    start_at: float | None = None
    deadline: float | None = None
    cache: bool = False

    def reply_fields(self) -> dict[str, Any]:
        """Keyword arguments for `JobStatusReply.make(node, request_id=..., **these)`."""
        return dict(
            job=self.job, state=int(self.state), chunk_count=self.chunk_count,
            chunks_succeeded=self.chunks_succeeded, chunks_failed=self.chunks_failed,
            name=self.name, submitted_at=self.submitted_at, finished_at=self.finished_at,
            error=self.error, first_chunk=self.first_chunk,
            next_chunk=self.first_chunk + len(self.chunks), past_retention=int(self.past_retention),
            chunks=[chunk.as_report() for chunk in self.chunks],
            limits=self.limits.as_body(), network=self.network, waiting=self.waiting,
            chunks_cached=self.chunks_cached, after=list(self.after), start_at=self.start_at,
            deadline=self.deadline, cache=self.cache,
        )


@dataclass(frozen=True, slots=True)
class NodeView:
    node: bytes
    role: int
    host: str
    address: str
    slots: int
    cache_bytes: int
    started_at: float
    state: str                              # "alive" or "lost"
    changed_at: float                       # when it joined or was lost
    millicpus: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    sandbox: str = ""
    facts: NodeFacts = NO_FACTS

    def as_record(self, free_slots: int = 0, running: int = 0,
                  last_seen_s: float = 0.0, figures: dict[str, int] | None = None) -> dict[str, Any]:
        """The NODE record; load and liveness figures are soft state (the
        load balancer's for workers, the leader's for storage nodes), so
        the shell passes them in."""
        return dict(
            node=self.node, role=self.role, host=self.host, address=self.address,
            slots=self.slots, free_slots=free_slots, running=running,
            cache_bytes=self.cache_bytes, started_at=self.started_at,
            last_seen_s=last_seen_s, state=self.state, millicpus=self.millicpus,
            memory_bytes=self.memory_bytes, disk_bytes=self.disk_bytes, sandbox=self.sandbox,
            lease_epoch=0, figures=dict(figures or {}), **self.facts.as_body(),
        )
