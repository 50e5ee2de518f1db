"""`uds dev --masters N`, and a failed `uds dev` start that keeps every log
and says which daemon failed and why."""
from __future__ import annotations

import collections
import importlib.util
import json

import pytest

from test_cli import ROOT, uds
from uds.client import devcluster


@pytest.mark.parametrize("count", ["0", "2", "4", "7", "x", "-1"])
def test_masters_other_than_1_3_or_5_is_a_one_line_error(tmp_path, count):
    result = uds("dev", "--detach", "--masters", count, "--dir", str(tmp_path / "dev"), check=False)
    assert result.returncode == 1
    error = result.stderr.decode().strip()
    assert error.splitlines() == [f"uds: --masters must be 1, 3 or 5, not {count!r}"], error
    assert not (tmp_path / "dev" / "dev.pids").exists()


def test_the_cluster_file_holds_one_entry_per_master(tmp_path):
    from uds.wire import cluster as cluster_file
    loaded = cluster_file.load(devcluster.write_cluster_file(tmp_path, workers=1, slots=1, masters=5))
    assert [entry.data.name for entry in loaded.masters] == [f"master-{index}" for index in range(5)]
    assert len({entry.raft for entry in loaded.masters}) == 5


def test_a_failed_start_names_the_daemon_and_keeps_every_log(tmp_path):
    folder = tmp_path / "dev"
    with pytest.raises(devcluster.DevClusterError) as failed:
        devcluster.start(folder, workers=1, slots=1, detach=True, worker_options=["--memory", "lots"])
    told = str(failed.value)
    assert "worker-0 exited with status 1 during start-up" in told, told
    assert "lots" in told                                   # the end of its log says why
    assert f"every daemon's log is kept in {folder / 'logs'}" in told
    logs = sorted(path.name for path in (folder / "logs").iterdir())
    assert logs == ["loadbalancer-0.log", "master-0.log", "storage-0.log", "worker-0.log"]
    assert json.loads((folder / "dev.pids").read_text()) == [] and not devcluster.running_pids(folder)


def _demo():
    spec = importlib.util.spec_from_file_location("uds_demo", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_masters_and_two_balancers_run_the_demo_pipeline(tmp_path, monkeypatch):
    from uds import client
    demo = _demo()
    folder = tmp_path / "dev"
    monkeypatch.setattr(devcluster, "READY_TIMEOUT_S", 20.0)     # a failed start fails fast
    try:
        started = devcluster.start(folder, workers=2, slots=2, detach=True, masters=3, loadbalancers=2)
        assert sorted(process.name for process in started if process.role == "master") == \
            ["master-0", "master-1", "master-2"]
        files = demo.texts()
        with client.connect(folder) as connection:
            assert sorted(record.role for record in connection.masters()) == ["follower", "follower", "leader"]
            chunk_inputs = [{} for _ in range(demo.CHUNKS)]
            for index, path in enumerate(files):
                chunk_inputs[index % demo.CHUNKS][path.name] = connection.put(path)
            job = connection.submit_job(demo.PROGRAM, chunk_inputs=chunk_inputs, chunks=demo.CHUNKS,
                                        timeout=60, name="word-count")
            merge = connection.submit_job(demo.REDUCE, inputs={"counts.json": job.outputs_ref("counts.json")},
                                          timeout=60, name="merge-counts")
            status = merge.wait(timeout=120)
            assert status.state == "succeeded", status
            assert job.status().state == "succeeded"
            merged = collections.Counter(json.loads(connection.get(status.chunks[0].outputs["counts.json"])))
        assert merged == demo.local_counts(files)
        listed = uds("nodes", cluster_dir=folder).stdout.decode()
        roles = [line.split()[1] for line in listed.splitlines() if line.startswith("tcp://")]
        assert sorted(roles) == ["follower", "follower", "leader"], listed
    finally:
        devcluster.stop(folder)
        from daemons import unmount_under
        unmount_under(folder)

