"""The dashboard's HTTP API (doc/dashboard.md) over HTTP, against one real
dev cluster started by `uds dev --detach` with its dashboard."""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from test_cli import ROOT, uds

PROGRAM = (b"#!/bin/sh\necho \"out <script>alert(1)</script> $1\"\necho oops >&2\n"
           b"echo made > \"$UDS_OUTPUT/result.txt\"\n")
EVENT_WAIT_S = 20.0
HTTP_TIMEOUT_S = 30.0      # a loaded test machine answers slowly; every wait ends on an answer
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "frame-ancestors 'none'")


class Reply:
    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def http(url: str, method: str = "GET", headers: dict | None = None) -> Reply:
    request = urllib.request.Request(url, method=method, headers=headers or {},
                                     data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as reply:
            return Reply(reply.status, reply.headers, reply.read())
    except urllib.error.HTTPError as refused:
        return Reply(refused.code, refused.headers, refused.read())


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """(base URL, dev folder, a client Connection)."""
    from uds import client
    folder = tmp_path_factory.mktemp("dash")
    try:
        started = uds("dev", "--detach", "--workers", "1", "--dir", str(folder), "--dashboard-port", "0")
        found = re.search(rb"dashboard: (http://127\.0\.0\.1:\d+/)", started.stdout)
        assert found, started.stdout
        with client.connect(folder) as connection:
            yield found.group(1).decode(), folder, connection
    finally:
        uds("dev", "--stop", "--dir", str(folder), check=False)
        from daemons import unmount_under
        unmount_under(folder)


@pytest.fixture(scope="module")
def finished_job(dashboard, tmp_path_factory):
    """A job of two chunks that succeeded, with args and an input that are HTML."""
    _, _, connection = dashboard
    folder = tmp_path_factory.mktemp("job")
    program = folder / "echo.sh"
    program.write_bytes(PROGRAM)
    program.chmod(0o755)
    job = connection.submit_job(str(program), args=["<img src=x onerror=alert(1)>"],
                                inputs={"<b>in<i>.txt": connection.put(b"input\n")}, chunks=2, timeout=60)
    assert job.wait(timeout=60).state == "succeeded"
    return job.id, str(program)


def token(folder: pathlib.Path) -> str:
    return (folder / "keys" / "client" / "private" / "admin.token").read_text().strip()


class EventStream:
    """An open /api/stream, read event by event."""

    def __init__(self, url: str) -> None:
        self.reply = urllib.request.urlopen(url, timeout=EVENT_WAIT_S)
        assert self.reply.headers["Content-Type"].startswith("text/event-stream")
        assert self.reply.headers["Content-Security-Policy"] == CSP

    def next_event(self) -> tuple[str, dict]:
        name, data = None, []
        while True:
            line = self.reply.readline().decode().rstrip("\n")
            if not line:
                if name is not None:
                    return name, json.loads("\n".join(data))
                continue
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])

    def until(self, wanted, what: str) -> tuple[str, dict]:
        deadline = time.monotonic() + EVENT_WAIT_S
        seen = []
        while time.monotonic() < deadline:
            name, data = self.next_event()
            if wanted(name, data):
                return name, data
            seen.append(name)
        raise AssertionError(f"no {what} in {EVENT_WAIT_S}s; saw {seen[-20:]}")

    def close(self) -> None:
        self.reply.close()


def test_the_session_says_where_it_listens_and_that_actions_are_possible(dashboard):
    base, folder, _ = dashboard
    reply = http(base + "api/session")
    assert reply.status == 200 and reply.headers["Content-Security-Policy"] == CSP
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    session = reply.json()
    assert session["admin"] is True and base.endswith(session["listen"] + "/")
    assert pathlib.Path(session["cluster"]) == (folder / "cluster.toml").resolve()


def test_the_cluster_lists_the_leader_a_balancer_storage_and_the_worker(dashboard):
    base, _, _ = dashboard
    cluster = http(base + "api/cluster").json()
    [master] = cluster["masters"]
    assert master["role"] == "leader" and cluster["leader"] == master["address"]
    assert [balancer["active"] for balancer in cluster["balancers"]] == [True]
    assert cluster["storage"][0]["free_bytes"] > 0
    [worker] = cluster["workers"]
    assert worker["state"] == "alive" and worker["slots"] >= 1
    assert cluster["counters"]["proposals"] > 0


def test_a_job_shows_in_the_list_and_on_its_own_with_args_inputs_chunks_and_stream(dashboard, finished_job):
    base, _, connection = dashboard
    job, _ = finished_job
    listed = http(base + "api/jobs?state=succeeded&limit=50").json()["jobs"]
    assert job in [line["job"] for line in listed]
    assert http(base + "api/jobs?state=bogus").status == 400
    body = http(base + f"api/jobs/{job}").json()
    assert body["state"] == "succeeded" and body["succeeded"] == 2
    assert body["args"] == ["<img src=x onerror=alert(1)>"]
    assert [item["name"] for item in body["inputs"]] == ["<b>in<i>.txt"]
    assert body["program"]["size"] == len(PROGRAM)
    assert [chunk["state"] for chunk in body["chunks"]] == ["succeeded", "succeeded"]
    assert sorted(bar["chunk"] for bar in body["stream"]) == [0, 1], "\n".join(
        str(event) for event in connection.job(job).events(follow=False))
    assert all(bar["end"] >= bar["start"] for bar in body["stream"])
    assert http(base + "api/jobs/" + "0" * 32).status == 404
    assert http(base + "api/jobs/nope").status == 400


def test_a_chunks_attempts_carry_their_timeline(dashboard, finished_job):
    base, _, _ = dashboard
    job, _ = finished_job
    reply = http(base + f"api/jobs/{job}/chunks/0/attempts").json()
    [attempt] = reply["attempts"]
    assert attempt["state"] == "succeeded" and attempt["exit_code"] == 0 and reply["dropped"] == 0
    timeline = attempt["timeline"]
    assert timeline["dispatched"] <= timeline["committed"]
    assert timeline["started"] is not None and timeline["ended"] >= timeline["started"]
    assert attempt["stdout"]["size"] > 0 and attempt["outputs"][0]["name"] == "result.txt"


def test_a_file_downloads_with_a_safe_name_and_views_as_text(dashboard, finished_job):
    base, _, connection = dashboard
    job, _ = finished_job
    stdout = http(base + f"api/jobs/{job}").json()["chunks"][0]["stdout"]
    expected = connection.get(stdout["id"])
    assert b"<script>" in expected
    download = http(base + f"api/files/{stdout['id']}?name=../a%22b/c%0d%0a.txt")
    assert download.status == 200 and download.body == expected
    assert download.headers["Content-Type"] == "application/octet-stream"
    assert download.headers["Content-Disposition"] == 'attachment; filename="c__.txt"'
    text = http(base + f"api/files/{stdout['id']}?view=text")
    assert text.body == expected and text.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert text.headers["Content-Security-Policy"] == CSP
    assert http(base + "api/files/" + "0" * 32).status == 404


def test_the_stream_sends_a_jobs_log_events_chunks_and_bars_as_they_commit(dashboard, finished_job):
    base, folder, connection = dashboard
    _, program = finished_job
    everything = EventStream(base + "api/stream")
    try:
        job = connection.submit_job(program, chunks=2, timeout=60, hold=True)
        everything.until(lambda name, data: name == "log" and data["job"] == job.id
                         and data["kind"] == "job_submitted", "job_submitted log event")
        watching = EventStream(base + f"api/stream?job={job.id}")
        try:
            # A page that opens the stream first gets the job's chunks in full.
            _, first = watching.until(lambda name, data: name == "chunks", "first chunks event")
            assert [chunk["index"] for chunk in first["chunks"]] == [0, 1]
            released = http(base + f"api/jobs/{job.id}/release", "POST", {"X-UDS-Admin-Token": token(folder)})
            assert released.status == 200
            finals, job_state, ended_bars = set(), None, set()
            while finals != {0, 1} or job_state != "succeeded" or ended_bars != {0, 1}:
                name, data = watching.until(lambda name, data: name in ("chunks", "job", "stream"),
                                            "chunks, job or stream event")
                if name == "job":
                    job_state = data["state"]
                elif name == "stream":
                    ended_bars |= {bar["chunk"] for bar in data["stream"] if bar["end"] is not None}
                else:
                    finals |= {chunk["index"] for chunk in data["chunks"] if chunk["state"] == "succeeded"}
            everything.until(lambda name, data: name == "log" and data["job"] == job.id
                             and data["kind"] == "job_succeeded", "job_succeeded log event")
        finally:
            watching.close()
        everything.until(lambda name, data: name == "rate" and "chunks_per_s" in data, "rate event")
        everything.until(lambda name, data: name == "cluster" and data["workers"], "cluster event")
    finally:
        everything.close()


def test_cancel_needs_the_admin_token(dashboard, finished_job):
    base, folder, connection = dashboard
    _, program = finished_job
    job = connection.submit_job(program, timeout=60, hold=True)
    url = base + f"api/jobs/{job.id}/cancel"
    missing = http(url, "POST")
    assert missing.status == 401 and "X-UDS-Admin-Token" in missing.json()["error"]
    assert http(url, "POST", {"X-UDS-Admin-Token": "not-the-token"}).status == 403
    assert job.status(detail=False).state == "held"
    done = http(url, "POST", {"X-UDS-Admin-Token": token(folder)})
    assert done.status == 200 and done.json()["state"] == "cancelled"


def test_pages_and_static_files_carry_the_security_headers(dashboard):
    base, _, _ = dashboard
    for path in ("", "jobs", "jobs/" + "a" * 32, "static/index.html", "api/nothing"):
        reply = http(base + path)
        assert reply.headers["Content-Security-Policy"] == CSP, path
        assert reply.status == (404 if path == "api/nothing" else 200), path
    assert http(base + "api/nothing").json()["error"]


def test_a_page_whose_name_was_rebound_to_loopback_reads_nothing(dashboard):
    base, _, _ = dashboard
    port = base.rstrip("/").rsplit(":", 1)[1]
    refused = http(base + "api/jobs", headers={"Host": f"rebound.example:{port}"})
    assert refused.status == 403 and "127.0.0.1" in refused.json()["error"]
    assert http(base + "api/jobs", headers={"Host": f"localhost:{port}"}).status == 200


def _dashboard(cluster: pathlib.Path, *args: str) -> subprocess.Popen:
    environment = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "uds.client.dashboard", "--cluster", str(cluster), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment)


def test_a_non_loopback_address_needs_a_token_to_start_and_then_on_every_request(dashboard, tmp_path):
    _, folder, _ = dashboard
    # The same cluster, with a client key folder that holds no admin token.
    shutil.copytree(folder / "keys", tmp_path / "keys")
    (tmp_path / "keys" / "client" / "private" / "admin.token").unlink()
    cluster = tmp_path / "cluster.toml"
    cluster.write_text((folder / "cluster.toml").read_text())
    refused = _dashboard(cluster, "--listen", "0.0.0.0:0")
    _, stderr = refused.communicate(timeout=30)
    assert refused.returncode == 2 and b"not loopback" in stderr and b"admin token" in stderr, stderr
    token_file = tmp_path / "token"
    token_file.write_text("sesame\n")
    served = _dashboard(cluster, "--listen", "0.0.0.0:0", "--admin-token-file", str(token_file))
    try:
        line = served.stdout.readline().decode()
        port = re.search(r"dashboard: http://0\.0\.0\.0:(\d+)/", line)
        assert port, line
        base = f"http://127.0.0.1:{port.group(1)}/"
        assert http(base + "api/session").status == 401
        assert http(base + "api/session", headers={"X-UDS-Admin-Token": "nope"}).status == 403
        assert http(base + "static/index.html").status == 200
        given = http(base + "api/session?token=sesame")
        assert given.status == 200 and given.json()["admin"] is True
        cookie = given.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert http(base + "api/session", headers={"Cookie": cookie.split(";")[0]}).status == 200
    finally:
        served.terminate()
        assert served.wait(timeout=15) == 0
