"""The leader's job_spec_query: what a job was submitted with (its program,
args, job-wide inputs, the jobs it waits for), for the dashboard's job page."""
from __future__ import annotations

from dataclasses import replace

from uds import wire
from uds.client.jobs import JobSpec
from uds.master.commands import CancelJob, ForgetJobs, SubmitJob
from uds.master.views import job_spec_reply
from uds.wire.enums import ErrorCode

from test_master_leader import CLIENT, MASTER, error, leading, received, request
from test_master_state import JOB_A, JOB_B, PROGRAM

INPUT = (bytes.fromhex("1a" * 16), 42)


def spec(job: bytes = JOB_A, **changes) -> SubmitJob:
    return replace(SubmitJob(job=job, name="count <words>", program=PROGRAM, args=("--top", "10", "<script>"),
                             inputs={"words.txt": INPUT}, chunk_inputs=(), chunk_count=2, timeout_s=60.0,
                             max_retries=0), **changes)


def ask(job: bytes = JOB_A, request_id: int = 9) -> wire.JobSpecQuery:
    return wire.JobSpecQuery.make(CLIENT, request_id=request_id, job=job)


def test_the_leader_answers_what_a_job_was_submitted_with():
    cluster = leading()
    cluster.state.apply([spec(JOB_B), spec(JOB_A, after=(JOB_B,))], 1.0)
    asked = ask()
    [answer] = cluster.handle(received(asked), 2.0)
    assert answer.request == request(asked)
    reply = wire.decode(wire.encode(answer.message))
    assert isinstance(reply, wire.JobSpecReply) and reply.job_uuid == JOB_A
    got = JobSpec.from_reply(reply)
    assert got == JobSpec(id=JOB_A.hex(), name="count <words>", program=PROGRAM, args=("--top", "10", "<script>"),
                          inputs={"words.txt": INPUT}, after=(JOB_B.hex(),), inputs_dropped=0)


def test_a_job_spec_query_names_what_it_cannot_find():
    cluster = leading()
    cluster.state.apply([spec()], 1.0)
    other = b"O" * 16
    asked = ask(other)
    assert cluster.handle(received(asked), 2.0) == [error(asked, ErrorCode.UNKNOWN_JOB, f"unknown job {other.hex()}")]
    cluster.state.apply([CancelJob(JOB_A)], 10.0)
    cluster.state.apply([ForgetJobs((JOB_A,), 10, 0.0)], 20.0)
    asked = ask()
    assert cluster.handle(received(asked), 30.0) == [error(
        asked, ErrorCode.UNKNOWN_JOB, f"job {JOB_A.hex()} is past retention: its spec is no longer kept")]


def test_only_the_leader_answers_a_job_spec_query():
    from uds.master.leader import RaftStatus
    from test_master_leader import Cluster
    follower = Cluster()
    follower.handle(RaftStatus(ready=True, leader=False, leader_address="tcp://m2"), 0.0)
    [refused] = follower.handle(received(ask()), 1.0)
    assert refused.message.error_code == ErrorCode.NOT_LEADER


def test_inputs_beyond_one_body_are_left_out_by_name_and_counted():
    inputs = {f"{'i' * 200}.{index:06d}": (index.to_bytes(16, "big"), index) for index in range(60_000)}
    fields = {"name": "reduce", "program": PROGRAM, "args": [], "inputs": inputs, "after": []}
    reply = wire.decode(wire.encode(job_spec_reply(MASTER, 5, JOB_A, fields)))
    kept = sorted(reply.inputs)
    assert 0 < len(kept) < len(inputs)
    assert kept == sorted(inputs)[:len(kept)]
    assert reply.inputs_dropped == len(inputs) - len(kept)
