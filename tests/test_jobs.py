"""Real jobs on a real phase-1 cluster: outputs, inputs, placement, failures."""
import collections
import json
import os
import re
import stat

import pytest

from uds import client
from uds.errors import InvalidJobError
from uds.wire.resources import ResourceLimits

WORD_COUNT = b'''#!/usr/bin/env python3
import collections, json, os, re
counts = collections.Counter()
for name in sorted(os.listdir(os.environ["UDS_INPUTS"])):
    with open(os.path.join(os.environ["UDS_INPUTS"], name)) as text:
        counts.update(re.findall(r"[a-z]+", text.read().lower()))
with open(os.path.join(os.environ["UDS_OUTPUT"], "counts.json"), "w") as out:
    json.dump(counts, out)
print(os.environ["UDS_CHUNK"], os.environ["UDS_CHUNKS"], " ".join(sorted(os.listdir(os.environ["UDS_INPUTS"]))))
'''

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a stitch in time saves nine and the early bird catches the worm",
    "to be or not to be that is the question",
    "all that glitters is not gold and the fox knows it",
]


def test_multi_chunk_job_matches_a_local_computation(shared_cluster):
    connection = shared_cluster.connection
    chunk_inputs = [{f"text-{index}.txt": text.encode()} for index, text in enumerate(TEXTS)]
    job = connection.submit_job(WORD_COUNT, chunk_inputs=chunk_inputs, chunks=len(TEXTS), timeout=60)
    status = job.wait(timeout=60)
    assert status.state == "succeeded", status
    merged = collections.Counter()
    for chunk in status.chunks:
        assert chunk.result.exit_code == 0
        merged.update(json.loads(connection.get(chunk.outputs["counts.json"])))
        stdout = connection.get(chunk.stdout).decode().split()
        # UDS_CHUNK, UDS_CHUNKS, and exactly the chunk's own input.
        assert stdout == [str(chunk.chunk), str(len(TEXTS)), f"text-{chunk.chunk}.txt"]
    expected = collections.Counter(re.findall(r"[a-z]+", " ".join(TEXTS)))
    assert merged == expected


def test_job_inputs_and_chunk_inputs_together(shared_cluster):
    connection = shared_cluster.connection
    shared = connection.put(b"shared content\n")
    program = b"#!/bin/sh\nls $UDS_INPUTS | tr '\\n' ' '\ncat $UDS_INPUTS/own.txt\n"
    job = connection.submit_job(program, inputs={"shared.txt": shared},
                                chunk_inputs=[{"own.txt": b"zero\n"}, {"own.txt": b"one\n"}], chunks=2)
    status = job.wait(timeout=60)
    assert status.state == "succeeded"
    outputs = [connection.get(chunk.stdout).decode() for chunk in status.chunks]
    assert outputs == ["own.txt shared.txt zero\n", "own.txt shared.txt one\n"]


def test_outputs_in_subfolders_and_binary_content(shared_cluster):
    connection = shared_cluster.connection
    program = (b"#!/bin/sh\nmkdir -p $UDS_OUTPUT/a/b\nhead -c 300000 $UDS_INPUTS/blob > $UDS_OUTPUT/a/b/part\n"
               b"printf x > $UDS_OUTPUT/top\n")
    blob = os.urandom(1_000_000)
    job = connection.submit_job(program, inputs={"blob": blob})
    result = job.wait(timeout=60)
    assert result.state == "succeeded"
    outputs = result.chunks[0].outputs
    assert set(outputs) == {"a/b/part", "top"}
    assert connection.get(outputs["a/b/part"]) == blob[:300000]
    assert connection.get(outputs["top"]) == b"x"


def test_outputs_that_cannot_be_reported_fail_the_chunk_clearly(shared_cluster):
    connection = shared_cluster.connection
    # A name that is not UTF-8, and too many files for one result.
    program = (b"#!/usr/bin/env python3\nimport os, sys\nout = os.environb[b'UDS_OUTPUT']\n"
               b"if sys.argv[1] == 'bad-name':\n    open(out + b'/caf\\xe9', 'w').close()\n"
               b"else:\n    [open(out + b'/%d' % i, 'w').close() for i in range(10001)]\n"
               b"print('ran', file=sys.stderr)\n")
    for argument, reason in (("bad-name", "is not a usable name"), ("many", "left 10001 files")):
        status = connection.submit_job(program, args=[argument]).wait(timeout=60)
        assert status.state == "failed", status
        chunk = status.chunks[0]
        assert reason in chunk.result.error and chunk.outputs == {}
        assert connection.get(chunk.stderr) == b"ran\n"


def test_failing_program_leaves_the_job_failed_with_stderr(shared_cluster):
    connection = shared_cluster.connection
    job = connection.submit_job(b"#!/bin/sh\necho something went wrong >&2\nexit 3\n")
    status = job.wait(timeout=60)
    assert status.state == "failed"
    chunk = status.chunks[0]
    assert (chunk.state, chunk.result.exit_code) == ("failed", 3)
    assert "exit code 3" in status.error
    assert job.logs(0)[1] == b"something went wrong\n"


def test_missing_interpreter_fails_with_a_readable_reason(shared_cluster):
    connection = shared_cluster.connection
    job = connection.submit_job(b"#!/nonexistent/interpreter\nprint('never')\n")
    status = job.wait(timeout=60)
    assert status.state == "failed"
    assert status.chunks[0].result.exit_code == 127
    assert b"/nonexistent/interpreter" in job.logs(0)[1]


def test_program_from_a_path_with_args(shared_cluster, tmp_path):
    script = tmp_path / "greet.sh"
    script.write_text("#!/bin/sh\necho \"$1-$2\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    job = shared_cluster.connection.submit_job(str(script), args=["hello", "world"])
    assert job.wait(timeout=60).state == "succeeded"
    assert job.logs(0)[0] == b"hello-world\n"


def test_resubmitting_the_same_job_id_is_idempotent(shared_cluster):
    connection = shared_cluster.connection
    job_id = os.urandom(16).hex()
    first = connection.submit_job(b"#!/bin/sh\necho once\n", job_id=job_id, name="same")
    second = connection.submit_job(b"#!/bin/sh\necho once\n", job_id=job_id, name="same")
    assert first.id == second.id == job_id
    assert first.wait(timeout=60).state == "succeeded"
    assert len(connection.events(job=job_id, kinds=["job_submitted"], limit=10_000).events) == 1
    with pytest.raises(InvalidJobError, match="different spec"):
        connection.submit_job(b"#!/bin/sh\necho other\n", job_id=job_id, name="same")


@pytest.mark.parametrize("arguments, message", [
    (dict(chunks=0), "chunks must be a positive integer"),
    (dict(chunks=-2), "chunks must be a positive integer"),
    (dict(inputs={"a/b": b"x"}), "plain file name"),
    (dict(inputs={"..": b"x"}), "plain file name"),
    (dict(inputs={"a\0b": b"x"}), "plain file name"),
    (dict(inputs={"x": "0" * 32}), "unknown file id"),
    (dict(inputs={"x": "/no/such/file"}), "neither a file id"),
    (dict(chunks=2, chunk_inputs=[{}]), "1 entries for 2 chunks"),
    (dict(timeout=0), "timeout must be a positive number"),
    (dict(args="not a list"), "args must be a list"),
    (dict(args=["x" * 60_000] * 40), "program, args and inputs take 2400"),
    (dict(limits={"memory": "lots"}), "memory: expected a size such as 512M"),
    (dict(limits={"cpus": -1}), "cpus: expected a number from 0 to 4096"),
    (dict(limits={"pids": 2.5}), "pids: expected a whole number"),
    (dict(limits={"swap": "1G"}), "unknown limit swap"),
    (dict(network="yes"), "network must be True or False"),
    (dict(limits={"memory": "1000T"}), "no worker can run this job: no worker has 1000 TiB of memory: "
                                       "the largest has"),
])
def test_bad_arguments_are_refused_before_sending(shared_cluster, arguments, message):
    before = shared_cluster.connection.master_stats().get("jobs_submitted", 0)
    with pytest.raises(InvalidJobError, match=message):
        shared_cluster.connection.submit_job(b"#!/bin/sh\ntrue\n", **arguments)
    assert shared_cluster.connection.master_stats().get("jobs_submitted", 0) == before


def test_a_job_with_limits_runs_and_its_status_shows_them_and_its_usage(shared_cluster):
    connection = shared_cluster.connection
    data = os.urandom(300_000)
    program = b"#!/bin/sh\ncat $UDS_INPUTS/data > $UDS_OUTPUT/copy\necho hi\n"
    job = connection.submit_job(program, inputs={"data": data}, chunks=2, network=True,
                                limits={"memory": "256M", "cpus": 0.5, "pids": 128, "cpu_time": "1m"})
    status = job.wait(timeout=60)
    assert status.state == "succeeded", status
    assert (status.limits, status.network, status.waiting) == (
        ResourceLimits(memory_bytes=256 << 20, millicpus=500, pids=128, cpu_time_s=60), True, "")
    for chunk in status.chunks:
        usage = chunk.usage
        assert usage.bytes_from_cache + usage.bytes_from_storage == len(data)
        assert usage.output_bytes == len(data) + len(b"hi\n")
        assert usage.wall_s == chunk.result.elapsed_s > 0
        assert usage.cpu_user_s >= 0 and usage.peak_memory_bytes >= 0


def test_module_level_api_uses_the_cluster_from_the_environment(shared_cluster, monkeypatch):
    monkeypatch.setenv("UDS_CLUSTER", str(shared_cluster.layout.path))
    monkeypatch.setattr(client, "_default", None)
    try:
        job = client.submit_job(b"#!/bin/sh\necho default\n")
        assert job.wait(timeout=60).state == "succeeded"
        assert client.get(job.result()[0].stdout) == b"default\n"
    finally:
        if client._default is not None:
            client._default.close()
        monkeypatch.setattr(client, "_default", None)


def test_a_large_job_is_read_page_by_page(shared_cluster):
    """More chunks than one status reply holds: the client reads every page,
    in order; one chunk or a slice is read without the rest."""
    from uds.master.waiters import STATUS_PAGE_CHUNKS
    connection = shared_cluster.connection
    chunk_count = 2 * STATUS_PAGE_CHUNKS + 7
    job = connection.submit_job(b"#!/bin/sh\nsleep 600\n", chunks=chunk_count, timeout=600)
    cancelled = job.cancel()
    assert cancelled.chunks == []  # a cancel answers with the counts only
    status = job.wait(timeout=60)
    assert status.state == "cancelled"
    assert [chunk.chunk for chunk in status.chunks] == list(range(chunk_count))
    assert {chunk.state for chunk in status.chunks} == {"cancelled"}
    middle = connection.job_status(job.id, first_chunk=STATUS_PAGE_CHUNKS - 2, max_chunks=5)
    assert [chunk.chunk for chunk in middle.chunks] == list(range(STATUS_PAGE_CHUNKS - 2,
                                                                  STATUS_PAGE_CHUNKS + 3))
    assert job.chunk(chunk_count - 1).chunk == chunk_count - 1
    with pytest.raises(IndexError, match=f"has {chunk_count} chunks"):
        job.chunk(chunk_count)
    assert connection.job_status(job.id, first_chunk=chunk_count + 10).chunks == []
    with pytest.raises(InvalidJobError, match="first_chunk"):
        connection.job_status(job.id, first_chunk=-1)
    with pytest.raises(InvalidJobError, match="max_chunks"):
        connection.job_status(job.id, max_chunks=0)
