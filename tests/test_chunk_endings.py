"""How a chunk attempt ends on a real phase-1 cluster, for the endings that
only a running system shows: a failure that a retry mends, logs over the
stored cap and over the kill limit, and a program that no worker can fetch."""
import time

from uds.worker.exit_reports import LOG_KILL_BYTES
from uds.worker.runner import LOG_CAP_BYTES

WAIT_S = 60.0


def _events_of(connection, job_id: str, kind: str) -> list:
    return connection.events(job=job_id, kinds=[kind], limit=10_000).events


def _dropped_note(extra_bytes: int) -> bytes:
    return f"\n[uds: {extra_bytes} more bytes dropped]\n".encode()


def test_a_chunk_that_fails_then_succeeds_on_its_retry(shared_cluster, tmp_path):
    connection = shared_cluster.connection
    # Fails on its first attempt, succeeds on the next. (A chunk cannot leave
    # a marker outside its own folders: its attempt number tells it instead.)
    program = (b'#!/bin/sh\nif [ "$UDS_ATTEMPT" -ge 2 ]; then echo "attempt $UDS_ATTEMPT ran"; exit 0; fi\n'
               b'echo "first attempt" >&2\nexit 3\n')
    job = connection.submit_job(program, max_retries=1, timeout=WAIT_S)
    status = job.wait(timeout=WAIT_S)
    assert status.state == "succeeded", status
    [chunk] = status.chunks
    assert (chunk.state, chunk.attempt, chunk.result.exit_code, chunk.result.error) == ("succeeded", 2, 0, "")
    assert connection.get(chunk.stdout) == b"attempt 2 ran\n"
    assert [(e.attempt, e.detail) for e in _events_of(connection, job.id, "chunk_retried")] == [
        (1, "exit code 3; retry 1 of 1")]
    assert [e.attempt for e in _events_of(connection, job.id, "chunk_succeeded")] == [2]


def test_a_log_over_the_cap_is_stored_cut_at_the_cap(shared_cluster):
    connection = shared_cluster.connection
    extra = 1000
    program = (f"#!/bin/sh\nhead -c {LOG_CAP_BYTES + extra} /dev/zero\n"
               f"echo small >&2\n").encode()
    status = connection.submit_job(program, timeout=WAIT_S).wait(timeout=WAIT_S)
    assert status.state == "succeeded", status
    [chunk] = status.chunks
    assert connection.get(chunk.stdout) == bytes(LOG_CAP_BYTES) + _dropped_note(extra)
    assert connection.get(chunk.stderr) == b"small\n"


def test_a_program_writing_past_the_kill_limit_is_stopped(shared_cluster):
    connection = shared_cluster.connection
    # Writes without end: only the log limit can stop it before its timeout.
    status = connection.submit_job(b"#!/bin/sh\nexec cat /dev/zero\n", timeout=WAIT_S).wait(timeout=WAIT_S)
    assert status.state == "failed", status
    [chunk] = status.chunks
    reason = f"stopped: stdout or stderr passed {LOG_KILL_BYTES} bytes"
    assert (chunk.state, chunk.result.error) == ("failed", reason)
    assert status.error == f"chunk 0: {reason}"
    stdout = connection.get(chunk.stdout)
    # What was stored is the cap, whatever the program wrote before it died.
    assert stdout[:LOG_CAP_BYTES] == bytes(LOG_CAP_BYTES)
    assert stdout[LOG_CAP_BYTES:].startswith(b"\n[uds: ") and stdout.endswith(b" more bytes dropped]\n")
    dropped = int(stdout[LOG_CAP_BYTES:].split()[1])
    assert LOG_CAP_BYTES + dropped > LOG_KILL_BYTES


def test_a_program_no_worker_can_fetch_is_retried_as_infrastructure_until_its_deadline(shared_cluster, monkeypatch):
    connection = shared_cluster.connection
    missing = (bytes.fromhex("5a" * 16), 64)   # an id that storage has never held
    resolve = connection._resolve
    monkeypatch.setattr(connection, "_resolve",
                        lambda value, what: missing if what == "program" else resolve(value, what))
    # Not the program's fault: the refusals back off (0.5 s, 1 s, 2 s, ...), use
    # no retry and never poison the chunk; only its deadline ends it.
    status = connection.submit_job(b"never stored", timeout=WAIT_S,
                                   deadline=time.time() + 4.0).wait(timeout=WAIT_S)
    assert (status.state, status.error) == ("failed", "deadline exceeded"), status
    [chunk] = status.chunks
    assert chunk.state == "cancelled" and chunk.attempt >= 3, chunk
    assert chunk.failures == ("infrastructure",) * (chunk.attempt - 1), chunk
    # Each worker said why it refused: the rejections are in the event log.
    rejections = _events_of(connection, status.id, "chunk_lost")
    assert [event.attempt for event in rejections] == list(range(1, chunk.attempt))
    for event in rejections:
        assert event.detail.startswith("rejected: cannot fetch the program"), event
        assert "infrastructure, next attempt in" in event.detail, event
    assert not _events_of(connection, status.id, "chunk_failed")