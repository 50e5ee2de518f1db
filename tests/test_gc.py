"""Garbage collection end to end, with a real master, three real storage
nodes and, where jobs run, a load balancer and a worker: what nothing
references goes, and never a file a retained job, a recently forgotten
job or a pin holds, also while submissions race back-to-back passes.

Passes run only when a test asks for one (`uds admin gc`, or gc_run
through the client): gc_interval_s is far beyond a test's length."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import threading
import time

import pytest

from daemons import ROOT, ClusterLayout, wait_until
from uds import client
from uds.client.pins import BadPinError
from uds.storage.client import StorageError
from uds.wire.enums import NodeRole
from uds.wire.ids import file_id_of

STORAGE_NODES = 3
NEVER_S = 3600.0             # gc_interval_s: no pass runs unless asked for
COMMAND_TIMEOUT_S = 90


class GcCluster:
    """A master, three storage nodes and (with `workers`) a balancer and
    workers; a connected client."""

    def __init__(self, root: pathlib.Path, grace_s: float, workers: int = 0,
                 retention: dict | None = None, interval_s: float = NEVER_S) -> None:
        self.layout = ClusterLayout.create(root, storage=STORAGE_NODES, storage_policy={
            "gc_grace_s": grace_s, "gc_interval_s": interval_s, "heartbeat_interval_s": 0.25,
            "lost_after_s": 10.0, "repair_interval_s": NEVER_S})
        if retention:
            with open(self.layout.path, "a") as cluster_file:
                cluster_file.write("\n[retention]\n" + "".join(f"{key} = {value!r}\n"
                                                              for key, value in retention.items()))
        self.grace_s = grace_s
        self.connection = None
        started = [self.layout.start("storage", name=str(index), wait=False) for index in range(STORAGE_NODES)]
        started.append(self.layout.start("master", wait=False))
        if workers:
            started.append(self.layout.start("loadbalancer", wait=False))
            started += [self.layout.start("worker", name=f"w{index}", wait=False) for index in range(workers)]
        for daemon in started:
            daemon.wait_ready()
        self.connection = client.connect(self.layout.path, timeout=20)
        wait_until(lambda: len([node for node in self.connection.nodes() if node["role"] == NodeRole.STORAGE
                                and node["state"] == "alive"]) == STORAGE_NODES,
                   "every storage node registered with the masters")
        if workers:
            wait_until(lambda: len([node for node in self.connection.nodes() if node["role"] == NodeRole.WORKER
                                    and node["state"] == "alive" and node["free_slots"]]) == workers,
                       "the workers registered")

    def blob(self, index: int, file_hex: str) -> pathlib.Path:
        return self.layout.data_of("storage", str(index)) / "blobs" / file_hex[:2] / file_hex[2:]

    def holders(self, file_hex: str) -> set[int]:
        """The storage nodes whose blob folder holds the file."""
        return {index for index in range(STORAGE_NODES) if self.blob(index, file_hex).exists()}

    def gc(self, dry_run: bool = False) -> dict[str, set[str]]:
        """One pass on every node: address -> the hex ids it deleted (or would)."""
        answers = self.connection.storage.gc_run(dry_run)
        failed = [(address, answer) for address, answer in answers if isinstance(answer, StorageError)]
        assert not failed, failed
        return {address: {bytes(file_id).hex() for file_id, _ in answer.files} for address, answer in answers}

    def uds(self, *args: str, input_bytes: bytes | None = None, fails: bool = False) -> str:
        environment = dict(os.environ, PYTHONPATH=str(ROOT))
        environment.pop("UDS_CLUSTER", None)
        result = subprocess.run([sys.executable, "-m", "uds.client.cli", "--cluster", str(self.layout.path), *args],
                                capture_output=True, input=input_bytes, timeout=COMMAND_TIMEOUT_S, env=environment)
        assert (result.returncode != 0) == fails, (args, result.stdout.decode(), result.stderr.decode())
        return result.stderr.decode() if fails else result.stdout.decode()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.layout.cleanup()


@pytest.fixture
def make_cluster(tmp_path):
    made: list[GcCluster] = []

    def make(**options) -> GcCluster:
        made.append(GcCluster(tmp_path / "cluster", **options))
        return made[-1]
    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()


GC_LINE = re.compile(r"^(tcp://127\.0\.0\.1:\d+): (would delete|deleted) (\d+) of (\d+) blobs, ([0-9.]+ [KMGT]?i?B)$")
FILE_LINE = re.compile(r"^  ([0-9a-f]{32})  ([0-9.]+ [KMGT]?i?B)$")
TOTAL_LINE = re.compile(r"^total: (would delete|deleted) (\d+) blobs, ([0-9.]+ [KMGT]?i?B)$")


def parse_gc_output(text: str) -> tuple[str, dict[str, set[str]], int]:
    """(verb, address -> file ids listed under it, total count), checking every line's form."""
    listed: dict[str, set[str]] = {}
    verbs, address, total = set(), None, None
    for line in text.splitlines():
        if match := GC_LINE.match(line):
            address = match.group(1)
            verbs.add(match.group(2))
            listed[address] = set()
            count = int(match.group(3))
            assert count <= int(match.group(4)), line          # of the candidates examined
        elif match := FILE_LINE.match(line):
            assert address is not None, line
            listed[address].add(match.group(1))
        elif match := TOTAL_LINE.match(line):
            verbs.add(match.group(1))
            total = int(match.group(2))
        else:
            raise AssertionError(f"unexpected line in `uds admin gc` output: {line!r}\n{text}")
    assert len(verbs) == 1 and total is not None, text
    assert total == sum(len(files) for files in listed.values()), text
    return verbs.pop(), listed, total


def test_gc_collects_what_nothing_references_from_every_node(make_cluster):
    cluster = make_cluster(grace_s=2.0)
    files = [cluster.connection.put(os.urandom(5000 + index)) for index in range(3)]
    held = {file: cluster.holders(file) for file in files}
    assert all(len(nodes) == 2 for nodes in held.values()), held        # R = 2 of three
    # Before the grace is over a pass takes nothing: each put is a use.
    assert not any(cluster.gc().values())
    assert all(cluster.holders(file) == held[file] for file in files)

    addresses = {index: cluster.layout.cluster.storage[index].address for index in range(STORAGE_NODES)}
    expected = {addresses[index]: {file for file in files if index in held[file]} for index in range(STORAGE_NODES)}
    wait_until(lambda: cluster.gc(dry_run=True) == expected, "every file a candidate on its holders", timeout=30)

    verb, listed, total = parse_gc_output(cluster.uds("admin", "gc", "--dry-run"))
    assert (verb, listed, total) == ("would delete", expected, 6)
    assert all(cluster.holders(file) == held[file] for file in files), "a dry run deleted a blob"

    verb, listed, total = parse_gc_output(cluster.uds("admin", "gc"))
    assert (verb, listed, total) == ("deleted", expected, 6)
    assert not any(cluster.holders(file) for file in files)
    # Nothing left to collect, and the nodes' figures say what went.
    verb, listed, total = parse_gc_output(cluster.uds("admin", "gc"))
    assert total == 0
    with pytest.raises(StorageError):
        cluster.connection.get(files[0])


# The job's program writes one output, stdout and stderr; it reads a
# job-wide input and its own chunk input.
PROGRAM = b"""#!/bin/sh
cat "$UDS_INPUTS/shared.txt" "$UDS_INPUTS/own.txt" > "$UDS_OUTPUT/out.txt"
echo "stdout of chunk $UDS_CHUNK"
echo "stderr of chunk $UDS_CHUNK" >&2
"""
RETENTION_S = 12.0


def test_gc_never_takes_a_retained_jobs_files_and_takes_them_a_grace_after_it_is_forgotten(make_cluster):
    grace_s = 4.0
    cluster = make_cluster(grace_s=grace_s, workers=1, retention={"period_s": RETENTION_S})
    connection = cluster.connection
    shared = connection.put(b"shared input\n" + os.urandom(64))
    job = connection.submit_job(PROGRAM, inputs={"shared.txt": shared},
                                chunk_inputs=[{"own.txt": os.urandom(100)}, {"own.txt": os.urandom(100)}],
                                chunks=2, timeout=60)
    status = job.wait(timeout=60)
    assert status.state == "succeeded", status
    files = {shared}
    for chunk in status.chunks:
        files |= {chunk.outputs["out.txt"], chunk.stdout, chunk.stderr}
    # The program and the chunk inputs were put by submit_job: find them by content.
    assert connection.storage.stat(bytes.fromhex(_id_of(PROGRAM))) == len(PROGRAM)
    files.add(_id_of(PROGRAM))
    assert None not in files and len(files) == 1 + 1 + 2 * 3, files     # shared, program, per chunk out/stdout/stderr
    chunk_inputs = _blobs_other_than(cluster, files)
    assert len(chunk_inputs) == 2, chunk_inputs
    files |= chunk_inputs
    held = {file: cluster.holders(file) for file in files}
    assert all(held.values()), held

    # Every blob becomes a candidate (examined), yet a pass takes none while the job is kept.
    blob_count = sum(len(nodes) for nodes in held.values())
    wait_until(lambda: sum(answer.blobs_examined for _, answer in connection.storage.gc_run(True)) >= blob_count,
               "every blob past the grace", timeout=30)
    assert not any(cluster.gc().values())
    assert {file: cluster.holders(file) for file in files} == held
    assert not connection.job_status(job.id, detail=False).past_retention, "the pass came too late to count"

    # Forgotten at finished_at + period_s at the earliest: held until a grace after that.
    held_until = status.finished_at + RETENTION_S + grace_s
    wait_until(lambda: connection.job_status(job.id, detail=False).past_retention, "the job forgotten",
               timeout=RETENTION_S + 30)
    collected: set[str] = set()

    def pass_collects_all() -> bool:
        deleted = set().union(*cluster.gc().values())
        ended = time.time()
        if deleted & files:
            assert ended >= held_until, f"collected {ended - held_until:.2f}s before the grace ended"
        collected.update(deleted)
        return not any(cluster.holders(file) for file in files)
    wait_until(pass_collects_all, "the forgotten job's files collected", timeout=grace_s + 30)
    assert files <= collected


def _id_of(data: bytes) -> str:
    return file_id_of(data).hex()


def _blobs_other_than(cluster: GcCluster, files: set[str]) -> set[str]:
    found = set()
    for index in range(STORAGE_NODES):
        for blob in (cluster.layout.data_of("storage", str(index)) / "blobs").glob("*/*"):
            if not blob.name.endswith(".blocks"):
                found.add(blob.parent.name + blob.name)
    return found - files


# Long enough to outlast the unpinned file's grace and the passes that
# collect it (the pinned files must survive those), short enough to wait out.
PIN_S = 5
PIN = f"{PIN_S}s"


def test_gc_keeps_a_pinned_file_until_the_pin_and_the_grace_are_over(make_cluster):
    grace_s = 2.0
    cluster = make_cluster(grace_s=grace_s)
    connection = cluster.connection
    # Refused before anything is stored: a bad duration.
    refused = os.urandom(3000)
    for bad in ("10", "1w", "-5s", "0s", "1.5h", ""):
        with pytest.raises(BadPinError):
            connection.put(refused, pin=bad)
    source = cluster.layout.root / "refused"
    source.write_bytes(refused)
    said = cluster.uds("put", "--pin", "1w", str(source), fails=True)
    assert "not a duration" in said, said
    assert not cluster.holders(_id_of(refused))

    begun = time.time()
    pinned = connection.put(os.urandom(4000), pin=PIN)
    source = cluster.layout.root / "pinned-by-command"
    source.write_bytes(os.urandom(4000))
    output = cluster.uds("put", "--pin", PIN, str(source))
    by_command = _id_of(source.read_bytes())
    assert by_command in output, output
    # A pin may come before the put: an id no node holds yet is pinned too.
    early = os.urandom(4000)
    assert connection.pin([bytes.fromhex(_id_of(early))], int((begun + PIN_S) * 1000)) == 1
    assert connection.put(early) == _id_of(early)
    unpinned = connection.put(os.urandom(4000))
    held_until = begun + PIN_S + grace_s

    pinned_files = {pinned, by_command, _id_of(early)}
    assert all(len(cluster.holders(file)) == 2 for file in pinned_files | {unpinned})

    def collection_pass() -> set[str]:
        deleted = set().union(*cluster.gc().values())
        if deleted & pinned_files:
            assert time.time() >= held_until, f"a pinned file collected {held_until - time.time():.2f}s early"
        return deleted
    wait_until(lambda: collection_pass() and not cluster.holders(unpinned), "the unpinned file collected",
               timeout=30)
    assert time.time() >= held_until or all(cluster.holders(file) for file in pinned_files)
    wait_until(lambda: collection_pass() is not None and not any(cluster.holders(file) for file in pinned_files),
               "the pinned files collected after the pin and the grace", timeout=PIN_S + grace_s + 30)
    with pytest.raises(BadPinError):
        connection.put(b"x", pin="999999999999d")


RACE_S = 20.0
RACE_THREADS = 3
ECHO = b"#!/bin/sh\ncat \"$UDS_INPUTS/in.txt\"\n"


def test_gc_never_takes_the_input_of_a_submission_that_races_it(make_cluster):
    """Submitters put a fresh file and submit a job reading it, some at
    once and some after waiting about the grace period, while every node
    runs passes back to back: no submitted job's file is ever deleted, no
    job fails, and what nothing references is still collected."""
    # A submission is safe when it commits within the grace after the
    # client's touch of its inputs; a real grace is hours, and even a
    # loaded 2-core machine commits within this one.
    grace_s = 3.0
    cluster = make_cluster(grace_s=grace_s, workers=1)
    connection = cluster.connection
    stop = threading.Event()
    deleted: set[str] = set()
    deletions: list[tuple[float, str, str]] = []    # (when the pass began, node, file)
    submitted_at: dict[str, float] = {}             # input -> when its submission returned
    submitted: dict[str, set[str]] = {}           # job -> its files, as submitted
    unreferenced: set[str] = set()
    refused: list[tuple[float, str]] = []          # (seconds since its put, why): input collected first
    faults: list[BaseException] = []
    lock = threading.Lock()
    passes = 0

    def collect() -> None:
        nonlocal passes
        try:
            while not stop.is_set():
                started = time.time()
                answers = cluster.gc()
                with lock:
                    for address, files in answers.items():
                        for file in files:
                            deleted.add(file)
                            deletions.append((started, address, file))
                    passes += 1
        except BaseException as fault:  # noqa: BLE001: reported by the test
            faults.append(fault)

    def submit(index: int) -> None:
        own = client.connect(cluster.layout.path, timeout=20)
        try:
            round_ = 0
            while not stop.is_set():
                round_ += 1
                content = f"thread {index} round {round_}\n".encode() + os.urandom(32)
                put_at = time.time()
                file = own.put(content)
                with lock:
                    unreferenced.add(own.put(os.urandom(200)))
                # Every other round waits about the grace before it submits.
                if round_ % 2 == 0:
                    stop.wait(grace_s * (0.8 + 0.1 * (round_ % 5)))
                try:
                    job = own.submit_job(ECHO, inputs={"in.txt": file}, timeout=60)
                except client.InvalidJobError as fault:
                    with lock:
                        refused.append((time.time() - put_at, str(fault)))
                    continue
                with lock:
                    submitted[job.id] = {file, _id_of(ECHO)}
                    submitted_at[file] = time.time()
        except BaseException as fault:  # noqa: BLE001: reported by the test
            faults.append(fault)
        finally:
            own.close()

    threads = [threading.Thread(target=collect)] + [threading.Thread(target=submit, args=(index,))
                                                    for index in range(RACE_THREADS)]
    for thread in threads:
        thread.start()
    try:
        stop.wait(RACE_S)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not faults, faults
    assert passes > 10 and len(submitted) >= RACE_THREADS, (passes, len(submitted))

    for job_id, files in submitted.items():
        try:
            status = connection.job(job_id).wait(timeout=120)
        except client.JobTimeout:
            # Say what kept it: each attempt, and whether a pass took one of its files.
            attempts = [(attempt.number, attempt.state, attempt.failure, attempt.error, attempt.timeline)
                        for attempt in connection.attempts(job_id, 0)]
            raise AssertionError(f"job {job_id} unfinished: attempts {attempts}; its files deleted: "
                                 f"{[d for d in deletions if d[2] in files]}") from None
        assert status.state == "succeeded", (status, [chunk.result for chunk in status.chunks])
        chunk = status.chunks[0]
        files |= {chunk.stdout} | set(chunk.outputs.values())
    # One more pass after every job ended: the outputs and logs stay too.
    started = time.time()
    for address, files in cluster.gc().items():
        deleted.update(files)
        deletions.extend((started, address, file) for file in files)
    inputs = set(submitted_at)
    referenced = set().union(*submitted.values())
    # A copy of an input idle for the grace may go to a pass that asked the
    # masters before its submission committed, but none once it returned,
    # and never an output or a log; each is on R = 2 nodes at least in the end.
    late = [(file, address, started - submitted_at[file]) for started, address, file in deletions
            if file in inputs and started > submitted_at[file]]
    assert not late, late
    assert not deleted & (referenced - inputs - {_id_of(ECHO)}), deleted & referenced
    # (At least R: a node slow to answer under load is passed over for the next.)
    assert not {file: holders for file in referenced if len(holders := cluster.holders(file)) < 2}
    # What nothing references goes: all but the newest few are gone already.
    assert len(deleted & unreferenced) >= len(unreferenced) - 2 * RACE_THREADS, (len(deleted & unreferenced),
                                                                                  len(unreferenced))
    # A submission is refused only when its input was idle for the grace
    # before it was named, and so was collected on every node first.
    assert all(idle > grace_s and "unknown file id" in why for idle, why in refused), refused


def test_a_submission_stores_again_an_input_that_lost_a_copy(make_cluster):
    """The race's outcome, made at will: one copy of an input is gone (as a
    pass would take it) when a submission names it; the submission puts it
    back on R nodes before it is sent."""
    cluster = make_cluster(grace_s=NEVER_S)
    file = cluster.connection.put(os.urandom(30_000))
    first, second = sorted(cluster.holders(file))
    cluster.blob(first, file).unlink()
    assert cluster.holders(file) == {second}
    cluster.connection.submit_job(ECHO, inputs={"in.txt": file})
    assert cluster.holders(file) == {first, second}


def test_periodic_passes_collect_without_being_asked(make_cluster):
    cluster = make_cluster(grace_s=1.0, interval_s=1.0)
    pinned = cluster.connection.put(os.urandom(2000), pin="1h")
    files = [cluster.connection.put(os.urandom(2000 + index)) for index in range(3)]
    assert all(len(cluster.holders(file)) == 2 for file in files)
    wait_until(lambda: not any(cluster.holders(file) for file in files), "the periodic passes collect",
               timeout=30)
    assert len(cluster.holders(pinned)) == 2
    wait_until(lambda: sum(node["figures"].get("gc_deleted_blobs", 0) for node in cluster.connection.nodes()
                           if node["role"] == NodeRole.STORAGE) == 2 * len(files),
               "the nodes' figures count what they collected")
