"""One frozen dataclass per message type: the control messages between
clients, masters, load balancers and workers. The storage nodes' file
messages are wire/file_messages.py; how a message type is declared (the
`@message` decorator, the `Message` base, the REGISTRY) is
wire/message_class.py.

Fields keep the C names of csrc/wire.h. A class lists, in this order: the
fields of its struct after the generic header, then its body fields (the keys
of the msgpack map in frame 1), then its raw frames. `@message` checks that
list against the compiled struct, so the header and this file cannot drift
apart. `check()` holds the rules that span several fields; encode and decode
both call it.

Every id property (`node_uuid`, `job_uuid`, `file_uuid`) gives the 16-byte
id joined from its two halves; `Class.make(node_id, job=..., ...)` splits
16-byte ids into halves for you.
"""
from __future__ import annotations

from dataclasses import field, fields
from typing import Any, Sequence

import msgpack

from uds.wire.enums import FINAL_JOB_STATES, ChunkState, ErrorCode, JobState, NodeRole
from uds.wire.limits import ERROR_REASON_MAX_CHARS, MAX_CHUNK_INPUTS_BYTES, MAX_JOB_SPEC_BYTES
from uds.wire.message_class import (
    MAX_TIME_MS, Message, check_member, message, require,
)
from uds.wire.records import CHUNK_EVENT, RESULT_FIELDS, ChunkEvent, ChunkResult
from uds.wire.resources import ResourceLimits
from uds.wire.schema import (
    FILE_MAP, FILE_REF, I64, I64_MAX, ID, SECONDS, U8, U32, U32_MAX, U64,
    Bool, Choice, FileName, Int, List, Map, Nullable, RelPath, Schema, Str, Tuple, record,
)


def _packed_size(value: Any) -> int:
    return len(msgpack.packb(value, use_bin_type=True))


# Shapes shared by several bodies.
# ResourceLimits.as_body: only the limits asked for (0 is left out).
LIMIT_NAMES = tuple(item.name for item in fields(ResourceLimits))
LIMITS = Map(Choice(LIMIT_NAMES), Int(0, I64_MAX), max_items=len(LIMIT_NAMES))
# What a worker offers (wire.capacity.Capacity; 0: not measured) and how
# its chunks are contained ("none" when it runs them unconfined).
WORKER_RESOURCES: dict[str, Schema] = dict(millicpus=U32, memory_bytes=U64, disk_bytes=U64,
                                           sandbox=Str(64))
# What every node says of itself (hello, storage_heartbeat) and the masters
# keep in its record: its uds version, the machine's cpus, memory and disk
# (0: not known), and every address it is reached at.
MAX_NODE_ADDRESSES = 16
NODE_FACTS: dict[str, Schema] = dict(software=Str(64), cpus=U32, machine_memory_bytes=U64,
                                     machine_disk_bytes=U64,
                                     addresses=List(Str(1024), max_items=MAX_NODE_ADDRESSES))
ASSIGNMENT = record(chunk=U32, attempt=U32, inputs=FILE_MAP)
JOB_SPEC = record(job=ID, program=FILE_REF, args=List(Str()), inputs=FILE_MAP,
                  chunk_count=U32, timeout_s=SECONDS, limits=LIMITS, network=Bool())
DISPATCH_ATTEMPT = record(job=ID, chunk=U32, attempt=U32, inputs=FILE_MAP)
CHUNK_REPORT_STATES = ("queued", "dispatched", "running", "succeeded", "failed", "cancelled",
                       "waiting", "delayed", "cached")
# The class of each failed attempt of a chunk, oldest first (the newest
# MAX_FAILURES_REPORTED of them).
FAILURE_CLASSES = ("application", "infrastructure")
MAX_FAILURES_REPORTED = 64
CHUNK_REPORT = record(chunk=U32, state=Choice(CHUNK_REPORT_STATES), attempt=U32,
                      worker=Nullable(ID), failures=List(Choice(FAILURE_CLASSES), max_items=MAX_FAILURES_REPORTED),
                      **RESULT_FIELDS)
# An input that names another job's output (client `Job.output_ref`, `outputs_ref`):
# `name` is the input's file name; `chunk` is -1 for a job-wide input, else the
# chunk whose own input it is; `from_chunk` is the producing job's chunk, or
# SAME_CHUNK (each chunk i gets chunk i's output) or ALL_CHUNKS (inputs
# name.0, name.1, ... from every chunk).
SAME_CHUNK = -1
ALL_CHUNKS = -2
INPUT_REF = record(name=FileName(), chunk=Int(-1, U32_MAX), job=ID, output=RelPath(),
                   from_chunk=Int(ALL_CHUNKS, U32_MAX))
NODE = record(node=ID, role=U8, host=Str(255), address=Str(1024), slots=U32,
              free_slots=U32, running=U32, cache_bytes=U64, started_at=SECONDS,
              last_seen_s=SECONDS, state=Choice(("alive", "lost")), **WORKER_RESOURCES,
              lease_epoch=U64,  # a balancer holding the lease: its epoch; else 0
              figures=Map(Str(64), I64, max_items=64),  # a storage node's (wire/storage_messages.py); else {}
              **NODE_FACTS)
EVENT = record(seq=U64, at=SECONDS, kind=Str(64), job=Nullable(ID), chunk=Nullable(U32),
               attempt=Nullable(U32), node=Nullable(ID), detail=Str())
RUNNING_ATTEMPT = Tuple((ID, U32, U32))
# How one attempt of a chunk stands or ended. "queued": not dispatched yet
# (also while it waits or is delayed); "cached": its result came from the
# result cache or an in-flight twin.
ATTEMPT_STATES = ("queued", "dispatched", "running", "succeeded", "failed", "timed_out", "lost",
                  "rejected", "cancelled", "cached")
# The failure class of an attempt that failed, else "".
ATTEMPT_FAILURES = ("", *FAILURE_CLASSES)
# An attempt as the masters keep it: its worker (nil: none took it), when the
# masters committed its dispatch, its start and its end (their clock; nil:
# not yet), and what its worker reported (RESULT_FIELDS, with the worker's
# own timeline: TIMELINE_FIELDS).
ATTEMPT = record(attempt=U32, state=Choice(ATTEMPT_STATES), failure=Choice(ATTEMPT_FAILURES),
                 worker=Nullable(ID), dispatched_at=Nullable(SECONDS), running_at=Nullable(SECONDS),
                 committed_at=Nullable(SECONDS), **RESULT_FIELDS)
# A line of the job list: a job the masters keep, or the history line of one
# past retention (past_retention: its chunks are no longer known).
JOB_LINE = record(job=ID, name=Str(255), state=U8, submitted_at=SECONDS, started_at=Nullable(SECONDS),
                  finished_at=Nullable(SECONDS), chunk_count=U32, chunks_succeeded=U32, chunks_failed=U32,
                  chunks_cancelled=U32, chunks_cached=U32, past_retention=Bool(), error=Str())
# The most kinds one events_query may name.
MAX_EVENT_KINDS = 32


@message("worker_request", body=dict(
    epoch=U64, program=FILE_REF, args=List(Str()), inputs=FILE_MAP, chunk_count=U32,
    timeout_s=SECONDS, assignments=List(ASSIGNMENT), limits=LIMITS, network=Bool()))
class WorkerRequest(Message):
    job_uuid_upper: int
    job_uuid_lower: int
    program_length: int
    num_input_files: int
    epoch: int
    program: list
    args: list
    inputs: dict
    chunk_count: int
    timeout_s: float
    assignments: list
    limits: dict = field(default_factory=dict)  # ResourceLimits.as_body, the cluster's defaults filled in
    network: bool = False

    def check(self) -> None:
        require(self.program_length == self.program[1],
                f"worker_request: program_length {self.program_length} != program size {self.program[1]}")
        require(self.num_input_files == len(self.inputs),
                f"worker_request: num_input_files {self.num_input_files} != {len(self.inputs)} inputs")
        require(len(self.assignments) > 0, "worker_request: no assignments")
        for assignment in self.assignments:
            require(assignment["chunk"] < self.chunk_count,
                    f"worker_request: chunk {assignment['chunk']} >= chunk_count {self.chunk_count}")


@message("worker_status", body=dict(epoch=U64, chunk=U32, attempt=U32, worker_started_at=SECONDS,
                                   **RESULT_FIELDS))
class WorkerStatus(Message):
    job_uuid_upper: int
    job_uuid_lower: int
    state: int
    epoch: int
    chunk: int
    attempt: int
    worker_started_at: float        # the sending process's start: its hello's start_time_ms / 1000
    exit_code: int | None
    outputs: dict
    stdout: list | None
    stderr: list | None
    error: str
    elapsed_s: float
    bytes_from_cache: int
    bytes_from_storage: int
    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0
    peak_memory_bytes: int = 0
    output_bytes: int = 0
    assigned_at: float = 0.0        # the worker's timeline (wire/records.py TIMELINE_FIELDS)
    started_at: float = 0.0
    first_read_at: float = 0.0
    ended_at: float = 0.0
    uploaded_at: float = 0.0

    def check(self) -> None:
        check_member(ChunkState, self.state, "worker_status.state")

    @classmethod
    def reporting(cls, event: ChunkEvent, epoch: int) -> "WorkerStatus":
        """The message in which `event.worker` reports `event`."""
        return cls.make(event.worker, job=event.job, state=int(event.state), epoch=epoch,
                        chunk=event.chunk, attempt=event.attempt, worker_started_at=event.worker_started_at,
                        **event.result.as_body())

    def chunk_event(self) -> ChunkEvent:
        """The report, from its sender."""
        return ChunkEvent(job=self.job_uuid, chunk=self.chunk, attempt=self.attempt, state=self.state,
                          worker=self.node_uuid,
                          result=ChunkResult.from_body({name: getattr(self, name) for name in RESULT_FIELDS}),
                          worker_started_at=self.worker_started_at)


@message("error", body=dict(reason=Str()))
class Error(Message):
    request_id: int
    error_code: int
    failed_type: int
    reason: str

    @classmethod
    def replying(cls, node: bytes, request_id: int, failed_type: int, code: int, reason: str) -> "Error":
        """The one way every daemon answers a request it could not serve: the
        reason is cut to ERROR_REASON_MAX_CHARS."""
        return cls.make(node, request_id=request_id, error_code=int(code), failed_type=failed_type,
                        reason=reason[:ERROR_REASON_MAX_CHARS])

    def check(self) -> None:
        check_member(ErrorCode, self.error_code, "error.error_code")


@message("hello", body=dict(host=Str(255), address=Str(1024), version=U32, **WORKER_RESOURCES, **NODE_FACTS))
class Hello(Message):
    request_id: int
    role: int
    slots: int
    cache_bytes: int
    start_time_ms: int
    host: str
    address: str
    version: int
    millicpus: int = 0              # what a worker offers; 0 from other roles
    memory_bytes: int = 0
    disk_bytes: int = 0
    sandbox: str = ""
    software: str = ""              # NODE_FACTS
    cpus: int = 0
    machine_memory_bytes: int = 0
    machine_disk_bytes: int = 0
    addresses: list = field(default_factory=list)

    def check(self) -> None:
        check_member(NodeRole, self.role, "hello.role")
        require(self.start_time_ms <= MAX_TIME_MS,
                f"hello: start_time_ms {self.start_time_ms} is beyond {MAX_TIME_MS}")


@message("hello_reply")
class HelloReply(Message):
    request_id: int
    epoch: int
    heartbeat_interval_ms: int
    lease_ms: int


@message("heartbeat", body=dict(running=List(RUNNING_ATTEMPT), cache_added=List(FILE_REF),
                                cache_removed=List(ID)))
class Heartbeat(Message):
    epoch: int
    free_slots: int
    running_count: int
    running: list
    cache_added: list
    cache_removed: list

    def check(self) -> None:
        # A worker lists every attempt it runs; a load balancer only counts them.
        require(len(self.running) <= self.running_count,
                f"heartbeat: {len(self.running)} attempts listed but running_count is {self.running_count}")


@message("job_submit", body=dict(
    program=FILE_REF, args=List(Str()), inputs=FILE_MAP, chunk_inputs=List(FILE_MAP),
    timeout_s=SECONDS, max_retries=U32, name=Str(255), limits=LIMITS, network=Bool(),
    refs=List(INPUT_REF), after=List(ID), start_at=Nullable(SECONDS), deadline=Nullable(SECONDS),
    hold=Bool(), cache=Bool(), retry_backoff_s=SECONDS))
class JobSubmit(Message):
    request_id: int
    job_uuid_upper: int
    job_uuid_lower: int
    chunk_count: int
    program: list
    args: list
    inputs: dict
    chunk_inputs: list
    timeout_s: float
    max_retries: int
    name: str
    limits: dict = field(default_factory=dict)  # ResourceLimits.as_body: what the job asked for
    network: bool = False
    refs: list = field(default_factory=list)    # INPUT_REF: inputs from other jobs' outputs
    after: list = field(default_factory=list)   # job ids that must succeed first
    start_at: float | None = None               # unix seconds: not before
    deadline: float | None = None               # unix seconds: fail what is unfinished by then
    hold: bool = False                          # wait for job_release
    cache: bool = False                         # reuse and record results by their inputs' hash
    retry_backoff_s: float = 0.0                # pause before retrying an application failure

    def check(self) -> None:
        require(self.chunk_count >= 1, "job_submit: chunk_count must be at least 1")
        for index, ref in enumerate(self.refs):
            require(ref["chunk"] < self.chunk_count,
                    f"job_submit: refs[{index}] is an input of chunk {ref['chunk']}, "
                    f"but the job has {self.chunk_count} chunks")
        require(not self.chunk_inputs or len(self.chunk_inputs) == self.chunk_count,
                f"job_submit: {len(self.chunk_inputs)} chunk_inputs for {self.chunk_count} chunks")
        require(self.timeout_s > 0, "job_submit: timeout_s must be positive")
        spec_bytes = _packed_size([self.program, self.args, self.inputs])
        require(spec_bytes <= MAX_JOB_SPEC_BYTES,
                f"job_submit: program, args and inputs take {spec_bytes} bytes, "
                f"more than {MAX_JOB_SPEC_BYTES}")
        for index, chunk_inputs in enumerate(self.chunk_inputs):
            chunk_bytes = _packed_size(chunk_inputs)
            require(chunk_bytes <= MAX_CHUNK_INPUTS_BYTES,
                    f"job_submit: the inputs of chunk {index} take {chunk_bytes} bytes, "
                    f"more than {MAX_CHUNK_INPUTS_BYTES}")


@message("job_submit_reply")
class JobSubmitReply(Message):
    request_id: int
    job_uuid_upper: int
    job_uuid_lower: int
    created: int

    def check(self) -> None:
        require(self.created in (0, 1), f"job_submit_reply: created {self.created} is not 0 or 1")


@message("job_status")
class JobStatus(Message):
    request_id: int
    job_uuid_upper: int
    job_uuid_lower: int
    detail: int
    wait_ms: int
    first_chunk: int
    max_chunks: int

    def check(self) -> None:
        require(self.detail in (0, 1), f"job_status: detail {self.detail} is not 0 or 1")


@message("job_status_reply", body=dict(
    name=Str(255), submitted_at=SECONDS, finished_at=Nullable(SECONDS), error=Str(),
    chunks=List(CHUNK_REPORT), limits=LIMITS, network=Bool(), waiting=Str(),
    chunks_cached=U32, after=List(ID), start_at=Nullable(SECONDS), deadline=Nullable(SECONDS),
    cache=Bool()))
class JobStatusReply(Message):
    request_id: int
    job_uuid_upper: int
    job_uuid_lower: int
    state: int
    chunk_count: int
    chunks_succeeded: int
    chunks_failed: int
    first_chunk: int
    next_chunk: int
    past_retention: int = 0         # 1: only the job's history line is kept
    name: str
    submitted_at: float
    finished_at: float | None
    error: str
    chunks: list
    limits: dict = field(default_factory=dict)  # what each attempt may use, defaults filled in
    network: bool = False
    waiting: str = ""               # why its chunks cannot run now, or ""
    chunks_cached: int = 0          # of chunks_succeeded: results reused from the cache
    after: list = field(default_factory=list)   # the jobs it waits for (after= and refs)
    start_at: float | None = None
    deadline: float | None = None
    cache: bool = False

    def check(self) -> None:
        check_member(JobState, self.state, "job_status_reply.state")
        require(self.chunks_cached <= self.chunks_succeeded,
                f"job_status_reply: {self.chunks_cached} chunks cached of {self.chunks_succeeded} succeeded")
        require(self.past_retention in (0, 1),
                f"job_status_reply: past_retention {self.past_retention} is not 0 or 1")
        if self.past_retention:
            require(self.state in FINAL_JOB_STATES,
                    f"job_status_reply: a job past retention is final, not {JobState(self.state).name}")
            require(self.first_chunk == self.next_chunk == self.chunk_count,
                    f"job_status_reply: a job past retention has no chunk reports, but chunks "
                    f"{self.first_chunk}..{self.next_chunk} of {self.chunk_count} are offered")
        require(self.chunks_succeeded + self.chunks_failed <= self.chunk_count,
                "job_status_reply: more chunks finished than the job has")
        require(self.first_chunk <= self.next_chunk <= self.chunk_count,
                f"job_status_reply: chunks {self.first_chunk}..{self.next_chunk} "
                f"are not within the job's {self.chunk_count}")
        require(len(self.chunks) == self.next_chunk - self.first_chunk,
                f"job_status_reply: {len(self.chunks)} reports for chunks "
                f"{self.first_chunk}..{self.next_chunk}")
        for offset, report in enumerate(self.chunks):
            require(report["chunk"] == self.first_chunk + offset,
                    f"job_status_reply: chunks[{offset}] reports chunk {report['chunk']}, "
                    f"not {self.first_chunk + offset}")


@message("job_cancel")
class JobCancel(Message):
    request_id: int
    job_uuid_upper: int
    job_uuid_lower: int


@message("job_release")
class JobRelease(Message):
    request_id: int
    job_uuid_upper: int
    job_uuid_lower: int


@message("chunk_dispatch", body=dict(jobs=List(JOB_SPEC), attempts=List(DISPATCH_ATTEMPT)))
class ChunkDispatch(Message):
    epoch: int
    attempt_count: int
    jobs: list
    attempts: list

    def check(self) -> None:
        require(self.attempt_count == len(self.attempts),
                f"chunk_dispatch: attempt_count {self.attempt_count} != {len(self.attempts)} attempts")


@message("chunk_cancel", body=dict(attempts=List(Tuple((U32, U32)))))
class ChunkCancel(Message):
    epoch: int
    job_uuid_upper: int
    job_uuid_lower: int
    attempts: list


@message("chunk_events", body=dict(events=List(CHUNK_EVENT)))
class ChunkEvents(Message):
    epoch: int
    batch_id: int
    event_count: int
    events: list

    def check(self) -> None:
        require(self.event_count == len(self.events),
                f"chunk_events: event_count {self.event_count} != {len(self.events)} events")
        for index, event in enumerate(self.events):
            check_member(ChunkState, event["state"], f"chunk_events.events[{index}].state")

    @classmethod
    def carrying(cls, node: bytes, epoch: int, batch_id: int, events: Sequence[ChunkEvent]) -> "ChunkEvents":
        """One batch of `events`, all of which must fit one body."""
        return cls.make(node, epoch=epoch, batch_id=batch_id, event_count=len(events),
                        events=[event.as_body() for event in events])

    def chunk_events(self) -> list[ChunkEvent]:
        return [ChunkEvent.from_body(event) for event in self.events]


@message("chunk_events_ack")
class ChunkEventsAck(Message):
    epoch: int
    batch_id: int


@message("nodes_query")
class NodesQuery(Message):
    request_id: int


@message("nodes_reply", body=dict(nodes=List(NODE)))
class NodesReply(Message):
    request_id: int
    nodes: list

    def check(self) -> None:
        for index, node in enumerate(self.nodes):
            check_member(NodeRole, node["role"], f"nodes_reply.nodes[{index}].role")


@message("events_query", body=dict(job=Nullable(ID), node=Nullable(ID),
                                   kinds=List(Str(64), max_items=MAX_EVENT_KINDS), wait_ms=U32))
class EventsQuery(Message):
    request_id: int
    after_seq: int
    limit: int
    job: bytes | None = None        # only this job's events
    node: bytes | None = None       # only events naming this node
    kinds: list = field(default_factory=list)   # only these kinds ([]: all)
    wait_ms: int = 0                # none yet: hold the request until one commits, this long at most


@message("events_reply", body=dict(events=List(EVENT), through_seq=U64, gap_from=U64, gap_to=U64))
class EventsReply(Message):
    request_id: int
    last_seq: int
    events: list
    through_seq: int = 0            # the reply covers the log up to here: ask again after it
    gap_from: int = 0               # events gap_from..gap_to that might have matched were dropped (0: none)
    gap_to: int = 0

    def check(self) -> None:
        require(self.gap_from <= self.gap_to,
                f"events_reply: gap_from {self.gap_from} is after gap_to {self.gap_to}")
        require((self.gap_from == 0) == (self.gap_to == 0),
                f"events_reply: gap_from {self.gap_from} and gap_to {self.gap_to} must both be 0 or neither")


@message("attempts_query")
class AttemptsQuery(Message):
    request_id: int
    job_uuid_upper: int
    job_uuid_lower: int
    chunk: int


@message("attempts_reply", body=dict(attempts=List(ATTEMPT), attempts_dropped=U32))
class AttemptsReply(Message):
    request_id: int
    job_uuid_upper: int
    job_uuid_lower: int
    chunk: int
    attempts: list
    attempts_dropped: int = 0       # older attempts no longer kept


@message("jobs_query", body=dict(states=List(U8, max_items=16), since=Nullable(SECONDS),
                                 before=Nullable(Tuple((SECONDS, ID)))))
class JobsQuery(Message):
    request_id: int
    limit: int
    states: list = field(default_factory=list)  # wire.enums.JobState values ([]: any)
    since: float | None = None      # submitted at or after this
    before: list | None = None      # [submitted_at, job] of the last line of the previous page

    def check(self) -> None:
        for index, state in enumerate(self.states):
            check_member(JobState, state, f"jobs_query.states[{index}]")


@message("jobs_reply", body=dict(jobs=List(JOB_LINE), more=Bool()))
class JobsReply(Message):
    request_id: int
    jobs: list
    more: bool = False              # another page follows: ask with before = the last line's

    def check(self) -> None:
        for index, line in enumerate(self.jobs):
            check_member(JobState, line["state"], f"jobs_reply.jobs[{index}].state")


@message("job_spec_query")
class JobSpecQuery(Message):
    request_id: int
    job_uuid_upper: int
    job_uuid_lower: int


@message("job_spec_reply", body=dict(name=Str(255), program=FILE_REF, args=List(Str()), inputs=FILE_MAP,
                                     inputs_dropped=U32, after=List(ID)))
class JobSpecReply(Message):
    request_id: int
    job_uuid_upper: int
    job_uuid_lower: int
    name: str
    program: list
    args: list
    inputs: dict                    # job-wide, refs resolved (those not yet resolved are absent)
    inputs_dropped: int = 0         # inputs left out of a map too large for one body
    after: list = field(default_factory=list)   # the jobs it waits for: after= and its refs' jobs


@message("stats_query")
class StatsQuery(Message):
    request_id: int


@message("stats_reply", body=dict(role=U8, counters=Map(Str(128), I64)))
class StatsReply(Message):
    request_id: int
    role: int
    counters: dict

    def check(self) -> None:
        check_member(NodeRole, self.role, "stats_reply.role")


@message("status_ack", body=dict(attempts=List(Tuple((ID, U32, U32, U8)))))
class StatusAck(Message):
    epoch: int
    attempt_count: int
    attempts: list

    def check(self) -> None:
        require(self.attempt_count == len(self.attempts),
                f"status_ack: attempt_count {self.attempt_count} != {len(self.attempts)} attempts")
        for index, (_job, _chunk, _attempt, state) in enumerate(self.attempts):
            check_member(ChunkState, state, f"status_ack.attempts[{index}] state")


@message("node_report", body=dict(nodes=List(NODE)))
class NodeReport(Message):
    epoch: int
    nodes: list

    def check(self) -> None:
        for index, node in enumerate(self.nodes):
            check_member(NodeRole, node["role"], f"node_report.nodes[{index}].role")


# master_change.action
MASTER_ADD = 1
MASTER_REMOVE = 2
MASTER_ACTIONS = {MASTER_ADD: "add", MASTER_REMOVE: "remove"}
# host:port, or a tcp:// address; far longer than any real one.
MEMBER_ADDRESS = Str(1024)


@message("master_change", body=dict(raft=MEMBER_ADDRESS, address=MEMBER_ADDRESS))
class MasterChange(Message):
    request_id: int
    action: int
    raft: str
    address: str
    # The action and the addresses are the leader's to judge (ERR_INVALID):
    # an unknown action or a malformed address is content, not framing.


@message("master_change_reply", body=dict(members=List(MEMBER_ADDRESS)))
class MasterChangeReply(Message):
    request_id: int
    commit_index: int
    members: list
