"""Long lists are cut so that every message a daemon builds fits one body."""
import os

from uds import wire
from uds.master.links import ATTEMPTS_PER_MESSAGE, dispatch_messages
from uds.wire.ids import new_id
from uds.wire.limits import MAX_BODY_BYTES
from uds.worker.exit_reports import MAX_OUTPUT_FILES, outputs_refusal

NODE = bytes(16)


def _spec(job, inputs=None):
    return dict(job=job, program=[new_id(), 10], args=[], inputs=inputs or {}, chunk_count=100_000,
                timeout_s=60.0, limits={"memory_bytes": 1 << 30}, network=False)


def _attempt(job, chunk, inputs=None):
    return dict(job=job, chunk=chunk, attempt=1, inputs=inputs or {})


def _fits(message):
    frames = wire.encode(message)
    assert len(frames[1]) <= MAX_BODY_BYTES
    return wire.decode(frames)


def test_dispatch_is_cut_by_count_and_every_job_spec_rides_along():
    jobs = [new_id(), new_id()]
    attempts = [_attempt(jobs[chunk % 2], chunk) for chunk in range(2 * ATTEMPTS_PER_MESSAGE + 1)]
    messages = list(dispatch_messages(NODE, 1, [_spec(job) for job in jobs], attempts))
    assert [m.attempt_count for m in messages] == [ATTEMPTS_PER_MESSAGE, ATTEMPTS_PER_MESSAGE, 1]
    assert [a for m in messages for a in m.attempts] == attempts
    for message in messages:
        decoded = _fits(message)
        assert {spec["job"] for spec in decoded.jobs} == {a["job"] for a in decoded.attempts}


def test_dispatch_is_cut_by_bytes_when_chunk_inputs_are_large():
    job = new_id()
    # About 1.3 MiB of inputs per chunk: a handful fill a body.
    big_inputs = {f"input-{index:05d}-{'n' * 200}": [new_id(), 1] for index in range(5000)}
    attempts = [_attempt(job, chunk, big_inputs) for chunk in range(20)]
    messages = list(dispatch_messages(NODE, 1, [_spec(job, {"shared": [new_id(), 5]})], attempts))
    assert len(messages) > 1
    assert [a["chunk"] for m in messages for a in m.attempts] == list(range(20))
    for message in messages:
        assert [spec["job"] for spec in _fits(message).jobs] == [job]


def test_outputs_refusal_names_what_is_wrong():
    assert outputs_refusal(["a/b", "c"]) is None
    many = [str(index) for index in range(MAX_OUTPUT_FILES + 1)]
    assert f"left {MAX_OUTPUT_FILES + 1} files" in outputs_refusal(many)
    assert "not a usable name" in outputs_refusal([os.fsdecode(b"caf\xe9")])
    assert "not a usable name" in outputs_refusal(["x" * 300])
    long_paths = ["/".join(["d" * 250] * 16) + f"/{index}" for index in range(MAX_OUTPUT_FILES)]
    assert "take" in outputs_refusal(long_paths)
