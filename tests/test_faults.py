"""Daemons and programs that die, hang or get killed: the work still finishes,
exactly once, and nothing is left running."""
import os
import pathlib
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from uds.client import api as client_api
from uds.client import leader as client_leader
from uds import wire

from daemons import wait_until

WAIT_S = 45.0


def _wait_until(predicate, timeout=WAIT_S, what="condition"):
    return wait_until(predicate, what, timeout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is as good as dead
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _events_of(connection, job_id, kind):
    return connection.events(job=job_id, kinds=[kind], limit=10_000).events


def test_worker_killed_mid_chunk_completes_elsewhere_exactly_once(cluster):
    connection = cluster.connection
    program = b"#!/bin/sh\nsleep 1.5\necho finished > $UDS_OUTPUT/result\n"
    job = connection.submit_job(program, timeout=60)
    running = _wait_until(lambda: next((c for c in job.status().chunks if c.state == "running"), None),
                          what="chunk running")
    victim = cluster.worker_by_node(running.worker)
    cluster.daemons[victim].kill9()
    status = job.wait(timeout=WAIT_S)
    assert status.state == "succeeded", status
    chunk = status.chunks[0]
    assert chunk.attempt >= 2
    assert chunk.worker != running.worker
    assert connection.get(chunk.outputs["result"]) == b"finished\n"
    assert len(_events_of(connection, job.id, "chunk_succeeded")) == 1
    assert len(_events_of(connection, job.id, "chunk_lost")) >= 1


def _pid_program(mark: str) -> bytes:
    # The program and a child that ignores SIGTERM each run a sleep of a
    # length no other process has. (Chunks run in a box of their own, with
    # pids of their own: the test finds them by that mark instead.)
    return (b"#!/bin/sh\n"
            b"(trap '' TERM; exec sleep " + mark.encode() + b") &\n"
            b"sleep " + mark.encode() + b"\n")


def _unique_mark() -> str:
    return f"120.{time.time_ns() % 10**9:09d}"


def _pids(mark: str):
    """The host pids of both marked sleeps, once both run."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark.encode() in (entry / "cmdline").read_bytes().split(b"\0") and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found if len(found) == 2 else None


def test_cancel_kills_the_whole_process_group(shared_cluster, tmp_path):
    mark = _unique_mark()
    job = shared_cluster.connection.submit_job(_pid_program(mark), timeout=300)
    pids = _wait_until(lambda: _pids(mark), what="program started")
    assert all(_alive(pid) for pid in pids)
    status = job.cancel()
    assert status.state == "cancelled"
    _wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=15, what="processes gone")
    final = job.wait(timeout=WAIT_S)
    assert final.state == "cancelled"
    assert final.chunks[0].state == "cancelled"


def test_timeout_kills_the_whole_process_group(shared_cluster, tmp_path):
    mark = _unique_mark()
    job = shared_cluster.connection.submit_job(_pid_program(mark), timeout=1.0)
    pids = _wait_until(lambda: _pids(mark), what="program started")
    status = job.wait(timeout=WAIT_S)
    assert status.state == "failed"
    assert "timed out" in status.chunks[0].result.error
    _wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=15, what="processes gone")


def test_master_killed_and_restarted_keeps_every_job(cluster):
    connection = cluster.connection
    done = connection.submit_job(b"#!/bin/sh\necho before\n")
    assert done.wait(timeout=WAIT_S).state == "succeeded"
    running = connection.submit_job(b"#!/bin/sh\nsleep 1\necho during $UDS_CHUNK\n", chunks=3, timeout=60)
    cluster.restart("master", kill=True)
    status = running.wait(timeout=WAIT_S)
    assert status.state == "succeeded", status
    assert sorted(connection.get(chunk.stdout) for chunk in status.chunks) == [
        b"during 0\n", b"during 1\n", b"during 2\n"]
    assert done.status().state == "succeeded"
    assert connection.get(done.result()[0].stdout) == b"before\n"
    for chunk in range(3):
        succeeded = [event for event in _events_of(connection, running.id, "chunk_succeeded")
                     if event.chunk == chunk]
        assert len(succeeded) == 1
    # And new work is accepted and run after the restart.
    assert connection.submit_job(b"#!/bin/sh\ntrue\n").wait(timeout=WAIT_S).state == "succeeded"


def test_storage_killed_and_restarted_keeps_every_blob(cluster):
    connection = cluster.connection
    blobs = [os.urandom(size) for size in (0, 1, 100_000, 3_000_000)]
    ids = [connection.put(blob) for blob in blobs]
    cluster.restart("storage", kill=True)
    assert [connection.get(file_id) for file_id in ids] == blobs
    job = connection.submit_job(b"#!/bin/sh\nwc -c < $UDS_INPUTS/data\n", inputs={"data": ids[3]})
    status = job.wait(timeout=WAIT_S)
    assert status.state == "succeeded"
    assert connection.get(status.chunks[0].stdout).strip() == b"3000000"


def test_loadbalancer_killed_mid_job_and_restarted(cluster):
    connection = cluster.connection
    job = connection.submit_job(b"#!/bin/sh\nsleep 1\necho $UDS_CHUNK\n", chunks=4, timeout=60)
    _wait_until(lambda: any(c.state == "running" for c in job.status().chunks), what="chunk running")
    cluster.restart("loadbalancer", kill=True)
    status = job.wait(timeout=WAIT_S)
    assert status.state == "succeeded", status
    assert sorted(connection.get(chunk.stdout) for chunk in status.chunks) == [b"0\n", b"1\n", b"2\n", b"3\n"]
    for chunk in range(4):
        succeeded = [event for event in _events_of(connection, job.id, "chunk_succeeded")
                     if event.chunk == chunk]
        assert len(succeeded) == 1


def test_restarted_worker_kills_what_its_dead_predecessor_left_running(cluster, tmp_path):
    mark = _unique_mark()
    job = cluster.connection.submit_job(_pid_program(mark), timeout=300)
    pids = _wait_until(lambda: _pids(mark), what="program started")
    running = _wait_until(lambda: next((c for c in job.status().chunks if c.state == "running"), None),
                          what="chunk running")
    victim = cluster.worker_by_node(running.worker)
    cluster.daemons[victim].kill9()
    # The box dies with its worker (bubblewrap's --die-with-parent), and the
    # restart ends whatever its attempt cgroups still hold.
    cluster.restart(victim)
    _wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=15, what="orphans gone")
    job.cancel()


def test_result_of_a_worker_presumed_lost_is_ignored_and_logged(cluster):
    connection = cluster.connection
    job = connection.submit_job(b"#!/bin/sh\nsleep 1\necho $UDS_ATTEMPT\n", timeout=60)
    running = _wait_until(lambda: next((c for c in job.status().chunks if c.state == "running"), None),
                          what="chunk running")
    frozen = cluster.daemons[cluster.worker_by_node(running.worker)]
    os.kill(frozen.pid, signal.SIGSTOP)  # silent past its lease, but its chunk runs on
    try:
        status = job.wait(timeout=WAIT_S)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert status.state == "succeeded" and status.chunks[0].attempt >= 2
    assert connection.get(status.chunks[0].stdout) == f"{status.chunks[0].attempt}\n".encode()
    # The thawed worker reports attempt 1; the masters fence it off. (The
    # balancer's LOST of attempt 1 may be stale too: NodeLost lost it first.)
    _wait_until(lambda: "ignored SUCCEEDED event" in cluster.daemons["master"].log(), what="stale result")
    assert connection.master_stats().get("chunk_events_stale", 0) >= 1
    final = job.status()
    assert final.chunks[0].attempt == status.chunks[0].attempt
    assert len(_events_of(connection, job.id, "chunk_succeeded")) == 1


def test_a_stopped_worker_leaves_no_program_running(cluster, tmp_path):
    mark = _unique_mark()
    job = cluster.connection.submit_job(_pid_program(mark), timeout=300)
    pids = _wait_until(lambda: _pids(mark), what="program started")
    running = _wait_until(lambda: next((c for c in job.status().chunks if c.state == "running"), None),
                          what="chunk running")
    worker = cluster.daemons[cluster.worker_by_node(running.worker)]
    assert worker.stop(timeout=20) == 0   # SIGTERM: a clean shutdown
    assert not any(_alive(pid) for pid in pids)
    job.cancel()


def test_a_submission_resent_while_the_master_is_frozen_runs_once(cluster, tmp_path, monkeypatch):
    """The client resends a request that is not answered in RESEND_AFTER_S;
    the frozen master later reads both copies, and the job is still
    submitted and run exactly once."""
    connection = cluster.connection
    submits = []
    real_send = client_leader.send_message

    def counting_send(socket, frames, **options):
        if isinstance(wire.decode([bytes(frame) for frame in frames]), wire.JobSubmit):
            submits.append(time.monotonic())
        return real_send(socket, frames, **options)

    monkeypatch.setattr(client_leader, "send_message", counting_send)
    program = b'#!/bin/sh\necho "$UDS_ATTEMPT"\n'
    master = cluster.daemons["master"]
    pool = ThreadPoolExecutor(max_workers=1)
    os.kill(master.pid, signal.SIGSTOP)
    try:
        submitted = pool.submit(connection.submit_job, program, timeout=60)
        _wait_until(lambda: len(submits) >= 2, timeout=client_api.RESEND_AFTER_S + 10, what="resend")
    finally:
        os.kill(master.pid, signal.SIGCONT)
    job = submitted.result(timeout=WAIT_S)
    pool.shutdown()
    assert submits[1] - submits[0] >= client_api.RESEND_AFTER_S * 0.9
    status = job.wait(timeout=WAIT_S)
    assert status.state == "succeeded", status
    assert connection.get(status.chunks[0].stdout) == b"1\n"
    assert len(_events_of(connection, job.id, "job_submitted")) == 1
    assert len(_events_of(connection, job.id, "chunk_succeeded")) == 1
