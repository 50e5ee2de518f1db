"""Inputs come through FUSE block by block, and work goes where its inputs are cached."""
import os


def _storage_bytes_served(connection) -> int:
    return connection.storage.stats()["bytes_served"]


def test_reading_4k_of_a_64mib_input_fetches_far_less_than_the_file(shared_cluster):
    connection = shared_cluster.connection
    big = os.urandom(64 * 1024 * 1024)
    file_id = connection.put(big)
    before = _storage_bytes_served(connection)
    middle = 32 * 1024 * 1024
    program = (b"#!/bin/sh\ndd if=$UDS_INPUTS/big of=$UDS_OUTPUT/piece bs=4096 skip=8192 count=1 "
               b"status=none\n")
    job = connection.submit_job(program, inputs={"big": file_id})
    status = job.wait(timeout=60)
    assert status.state == "succeeded", status
    assert connection.get(status.chunks[0].outputs["piece"]) == big[middle:middle + 4096]
    served = _storage_bytes_served(connection) - before
    assert 4096 <= served <= 8 * 1024 * 1024, served       # a block or a few, not 64 MiB
    assert status.chunks[0].result.bytes_from_storage <= 8 * 1024 * 1024


def test_second_job_goes_to_the_worker_that_caches_its_inputs(shared_cluster):
    connection = shared_cluster.connection
    first_inputs = [{"data": os.urandom(4 * 1024 * 1024)}, {"data": os.urandom(4 * 1024 * 1024)}]
    ids = [{"data": connection.put(chunk["data"])} for chunk in first_inputs]
    program = b"#!/bin/sh\ncat $UDS_INPUTS/data > /dev/null\n"
    first = connection.submit_job(program, chunk_inputs=ids, chunks=2).wait(timeout=60)
    assert first.state == "succeeded"
    placed = {chunk.chunk: chunk.worker for chunk in first.chunks}
    assert placed[0] != placed[1], "two idle workers share the first job"
    # Swap the inputs: without affinity chunk 0 would go where chunk 0 went before.
    second = connection.submit_job(program, chunk_inputs=ids[::-1], chunks=2).wait(timeout=60)
    assert second.state == "succeeded"
    assert second.chunks[0].worker == placed[1]
    assert second.chunks[1].worker == placed[0]
    assert all(chunk.result.bytes_from_storage == 0 for chunk in second.chunks)
    assert all(chunk.result.bytes_from_cache == 4 * 1024 * 1024 for chunk in second.chunks)
