"""One fixed example of every message type, and the golden byte vectors.

The vectors in tests/golden/wire_vectors.json pin the wire format: another
implementation (a C client, say) can be checked against them, and a change
to the format shows up as a failing test. Regenerate them deliberately with
`python tests/golden.py --write` when the format is meant to change.
"""
from __future__ import annotations

import json
import pathlib
import sys

from uds import wire
from uds.wire import ChunkState, ErrorCode, JobState, NodeRole, PutStatus

VECTORS_PATH = pathlib.Path(__file__).resolve().parent / "golden" / "wire_vectors.json"
FILE_IDS_PATH = VECTORS_PATH.with_name("file_ids.json")

NODE = bytes.fromhex("00112233445566778899aabbccddeeff")
JOB = bytes.fromhex("0123456789abcdef0123456789abcdef")
FILE = bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90")
PROGRAM = bytes.fromhex("feedfacecafebeef0011223344556677")
OUTPUT = bytes.fromhex("77665544332211000011223344556677")
LOG = bytes.fromhex("10101010202020203030303040404040")
RESULT = dict(exit_code=0, outputs={"counts.txt": [OUTPUT, 1234]}, stdout=[LOG, 10],
              stderr=None, error="", elapsed_s=0.25, bytes_from_cache=4096,
              bytes_from_storage=65536, cpu_user_s=0.125, cpu_system_s=0.0625,
              peak_memory_bytes=1 << 24, output_bytes=1244, assigned_at=1_795_000_001.0,
              started_at=1_795_000_001.5, first_read_at=1_795_000_001.625,
              ended_at=1_795_000_001.75, uploaded_at=1_795_000_001.875)
LIMITS = {"memory_bytes": 512 << 20, "millicpus": 1500}
WORKER_RESOURCES = dict(millicpus=8000, memory_bytes=16 << 30, disk_bytes=100 << 30, sandbox="bubblewrap")
NODE_FACTS = dict(software="0.12.0", cpus=8, machine_memory_bytes=32 << 30, machine_disk_bytes=500 << 30,
                  addresses=["tcp://10.0.0.7:7400", "10.0.0.7"])


def samples() -> list[wire.Message]:
    """One message of every type, in message_type order."""
    m = wire
    return [
        m.WorkerRequest.make(
            NODE, job=JOB, program_length=512, num_input_files=1, epoch=3,
            program=[PROGRAM, 512], args=["--top", "10"], inputs={"data.txt": [FILE, 70000]},
            chunk_count=2, timeout_s=60.0,
            assignments=[{"chunk": 0, "attempt": 1, "inputs": {}},
                         {"chunk": 1, "attempt": 1, "inputs": {"extra.txt": [FILE, 70000]}}],
            limits=LIMITS, network=False),
        m.WorkerStatus.make(NODE, job=JOB, state=int(ChunkState.SUCCEEDED), epoch=3, chunk=1,
                            attempt=1, worker_started_at=1_795_000_000.0, **RESULT),
        m.FileRequest.make(NODE, file=FILE),
        m.FileResponse.make(NODE, file=FILE, file_length=5, data=b"hello"),
        m.Error.make(NODE, request_id=7, error_code=int(ErrorCode.UNKNOWN_FILE),
                     failed_type=int(m.MessageType.FILE_READ), reason="no such file"),
        m.Hello.make(NODE, request_id=1, role=int(NodeRole.WORKER), slots=4,
                     cache_bytes=1 << 30, start_time_ms=1_795_000_000_000,
                     host="node-1", address="tcp://127.0.0.1:5601", version=1, **WORKER_RESOURCES,
                     **NODE_FACTS),
        m.HelloReply.make(NODE, request_id=1, epoch=3, heartbeat_interval_ms=500, lease_ms=3000),
        m.Heartbeat.make(NODE, epoch=3, free_slots=3, running_count=1,
                         running=[[JOB, 1, 1]], cache_added=[[FILE, 70000]], cache_removed=[]),
        m.JobSubmit.make(NODE, request_id=2, job=JOB, chunk_count=2, program=[PROGRAM, 512],
                         args=["--top", "10"], inputs={"data.txt": [FILE, 70000]},
                         chunk_inputs=[], timeout_s=60.0, max_retries=2, name="count",
                         limits=LIMITS, network=True,
                         refs=[{"name": "part.txt", "chunk": -1, "job": NODE, "output": "part.txt",
                                "from_chunk": -2}],
                         after=[NODE], start_at=1_795_000_100.0, deadline=None, hold=True, cache=True,
                         retry_backoff_s=1.5),
        m.JobSubmitReply.make(NODE, request_id=2, job=JOB, created=1),
        m.JobStatus.make(NODE, request_id=3, job=JOB, detail=1, wait_ms=0, first_chunk=0, max_chunks=0),
        m.JobStatusReply.make(
            NODE, request_id=3, job=JOB, state=int(JobState.RUNNING), chunk_count=2,
            chunks_succeeded=1, chunks_failed=0, first_chunk=0, next_chunk=1, past_retention=0,
            name="count", submitted_at=1_795_000_000.5,
            finished_at=None, error="",
            chunks=[{"chunk": 0, "state": "succeeded", "attempt": 2, "worker": NODE,
                     "failures": ["infrastructure"], **RESULT}],
            limits=LIMITS, network=False, waiting="", chunks_cached=1, after=[NODE],
            start_at=None, deadline=1_795_003_600.0, cache=True),
        m.JobCancel.make(NODE, request_id=4, job=JOB),
        m.JobRelease.make(NODE, request_id=5, job=JOB),
        m.ChunkDispatch.make(
            NODE, epoch=3, attempt_count=1,
            jobs=[{"job": JOB, "program": [PROGRAM, 512], "args": [], "inputs": {},
                   "chunk_count": 2, "timeout_s": 60.0, "limits": LIMITS, "network": False}],
            attempts=[{"job": JOB, "chunk": 0, "attempt": 1, "inputs": {}}]),
        m.ChunkCancel.make(NODE, epoch=3, job=JOB, attempts=[[0, 1]]),
        m.ChunkEvents.make(NODE, epoch=3, batch_id=9, event_count=1, events=[
            {"job": JOB, "chunk": 0, "attempt": 1, "state": int(ChunkState.SUCCEEDED),
             "worker": NODE, "worker_started_at": 1_795_000_000.0, **RESULT}]),
        m.ChunkEventsAck.make(NODE, epoch=3, batch_id=9),
        m.FilePutBegin.make(NODE, request_id=5, file=FILE, file_length=11),
        m.FilePutData.make(NODE, request_id=5, file=FILE, offset=0, data=b"hello world"),
        m.FilePutEnd.make(NODE, request_id=5, file=FILE),
        m.FilePutReply.make(NODE, request_id=5, file=FILE, status=int(PutStatus.STORED)),
        m.FileStat.make(NODE, request_id=6, file=FILE),
        m.FileStatReply.make(NODE, request_id=6, file=FILE, file_length=11, present=1),
        m.FileRead.make(NODE, request_id=7, file=FILE, offset=6, length=5),
        m.FileReadReply.make(NODE, request_id=7, file=FILE, offset=6, length=5, data=b"world"),
        m.NodesQuery.make(NODE, request_id=8),
        m.NodesReply.make(NODE, request_id=8, nodes=[{
            "node": NODE, "role": int(NodeRole.WORKER), "host": "node-1",
            "address": "", "slots": 4, "free_slots": 3, "running": 1, "cache_bytes": 1 << 30,
            "started_at": 1_795_000_000.0, "last_seen_s": 0.5, "state": "alive", **WORKER_RESOURCES, "lease_epoch": 0,
            "figures": {}, **NODE_FACTS}]),
        m.EventsQuery.make(NODE, request_id=9, after_seq=0, limit=100, job=JOB, node=None,
                           kinds=["job_submitted", "chunk_succeeded"], wait_ms=30000),
        m.EventsReply.make(NODE, request_id=9, last_seq=1, events=[{
            "seq": 1, "at": 1_795_000_000.0, "kind": "job_submitted", "job": JOB, "chunk": None,
            "attempt": None, "node": None, "detail": "count, 2 chunks"}], through_seq=1, gap_from=0, gap_to=0),
        m.StatsQuery.make(NODE, request_id=10),
        m.StatsReply.make(NODE, request_id=10, role=int(NodeRole.STORAGE),
                          counters={"bytes_served": 4096, "reads": 1}),
        m.StatusAck.make(NODE, epoch=3, attempt_count=1,
                         attempts=[[JOB, 1, 1, int(ChunkState.SUCCEEDED)]]),
        m.NodeReport.make(NODE, epoch=3, nodes=[{
            "node": NODE, "role": int(NodeRole.WORKER), "host": "node-1",
            "address": "", "slots": 4, "free_slots": 3, "running": 1, "cache_bytes": 1 << 30,
            "started_at": 1_795_000_000.0, "last_seen_s": 0.5, "state": "alive", **WORKER_RESOURCES, "lease_epoch": 0,
            "figures": {}, **NODE_FACTS}]),
        m.FileManifest.make(NODE, request_id=11, file=FILE, first_block=1),
        m.FileManifestReply.make(NODE, request_id=11, file=FILE, file_length=3 * (1 << 20) + 1,
                                 first_block=1, block_count=2, hashes=bytes(range(64))),
        m.MasterChange.make(NODE, request_id=12, action=m.MASTER_ADD, raft="10.0.0.4:7110",
                            address="tcp://10.0.0.4:7100"),
        m.MasterChangeReply.make(NODE, request_id=12, commit_index=42,
                                 members=["10.0.0.1:7110", "10.0.0.2:7110", "10.0.0.4:7110"]),
        m.StorageHeartbeat.make(NODE, request_id=13, start_time_ms=1_795_000_000_000, host="store-1",
                                address="tcp://10.0.0.5:7300", version=1,
                                figures={"free_bytes": 1 << 30, "blob_count": 12}, **NODE_FACTS),
        m.StorageHeartbeatReply.make(NODE, request_id=13, heartbeat_interval_ms=1000, nodes=[
            {"node": NODE, "address": "tcp://10.0.0.5:7300", "state": "alive", "free_bytes": 1 << 30}]),
        m.FileReplicate.make(NODE, request_id=14, file=FILE, file_length=11,
                             source="tcp://10.0.0.6:7300"),
        m.GcCheck.make(NODE, request_id=15, files=[FILE]),
        m.GcCheckReply.make(NODE, request_id=15, files=[FILE]),
        m.GcRun.make(NODE, request_id=16, dry_run=1),
        m.GcRunReply.make(NODE, request_id=16, dry_run=1, blobs_examined=3, bytes=11, files=[[FILE, 11]]),
        m.FilePin.make(NODE, request_id=17, until_ms=1_795_086_400_000, files=[FILE]),
        m.FilePinReply.make(NODE, request_id=17, file_count=1),
        m.AttemptsQuery.make(NODE, request_id=18, job=JOB, chunk=1),
        m.AttemptsReply.make(NODE, request_id=18, job=JOB, chunk=1, attempts_dropped=0, attempts=[
            {"attempt": 1, "state": "failed", "failure": "application", "worker": NODE,
             "dispatched_at": 1_795_000_000.5, "running_at": 1_795_000_001.6, "committed_at": 1_795_000_001.8,
             **RESULT, "exit_code": 3},
            {"attempt": 2, "state": "queued", "failure": "", "worker": None, "dispatched_at": None,
             "running_at": None, "committed_at": None, **wire.ChunkResult().as_body()}]),
        m.JobsQuery.make(NODE, request_id=19, limit=50, states=[int(JobState.FAILED)], since=1_795_000_000.0,
                         before=[1_795_000_100.0, JOB]),
        m.JobsReply.make(NODE, request_id=19, more=True, jobs=[
            {"job": JOB, "name": "count", "state": int(JobState.FAILED), "submitted_at": 1_795_000_000.0,
             "started_at": 1_795_000_000.5, "finished_at": 1_795_000_009.0, "chunk_count": 2,
             "chunks_succeeded": 1, "chunks_failed": 1, "chunks_cancelled": 0, "chunks_cached": 0,
             "past_retention": True, "error": "chunk 1: exit code 3"}]),
        m.JobSpecQuery.make(NODE, request_id=20, job=JOB),
        m.JobSpecReply.make(NODE, request_id=20, job=JOB, name="count", program=[FILE, 11],
                            args=["--top", "10"], inputs={"words.txt": [FILE, 11]}, inputs_dropped=0,
                            after=[NODE]),
    ]


def vectors() -> dict[str, list[str]]:
    return {type(sample).SPEC.name: [bytes(frame).hex() for frame in wire.encode(sample)]
            for sample in samples()}


def load_vectors() -> dict[str, list[str]]:
    return json.loads(VECTORS_PATH.read_text())


def file_id_contents() -> dict[str, bytes]:
    """Contents whose ids pin the file id's definition (doc/wire.md): no block,
    one partial, one full, and several with a partial last block."""
    block = 1 << 20
    return {
        "empty": b"",
        "hello": b"hello",
        "one full block of 0x61": b"a" * block,
        "one block and one byte, bytes i % 251": bytes(i % 251 for i in range(block + 1)),
        "three blocks and 1000 bytes, bytes i % 253": bytes(i % 253 for i in range(3 * block + 1000)),
    }


def file_id_vectors() -> dict[str, dict]:
    from uds.wire.ids import manifest_of
    vectors = {}
    for name, content in file_id_contents().items():
        manifest = manifest_of(content)
        vectors[name] = {"size": len(content), "file_id": manifest.file_id().hex(),
                         "block_hashes": [manifest.block_hash(i).hex() for i in range(manifest.block_count)]}
    return vectors


def load_file_id_vectors() -> dict[str, dict]:
    return json.loads(FILE_IDS_PATH.read_text())


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/golden.py --write   (rewrites the golden vectors)")
    VECTORS_PATH.parent.mkdir(exist_ok=True)
    VECTORS_PATH.write_text(json.dumps(vectors(), indent=1) + "\n")
    print(f"wrote {len(vectors())} vectors to {VECTORS_PATH}")
    FILE_IDS_PATH.write_text(json.dumps(file_id_vectors(), indent=1) + "\n")
    print(f"wrote {len(file_id_vectors())} file ids to {FILE_IDS_PATH}")
