"""The history checker finds each kind of violation in a hand-made history,
and none in a clean one."""
import hashlib
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from history import PROOF_PROGRAM, History, Observation, check, proof_line

JOB = "ab" * 16
OTHER = "cd" * 16
INPUTS = (b"first input", b"second input")


class Status:
    """What a client's JobStatus offers the history."""

    def __init__(self, state, succeeded=0, failed=0, chunks=()):
        self.id, self.state, self.succeeded, self.failed = JOB, state, succeeded, failed
        self.chunks = [type("Chunk", (), {"chunk": index, "state": chunk_state})
                       for index, chunk_state in chunks]


def _clean() -> tuple[History, list[dict]]:
    history = History()
    history.acknowledged("c0", JOB, INPUTS)
    history.observed("c0", Status("queued", chunks=[(0, "queued"), (1, "queued")]))
    history.observed("c0", Status("running", 1, chunks=[(0, "succeeded"), (1, "running")]))
    history.observed("c0", Status("succeeded", 2, chunks=[(0, "succeeded"), (1, "succeeded")]))
    for chunk, data in enumerate(INPUTS):
        history.committed_output(JOB, chunk, proof_line(JOB, chunk, data))
    events = [{"seq": 1, "kind": "job_submitted", "job": bytes.fromhex(JOB), "chunk": None},
              {"seq": 2, "kind": "chunk_succeeded", "job": bytes.fromhex(JOB), "chunk": 0},
              {"seq": 3, "kind": "chunk_succeeded", "job": bytes.fromhex(JOB), "chunk": 1}]
    return history, events


def _kinds(history, events):
    return sorted({violation.kind for violation in check(history, events)})


def test_a_clean_history_passes():
    assert check(*_clean()) == []


def test_an_acknowledged_job_that_did_not_succeed_is_lost():
    history, events = _clean()
    history.acknowledged("c1", OTHER, INPUTS)
    history.observations.append(Observation("c1", OTHER, 1e12, "failed", 0, 2))
    for chunk, data in enumerate(INPUTS):
        history.committed_output(OTHER, chunk, proof_line(OTHER, chunk, data))
    assert _kinds(history, events) == ["lost"]


def test_an_acknowledged_job_never_seen_is_lost():
    history, events = _clean()
    history.acknowledged("c1", OTHER, ())
    assert _kinds(history, events) == ["lost"]


@pytest.mark.parametrize("content", [proof_line(JOB, 0, INPUTS[0]),        # another chunk's proof
                                     proof_line(OTHER, 1, INPUTS[1]),      # another job's proof
                                     proof_line(JOB, 1, b"another input"),  # another input's proof
                                     b""])
def test_a_wrong_committed_output_is_found(content):
    history, events = _clean()
    history.committed_output(JOB, 1, content)
    assert _kinds(history, events) == ["wrong-output"]


def test_a_missing_committed_output_is_found():
    history, events = _clean()
    del history.outputs[(JOB, 1)]
    assert _kinds(history, events) == ["wrong-output"]


def test_a_chunk_committed_twice_is_found():
    history, events = _clean()
    events.append({"seq": 4, "kind": "chunk_succeeded", "job": bytes.fromhex(JOB), "chunk": 1})
    violations = check(history, events)
    assert [violation.kind for violation in violations] == ["double-commit"]
    assert "chunk 1 committed 2 times" in violations[0].detail


@pytest.mark.parametrize("seqs", [(1, 3, 4), (1, 2, 2), (1, 3, 2)])
def test_an_event_log_with_a_hole_or_going_back_is_found(seqs):
    history, events = _clean()
    for event, seq in zip(events, seqs):
        event["seq"] = seq
    assert _kinds(history, events) == ["event-gap"]


@pytest.mark.parametrize("later", [Status("running", 2, chunks=[(0, "succeeded"), (1, "succeeded")]),
                                   Status("succeeded", 1, chunks=[(0, "succeeded"), (1, "succeeded")]),
                                   Status("succeeded", 2, chunks=[(0, "succeeded"), (1, "queued")])])
def test_a_state_going_backwards_is_found(later):
    history, events = _clean()
    history.observed("c0", later)
    assert "backwards" in _kinds(history, events)


def test_two_clients_are_judged_apart():
    """A slower client may see an older state than another client saw."""
    history, events = _clean()
    history.observed("c1", Status("running", 1, chunks=[(0, "succeeded"), (1, "running")]))
    history.observed("c1", Status("succeeded", 2, chunks=[(0, "succeeded"), (1, "succeeded")]))
    assert check(history, events) == []


@settings(max_examples=8, deadline=None)
@given(job=st.text("0123456789abcdef", min_size=32, max_size=32), chunk=st.integers(0, 1000),
       data=st.binary(max_size=2000))
def test_the_proof_program_writes_the_proof_line(tmp_path_factory, job, chunk, data):
    folder = tmp_path_factory.mktemp("proof")
    (folder / "inputs").mkdir()
    (folder / "output").mkdir()
    (folder / "inputs" / "data").write_bytes(data)
    program = folder / "program"
    program.write_bytes(PROOF_PROGRAM)
    program.chmod(0o755)
    subprocess.run([str(program)], check=True, env={
        "PATH": "/usr/bin:/bin", "UDS_JOB": job, "UDS_CHUNK": str(chunk),
        "UDS_INPUTS": str(folder / "inputs"), "UDS_OUTPUT": str(folder / "output")})
    assert (folder / "output" / "proof").read_bytes() == proof_line(job, chunk, data)
    assert hashlib.sha256(data).hexdigest() in proof_line(job, chunk, data).decode()
