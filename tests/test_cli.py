"""The `uds` command against a real dev cluster started by `uds dev --detach`."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT_S = 90


def uds(*args, cluster_dir=None, input_bytes=None, check=True):
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    environment.pop("UDS_CLUSTER", None)
    prefix = ["--cluster", str(cluster_dir)] if cluster_dir else []
    result = subprocess.run([sys.executable, "-m", "uds.client.cli", *prefix, *args], capture_output=True,
                            input=input_bytes, timeout=COMMAND_TIMEOUT_S, env=environment)
    if check and result.returncode != 0:
        raise AssertionError(f"uds {' '.join(args)} exited {result.returncode}: {result.stderr.decode()}")
    return result


@pytest.fixture(scope="module")
def dev_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dev")
    try:
        # Each worker offers 2 cpus and 3 GiB, whatever this machine has.
        started = uds("dev", "--detach", "--workers", "2", "--cpus", "2", "--memory", "3G", "--dir", str(folder))
        assert b"dev cluster ready" in started.stdout
        yield folder
    finally:
        uds("dev", "--stop", "--dir", str(folder), check=False)
        from daemons import unmount_under
        unmount_under(folder)


def test_dev_cluster_refuses_a_second_start(dev_dir):
    again = uds("dev", "--detach", "--dir", str(dev_dir), check=False)
    assert again.returncode == 1
    assert b"already running" in again.stderr
    assert len(again.stderr.decode().strip().splitlines()) == 1


def test_put_get_submit_status_logs(dev_dir, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("alpha beta\ngamma\n")
    put = uds("put", str(data), cluster_dir=dev_dir).stdout.decode().split()
    file_id = put[0]
    assert len(file_id) == 32
    assert uds("get", file_id, cluster_dir=dev_dir).stdout == data.read_bytes()

    program = tmp_path / "wc.sh"
    program.write_text("#!/bin/sh\nwc -w < $UDS_INPUTS/data.txt\necho warning >&2\n")
    program.chmod(0o755)
    submitted = uds("submit", str(program), "--input", f"data.txt={file_id}", "--chunks", "2", "--wait",
                    cluster_dir=dev_dir)
    lines = submitted.stdout.decode().splitlines()
    job = lines[0]
    assert len(job) == 32
    assert any("succeeded, 2 succeeded, 0 failed of 2 chunks" in line for line in lines)

    status = uds("status", job, cluster_dir=dev_dir).stdout.decode()
    assert "succeeded" in status and "chunk    1" in status
    assert uds("logs", job, "--chunk", "1", "--stream", "stdout", cluster_dir=dev_dir).stdout.strip() == b"3"
    assert uds("logs", job, "--stream", "stderr", cluster_dir=dev_dir).stdout == b"warning\n"


def test_cancel_and_failed_jobs_exit_non_zero(dev_dir, tmp_path):
    program = tmp_path / "slow.sh"
    program.write_text("#!/bin/sh\nsleep 60\n")
    program.chmod(0o755)
    job = uds("submit", str(program), cluster_dir=dev_dir).stdout.decode().strip()
    cancelled = uds("cancel", job, cluster_dir=dev_dir)
    assert b"cancelled" in cancelled.stdout
    failing = tmp_path / "fail.sh"
    failing.write_text("#!/bin/sh\nexit 3\n")
    failing.chmod(0o755)
    result = uds("submit", str(failing), "--wait", cluster_dir=dev_dir, check=False)
    assert result.returncode == 1
    assert b"exit code 3" in result.stdout


def test_nodes_and_events(dev_dir):
    nodes = uds("nodes", cluster_dir=dev_dir).stdout.decode()
    assert nodes.count("worker") == 2 and "master" in nodes and "loadbalancer" in nodes
    assert "storage at tcp://" in nodes and "reachable" in nodes
    masters = [line.split() for line in nodes.splitlines() if line.startswith("tcp://")]
    assert len(masters) == 1 and masters[0][1] == "leader" and masters[0][4] == "0", nodes  # role, lag
    workers = [line.split() for line in nodes.splitlines() if " worker " in line]
    assert [line[7:10] for line in workers] == [["2", "3.0", "GiB"]] * 2, nodes
    events = uds("events", cluster_dir=dev_dir).stdout.decode()
    assert "node_joined" in events


@pytest.mark.parametrize("args, message", [
    (("get", "nothex"), "an id is 32 hex characters"),
    (("get", "0" * 32), "no file 000"),
    (("status", "0" * 32), "unknown job " + "0" * 32),
    (("cancel", "0" * 32), "unknown job " + "0" * 32),
    (("release", "0" * 32), "unknown job " + "0" * 32),
    (("submit", "/no/such/program"), "is not a file"),
    (("submit", "/bin/true", "--input", "bad"), "expected NAME=PATH"),
    (("submit", "/bin/true", "--input", "a/b=/bin/true"), "plain file name"),
    (("submit", "/bin/true", "--chunks", "0"), "chunks must be a positive integer"),
    (("put", "/no/such/file"), "no such file"),
    (("submit", "/bin/true", "--memory", "lots"), "memory: expected a size such as 512M"),
    (("submit", "/bin/true", "--cpus", "two"), "cpus: expected a number"),
    (("submit", "/bin/true", "--pids", "many"), "pids: expected a whole number"),
    (("submit", "/bin/true", "--cpu-time=5years"), "cpu_time: expected a duration"),
    (("submit", "/bin/true", "--memory", "64G"), "no worker has 64 GiB of memory: the largest has 3 GiB"),
    (("submit", "/bin/true", "--cpus", "3"), "no worker has 3 cpus: the largest has 2 cpus"),
])
def test_errors_print_one_line_and_exit_non_zero(dev_dir, args, message):
    result = uds(*args, cluster_dir=dev_dir, check=False)
    assert result.returncode != 0
    error = result.stderr.decode().strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith("uds: ") and message in error, error


@pytest.mark.parametrize("args, message", [
    (("frobnicate",), "argument COMMAND: invalid choice: 'frobnicate'"),
    (("status",), "status: the following arguments are required: JOB (see uds status --help)"),
    (("submit", "/bin/true", "--chunks", "x"), "submit: argument --chunks: invalid int value: 'x'"),
    (("keys", "init"), "keys init: the following arguments are required"),
    (("status", "x", "--", "y"), "'--' only goes with submit"),
])
def test_usage_errors_print_one_line_and_exit_2(tmp_path, args, message):
    result = uds(*args, cluster_dir=tmp_path / "nowhere.toml", check=False)
    assert result.returncode == 2
    error = result.stderr.decode().strip()
    assert len(error.splitlines()) == 1 and error.startswith("uds: ") and message in error, error
    assert not result.stdout


def test_no_cluster_is_a_clear_error(tmp_path):
    result = uds("nodes", cluster_dir=tmp_path / "nowhere.toml", check=False)
    assert result.returncode == 1
    assert b"no cluster file" in result.stderr


def test_limits_and_usage_show_in_the_status(dev_dir, tmp_path):
    program = tmp_path / "busy.sh"
    program.write_text("#!/bin/sh\ni=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo done > $UDS_OUTPUT/out\n")
    program.chmod(0o755)
    lines = uds("submit", str(program), "--memory", "256M", "--cpus", "1", "--pids", "64", "--wait",
                cluster_dir=dev_dir).stdout.decode().splitlines()
    status = uds("status", lines[0], cluster_dir=dev_dir).stdout.decode()
    assert "limits: memory 256 MiB, cpus 1, pids 64; network off" in status, status
    [chunk] = [line for line in status.splitlines() if "chunk    0" in line]
    assert "succeeded" in chunk and "wrote 5 B" in chunk and "cpu " in chunk and "peak " in chunk, chunk


def test_program_arguments_after_double_dash(dev_dir, tmp_path):
    program = tmp_path / "echo.sh"
    program.write_text('#!/bin/sh\necho "$@"\n')
    program.chmod(0o755)
    lines = uds("submit", str(program), "plain", "--wait", "--", "--top", "10",
                cluster_dir=dev_dir).stdout.decode().splitlines()
    assert "succeeded" in lines[1]
    assert uds("logs", lines[0], "--stream", "stdout", cluster_dir=dev_dir).stdout == b"plain --top 10\n"


def test_dev_in_the_foreground_stops_everything_on_interrupt(tmp_path):
    import json
    import signal
    import time
    folder = tmp_path / "fg"
    environment = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-m", "uds.client.cli", "dev", "--workers", "1", "--dir", str(folder)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment)
    try:
        deadline = time.monotonic() + 60
        output = b""
        while b"press Ctrl-C" not in output and time.monotonic() < deadline:
            output += process.stdout.readline()
        assert b"press Ctrl-C" in output, output
        entries = json.loads((folder / "dev.pids").read_text())
        pids = [entry["pid"] for entry in entries]
        # Storage, master, balancer, worker, and the dashboard, whose URL is printed.
        assert [entry["role"] for entry in entries][-1] == "dashboard" and len(pids) == 5
        assert b"dashboard: http://127.0.0.1:" in output, output
        assert b"worker" in uds("nodes", cluster_dir=folder).stdout
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        for pid in pids:
            assert not pathlib.Path(f"/proc/{pid}").exists() or \
                pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
        assert not (folder / "dev.pids").exists()
    finally:
        if process.poll() is None:
            process.kill()
        uds("dev", "--stop", "--dir", str(folder), check=False)
        from daemons import unmount_under
        unmount_under(folder)


def _files(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_keys_init_then_export_one_role(tmp_path):
    uds("keys", "init", str(tmp_path / "set"))
    uds("keys", "export", "--role", "client", "--keys", str(tmp_path / "set"), str(tmp_path / "client"))
    publics = [f"public/{role}.key" for role in ("client", "loadbalancer", "master", "storage", "worker")]
    # The client's folder holds the admin token too (the dashboard's actions need it).
    assert _files(tmp_path / "client") == sorted([*publics, "private/client.key_secret", "private/admin.token"])
    uds("keys", "export", "--role", "master", "--keys", str(tmp_path / "set"), str(tmp_path / "master"))
    assert _files(tmp_path / "master") == sorted([*publics, "private/master.key_secret", "private/raft.password"])
    again = uds("keys", "export", "--role", "client", "--keys", str(tmp_path / "set"), str(tmp_path / "client"),
                check=False)
    assert again.returncode == 1 and b"already exists" in again.stderr


def test_dev_lays_out_one_key_folder_per_role(dev_dir):
    for role in ("client", "loadbalancer", "master", "storage", "worker"):
        secrets = sorted(path.name for path in (dev_dir / "keys" / role / "private").iterdir())
        assert secrets == sorted([f"{role}.key_secret", *(["raft.password"] if role == "master" else []),
                                  *(["admin.token"] if role == "client" else [])])


def test_a_job_past_retention_shows_its_state_and_counts_and_says_its_details_are_gone(capsys):
    from uds import wire
    from uds.client.cli import _print_status
    from uds.client.jobs import JobStatus

    def shown(**fields):
        reply = wire.JobStatusReply.make(
            bytes(16), request_id=1, job=bytes(range(16)), state=int(wire.JobState.FAILED), chunk_count=3,
            chunks_succeeded=2, chunks_failed=1, first_chunk=3, next_chunk=3, name="count",
            submitted_at=1.0, finished_at=5.0, error="exit 1", chunks=[], **fields)
        status = JobStatus.from_reply(wire.decode(wire.encode(reply)))
        _print_status(status)
        return status, capsys.readouterr().out

    status, out = shown(past_retention=1)
    assert status.past_retention and (status.state, status.succeeded, status.failed) == ("failed", 2, 1)
    assert "'count': failed, 2 succeeded, 1 failed of 3 chunks" in out, out
    assert "details: past retention" in out and "limits:" not in out and "waiting" not in out, out
    status, out = shown(past_retention=0)
    assert not status.past_retention
    assert "past retention" not in out and "limits: " in out, out


def test_a_chunk_of_a_job_past_retention_is_refused_saying_why():
    from uds.client.jobs import Job, JobStatus

    class Answers:
        def job_status(self, job_id, **_asked):
            return JobStatus(id=job_id, name="", state="succeeded", chunk_count=2, succeeded=2, failed=0,
                             submitted_at=1.0, finished_at=2.0, error="", past_retention=True)

    with pytest.raises(IndexError, match="is past retention: its chunk reports are no longer kept"):
        Job(Answers(), "ab" * 16).chunk(0)
