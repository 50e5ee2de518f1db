"""Per-block verification through real daemons: a byte flipped on the storage
node's disk is never read by a program, whichever block it is in, and the
attempt fails as an infrastructure fault that names the input and the node."""
import os
import random
import time

import pytest

from uds import client

MiB = 1 << 20
SIZE = 8 * MiB + 300 * 1024  # eight full blocks and a partial ninth
# (block position class, offset of the flipped byte)
FLIPS = {
    "first": 17,
    "middle": 4 * MiB + 12345,
    "last full": 7 * MiB + MiB - 1,
    "partial last": 8 * MiB + 299 * 1024,
}

# Reads its input in 128 KiB pieces and compares every byte it is given with
# the content it expects (made again from the seed), skipping a piece whose
# read fails. Exit 42: a wrong byte reached it; 5: some read failed; 0: all good.
CHECKER = b'''#!/usr/bin/env python3
import os, random, sys
seed, size = int(sys.argv[1]), int(sys.argv[2])
expected = random.Random(seed).randbytes(size)
fd = os.open(os.path.join(os.environ["UDS_INPUTS"], "data"), os.O_RDONLY)
wrong = failed = 0
for offset in range(0, size, 128 * 1024):
    try:
        piece = os.pread(fd, 128 * 1024, offset)
    except OSError:
        failed += 1
        continue
    if piece != expected[offset:offset + len(piece)]:
        wrong += 1
print("wrong", wrong, "failed", failed)
sys.exit(42 if wrong else 5 if failed else 0)
'''


def _blob_path(layout, file_id_hex):
    return layout.data_of("storage", None) / "blobs" / file_id_hex[:2] / file_id_hex[2:]


def _lost_details(connection, job_id):
    return [event.detail for event in connection.events(job=job_id, kinds=["chunk_lost"], limit=10_000).events]


def test_a_flipped_byte_on_the_storage_disk_never_reaches_the_program(shared_cluster):
    connection = shared_cluster.connection
    storage_address = shared_cluster.layout.cluster.storage[0].address
    jobs = {}
    for seed, (where, offset) in enumerate(FLIPS.items(), start=1):
        content = random.Random(seed).randbytes(SIZE)
        file_id = connection.put(content)
        with open(_blob_path(shared_cluster.layout, file_id), "r+b") as disk:  # the disk rots
            disk.seek(offset)
            disk.write(bytes([content[offset] ^ 0x20]))
        # Every copy is bad: each attempt is refused, as infrastructure, until the deadline.
        jobs[where] = (file_id, connection.submit_job(CHECKER, args=[str(seed), str(SIZE)],
                                                      inputs={"data": file_id}, timeout=60,
                                                      deadline=time.time() + 5.0))
    for where, (file_id, job) in jobs.items():
        status = job.wait(timeout=120)
        assert (status.state, status.error) == ("failed", "deadline exceeded"), (where, status)
        details = _lost_details(connection, job.id)
        assert details, (where, status.error)
        for detail in details:  # every attempt: rejected, naming the input, its id and the node
            assert detail.startswith(f"rejected: input 'data' ({file_id}): {file_id} block "
                                     f"{FLIPS[where] // MiB} from storage {storage_address}"), detail
        # never an exit code: the program saw no wrong byte
        assert set(status.chunks[0].failures) == {"infrastructure"}, status


def test_a_byte_written_into_the_workers_cache_is_caught_and_the_file_fetched_again(shared_cluster):
    connection = shared_cluster.connection
    seed = 99
    content = random.Random(seed).randbytes(3 * MiB + 5)
    file_id = connection.put(content)
    first = connection.submit_job(CHECKER, args=[str(seed), str(len(content))], inputs={"data": file_id})
    assert first.wait(timeout=60).state == "succeeded"
    details = []
    for _ in range(3):  # until a chunk lands on a worker whose copy was poisoned
        poisoned = 0
        for name in shared_cluster.worker_names():  # the attack, on each worker that cached it
            cached = shared_cluster.daemons[name].data / "cache" / "complete" / file_id
            if cached.exists():
                cached.chmod(0o644)
                with open(cached, "r+b") as disk:
                    disk.seek(2 * MiB + 1)
                    disk.write(bytes([content[2 * MiB + 1] ^ 0x01]))
                poisoned += 1
        assert poisoned
        again = connection.submit_job(CHECKER, args=[str(seed), str(len(content))], inputs={"data": file_id})
        status = again.wait(timeout=60)
        # The poisoned copy is caught (a rejected attempt, the copy deleted) and a later
        # attempt fetches the file anew; the program never sees the planted byte (it would
        # exit 42, a failure). A chunk placed on a worker without a copy caches one: poison
        # that too and go again.
        assert status.state == "succeeded", status
        details = _lost_details(connection, again.id)
        if details:
            break
    assert details
    for detail in details:  # concurrent reads may see the deleted copy first: either names the file
        assert detail.startswith(f"rejected: input 'data' ({file_id}): the worker's cached copy of "
                                 f"{file_id} "), detail
    # Which check fires first depends on timing: the block's hash, or the copy's
    # changed inode times; either way the copy is named as failing its check.
    assert any(f"{file_id} block 2 does not match its hash" in detail or "failed its check" in detail
               for detail in details), details
