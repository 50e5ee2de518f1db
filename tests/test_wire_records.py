"""wire/records.py: the chunk result and the chunk event, through the messages
that carry them (also as a worker builds its status), and the check a
committed result gets."""
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uds import wire
from strategies import for_schema, messages_of
from uds.wire import ChunkState, WireError
from uds.wire.records import CHUNK_EVENT, NO_RESULT, RESULT, ChunkEvent, ChunkResult
from uds.wire.resources import Usage
from uds.worker.attempts import AttemptKey, Report
from uds.worker.messages import status_message

NODE = bytes(range(16))
JOB = b"J" * 16
OUT = (b"o" * 16, 5)
LOG = (b"l" * 16, 7)

results = for_schema(RESULT).map(ChunkResult.from_body)
events = for_schema(CHUNK_EVENT).map(lambda body: ChunkEvent.from_body(
    {**body, "state": int(ChunkState.SUCCEEDED)}))


def roundtrip(message: wire.Message) -> wire.Message:
    return wire.decode(wire.encode(message))


@settings(max_examples=100, deadline=None)
@given(events, st.integers(1, 2**64 - 1))
def test_a_worker_status_carries_its_chunk_event_from_its_sender(event, epoch):
    event = replace(event, worker=NODE)       # keeps the sending process's start
    message = roundtrip(wire.WorkerStatus.reporting(event, epoch))
    assert (message.node_uuid, message.epoch) == (NODE, epoch)
    assert message.chunk_event() == event


@settings(max_examples=100, deadline=None)
@given(st.lists(events, max_size=3))
def test_chunk_events_carry_their_records(records):
    message = roundtrip(wire.ChunkEvents.carrying(NODE, 3, 9, records))
    assert (message.epoch, message.batch_id, message.event_count) == (3, 9, len(records))
    assert message.chunk_events() == records


@settings(max_examples=50, deadline=None)
@given(messages_of(wire.ChunkEvents))
def test_decoded_events_are_sent_on_unchanged(message):
    decoded = roundtrip(message)
    again = wire.ChunkEvents.carrying(decoded.node_uuid, decoded.epoch, decoded.batch_id,
                                      decoded.chunk_events())
    assert roundtrip(again) == decoded


def test_a_result_keeps_file_references_as_tuples():
    body = dict(exit_code=0, outputs={"a/b": list(OUT)}, stdout=list(LOG), stderr=None, error="",
                elapsed_s=2, bytes_from_cache=1, bytes_from_storage=2, cpu_user_s=0.5, cpu_system_s=0,
                peak_memory_bytes=3, output_bytes=4)
    result = ChunkResult.from_body(body)
    assert result == ChunkResult(exit_code=0, outputs={"a/b": OUT}, stdout=LOG, elapsed_s=2,
                                 bytes_from_cache=1, bytes_from_storage=2, cpu_user_s=0.5,
                                 peak_memory_bytes=3, output_bytes=4)
    assert result.checked().elapsed_s == 2.0 and type(result.checked().elapsed_s) is float
    assert ChunkResult.from_body(result.as_body()) == result


@pytest.mark.parametrize("result, problem", [
    (ChunkResult(outputs={"../x": OUT}), "result.outputs"),
    (ChunkResult(outputs={"x": ("no", 1)}), "result.outputs['x'][0]: expected bytes"),
    (ChunkResult(stdout=(b"short", 1)), "result.stdout[0]: 5 bytes"),
    (ChunkResult(exit_code=True), "result.exit_code: expected integer"),
    (ChunkResult(exit_code=2**63), "result.exit_code"),
    (ChunkResult(error=None), "result.error: expected string"),
    (ChunkResult(elapsed_s=-1.0), "result.elapsed_s"),
    (ChunkResult(bytes_from_cache=-1), "result.bytes_from_cache"),
    (ChunkResult(bytes_from_storage=1.5), "result.bytes_from_storage"),
    (ChunkResult(cpu_user_s=-0.5), "result.cpu_user_s"),
    (ChunkResult(cpu_system_s=float("nan")), "result.cpu_system_s"),
    (ChunkResult(peak_memory_bytes=-1), "result.peak_memory_bytes"),
    (ChunkResult(output_bytes=2**64), "result.output_bytes"),
])
def test_checked_names_the_field_that_breaks_the_schema(result, problem):
    with pytest.raises(WireError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        result.checked()


anything = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**65), st.floats(), st.text(max_size=3),
                     st.binary(max_size=17), st.lists(st.integers(), max_size=2),
                     st.dictionaries(st.text(max_size=2), st.tuples(st.binary(max_size=16), st.integers())))


@settings(max_examples=300, deadline=None)
@given(st.builds(ChunkResult, *[anything] * 12))
def test_checked_raises_only_wire_errors(result):
    try:
        checked = result.checked()
    except WireError:
        return
    assert checked.checked() == checked


@pytest.mark.parametrize("result, state, text", [
    (ChunkResult(error="disk full", exit_code=1), ChunkState.FAILED, "disk full"),
    (ChunkResult(), ChunkState.TIMED_OUT, "timed out"),
    (ChunkResult(exit_code=3), ChunkState.FAILED, "exit code 3"),
    (NO_RESULT, ChunkState.FAILED, "failed"),
])
def test_failure_text(result, state, text):
    assert result.failure_text(state) == text


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 4e9))
def test_a_worker_names_its_process_in_a_status_as_the_masters_record_it(clock_s):
    # The masters fence a STARTED by comparing this with the node record's
    # started_at, which the balancer makes of the hello's start_time_ms:
    # the two must be equal to the bit, however the clock read.
    start_time_ms = int(clock_s * 1000)
    hello = roundtrip(wire.Hello.make(NODE, request_id=1, role=int(wire.NodeRole.WORKER), slots=1,
                                      cache_bytes=0, start_time_ms=start_time_ms, host="", address="",
                                      version=1))
    report = Report(AttemptKey(JOB, 0, 1), ChunkState.STARTED, 3, NO_RESULT)
    event = roundtrip(status_message(NODE, start_time_ms, report)).chunk_event()
    assert event.worker_started_at == hello.start_time_ms / 1000.0


def test_a_result_gives_its_usage_with_elapsed_as_wall_time():
    result = ChunkResult(elapsed_s=3.0, bytes_from_cache=1, bytes_from_storage=2, cpu_user_s=0.5,
                         cpu_system_s=0.25, peak_memory_bytes=1 << 20, output_bytes=7)
    assert result.usage == Usage(cpu_user_s=0.5, cpu_system_s=0.25, peak_memory_bytes=1 << 20,
                                 bytes_from_cache=1, bytes_from_storage=2, output_bytes=7, wall_s=3.0)


# ---- limits and what a worker offers ---------------------------------------

def test_limits_travel_as_a_map_of_what_was_asked_and_nothing_else():
    from uds.loadbalancer.events import JobSpec, WorkerHello
    from uds.wire.capacity import Capacity
    from uds.wire.resources import ResourceLimits
    limits = ResourceLimits(memory_bytes=512 << 20, millicpus=1500, cpu_time_s=600)
    spec = JobSpec(JOB, OUT, ("-v",), {"in": LOG}, 3, 60.0, limits, True)
    dispatch = wire.ChunkDispatch.make(NODE, epoch=1, attempt_count=1, jobs=[spec.to_record()],
                                       attempts=[{"job": JOB, "chunk": 0, "attempt": 1, "inputs": {}}])
    decoded = wire.decode(wire.encode(dispatch))
    assert decoded.jobs[0]["limits"] == {"memory_bytes": 512 << 20, "millicpus": 1500, "cpu_time_s": 600}
    assert JobSpec.from_record(decoded.jobs[0]) == spec
    request = wire.decode(wire.encode(wire.WorkerRequest.make(
        NODE, epoch=1, assignments=[{"chunk": 0, "attempt": 1, "inputs": {}}], **spec.request_fields())))
    from uds.worker.messages import event_of
    assigned = event_of(request)
    assert (assigned.job.limits, assigned.job.network) == (limits, True)
    for bad in ({"swap_bytes": 1}, {"memory_bytes": -1}, {"memory_bytes": 2**63}, {"pids": "1"}):
        with pytest.raises(WireError, match="limits"):
            wire.encode(replace(dispatch, jobs=[{**spec.to_record(), "limits": bad}]))
    hello = wire.decode(wire.encode(wire.Hello.make(
        NODE, request_id=1, role=int(wire.NodeRole.WORKER), slots=2, cache_bytes=1, start_time_ms=5, host="h",
        address="", version=1, millicpus=4000, memory_bytes=8 << 30, disk_bytes=1 << 40, sandbox="bubblewrap")))
    worker = WorkerHello.of_message(hello)
    assert (worker.capacity, worker.sandbox) == (Capacity(4000, 8 << 30, 1 << 40), "bubblewrap")
