"""master/records.py and the packed results: what a master keeps per chunk
reads back exactly as it was given, and a job pickles its chunks as one blob."""
import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import for_schema
from uds.master.commands import ChunkPhase, SubmitJob, pack_result, unpack_result
from uds.master.records import ChunkRecord, JobRecord
from uds.wire.records import RESULT, ChunkResult

results = for_schema(RESULT).map(lambda body: ChunkResult.from_body(body).checked())


@settings(max_examples=300, deadline=None)
@given(results)
def test_a_packed_result_unpacks_equal_to_what_was_packed(result):
    assert unpack_result(pack_result(result)) == result
    assert ChunkRecord(ChunkPhase.SUCCEEDED, packed_result=pack_result(result)).result == result


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(ChunkPhase)), st.integers(1, 9), st.integers(0, 3),
                          st.integers(0, 3), st.none() | st.binary(min_size=16, max_size=16),
                          st.none() | results.map(pack_result)), min_size=1, max_size=20))
def test_a_job_record_pickles_its_chunks_as_one_blob_and_reads_them_back(chunks):
    spec = SubmitJob(job=b"j" * 16, name="n", program=(b"p" * 16, 1), args=(), inputs={}, chunk_inputs=(),
                     chunk_count=len(chunks), timeout_s=1.0, max_retries=0)
    record = JobRecord(spec=spec, submitted_at=1.0, chunks=[ChunkRecord(*chunk) for chunk in chunks],
                       finished_at=2.0, started_at=1.5, chunks_succeeded=1, first_error="chunk 0: x")
    restored = pickle.loads(pickle.dumps(record))
    assert restored == record
    assert all(type(chunk.phase) is ChunkPhase for chunk in restored.chunks)
    assert [chunk.result for chunk in restored.chunks] == [chunk.result for chunk in record.chunks]
