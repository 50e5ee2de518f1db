"""Hypothesis strategies derived from the wire schemas, so that every message
type is covered the moment it is declared."""
from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from uds import wire
from uds.wire import ChunkState, ErrorCode, JobState, NodeRole, PutStatus
from uds.wire.enums import FINAL_JOB_STATES
from uds.wire._wire_cffi import ffi
from uds.wire.message_class import MAX_TIME_MS
from uds.wire.schema import (
    Bin, Bool, Choice, FileName, Float, Int, List, Map, Nullable, Record, RelPath, Str, Tuple,
)

# Small collections keep examples fast; the limits themselves are tested directly.
MAX_GENERATED_ITEMS = 3

_C_BITS = {"uint8_t": 8, "uint16_t": 16, "uint32_t": 32, "uint64_t": 64}

file_names = st.text(
    alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
    min_size=1, max_size=12,
).filter(lambda name: name not in (".", ".."))


def for_schema(schema: Any) -> st.SearchStrategy:
    if isinstance(schema, Int):
        return st.integers(schema.low, schema.high)
    if isinstance(schema, Float):
        return st.floats(schema.low, schema.high, allow_nan=False, allow_infinity=False)
    if isinstance(schema, Bool):
        return st.booleans()
    if isinstance(schema, FileName):
        return file_names
    if isinstance(schema, RelPath):
        return st.lists(file_names, min_size=1, max_size=3).map("/".join)
    if isinstance(schema, Choice):
        return st.sampled_from(schema.values)
    if isinstance(schema, Str):
        return st.text(max_size=min(16, schema.max_bytes // 4))
    if isinstance(schema, Bin):
        if schema.size is not None:
            return st.binary(min_size=schema.size, max_size=schema.size)
        return st.binary(max_size=min(32, schema.max_bytes))
    if isinstance(schema, Nullable):
        return st.none() | for_schema(schema.inner)
    if isinstance(schema, List):
        return st.lists(for_schema(schema.item), max_size=MAX_GENERATED_ITEMS)
    if isinstance(schema, Tuple):
        return st.tuples(*(for_schema(item) for item in schema.items)).map(list)
    if isinstance(schema, Map):
        return st.dictionaries(for_schema(schema.key), for_schema(schema.value),
                               max_size=MAX_GENERATED_ITEMS)
    if isinstance(schema, Record):
        return st.fixed_dictionaries({name: for_schema(item) for name, item in schema.fields})
    raise TypeError(f"no strategy for {schema!r}")


def _member(enum: type, value: int) -> int:
    members = list(enum)
    return int(members[value % len(members)])


def _satisfy_rules(cls: type, values: dict) -> dict:
    """Adjust generated values so that cls.check() holds: the rules that span
    fields are tested by their own unit tests."""
    name = cls.SPEC.name
    if name == "worker_request":
        values["program_length"] = values["program"][1]
        values["num_input_files"] = len(values["inputs"])
        if not values["assignments"]:
            values["assignments"] = [{"chunk": 0, "attempt": 0, "inputs": {}}]
        for assignment in values["assignments"]:
            assignment["chunk"] %= 1000
        highest = max(assignment["chunk"] for assignment in values["assignments"])
        values["chunk_count"] = max(values["chunk_count"], highest + 1)
    elif name == "worker_status":
        values["state"] = _member(ChunkState, values["state"])
    elif name == "file_response":
        values["file_length"] = len(values["data"])
    elif name == "file_read_reply":
        values["length"] = len(values["data"])
    elif name == "file_manifest_reply":
        values["hashes"] = values["hashes"][:len(values["hashes"]) // 32 * 32]
        values["block_count"] = len(values["hashes"]) // 32
        values["first_block"] %= 1 << 20
        blocks = values["first_block"] + values["block_count"]
        values["file_length"] = max(min(values["file_length"], blocks << 20), (blocks - 1 << 20) + 1, 0)
    elif name == "error":
        values["error_code"] = _member(ErrorCode, values["error_code"])
    elif name in ("hello", "stats_reply"):
        values["role"] = _member(NodeRole, values["role"])
        if name == "hello":
            values["start_time_ms"] %= MAX_TIME_MS + 1
    elif name == "heartbeat":
        values["running_count"] = len(values["running"])
    elif name in ("storage_heartbeat", "file_replicate"):
        field = "address" if name == "storage_heartbeat" else "source"
        values[field] = "tcp://" + values[field][:1000]
    elif name in ("gc_run", "gc_run_reply"):
        values["dry_run"] %= 2
    elif name == "file_pin":
        values["until_ms"] %= MAX_TIME_MS + 1
    elif name == "job_submit":
        values["chunk_count"] = max(1, values["chunk_count"])
        if values["chunk_inputs"]:
            values["chunk_count"] = len(values["chunk_inputs"])
        values["timeout_s"] = max(values["timeout_s"], 0.5)
        for ref in values["refs"]:
            ref["chunk"] = min(ref["chunk"], values["chunk_count"] - 1)
    elif name == "job_submit_reply":
        values["created"] %= 2
    elif name == "job_status":
        values["detail"] %= 2
    elif name == "file_stat_reply":
        values["present"] %= 2
    elif name == "job_status_reply":
        values["state"] = _member(JobState, values["state"])
        values["past_retention"] %= 2
        if values["past_retention"]:
            # Answered from a history line: a final job, no chunk reports.
            final = sorted(FINAL_JOB_STATES)
            values["state"] = int(final[values["state"] % len(final)])
            values["chunks"] = []
            values["first_chunk"] = values["chunk_count"]
        values["chunks_succeeded"] = min(values["chunks_succeeded"], values["chunk_count"])
        values["chunks_failed"] = min(values["chunks_failed"],
                                      values["chunk_count"] - values["chunks_succeeded"])
        values["chunks_cached"] = min(values["chunks_cached"], values["chunks_succeeded"])
        # The reports cover a run of consecutive chunks within the job.
        chunk_count = max(values["chunk_count"], len(values["chunks"]))
        values["chunk_count"] = chunk_count
        first = min(values["first_chunk"], chunk_count - len(values["chunks"]))
        values["first_chunk"], values["next_chunk"] = first, first + len(values["chunks"])
        for offset, report in enumerate(values["chunks"]):
            report["chunk"] = first + offset
    elif name == "chunk_dispatch":
        values["attempt_count"] = len(values["attempts"])
    elif name == "chunk_events":
        values["event_count"] = len(values["events"])
        for event in values["events"]:
            event["state"] = _member(ChunkState, event["state"])
    elif name == "file_put_reply":
        values["status"] = _member(PutStatus, values["status"])
    elif name == "status_ack":
        values["attempt_count"] = len(values["attempts"])
        for entry in values["attempts"]:
            entry[3] = _member(ChunkState, entry[3])
    elif name in ("nodes_reply", "node_report"):
        for node in values["nodes"]:
            node["role"] = _member(NodeRole, node["role"])
    elif name == "events_reply":
        low, high = sorted((values["gap_from"], values["gap_to"]))
        values["gap_from"], values["gap_to"] = (low, high) if low else (0, 0)
    elif name == "jobs_query":
        values["states"] = [_member(JobState, state) for state in values["states"]]
    elif name == "jobs_reply":
        for line in values["jobs"]:
            line["state"] = _member(JobState, line["state"])
    return values


def messages_of(cls: type) -> st.SearchStrategy:
    spec = cls.SPEC
    parts: dict[str, st.SearchStrategy] = {
        "node_uuid_upper": st.integers(0, 2**64 - 1),
        "node_uuid_lower": st.integers(0, 2**64 - 1),
    }
    c_fields = dict(ffi.typeof(f"struct {spec.name}").fields)
    for name in spec.struct_fields:
        bits = _C_BITS[c_fields[name].type.cname]
        parts[name] = st.integers(0, 2**bits - 1)
    for name, schema in spec.body:
        parts[name] = for_schema(schema)
    for name in spec.data:
        parts[name] = st.binary(max_size=256)
    return st.fixed_dictionaries(parts).map(lambda values: cls(**_satisfy_rules(cls, values)))


any_message = st.sampled_from(sorted(wire.REGISTRY.values(), key=lambda c: c.message_type)).flatmap(messages_of)
