"""Workflows on a real cluster: jobs that read other jobs' outputs, held and
deferred starts, deadlines, retry classes and the result cache.

Every test here shares one cluster (`shared_cluster`): none stops a daemon,
and each proves what ran from what its own jobs' chunks left (their outputs,
stdout, the event log's entries for its job ids), so they cannot disturb one
another. Tests that break daemons are in tests/test_workflow_faults.py.
"""
from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import time

import pytest

from uds.errors import ClientError

from daemons import wait_until

WAIT_S = 45.0

# Stage 1 of the pipeline: the words of $UDS_INPUTS/text, lowercased, one a line.
SPLIT = b'''#!/usr/bin/env python3
import os, re
with open(os.path.join(os.environ["UDS_INPUTS"], "text")) as text:
    words = re.findall(r"[a-z]+", text.read().lower())
with open(os.path.join(os.environ["UDS_OUTPUT"], "words.txt"), "w") as out:
    out.write("\\n".join(words) + "\\n")
'''

# Stage 2: count the words of stage 1's chunk of the same index.
COUNT = b'''#!/usr/bin/env python3
import collections, json, os
with open(os.path.join(os.environ["UDS_INPUTS"], "words.txt")) as words:
    lines = words.read().split()
with open(os.path.join(os.environ["UDS_OUTPUT"], "counts.json"), "w") as out:
    json.dump(collections.Counter(lines), out)
print(os.environ["UDS_CHUNK"], lines[0])
'''

# Stage 3: merge every chunk's counts, and say which inputs it saw.
MERGE = b'''#!/usr/bin/env python3
import collections, json, os
folder = os.environ["UDS_INPUTS"]
total = collections.Counter()
for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name)) as part:
        total.update(json.load(part))
with open(os.path.join(os.environ["UDS_OUTPUT"], "total.json"), "w") as out:
    json.dump(total, out)
print(" ".join(sorted(os.listdir(folder))))
'''

TEXTS = [
    "The quick brown fox jumps over the lazy dog",
    "a stitch in time saves nine and the early bird catches the worm",
    "all that glitters is not gold and the fox knows it",
]

# Prints when it ran (unix seconds), so a test can tell by the chunk's own word.
CLOCK = b"#!/bin/sh\ndate +%s.%N\n"


def _events(connection, job_id: str, kind: str | None = None) -> list:
    """Every event of the job (of one kind), oldest first, read page by page."""
    return [event for event in connection.job(job_id).events(follow=False) if kind is None or event.kind == kind]


def _unique() -> bytes:
    """A comment that makes a program's id (and so its cache keys) new to this run."""
    return f"# {os.urandom(8).hex()}\n".encode()


def _run_alongside(connection) -> None:
    """Run a job submitted now to its end: by then the scheduler has had every
    chance to start whatever it would have started before it."""
    status = connection.submit_job(b"#!/bin/sh\ntrue\n").wait(timeout=WAIT_S)
    assert status.state == "succeeded", status


def _marked_processes(mark: str) -> list[int]:
    """Host pids of live processes that have `mark` as an argument."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if mark.encode() in (entry / "cmdline").read_bytes().split(b"\0") and \
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


# -- outputs as inputs ------------------------------------------------------------


def test_a_three_stage_pipeline_computes_what_a_local_count_does(shared_cluster):
    connection = shared_cluster.connection
    split = connection.submit_job(SPLIT, chunk_inputs=[{"text": text.encode()} for text in TEXTS],
                                  chunks=len(TEXTS), timeout=60, name="split")
    count = connection.submit_job(COUNT, inputs={"words.txt": split.output_ref("words.txt")},
                                  chunks=len(TEXTS), timeout=60, name="count")
    merge = connection.submit_job(MERGE, inputs={"counts.json": count.outputs_ref("counts.json")},
                                  timeout=60, name="merge")
    assert count.status().after == (split.id,)
    assert merge.status().after == (count.id,)
    final = merge.wait(timeout=WAIT_S)
    assert final.state == "succeeded", final
    expected = collections.Counter(re.findall(r"[a-z]+", " ".join(TEXTS).lower()))
    assert json.loads(connection.get(final.chunks[0].outputs["total.json"])) == expected
    # The reduce saw one input per chunk of its producer, named by index.
    assert connection.get(final.chunks[0].stdout).split() == [b"counts.json.0", b"counts.json.1",
                                                               b"counts.json.2"]
    # Each chunk of the middle stage read its own index's words.
    for chunk in count.status().chunks:
        index, first_word = connection.get(chunk.stdout).decode().split()
        assert (int(index), first_word) == (chunk.chunk, TEXTS[chunk.chunk].split()[0].lower())
    # No stage began before the one it reads from had committed its last chunk.
    for producer, consumer in ((split, count), (count, merge)):
        ended = max(event.at for event in _events(connection, producer.id, "chunk_succeeded"))
        began = min(event.at for event in _events(connection, consumer.id, "chunk_dispatched"))
        assert began >= ended


def test_one_chunks_output_and_after_without_files(shared_cluster):
    connection = shared_cluster.connection
    producer = connection.submit_job(b"#!/bin/sh\necho made by $UDS_CHUNK > $UDS_OUTPUT/part\n", chunks=3)
    reader = connection.submit_job(b"#!/bin/sh\ncat $UDS_INPUTS/part\nls $UDS_INPUTS\n", chunks=2,
                                   inputs={"part": producer.output_ref("part", chunk=2)})
    ordered = connection.submit_job(CLOCK, after=[reader])
    assert ordered.wait(timeout=WAIT_S).state == "succeeded"
    assert ordered.status().after == (reader.id,)
    status = reader.status()
    assert status.state == "succeeded", status
    for chunk in status.chunks:
        assert connection.get(chunk.stdout) == b"made by 2\npart\n"
    ended = max(event.at for event in _events(connection, reader.id, "chunk_succeeded"))
    assert float(connection.get(ordered.status().chunks[0].stdout)) >= ended - 0.5


def test_references_that_cannot_be_met_are_refused_at_submit(shared_cluster):
    connection = shared_cluster.connection
    done = connection.submit_job(b"#!/bin/sh\necho x > $UDS_OUTPUT/present\n", chunks=2)
    assert done.wait(timeout=WAIT_S).state == "succeeded"
    with pytest.raises(ClientError, match=f"job {done.id} chunk 1 has no output 'absent'"):
        connection.submit_job(CLOCK, inputs={"a": done.output_ref("absent", chunk=1)})
    stranger = connection.job(os.urandom(16).hex())
    with pytest.raises(ClientError, match=f"unknown job {stranger.id}"):
        connection.submit_job(CLOCK, inputs={"a": stranger.output_ref("present")})
    with pytest.raises(ClientError, match=f"unknown job {stranger.id}"):
        connection.submit_job(CLOCK, after=[stranger])
    with pytest.raises(ClientError, match=f"job {done.id}, which has 2 chunks, not 3"):
        connection.submit_job(CLOCK, chunks=3, inputs={"a": done.output_ref("present")})
    with pytest.raises(ClientError, match="is named twice"):
        connection.submit_job(CLOCK, inputs={"a.0": b"own", "a": done.outputs_ref("present")})


def test_a_failed_middle_stage_fails_its_dependents_naming_it(shared_cluster):
    connection = shared_cluster.connection
    first = connection.submit_job(b"#!/bin/sh\necho fine > $UDS_OUTPUT/out\n", chunks=2)
    middle = connection.submit_job(b"#!/bin/sh\necho broken >&2\nexit 3\n", chunks=2,
                                   inputs={"out": first.output_ref("out")})
    last = connection.submit_job(CLOCK, inputs={"in": middle.outputs_ref("out")})
    after_last = connection.submit_job(CLOCK, after=[last])
    assert middle.wait(timeout=WAIT_S).state == "failed"
    for dependent in (last, after_last):
        status = dependent.wait(timeout=WAIT_S)
        assert status.state == "failed", status
        assert {chunk.state for chunk in status.chunks} <= {"failed", "cancelled"}
        assert _events(connection, dependent.id, "chunk_dispatched") == []
    assert last.status().error == f"dependency {middle.id} failed"
    assert after_last.status().error == f"dependency {last.id} failed"
    assert first.status().state == "succeeded"


def test_a_cancelled_middle_stage_cancels_its_dependents(shared_cluster):
    connection = shared_cluster.connection
    first = connection.submit_job(CLOCK, hold=True)
    middle = connection.submit_job(CLOCK, after=[first])
    last = connection.submit_job(CLOCK, after=[middle])
    assert middle.status().state == "waiting"
    assert middle.cancel().state == "cancelled"
    status = last.wait(timeout=WAIT_S)
    assert status.state == "cancelled", status
    assert status.error == f"dependency {middle.id} was cancelled"
    assert first.status().state == "held"   # what it waited for is untouched
    assert first.release().state != "held"
    assert first.wait(timeout=WAIT_S).state == "succeeded"
    for job in (middle, last):
        assert _events(connection, job.id, "chunk_dispatched") == []


# -- held and deferred starts ---------------------------------------------------------


def test_a_held_job_stays_held_until_released_then_runs(shared_cluster):
    connection = shared_cluster.connection
    held = connection.submit_job(CLOCK, chunks=2, hold=True)
    status = held.status()
    assert status.state == "held" and status.waiting.startswith("held"), status
    assert {chunk.state for chunk in status.chunks} == {"waiting"}
    _run_alongside(connection)
    assert held.status().state == "held"
    assert _events(connection, held.id, "chunk_dispatched") == []
    released_at = time.time()
    assert held.release().state in ("queued", "running", "succeeded")
    final = held.wait(timeout=WAIT_S)
    assert final.state == "succeeded", final
    for chunk in final.chunks:
        assert float(connection.get(chunk.stdout)) >= released_at - 0.5
    release = _events(connection, held.id, "job_released")
    assert len(release) == 1
    assert min(event.seq for event in _events(connection, held.id, "chunk_dispatched")) > release[0].seq
    # Releasing again changes nothing.
    assert held.release().state == "succeeded"


def test_a_held_job_can_be_cancelled(shared_cluster):
    connection = shared_cluster.connection
    held = connection.submit_job(CLOCK, chunks=3, hold=True)
    assert held.status().state == "held"
    assert held.cancel().state == "cancelled"
    status = held.wait(timeout=WAIT_S)
    assert status.state == "cancelled"
    assert {chunk.state for chunk in status.chunks} == {"cancelled"}
    assert _events(connection, held.id, "chunk_dispatched") == []


def test_a_job_started_at_a_time_starts_then_and_not_before(shared_cluster):
    connection = shared_cluster.connection
    start_at = time.time() + 2.0
    job = connection.submit_job(CLOCK, chunks=2, start_at=start_at)
    status = job.status()
    assert status.state == "waiting" and status.waiting.startswith("starts at"), status
    assert status.start_at == pytest.approx(start_at, abs=0.01)
    final = job.wait(timeout=WAIT_S)
    assert final.state == "succeeded", final
    for chunk in final.chunks:
        ran_at = float(connection.get(chunk.stdout))
        assert start_at <= ran_at < start_at + 5.0
    dispatched = [event.at for event in _events(connection, job.id, "chunk_dispatched")]
    assert start_at <= min(dispatched) < start_at + 2.5   # a loaded machine's margin


def test_a_held_job_that_is_also_deferred_waits_for_both(shared_cluster):
    connection = shared_cluster.connection
    start_at = time.time() + 1.0
    job = connection.submit_job(CLOCK, start_at=start_at, hold=True)
    wait_until(lambda: time.time() > start_at + 0.5, "start time passed", timeout=5)
    _run_alongside(connection)
    assert job.status().state == "held"
    job.release()
    status = job.wait(timeout=WAIT_S)
    assert status.state == "succeeded"


# -- deadlines, retries ------------------------------------------------------------


def test_a_deadline_fails_the_job_and_kills_its_running_chunk(shared_cluster):
    connection = shared_cluster.connection
    mark = f"300.{time.time_ns() % 10**9:09d}"
    deadline = time.time() + 4.0   # after the chunk has started, even on a loaded machine
    job = connection.submit_job(b"#!/bin/sh\nexec sleep " + mark.encode() + b"\n", deadline=deadline, timeout=300)
    never_released = connection.submit_job(CLOCK, hold=True, deadline=deadline)
    pids = wait_until(lambda: _marked_processes(mark), "the chunk running", timeout=WAIT_S)
    status = job.wait(timeout=WAIT_S)
    assert status.state == "failed", status
    assert status.error == "deadline exceeded"
    assert status.finished_at >= deadline
    assert status.chunks[0].state == "cancelled"
    wait_until(lambda: not any(pid in _marked_processes(mark) for pid in pids), "the chunk killed", timeout=15)
    held = never_released.wait(timeout=WAIT_S)
    assert (held.state, held.error) == ("failed", "deadline exceeded")
    assert _events(connection, never_released.id, "chunk_dispatched") == []


def test_application_failures_use_retries_and_wait_out_the_backoff(shared_cluster):
    connection = shared_cluster.connection
    job = connection.submit_job(b"#!/bin/sh\nexit 3\n", max_retries=1, retry_backoff=1.0)
    status = job.wait(timeout=WAIT_S)
    assert status.state == "failed"
    chunk = status.chunks[0]
    assert (chunk.attempt, chunk.failures) == (2, ("application", "application"))
    events = _events(connection, job.id)
    first_ended = min(event.at for event in events if event.attempt == 1
                      and event.kind not in ("chunk_dispatched", "chunk_started"))
    second = [event.at for event in events if event.attempt == 2 and event.kind == "chunk_dispatched"]
    assert second and second[0] >= first_ended + 1.0


# -- the result cache --------------------------------------------------------------


def test_a_rerun_after_one_input_changed_runs_that_chunk_alone(shared_cluster):
    connection = shared_cluster.connection
    chunks = 100
    program = b"#!/bin/sh\n" + _unique() + b"cat $UDS_INPUTS/n > $UDS_OUTPUT/copy\necho $UDS_CHUNK\n"
    inputs = [{"n": f"{index}\n".encode()} for index in range(chunks)]
    first = connection.submit_job(program, chunk_inputs=inputs, chunks=chunks, cache=True)
    before = first.wait(timeout=120)
    assert before.state == "succeeded" and before.cached == 0, before
    inputs[37] = {"n": b"changed\n"}
    again = connection.submit_job(program, chunk_inputs=inputs, chunks=chunks, cache=True)
    after = again.wait(timeout=WAIT_S)
    assert after.state == "succeeded", after
    assert (after.cached, after.succeeded) == (chunks - 1, chunks)
    states = collections.Counter(chunk.state for chunk in after.chunks)
    assert states == {"cached": chunks - 1, "succeeded": 1}
    assert after.chunks[37].state == "succeeded"
    assert [event.chunk for event in _events(connection, again.id, "chunk_dispatched")] == [37]
    for old, new in zip(before.chunks, after.chunks):
        if new.chunk == 37:
            assert connection.get(new.outputs["copy"]) == b"changed\n"
            assert new.outputs != old.outputs
        else:
            assert (new.outputs, new.stdout, new.stderr) == (old.outputs, old.stdout, old.stderr)


def test_identical_chunks_in_flight_at_once_run_once(shared_cluster):
    connection = shared_cluster.connection
    chunks = 4
    program = (b"#!/bin/sh\n" + _unique() + b"sleep 1.5\n"
               b"echo $UDS_CHUNK $(date +%s.%N) > $UDS_OUTPUT/out\n")  # a second run would differ
    jobs = [connection.submit_job(program, chunks=chunks, cache=True) for _ in range(2)]
    # The second one's chunks wait for the first one's, still in flight.
    assert {chunk.state for chunk in jobs[1].status().chunks} == {"waiting"}
    statuses = [job.wait(timeout=WAIT_S) for job in jobs]
    assert [status.state for status in statuses] == ["succeeded", "succeeded"], statuses
    # Each chunk was sent to a worker once, for one job or the other, and ran once.
    sent = [event for job in jobs for event in _events(connection, job.id, "chunk_dispatched")]
    assert sorted(event.chunk for event in sent) == list(range(chunks))
    assert statuses[0].cached + statuses[1].cached == chunks
    for first, second in zip(statuses[0].chunks, statuses[1].chunks):
        assert first.outputs == second.outputs
        assert connection.get(first.outputs["out"]).split()[0] == str(first.chunk).encode()
