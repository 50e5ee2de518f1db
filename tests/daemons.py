"""Start real uds daemons as subprocesses on 127.0.0.1, and always clean up.

    layout = ClusterLayout.create(tmp_path)          # keys + cluster.toml, free ports
    storage = layout.start("storage")                # python -m uds.storage ..., waits for ready
    storage.kill9(); storage = layout.start("storage")

Every process started here is killed at the end of the test by the
`daemons` fixture in conftest.py, and FUSE mounts under the test's folder
are lazily unmounted, even when the test fails.
"""
from __future__ import annotations

import ctypes
import os
import pathlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

from uds.client import devcluster
from uds.wire import cluster as cluster_file
from uds.daemon.runtime import ready_pid
from uds.wire.enums import NodeRole
from uds.wire.keys import KeyFolder, create_cluster_keys, export_every_role, open_role

_PR_SET_PDEATHSIG = 1


def _end_with_test_process() -> None:
    """In the child: get SIGTERM when the test process dies, however it dies,
    so a killed test run leaves no daemon (and, through its clean shutdown,
    no mount) behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


ROOT = pathlib.Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 30.0
# Ports in the workers' metrics range: each worker takes the first free one.
WORKER_METRICS_PORTS = 32


def wait_until(predicate, what: str = "condition", timeout: float = 45.0):
    """The predicate's first true value, polled every 20 ms; TimeoutError
    naming `what` if none comes within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"{what} not reached in {timeout}s")


def free_port() -> int:
    """A port free now, below the ephemeral range (see devcluster.free_port)."""
    return devcluster.free_port()


def free_port_range(count: int, taken: set[int]) -> tuple[int, int]:
    """(first, last): `count` ports from one free now, none of `taken`
    (the other daemons' ports, which a worker must not take first)."""
    while True:
        first = min(free_port(), 65535 - count)
        last = first + count - 1
        if not any(first <= port <= last for port in taken):
            return first, last


class _Ports:
    """Free ports, each remembered, so the workers' range can avoid them."""

    def __init__(self) -> None:
        self.given: set[int] = set()

    def __call__(self) -> int:
        port = free_port()
        self.given.add(port)
        return port


@dataclass
class Daemon:
    role: str
    args: list[str]
    data: pathlib.Path
    log_path: pathlib.Path
    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> "Daemon":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready_pid(self.data) == self.process.pid:
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.role} exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise TimeoutError(f"{self.role} not ready after {timeout}s:\n{self.log()}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.process.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return "(no log)"


@dataclass
class ClusterLayout:
    """A cluster file with fresh keys and free ports under `root`."""

    root: pathlib.Path
    path: pathlib.Path
    started: list[Daemon] = field(default_factory=list)

    @classmethod
    def create(cls, root: pathlib.Path, lease_s: float = 2.0, heartbeat_interval_s: float = 0.25,
               slots: int = 2, cache_bytes: int = 1 << 30, limits: dict | None = None,
               loadbalancers: int = 1, masters: int = 1, storage: int = 1,
               storage_policy: dict | None = None, scheduling: dict | None = None) -> "ClusterLayout":
        root.mkdir(parents=True, exist_ok=True)
        create_cluster_keys(root / "cluster-keys")
        export_every_role(root / "cluster-keys", root / "keys")
        port = _Ports()     # every daemon serves /metrics too (doc/metrics.md)
        master_entries = [{"address": f"tcp://127.0.0.1:{port()}", "raft": f"127.0.0.1:{port()}",
                           "data": f"data/master-{index}", "metrics": f"127.0.0.1:{port()}"}
                          for index in range(masters)]
        balancer_entries = [{"address": f"tcp://127.0.0.1:{port()}", "data": f"data/loadbalancer-{index}",
                             "metrics": f"127.0.0.1:{port()}"} for index in range(loadbalancers)]
        storage_entries = [{"address": f"tcp://127.0.0.1:{port()}", "data": f"data/storage-{index}",
                            "metrics": f"127.0.0.1:{port()}"} for index in range(storage)]
        first, last = free_port_range(WORKER_METRICS_PORTS, port.given)
        text = cluster_file.render(
            keys="keys", masters=master_entries, loadbalancers=balancer_entries, storage=storage_entries,
            workers={"data": "data/workers", "slots": slots, "cache_bytes": cache_bytes,
                     "heartbeat_interval_s": heartbeat_interval_s, "lease_s": lease_s,
                     "metrics": f"127.0.0.1:{first}-{last}"},
            limits=limits, storage_policy=storage_policy,
        )
        if scheduling:  # numbers only: poison_after, cache_max_entries, cache_max_age_s
            text += "\n[scheduling]\n" + "".join(f"{key} = {value!r}\n" for key, value in scheduling.items())
        path = root / "cluster.toml"
        path.write_text(text)
        return cls(root=root, path=path)

    @property
    def cluster(self) -> cluster_file.Cluster:
        return cluster_file.load(self.path)

    def keys(self, role: NodeRole = NodeRole.CLIENT) -> KeyFolder:
        """The key folder a process of `role` uses (a client's by default)."""
        return open_role(self.cluster.keys, role)

    def data_of(self, role: str, name: str | None) -> pathlib.Path:
        loaded = self.cluster
        if role == "worker":
            return loaded.worker_data(name or "w0")
        entries = {"master": loaded.masters, "loadbalancer": loaded.loadbalancers,
                   "storage": loaded.storage}[role]
        return entries[int(name or 0)].data

    def start(self, role: str, *extra: str, name: str | None = None, wait: bool = True,
              launcher: Sequence[str] = ()) -> Daemon:
        """Start `role`; `launcher` goes before the command (tests/hosts.py
        puts `ip netns exec NS` there, which execs in place, so the pid is the daemon's)."""
        args = [*launcher, sys.executable, "-m", f"uds.{role}", "--cluster", str(self.path)]
        if role == "worker":
            args += ["--name", name or "w0"]
        if role in ("loadbalancer", "master", "storage") and name:
            args += ["--index", name]                # name: its entry in [[loadbalancers]], [[masters]] or [[storage]]
        args += list(extra)
        data = self.data_of(role, name)
        data.mkdir(parents=True, exist_ok=True)
        log_path = self.root / f"{role}-{name or 0}.log"
        log = open(log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
                                   start_new_session=True, preexec_fn=_end_with_test_process)
        log.close()
        daemon = Daemon(role=role, args=args, data=data, log_path=log_path, process=process)
        self.started.append(daemon)
        return daemon.wait_ready() if wait else daemon

    def cleanup(self) -> None:
        for daemon in self.started:
            if daemon.alive():
                try:
                    os.killpg(daemon.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                daemon.process.wait(timeout=10)
        # Chunk processes run in sessions (and cgroups) of their own: end them
        # by their workers' cgroups and mark, and unmount the slot filesystems.
        from uds.worker.runner import kill_leftovers
        from uds.worker.sandbox import clear_after
        for node_id in self.root.glob("data/workers/*/node_id"):
            clear_after(node_id.parent, node_id.read_text().strip())
            kill_leftovers(node_id.read_text().strip())
        unmount_under(self.root)


def unmount_under(root: pathlib.Path) -> None:
    """Lazily unmount every FUSE mount below `root` (a crashed worker leaves one)."""
    try:
        mounts = pathlib.Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    prefix = str(root.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and parts[1].startswith(prefix) and parts[2].startswith("fuse"):
            for command in (["fusermount", "-u", "-z", parts[1]], ["fusermount3", "-u", "-z", parts[1]],
                            ["umount", "-l", parts[1]]):
                try:
                    if subprocess.run(command, capture_output=True, timeout=10).returncode == 0:
                        break
                except (OSError, subprocess.TimeoutExpired):
                    continue


@dataclass
class RunningCluster:
    """A started phase-1 cluster and a connected client."""

    layout: ClusterLayout
    daemons: dict[str, Daemon]
    connection: object = None

    def worker_names(self) -> list[str]:
        return sorted(name for name in self.daemons if name.startswith("w"))

    def restart(self, name: str, kill: bool = True) -> Daemon:
        old = self.daemons[name]
        old.kill9() if kill else old.stop()
        role = old.role
        daemon = self.layout.start(role, name=name if role == "worker" else None)
        self.daemons[name] = daemon
        return daemon

    def worker_by_node(self, node_hex: str) -> str:
        for name in self.worker_names():
            data = self.daemons[name].data
            if (data / "node_id").read_text().strip() == node_hex:
                return name
        raise KeyError(node_hex)


def start_cluster(layout: ClusterLayout, workers: int = 2) -> RunningCluster:
    """Start storage, master, load balancer and workers at once, then wait for all."""
    daemons = {"storage": layout.start("storage", wait=False),
               "master": layout.start("master", wait=False),
               "loadbalancer": layout.start("loadbalancer", wait=False)}
    for index in range(workers):
        daemons[f"w{index}"] = layout.start("worker", name=f"w{index}", wait=False)
    for daemon in daemons.values():
        daemon.wait_ready()
    return RunningCluster(layout=layout, daemons=daemons)
