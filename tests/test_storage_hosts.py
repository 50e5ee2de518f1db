"""Storage faults with real daemons on hosts of their own: a master, a
balancer, three storage nodes (R = 2) and two workers, each in a network
namespace (tests/hosts.py). See doc/testing.md.

- a storage node killed mid-job: the job succeeds from the replicas, and
  what it writes after the kill lands on the two live nodes;
- a storage node removed for good: the masters declare it lost and repair
  puts every file it held back on two live nodes within the time the test
  works out: REPAIR_MARGIN x (lost_after_s + two heartbeats + one repair
  interval + the bytes it held / repair_bytes_per_s) + REPAIR_SLACK_S,
  4 x (2 + 0.5 + 1 + about 0.3) + 10, about 25 s, for 32 MiB at R = 2;
- a storage node cut off from the workers only: reads fail over and every
  chunk of a job succeeds, the job within PARTITIONED_JOB_WITHIN_S (30 s).

Where each file is is read from the nodes' blob folders
(data/storage-K/blobs/ab/cdef...), which asks no node anything and so
touches no blob.
"""
import os
import random
import shutil
import time

import pytest

from daemons import wait_until
from history import PROOF_OUTPUT, PROOF_PROGRAM, proof_line
from hosts import HostCluster, running_hosts
from uds import client as uds_client
from uds.wire.enums import NodeRole

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") and not os.path.exists("/usr/sbin/nft"),
                                reason="the host harness needs root and nft (scripts/install-system-deps.sh)")

MiB = 1 << 20
POLICY = {"replicas": 2, "heartbeat_interval_s": 0.25, "lost_after_s": 2.0,
          "repair_interval_s": 1.0, "repair_bytes_per_s": 64 * MiB}
# Each chunk reads an input of its own, large enough that reading it takes
# a while: a kill lands while inputs are being read.
INPUT_BYTES = 4 * MiB
CHUNKS = 8
JOB_WAIT_S = 45.0
CLIENT_TIMEOUT_S = 10.0


def _started(root, policy: dict):
    with running_hosts(root, workers=2, storage=3, storage_policy=policy) as cluster:
        cluster.await_storage_membership()
        yield cluster


@pytest.fixture
def stored(tmp_path):
    yield from _started(tmp_path / "cluster", POLICY)


@pytest.fixture
def stored_slow_to_declare_lost(tmp_path):
    """A storage node killed stays alive in the membership for the whole
    test: repair makes no new copy, so a file is where its put put it, and readers
    must pass over the dead node on their own."""
    yield from _started(tmp_path / "cluster", {**POLICY, "lost_after_s": 60.0})


def _storage_states(connection) -> dict[str, str]:
    """Each storage node's address -> its state in the masters' membership."""
    return {node["address"]: node["state"] for node in connection.nodes() if node["role"] == NodeRole.STORAGE}


def _address(cluster: HostCluster, name: str) -> str:
    return cluster.layout.cluster.storage[cluster.storage_names.index(name)].address


def _inputs(count: int, seed: str) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(INPUT_BYTES) for _ in range(count)]


def _finished(connection, job_id: str, within_s: float = JOB_WAIT_S):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        status = connection.job_status(job_id, wait=1.0)
        if status.done:
            return status
    raise TimeoutError(f"job {job_id} not done in {within_s}s")


def _check_outputs(connection, status, inputs: list[bytes]) -> dict[int, str]:
    """Every chunk succeeded with its own proof line; chunk -> output id."""
    assert status.state == "succeeded", status
    outputs = {}
    for chunk in status.chunks:
        assert chunk.state == "succeeded", chunk
        outputs[chunk.chunk] = chunk.outputs[PROOF_OUTPUT]
        assert connection.get(outputs[chunk.chunk]) == proof_line(status.id, chunk.chunk, inputs[chunk.chunk])
    return outputs


def test_a_storage_node_killed_mid_job_leaves_the_job_to_the_replicas(stored_slow_to_declare_lost):
    stored = stored_slow_to_declare_lost
    inputs = _inputs(CHUNKS, "kill")
    with uds_client.connect(stored.layout.path, timeout=CLIENT_TIMEOUT_S) as connection:
        input_ids = [connection.put(data) for data in inputs]
        assert all(len(stored.holders(file_id)) == 2 for file_id in input_ids)
        job = connection.submit_job(PROOF_PROGRAM, chunks=CHUNKS, timeout=30,
                                    chunk_inputs=[{"data": file_id} for file_id in input_ids])

        def first_success():
            status = connection.job_status(job.id, wait=0.5)
            return status if status.succeeded else None
        before = wait_until(first_success, "a first chunk succeeded", timeout=JOB_WAIT_S)
        assert not before.done, "the job ended before the kill: it cannot land mid-job"
        # The node holding the most inputs of chunks not yet succeeded.
        pending = [chunk.chunk for chunk in before.chunks if chunk.state != "succeeded"]
        victim = max(stored.storage_names,
                     key=lambda name: sum(name in stored.holders(input_ids[chunk]) for chunk in pending))
        assert any(victim in stored.holders(input_ids[chunk]) for chunk in pending)
        stored.kill9(victim)

        status = _finished(connection, job.id)
        outputs = _check_outputs(connection, status, inputs)
        # Nothing repairs here: an output the victim lacks was stored after
        # the kill, and must be on both live nodes; one it holds, on one more.
        live = set(stored.storage_names) - {victim}
        where = {chunk: stored.holders(output) for chunk, output in outputs.items()}
        after_kill = [chunk for chunk in outputs if victim not in where[chunk]]
        assert after_kill, f"every output was stored before the kill: {where}"
        assert all(where[chunk] == live for chunk in after_kill), where
        assert all(len(where[chunk]) == 2 for chunk in outputs), where
        assert passed_over(stored, victim)


def passed_over(cluster: HostCluster, name: str) -> bool:
    """Whether a worker's log says a request to storage host `name` failed:
    the fault was met, not dodged."""
    address = _address(cluster, name)
    return any(f"from {address} failed" in (cluster.layout.root / f"worker-{worker}.log").read_text(errors="replace")
               for worker in cluster.worker_names)


def _bytes_held(cluster: HostCluster, name: str) -> int:
    return sum(path.stat().st_size for path in cluster.blobs(name).glob("*/*") if not path.name.endswith(".blocks"))


FILES = 16
FILE_BYTES = 2 * MiB
# Slowness allowed on a loaded 2-core machine, on top of the policy's figures.
REPAIR_MARGIN = 4.0
REPAIR_SLACK_S = 10.0


def test_a_storage_node_removed_for_good_is_replaced_within_the_stated_time(stored):
    rng = random.Random("remove")
    with uds_client.connect(stored.layout.path, timeout=CLIENT_TIMEOUT_S) as connection:
        files = [connection.put(rng.randbytes(FILE_BYTES)) for _ in range(FILES)]
        victim = "storage1"
        held = [file_id for file_id in files if victim in stored.holders(file_id)]
        assert held and all(len(stored.holders(file_id)) == 2 for file_id in files)
        held_bytes = _bytes_held(stored, victim)
        # Declared lost after lost_after_s of silence; the survivors hear of it
        # at their next heartbeat and scan at once; each file it held has one
        # new home, which pulls it at repair_bytes_per_s (one rate per
        # receiving node: the two survivors pull at once, count it as one).
        # A scan that started before may hold the targets for repair_interval_s.
        repair_within_s = REPAIR_MARGIN * (POLICY["lost_after_s"] + 2 * POLICY["heartbeat_interval_s"]
                                           + POLICY["repair_interval_s"]
                                           + held_bytes / POLICY["repair_bytes_per_s"]) + REPAIR_SLACK_S
        killed_at = time.monotonic()
        stored.kill9(victim)
        wait_until(lambda: _storage_states(connection).get(_address(stored, victim)) == "lost",
                   "the victim declared lost", timeout=REPAIR_MARGIN * POLICY["lost_after_s"] + REPAIR_SLACK_S)
        live = set(stored.storage_names) - {victim}
        remaining = repair_within_s - (time.monotonic() - killed_at)
        wait_until(lambda: all(stored.holders(file_id) >= live for file_id in files),
                   f"every file on both live nodes ({held_bytes} bytes to repair)", timeout=remaining)
        for file_id in files:
            assert connection.storage.stat(bytes.fromhex(file_id)) == FILE_BYTES


# Eight chunks on four slots run in two waves; each chunk pays at most one
# probe timeout (2 s, PROBE_TIMEOUT_S) for its read and one for its put on
# the cut node, which then stays last in its worker's orders for 10 s:
# about 2 x (0.5 + 4) s, times three for a loaded machine.
PARTITIONED_JOB_WITHIN_S = 30.0


def test_a_storage_node_cut_off_from_the_workers_leaves_reads_to_the_replicas(stored):
    inputs = _inputs(CHUNKS, "partition")
    with uds_client.connect(stored.layout.path, timeout=CLIENT_TIMEOUT_S) as connection:
        input_ids = [connection.put(data) for data in inputs]
        cut = max(stored.storage_names, key=lambda name: sum(name in stored.holders(file_id) for file_id in input_ids))
        stored.network.partition([cut], stored.worker_names)
        try:
            job = connection.submit_job(PROOF_PROGRAM, chunks=CHUNKS, timeout=30,
                                        chunk_inputs=[{"data": file_id} for file_id in input_ids])
            status = _finished(connection, job.id, PARTITIONED_JOB_WITHIN_S)
            _check_outputs(connection, status, inputs)
            assert _storage_states(connection)[_address(stored, cut)] == "alive"   # only the workers lost it
            assert passed_over(stored, cut)
        finally:
            stored.network.heal()
