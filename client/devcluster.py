"""`uds dev`: a cluster on this machine (1, 3 or 5 masters, one or more
load balancers, one or more storage nodes, N workers), all real daemons on
127.0.0.1. With N storage nodes each file is stored on R of them
([storage_policy] replicas; by default 2, or 1 with a single node).

DIR holds everything: `cluster-keys/` (a fresh key set each start) and
`keys/ROLE/` exported from it (one folder per role), `cluster.toml`,
`data/` (kept across starts, so stored files and jobs survive), `logs/`,
and `dev.pids` while it runs.

`uds dev` also starts the dashboard (client/dashboard/, doc/dashboard.md)
as one more recorded process, on 127.0.0.1:DASHBOARD_PORT when that is
free, else on a free port, once the workers are ready; its log is
`logs/dashboard.log`.

A start that fails stops what it started but keeps every daemon's log in
`logs/`, and says which daemon failed and how (its exit status and the end
of its log).
"""
from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

from uds.wire import cluster as cluster_file
from uds.daemon.runtime import ready_pid
from uds.wire.keys import create_cluster_keys, export_every_role

PIDS_FILE = "dev.pids"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
ROLES_IN_START_ORDER = ("storage", "master", "loadbalancer")
# A Raft group of an even size tolerates no more failures than one member fewer.
MASTER_COUNTS = (1, 3, 5)
LOG_TAIL_BYTES = 2000
# Ports for daemons are chosen from FIXED_PORTS_FROM up to the kernel's
# ephemeral range (EPHEMERAL_PORTS), when it leaves room for that.
EPHEMERAL_PORTS = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_FIRST_EPHEMERAL_PORT = 32768
FIXED_PORTS_FROM = 10000
FIXED_PORTS_AT_LEAST = 4096
FREE_PORT_TRIES = 200
_PORT_CHOICE = random.Random()          # its own: a test seeding `random` must not repeat ports
_PORTS_HANDED_OUT: set[int] = set()
# Ports beyond one per worker in the workers' metrics range, for ports taken meanwhile.
WORKER_METRICS_SPARE_PORTS = 32
# Each ask for the node table while waiting for the workers.
WORKERS_QUERY_TIMEOUT_S = 5.0
# The dashboard's port when free (as `uds dashboard`'s default).
DASHBOARD_PORT = 8265
# Each ask of the dashboard's /api/session while waiting for it.
DASHBOARD_PROBE_TIMEOUT_S = 1.0
# Starts of the dashboard, each on a port free a moment before.
DASHBOARD_TRIES = 2


class DevClusterError(Exception):
    """The dev cluster cannot be started or stopped; says why."""


@dataclass
class DevProcess:
    role: str
    name: str
    pid: int
    data: pathlib.Path
    log: pathlib.Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)   # when this process started it
    url: str = ""                   # the dashboard's

    def exit_status(self) -> int | None:
        """Its exit status once it has exited; None while it runs, or if not our child."""
        return None if self.process is None else self.process.poll()

    def exited(self) -> bool:
        if self.process is not None:
            return self.process.poll() is not None
        return not pid_alive(self.pid) or _is_zombie(self.pid)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-LOG_TAIL_BYTES:] if self.log else ""
        except OSError:
            return ""


def free_port() -> int:
    """A port free now on 127.0.0.1, below the kernel's ephemeral range, and
    not handed out before by this process. A port is chosen well before its
    daemon binds it; one from the ephemeral range could meanwhile become the
    source port of some outgoing connection (another daemon's link to a peer)."""
    first_ephemeral = _first_ephemeral_port()
    if first_ephemeral - FIXED_PORTS_FROM < FIXED_PORTS_AT_LEAST:
        return _anyfree_port()
    for _ in range(FREE_PORT_TRIES):
        port = _PORT_CHOICE.randrange(FIXED_PORTS_FROM, first_ephemeral)
        if port not in _PORTS_HANDED_OUT and _port_free(port, reuse=False):
            _PORTS_HANDED_OUT.add(port)
            return port
    return _anyfree_port()


def _anyfree_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _first_ephemeral_port() -> int:
    try:
        return int(EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_FIRST_EPHEMERAL_PORT


def _port_free(port: int, reuse: bool = True) -> bool:
    with socket.socket() as probe:
        # With `reuse`, as the dashboard binds (aiohttp reuses the address):
        # a port the last run's dashboard left in TIME_WAIT is free to it.
        if reuse:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def dashboard_port(wanted: int) -> int:
    """`wanted` if it is free now, else (and for 0) any free port."""
    return wanted if wanted and _port_free(wanted) else free_port()


def _worker_metrics_ports(workers: int) -> str:
    """A port range for the workers' /metrics, from a port free now, with
    room to spare: each worker takes the first port of it still free."""
    first = min(free_port(), 65535 - workers - WORKER_METRICS_SPARE_PORTS)
    return f"127.0.0.1:{first}-{first + workers + WORKER_METRICS_SPARE_PORTS}"


def pid_alive(pid: int) -> bool:
    """Whether a process of that number exists (ours to signal or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_pids(folder: pathlib.Path) -> list[dict]:
    try:
        entries = json.loads((folder / PIDS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [entry for entry in entries if pid_alive(entry["pid"])]


def default_replicas(storage: int) -> int:
    """R for a dev cluster of `storage` nodes: two copies where there are two nodes."""
    return min(2, storage)


def write_cluster_file(folder: pathlib.Path, workers: int, slots: int, loadbalancers: int = 1,
                       masters: int = 1, storage: int = 1, replicas: int | None = None) -> pathlib.Path:
    """Fresh keys and ports; data folders stay where they were. The cluster
    file's `keys` is `keys/`, one folder per role exported from the key set
    in `cluster-keys/`, as on separate hosts."""
    keys, cluster_keys = folder / "keys", folder / "cluster-keys"
    for old in (keys, cluster_keys):
        if old.exists():
            shutil.rmtree(old)
    create_cluster_keys(cluster_keys)
    export_every_role(cluster_keys, keys)
    path = folder / "cluster.toml"
    path.write_text(cluster_file.render(
        keys="keys",
        masters=[{"address": f"tcp://127.0.0.1:{free_port()}", "raft": f"127.0.0.1:{free_port()}",
                  "data": f"data/master-{index}", "metrics": f"127.0.0.1:{free_port()}"}
                 for index in range(masters)],
        loadbalancers=[{"address": f"tcp://127.0.0.1:{free_port()}", "data": f"data/loadbalancer-{index}",
                        "metrics": f"127.0.0.1:{free_port()}"} for index in range(loadbalancers)],
        storage=[{"address": f"tcp://127.0.0.1:{free_port()}", "data": f"data/storage-{index}",
                  "metrics": f"127.0.0.1:{free_port()}"} for index in range(storage)],
        workers={"data": "data/workers", "slots": slots, "cache_bytes": 2 << 30,
                 "heartbeat_interval_s": 0.25, "lease_s": 3.0, "metrics": _worker_metrics_ports(workers)},
        storage_policy={"replicas": default_replicas(storage) if replicas is None else replicas},
    ))
    return path


def start(folder: pathlib.Path, workers: int, slots: int, detach: bool,
          worker_options: Sequence[str] = (), unsafe_no_sandbox: bool = False,
          loadbalancers: int = 1, masters: int = 1, storage: int = 1,
          replicas: int | None = None, dashboard: int | None = None) -> list[DevProcess]:
    """Start every daemon and wait until each is ready. `worker_options` go
    to every worker's command line (--cpus, --memory, --disk); with
    unsafe_no_sandbox the workers run programs unconfined (--unsafe-no-sandbox).
    `masters` (1, 3 or 5) members of the Raft group are started, and
    `storage` storage nodes that keep `replicas` copies of each file.
    With `dashboard` (a port; 0: any free one) the dashboard is started
    last, on that port if it is free, and waited for: its process's `url`
    says where it is."""
    folder = folder.expanduser().resolve()
    if running_pids(folder):
        raise DevClusterError(f"a dev cluster is already running in {folder}; stop it with "
                              f"`uds dev --stop --dir {folder}`")
    if workers < 1:
        raise DevClusterError("--workers must be at least 1")
    if loadbalancers < 1:
        raise DevClusterError("--loadbalancers must be at least 1")
    if masters not in MASTER_COUNTS:
        raise DevClusterError(f"--masters must be 1, 3 or 5, not {masters}")
    if storage < 1:
        raise DevClusterError("--storage must be at least 1")
    if replicas is not None and not 1 <= replicas <= storage:
        raise DevClusterError(f"--replicas must be between 1 and --storage ({storage}), not {replicas}")
    folder.mkdir(parents=True, exist_ok=True)
    path = write_cluster_file(folder, workers, slots, loadbalancers, masters, storage, replicas)
    cluster = cluster_file.load(path)
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    plan = [*[("storage", f"storage-{index}", entry.data, ["--index", str(index)])
              for index, entry in enumerate(cluster.storage)],
            *[("master", f"master-{index}", entry.data, ["--index", str(index)])
              for index, entry in enumerate(cluster.masters)],
            *[("loadbalancer", f"loadbalancer-{index}", entry.data, ["--index", str(index)])
              for index, entry in enumerate(cluster.loadbalancers)]]
    plan += [("worker", f"worker-{index}", cluster.worker_data(f"worker-{index}"),
              ["--name", f"worker-{index}", *worker_options,
               *(["--unsafe-no-sandbox"] if unsafe_no_sandbox else [])])
             for index in range(workers)]
    started: list[DevProcess] = []
    try:
        for role, name, data, extra in plan:
            data.mkdir(parents=True, exist_ok=True)
            with open(logs / f"{name}.log", "ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", f"uds.{role}", "--cluster", str(path), *extra],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=folder, start_new_session=detach)
            started.append(DevProcess(role, name, process.pid, data, logs / f"{name}.log", process))
            _record(folder, started)
        for process in started:
            _wait_ready(process, logs)
        _wait_for_workers(path, workers, started)
        if dashboard is not None:
            port = dashboard_port(dashboard)
            for attempt in range(DASHBOARD_TRIES):
                started.append(_start_dashboard(folder, path, port, detach))
                _record(folder, started)
                if _wait_dashboard(started[-1]):
                    break
                # Its port was taken between the probe and its bind: another free one.
                started.pop()
                port = free_port()
            else:
                raise DevClusterError(f"the dashboard exited during start-up (see {logs / 'dashboard.log'})")
    except BaseException as fault:
        failure = _failure(fault, started, logs)
        stop_processes(started)
        _record(folder, [])
        if failure is None:
            raise
        raise failure from None
    return started


def _start_dashboard(folder: pathlib.Path, cluster_path: pathlib.Path, port: int, detach: bool) -> DevProcess:
    log_path = folder / "logs" / "dashboard.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uds.client.dashboard", "--cluster", str(cluster_path),
             "--listen", f"127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=detach)
    return DevProcess("dashboard", "dashboard", process.pid, folder, log_path, process,
                      url=f"http://127.0.0.1:{port}/")


def _wait_dashboard(process: DevProcess) -> bool:
    """Until the dashboard answers /api/session: True; False if it exited."""
    import urllib.error
    import urllib.request
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.exited():
            return False
        try:
            with urllib.request.urlopen(process.url + "api/session", timeout=DASHBOARD_PROBE_TIMEOUT_S) as reply:
                if reply.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise DevClusterError(f"the dashboard did not answer at {process.url} after {READY_TIMEOUT_S:g}s "
                          f"(see {process.log})")


def _with_status(status: int | None) -> str:
    if status is None:
        return ""
    return f" on signal {-status}" if status < 0 else f" with status {status}"


def _failure(fault: BaseException, started: list[DevProcess], logs: pathlib.Path) -> DevClusterError | None:
    """What to tell about a failed start: the daemons that exited, each with
    its status and the end of its log, else the fault itself; and that every
    log is kept. None for an interrupt, which speaks for itself."""
    if not isinstance(fault, Exception):
        return None
    dead = [process for process in started if process.exited()]
    if dead:
        told = "\n".join(f"{process.name} exited{_with_status(process.exit_status())} during start-up; "
                         f"its log ({process.log}) ends:\n{process.log_tail()}" for process in dead)
    else:
        told = str(fault) if isinstance(fault, DevClusterError) else f"{type(fault).__name__}: {fault}"
    return DevClusterError(f"{told}\nthe dev cluster was stopped; every daemon's log is kept in {logs}")


def _record(folder: pathlib.Path, processes: list[DevProcess]) -> None:
    (folder / PIDS_FILE).write_text(json.dumps(
        [{"role": p.role, "name": p.name, "pid": p.pid, "data": str(p.data)} for p in processes]))


def _wait_ready(process: DevProcess, logs: pathlib.Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready_pid(process.data) == process.pid:
            return
        if process.exited():
            raise DevClusterError(f"{process.name} exited during start-up")
        time.sleep(0.05)
    raise DevClusterError(f"{process.name} was not ready after {READY_TIMEOUT_S:g}s "
                          f"(see {logs / (process.name + '.log')})")


def _wait_for_workers(cluster_path: pathlib.Path, count: int, started: list[DevProcess] = ()) -> None:
    """Until the masters know `count` live workers with free slots: then
    the cluster is usable, not just started. A daemon that exits meanwhile
    ends the wait at once; a master that does not answer yet (electing a
    leader) is asked again."""
    from uds.client.api import connect
    from uds.errors import ClientError
    from uds.wire.enums import NodeRole
    deadline = time.monotonic() + READY_TIMEOUT_S
    alive: list[dict] = []
    with connect(cluster_path, timeout=WORKERS_QUERY_TIMEOUT_S) as connection:
        while True:
            dead = [process.name for process in started if process.exited()]
            if dead:
                raise DevClusterError(f"{', '.join(dead)} exited during start-up")
            try:
                alive = [node for node in connection.nodes()
                         if node["role"] == NodeRole.WORKER and node["state"] == "alive" and node["free_slots"]]
            except ClientError as fault:
                if time.monotonic() > deadline:
                    raise DevClusterError(f"the masters did not answer in {READY_TIMEOUT_S:g}s: {fault}") from None
                continue
            if len(alive) >= count:
                return
            if time.monotonic() > deadline:
                raise DevClusterError(f"only {len(alive)} of {count} workers registered after "
                                      f"{READY_TIMEOUT_S:g}s")
            time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def stop_processes(processes: list[DevProcess] | list[dict]) -> None:
    """SIGTERM in reverse start order (workers first), SIGKILL what lingers."""
    pids = [p.pid if isinstance(p, DevProcess) else p["pid"] for p in processes][::-1]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for pid in pids:
        while pid_alive(pid) and not _is_zombie(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if pid_alive(pid) and not _is_zombie(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(folder: pathlib.Path) -> int:
    """Stop the dev cluster in `folder`; the number of processes stopped."""
    folder = folder.expanduser().resolve()
    entries = running_pids(folder)
    stop_processes(entries)
    if (folder / PIDS_FILE).exists():
        (folder / PIDS_FILE).unlink()
    _clear_workers(entries)
    _unmount_stale(folder)
    return len(entries)


def _clear_workers(entries: list[dict]) -> None:
    """A worker that had to be SIGKILLed leaves its attempts' cgroups and slot
    filesystems: end and remove them."""
    from uds.worker.sandbox import clear_after
    for entry in entries:
        data = pathlib.Path(entry.get("data", ""))
        node_id = data / "node_id"
        if entry.get("role") == "worker" and node_id.is_file():
            clear_after(data, node_id.read_text().strip())


def _unmount_stale(folder: pathlib.Path) -> None:
    try:
        mounts = pathlib.Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    for line in mounts:
        parts = line.split()
        if len(parts) > 2 and parts[1].startswith(str(folder)) and parts[2].startswith("fuse"):
            subprocess.run(["fusermount", "-u", "-z", parts[1]], capture_output=True)


def run_foreground(folder: pathlib.Path, processes: list[DevProcess], say=print) -> int:
    """Wait until interrupted or a daemon dies, then stop everything."""
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    code = 0
    try:
        while not stop_requested:
            dead = [p for p in processes if not pid_alive(p.pid) or _is_zombie(p.pid)]
            if dead:
                say(f"uds dev: {', '.join(p.name for p in dead)} exited; stopping the cluster")
                code = 1
                break
            time.sleep(0.2)
    finally:
        stop_processes(processes)
        (folder / PIDS_FILE).unlink(missing_ok=True)
        _unmount_stale(folder)
    return code
