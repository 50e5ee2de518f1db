"""Three storage nodes under their nemeses: each once, against a cluster
whose master, balancer, storage nodes (R = 2, CHAOS_STORAGE_POLICY) and
workers run on hosts of their own, under a job stream from several client
threads whose inputs are stored on two nodes each. See doc/testing.md.

The history checker judges each case: every acknowledged job succeeds
with the outputs its chunks' inputs prove, and each chunk is committed
once. A storage fault must cost at most a failover, never a chunk.
"""
import os
import shutil

import pytest

from chaos import CHAOS_STORAGE_POLICY, STORAGE_NEMESES, judged_run, sound_copies
from hosts import running_hosts

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") and not os.path.exists("/usr/sbin/nft"),
                                reason="the host harness needs root and nft (scripts/install-system-deps.sh)")


@pytest.fixture
def stored(tmp_path):
    with running_hosts(tmp_path / "cluster", workers=2, storage=3, storage_policy=CHAOS_STORAGE_POLICY) as cluster:
        cluster.await_storage_membership()
        yield cluster


@pytest.mark.parametrize("nemesis", list(STORAGE_NEMESES))
def test_storage_nemesis_loses_no_acknowledged_job_and_commits_each_chunk_once(stored, nemesis):
    judged_run(STORAGE_NEMESES[nemesis], stored, nemesis)
    if nemesis == "corrupt_replica":        # its recovery awaited the scrub and the repair
        assert any((stored.blobs(name).parent / "corrupt").glob("*") for name in stored.storage_names)


def test_sound_copies_counts_only_blobs_that_hash_to_their_id(stored):
    from uds import client as uds_client
    with uds_client.connect(stored.layout.path, timeout=10.0) as connection:
        file_id = connection.put(b"a file of two copies")
    assert sound_copies(stored, file_id) == 2
    (holder,) = sorted(stored.holders(file_id))[:1]
    stored.blob_path(holder, file_id).write_bytes(b"A file of two copies")
    assert sound_copies(stored, file_id) == 1
