"""The dashboard's pure parts: client objects as the JSON of its HTTP API,
the task stream from a job's events, the rate, and the token rules."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uds.client.attempts import Attempt
from uds.client.dashboard import auth, views
from uds.client.dashboard.server import safe_filename
from uds.client.events import Event
from uds.client.jobs import ChunkStatus, JobSpec, JobStatus
from uds.client.masters import MasterRecord
from uds.wire.enums import NodeRole
from uds.wire.records import ChunkResult

JOB = "ab" * 16
WORKER = "cd" * 16
FILE = bytes.fromhex("ef" * 16)


def event(seq: int, kind: str, chunk: int | None = 0, attempt: int | None = 1, node: str | None = WORKER,
          at: float = 100.0, job: str | None = JOB) -> Event:
    return Event(seq, at, kind, job, chunk, attempt, node, "")


def chunk(index: int, state: str, **result) -> ChunkStatus:
    return ChunkStatus(chunk=index, state=state, attempt=1, worker=WORKER, result=ChunkResult(**result))


def test_a_job_with_its_spec_chunks_and_stream_is_plain_json():
    status = JobStatus(id=JOB, name="count", state="running", chunk_count=3, succeeded=1, failed=0,
                       submitted_at=10.0, finished_at=None, error="", after=("01" * 16,),
                       chunks=[chunk(0, "succeeded", exit_code=0, outputs={"out/a.txt": (FILE, 5)},
                                     stdout=(FILE, 7), elapsed_s=1.5),
                               chunk(1, "delayed"), chunk(2, "cancelled")])
    spec = JobSpec(id=JOB, name="count", program=(FILE, 99), args=("<script>",), inputs={"b": (FILE, 2)})
    stream = views.task_stream([event(1, "chunk_started", at=11.0), event(2, "chunk_succeeded", at=12.5)])
    body = views.job_json(status, spec, ["02" * 16], stream)
    assert json.loads(json.dumps(body)) == body
    assert body["program"] == {"id": FILE.hex(), "size": 99}
    assert body["args"] == ["<script>"] and body["inputs"] == [{"name": "b", "id": FILE.hex(), "size": 2}]
    assert [c["state"] for c in body["chunks"]] == ["succeeded", "queued", "cancelled"]
    assert body["cancelled"] == 1 and body["started_at"] == 11.0 and body["dependents"] == ["02" * 16]
    assert body["chunks"][0]["outputs"] == [{"name": "out/a.txt", "id": FILE.hex(), "size": 5}]
    assert body["chunks"][0]["stdout"] == {"id": FILE.hex(), "size": 7} and body["chunks"][0]["stderr"] is None
    assert body["stream"] == [{"chunk": 0, "attempt": 1, "worker": WORKER, "start": 11.0, "end": 12.5,
                               "state": "succeeded"}]


def test_a_job_whose_spec_is_no_longer_kept_has_no_program_args_or_inputs():
    status = JobStatus(id=JOB, name="old", state="succeeded", chunk_count=1, succeeded=1, failed=0,
                       submitted_at=1.0, finished_at=2.0, error="", past_retention=True)
    body = views.job_json(status, None)
    assert (body["program"], body["args"], body["inputs"], body["chunks"]) == (None, [], [], [])


def test_an_attempt_carries_its_usage_and_every_step_of_its_timeline():
    record = {"attempt": 2, "state": "failed", "failure": "application", "worker": bytes.fromhex(WORKER),
              "dispatched_at": 1.0, "running_at": 2.0, "committed_at": 4.0,
              **ChunkResult(exit_code=3, started_at=2.5, ended_at=3.5, elapsed_s=1.0).as_body()}
    body = views.attempt_json(Attempt.from_record(record))
    assert body["timeline"] == {"dispatched": 1.0, "assigned": None, "started": 2.5, "first_read": None,
                                "ended": 3.5, "uploaded": None, "committed": 4.0}
    assert body["usage"]["wall_s"] == 1.0 and body["exit_code"] == 3 and body["failure"] == "application"


def test_the_task_stream_has_a_bar_per_attempt_that_reached_a_worker():
    events = [event(1, "chunk_dispatched", chunk=0, node=None, at=1.0),
              event(2, "chunk_dispatched", chunk=1, node=None, at=1.0),
              event(3, "chunk_dispatched", chunk=2, node=None, at=1.0),
              event(4, "chunk_started", chunk=0, at=2.0),
              event(5, "chunk_retried", chunk=0, at=3.0),
              event(6, "chunk_succeeded", chunk=1, at=4.0),         # ended within one report: no start event
              event(7, "chunk_cancelled", chunk=2, node=None, at=5.0)]   # never reached a worker
    # By start: chunk 1's bar starts at its dispatch.
    assert views.task_stream(events) == [
        {"chunk": 1, "attempt": 1, "worker": WORKER, "start": 1.0, "end": 4.0, "state": "succeeded"},
        {"chunk": 0, "attempt": 1, "worker": WORKER, "start": 2.0, "end": 3.0, "state": "failed"}]


def test_the_feeds_stream_forgets_attempts_once_they_end():
    stream = views.TaskStream(keep_ended=False)
    assert stream.add(event(1, "chunk_started"))["end"] is None
    assert stream.bars() and stream.add(event(2, "chunk_lost", at=101.0))["state"] == "lost"
    assert stream.bars() == []


@given(st.lists(st.tuples(st.sampled_from(["chunk_succeeded", "chunk_failed", "chunk_cached", "chunk_started",
                                           "job_submitted"]),
                          st.floats(0, 20, allow_nan=False)), max_size=50),
       st.floats(0, 30, allow_nan=False))
@settings(max_examples=200, deadline=None)
def test_the_rate_counts_the_chunks_that_ended_in_its_window(seen, now):
    seen = sorted(seen, key=lambda item: item[1])
    meter = views.RateMeter(window_s=5.0)
    for kind, at in seen:
        meter.note(event(1, kind), at)
    now = max([now, *(at for _, at in seen)])
    ended = [at for kind, at in seen if kind in views.RATE_KINDS and at > now - 5.0]
    assert meter.rate(now) == pytest.approx(len(ended) / 5.0)


def test_the_cluster_names_the_leader_the_active_balancer_and_each_nodes_figures():
    masters = [MasterRecord("tcp://m1", "follower", 3, 10, lag=0),
               MasterRecord("tcp://m2", "leader", 3, 10, lag=0, confirmed_leader=True),
               MasterRecord("tcp://m3", "unreachable")]
    node = dict(host="h", address="tcp://n", slots=0, free_slots=0, running=0, cache_bytes=0, state="alive",
                millicpus=0, memory_bytes=0, lease_epoch=0, figures={})
    nodes = [{**node, "node": b"\x01" * 16, "role": NodeRole.LOADBALANCER, "lease_epoch": 4},
             {**node, "node": b"\x02" * 16, "role": NodeRole.LOADBALANCER},
             {**node, "node": b"\x03" * 16, "role": NodeRole.STORAGE,
              "figures": {"used_bytes": 5, "free_bytes": 6, "blob_count": 2, "repair_pending": 1}},
             {**node, "node": b"\x04" * 16, "role": NodeRole.WORKER, "slots": 2, "free_slots": 1, "running": 1,
              "millicpus": 1500, "memory_bytes": 1 << 30, "cache_bytes": 1 << 31}]
    body = views.cluster_json(masters, nodes, {"messages": 3}, 50.0)
    assert json.loads(json.dumps(body)) == body
    assert body["leader"] == "tcp://m2" and body["masters"][2]["term"] is None
    assert [(b["active"], b["epoch"]) for b in body["balancers"]] == [(True, 4), (False, 0)]
    assert body["storage"][0] | {"node": None} == {"node": None, "host": "h", "address": "tcp://n", "state": "alive",
                                                   "used_bytes": 5, "free_bytes": 6, "blobs": 2,
                                                   "repair": {"pending": 1, "repaired": None}}
    worker = body["workers"][0]
    assert (worker["cpus"], worker["slots"], worker["running"], worker["cached_bytes"]) == (1.5, 2, 1, None)
    assert body["counters"] == {"messages": 3}
    assert views.cluster_json(masters, None, None, 1.0)["workers"] == []


def test_a_log_event_says_what_happened_in_one_line():
    body = views.event_json(event(7, "chunk_failed", node=None))
    assert body["text"] == f"chunk failed job {JOB[:8]} chunk 0 attempt 1"
    assert body["seq"] == 7 and body["job"] == JOB


# -- the token rules ----------------------------------------------------------------

@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("10.1.2.3", False), ("::", False), ("dash.example", False)])
def test_only_loopback_addresses_count_as_loopback(host, loopback):
    assert auth.is_loopback(host) is loopback


def test_a_non_loopback_bind_needs_a_token_and_then_every_request_but_static_does():
    with pytest.raises(auth.TokenRequiredError, match="not loopback"):
        auth.Gate.for_listen("0.0.0.0", None)
    gate = auth.Gate.for_listen("0.0.0.0", "sesame")
    assert gate.check_request("/static/app.js", None, None, None) is None
    assert gate.check_request("/api/jobs", None, None, None).status == 401
    assert gate.check_request("/api/jobs", "wrong", None, None).status == 403
    assert gate.check_request("/", None, "sesame", None) is None
    assert gate.check_request("/", None, None, "sesame") is None and gate.sets_cookie("sesame")
    assert not gate.sets_cookie("wrong") and not gate.sets_cookie(None)


def test_on_loopback_reading_is_open_and_actions_need_the_header():
    gate = auth.Gate.for_listen("127.0.0.1", "sesame")
    assert gate.check_request("/api/jobs", None, None, None) is None and not gate.sets_cookie("sesame")
    assert gate.check_action(None).status == 401
    assert gate.check_action("sesame!").status == 403
    assert gate.check_action("sesame") is None
    assert auth.Gate.for_listen("127.0.0.1", None).check_action("sesame").status == 409


@pytest.mark.parametrize("host, allowed", [("127.0.0.1:8265", True), ("localhost:8265", True), ("localhost", True),
                                           ("[::1]:8265", True), ("127.0.0.1", True),
                                           ("rebound.example:8265", False), ("10.1.2.3:8265", False),
                                           ("", False), (None, False), ("[::1", False)])
def test_on_loopback_a_request_must_name_a_loopback_host(host, allowed):
    refusal = auth.Gate.for_listen("127.0.0.1", "sesame").check_host(host)
    assert (refusal is None) is allowed
    if not allowed:
        assert refusal.status == 403 and "127.0.0.1" in refusal.reason
    assert auth.Gate.for_listen("0.0.0.0", "sesame").check_host(host) is None   # the token guards it there


@pytest.mark.parametrize("listen, parsed", [("127.0.0.1:8265", ("127.0.0.1", 8265)), ("[::1]:0", ("::1", 0)),
                                            ("0.0.0.0:80", ("0.0.0.0", 80))])
def test_listen_addresses_parse(listen, parsed):
    assert auth.parse_listen(listen) == parsed


@pytest.mark.parametrize("listen", ["8265", ":8265", "host:", "host:port", "host:70000"])
def test_bad_listen_addresses_are_refused(listen):
    with pytest.raises(ValueError):
        auth.parse_listen(listen)


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_a_download_name_is_always_a_plain_header_safe_file_name(name):
    safe = safe_filename(name, "fallback")
    assert 0 < len(safe) <= 100
    assert all(c.isascii() and (c.isalnum() or c in "._+-") for c in safe)
    assert not safe.startswith(".") and "/" not in safe and '"' not in safe


def test_a_workers_cached_bytes_come_from_its_metrics_url():
    from uds.client.dashboard.worker_metrics import CACHED_BYTES, gauge_value, metrics_url
    node = {"addresses": ["tcp://10.0.0.5:7000", "10.0.0.5", "http://10.0.0.5:9100/metrics"]}
    assert metrics_url(node) == "http://10.0.0.5:9100/metrics" and metrics_url({"addresses": []}) is None
    text = (f"# HELP {CACHED_BYTES} Bytes.\n# TYPE {CACHED_BYTES} gauge\n{CACHED_BYTES} 4096.0\n"
            "# TYPE uds_worker_slots_free gauge\nuds_worker_slots_free 2.0\n")
    assert gauge_value(text, CACHED_BYTES) == 4096.0
    assert gauge_value("uds_worker_slots_free 2.0\n", CACHED_BYTES) is None
    assert gauge_value("not { metrics", CACHED_BYTES) is None
    worker = {"node": b"\x04" * 16, "role": NodeRole.WORKER, "host": "h", "address": "", "state": "alive",
              "slots": 1, "free_slots": 1, "running": 0, "millicpus": 1000, "memory_bytes": 1, "cache_bytes": 8}
    [shown] = views.cluster_json([], [worker], {}, 1.0, cached={"04" * 16: 4096})["workers"]
    assert (shown["cached_bytes"], shown["cache_capacity_bytes"]) == (4096, 8)
