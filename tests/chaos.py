"""Nemeses, a job stream and the chaos loop behind `make chaos`.

    python tests/chaos.py --minutes 10

starts a cluster on separate hosts (tests/hosts.py), runs a job stream
from several client threads, applies the nemeses of NEMESES one after
another until the time is up, then checks the history (tests/history.py)
and prints one JSON line: operations, faults injected, failovers, the
longest unavailability and the violations. tests/test_chaos.py runs each
nemesis once in `make test`.

A nemesis is a function (cluster, rng) -> Fault: it injects its fault and
returns how to recover. The runner's cluster has three masters and a pair
of balancers; PAIR_NEMESES need the pair (tests/test_chaos_pair.py),
MASTER_NEMESES several masters (tests/test_chaos_masters.py), and
ONE_BALANCER_NEMESES run against any (tests/test_chaos.py uses one
balancer and one master). STORAGE_NEMESES need several storage nodes
(tests/test_chaos_storage.py; the runner has three, R = 2, under
CHAOS_STORAGE_POLICY). Balancer failovers are counted from the event
log: every lease_granted after the first is one; leader changes are those
the master nemeses forced.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from daemons import wait_until  # noqa: E402
from history import PROOF_OUTPUT, PROOF_PROGRAM, History, Violation, check  # noqa: E402
from hosts import HostCluster, Network  # noqa: E402
from uds.storage.client import StorageError  # noqa: E402

# A fault lasts this long before its recovery: past the workers' 2 s lease.
HOLD_S = 3.0
JOB_WAIT_S = 90.0
CLIENT_TIMEOUT_S = 10.0


@dataclass
class Fault:
    name: str
    recover: Callable[[], None]
    on_balancer: bool               # whether recovering it is a balancer failover
    leader_changes: int = 0         # elections it forced among the masters


def kill_balancer(cluster: HostCluster, rng: random.Random) -> Fault:
    cluster.kill9("loadbalancer")
    return Fault("kill -9 balancer", lambda: cluster.start("loadbalancer"), True)


def freeze_balancer(cluster: HostCluster, rng: random.Random) -> Fault:
    cluster.freeze("loadbalancer")
    return Fault("freeze balancer", lambda: cluster.thaw("loadbalancer"), True)


def partition_balancer_from_masters(cluster: HostCluster, rng: random.Random) -> Fault:
    cluster.network.partition(["loadbalancer"], cluster.master_names)
    return Fault("partition balancer | masters", cluster.network.heal, True)


def kill_worker(cluster: HostCluster, rng: random.Random) -> Fault:
    """Kill -9 a worker that the masters see running a chunk."""
    name = wait_until(lambda: _busy_worker(cluster, rng), "a worker running a chunk", timeout=30)
    cluster.kill9(name)
    return Fault(f"kill -9 {name}", lambda: cluster.restart(name), False)


def _busy_worker(cluster: HostCluster, rng: random.Random) -> str | None:
    from uds import client as uds_client
    with uds_client.connect(cluster.layout.path, timeout=CLIENT_TIMEOUT_S) as connection:
        busy = {node["node"].hex() for node in connection.nodes() if node["running"]}
    names = [name for name in cluster.worker_names if cluster.node_id(name) in busy]
    return rng.choice(names) if names else None


def balancer_epochs(cluster: HostCluster) -> dict[str, int]:
    """Each listed, alive balancer's host -> its lease epoch as `uds nodes` shows it (0: standby)."""
    from uds import client as uds_client
    from uds.wire.enums import NodeRole
    with uds_client.connect(cluster.layout.path, timeout=CLIENT_TIMEOUT_S) as connection:
        epochs = {node["node"].hex(): node["lease_epoch"] for node in connection.nodes()
                  if node["role"] == NodeRole.LOADBALANCER and node["state"] == "alive"}
    return {name: epochs[cluster.node_id(name)] for name in cluster.balancer_names
            if cluster.node_id(name) in epochs}


def active_balancer(cluster: HostCluster) -> tuple[str, int]:
    """The balancer host that holds the lease, and its epoch."""
    def one_active():
        active = [(name, epoch) for name, epoch in balancer_epochs(cluster).items() if epoch]
        return active[0] if len(active) == 1 else None
    return wait_until(one_active, "one balancer active", timeout=30)


def kill_active_balancer(cluster: HostCluster, rng: random.Random) -> Fault:
    name, _ = active_balancer(cluster)
    cluster.kill9(name)
    return Fault(f"kill -9 active balancer {name}", lambda: cluster.start(name), True)


def freeze_active_balancer(cluster: HostCluster, rng: random.Random) -> Fault:
    """Frozen for HOLD_S, past the 1.5 s lease: the standby takes it over."""
    name, _ = active_balancer(cluster)
    cluster.freeze(name)
    return Fault(f"freeze active balancer {name}", lambda: cluster.thaw(name), True)


def partition_active_balancer_from_masters(cluster: HostCluster, rng: random.Random) -> Fault:
    """The workers still reach it; the masters do not, so it cannot renew."""
    name, _ = active_balancer(cluster)
    cluster.network.partition([name], cluster.master_names)
    return Fault(f"partition active balancer {name} | masters", cluster.network.heal, True)


def partition_balancers(cluster: HostCluster, rng: random.Random) -> Fault:
    cluster.network.partition(cluster.balancer_names[:1], cluster.balancer_names[1:])
    return Fault("partition balancer | balancer", cluster.network.heal, False)


def kill_both_balancers(cluster: HostCluster, rng: random.Random) -> Fault:
    for name in cluster.balancer_names:
        cluster.kill9(name)

    def start_both() -> None:
        started = [cluster.start(name, wait=False) for name in cluster.balancer_names]
        for daemon in started:
            daemon.wait_ready()
    return Fault("kill -9 both balancers", start_both, True)


# How many times (a) kills the leader, each down 1.8-3 s (at least three
# of the masters' longest election timeouts, 0.6 s: the others elect and
# commit without it): four kills of three masters kill one of them twice,
# so a master that came back, caught up and was elected is killed again.
KILL_LEADER_TIMES = 4
KILL_LEADER_EVERY_S = 3.0
# Three restarts of every master: the state recovered from disk is written
# to and recovered again, twice.
RESTART_ALL_TIMES = 3


def master_roles(cluster: HostCluster) -> dict[str, int | None]:
    """Each master host -> 1 if its leadership is confirmed (a majority
    answered it within 0.2 s), 0 if not, None if it does not answer within
    MASTERS_TIMEOUT_S."""
    from uds.client.masters import ask_every_master
    from uds.wire.transport import Transport
    with Transport(cluster.layout.keys()) as transport:
        records = ask_every_master(cluster.layout.cluster, transport, bytes(16))
    return {name: None if record.confirmed_leader is None else int(record.confirmed_leader)
            for name, record in zip(cluster.master_names, records)}


def leader_master(cluster: HostCluster) -> str:
    """The master host that leads, once exactly one's leadership is confirmed."""
    def one_leader():
        leaders = [name for name, role in master_roles(cluster).items() if role]
        return leaders[0] if len(leaders) == 1 else None
    return wait_until(one_leader, "one master leading", timeout=30)


def kill_leader_repeatedly(cluster: HostCluster, rng: random.Random) -> Fault:
    """Kill -9 whichever master leads, KILL_LEADER_TIMES times, each
    started again a few seconds after its kill."""
    killed: list[str] = []
    for _ in range(KILL_LEADER_TIMES):
        name = leader_master(cluster)
        cluster.kill9(name)
        killed.append(name)
        time.sleep(KILL_LEADER_EVERY_S * rng.uniform(0.6, 1.0))   # the fault's duration
        cluster.start(name)
    return Fault(f"kill -9 the leader {len(killed)} times", lambda: None, False, len(killed))


def freeze_leader(cluster: HostCluster, rng: random.Random) -> Fault:
    """Frozen past the election timeout: the others elect a leader; thawed,
    the old one must not act as leader any more."""
    name = leader_master(cluster)
    cluster.freeze(name)
    return Fault(f"freeze leading master {name}", lambda: cluster.thaw(name), False, 1)


def partition_leader_from_masters(cluster: HostCluster, rng: random.Random) -> Fault:
    """The leader sits in the minority; clients and balancers still reach it."""
    name = leader_master(cluster)
    cluster.network.partition([name], [other for other in cluster.master_names if other != name])
    return Fault(f"partition leading master {name} | masters", cluster.network.heal, False, 1)


def restart_all_masters(cluster: HostCluster, rng: random.Random) -> Fault:
    """Kill -9 every master at once and start them again, RESTART_ALL_TIMES times."""
    for _ in range(RESTART_ALL_TIMES):
        for name in cluster.master_names:
            cluster.kill9(name)
        started = [cluster.start(name, wait=False) for name in cluster.master_names]
        for daemon in started:
            daemon.wait_ready()
        time.sleep(rng.uniform(0.5, 2.0))          # writes in flight when the next kill lands
    return Fault(f"restart all masters {RESTART_ALL_TIMES} times", lambda: None, False, RESTART_ALL_TIMES)


# How a storage cluster runs under its nemeses: R = 2 over three nodes, a
# node silent 2 s is lost (so a fault held HOLD_S changes the membership
# and starts repair), and the scrub comes round every few seconds. Repair
# scans also start at every membership change; the periodic one is rare,
# as a long run holds thousands of small blobs.
CHAOS_STORAGE_POLICY = {"replicas": 2, "heartbeat_interval_s": 0.25, "lost_after_s": 2.0,
                        "repair_interval_s": 30.0, "repair_bytes_per_s": 64 << 20,
                        "scrub_interval_s": 5.0, "scrub_bytes_per_s": 64 << 20}
# How many blobs corrupt_replica damages on its node.
CORRUPT_BLOBS = 4
# A corrupt replica is found by the scrub and replaced by repair within this.
SCRUB_REPAIRS_WITHIN_S = 60.0


def kill_storage(cluster: HostCluster, rng: random.Random) -> Fault:
    name = rng.choice(cluster.storage_names)
    cluster.kill9(name)
    return Fault(f"kill -9 {name}", lambda: cluster.start(name), False)


def freeze_storage(cluster: HostCluster, rng: random.Random) -> Fault:
    """Frozen for HOLD_S, past lost_after_s: the masters declare it lost, and
    readers that asked it move on; thawed, it is back with its blobs."""
    name = rng.choice(cluster.storage_names)
    cluster.freeze(name)
    return Fault(f"freeze {name}", lambda: cluster.thaw(name), False)


def partition_storage(cluster: HostCluster, rng: random.Random) -> Fault:
    """Cut off from every other host, the client among them."""
    name = rng.choice(cluster.storage_names)
    cluster.network.partition([name], [other for other in cluster.network.hosts if other != name])
    return Fault(f"partition {name} | everyone", cluster.network.heal, False)


def corrupt_replica(cluster: HostCluster, rng: random.Random) -> Fault:
    """Flip bytes of the CORRUPT_BLOBS newest blobs of one node while it
    runs: likely inputs of jobs just submitted, which a worker reads next.
    One node's copies only, so every file keeps a good one. Recovered once
    the scrub has moved each aside and two nodes hold a sound copy of each
    again, so that a later fault never meets a file's only good copy."""
    name = rng.choice(cluster.storage_names)
    blobs = []
    for path in cluster.blobs(name).glob("*/*"):
        try:
            status = path.stat()
        except FileNotFoundError:
            continue                            # trimmed or collected meanwhile
        if not path.name.endswith(".blocks") and status.st_size:
            blobs.append((status.st_mtime, path))
    file_ids = []
    for _, path in sorted(blobs)[-CORRUPT_BLOBS:]:
        try:
            with open(path, "r+b") as blob:
                size = blob.seek(0, os.SEEK_END)
                for offset in {rng.randrange(size) for _ in range(4)}:
                    blob.seek(offset)
                    flipped = bytes([blob.read(1)[0] ^ 0xFF])
                    blob.seek(offset)
                    blob.write(flipped)
        except FileNotFoundError:
            continue
        file_ids.append(path.parent.name + path.name)
    corrupt = cluster.blobs(name).parent / "corrupt"

    def gone(file_id: str) -> bool:
        """Moved aside by the scrub (or trimmed from a node outside its set)."""
        return (corrupt / file_id).exists() or not cluster.blob_path(name, file_id).exists()

    def repaired() -> None:
        wait_until(lambda: all(gone(file_id) and sound_copies(cluster, file_id) >= 2 for file_id in file_ids),
                   f"{len(file_ids)} blobs of {name} moved aside and two sound copies of each",
                   timeout=SCRUB_REPAIRS_WITHIN_S)
    return Fault(f"corrupt {len(file_ids)} blobs of {name}", repaired, False)


def sound_copies(cluster: HostCluster, file_id: str) -> int:
    """The storage hosts whose blob of `file_id` (hex) hashes to its id."""
    from uds.wire.ids import file_id_of
    count = 0
    for name in cluster.storage_names:
        try:
            count += file_id_of(cluster.blob_path(name, file_id).read_bytes()).hex() == file_id
        except FileNotFoundError:
            continue
    return count


def fencing_violations(events: list[dict]) -> list[str]:
    """The lease's epochs, in the event log's order, must rise by one with
    each grant: an epoch granted twice, or one that goes back, would let two
    balancers' dispatches count at once."""
    epochs = [int(event["detail"].split()[-1]) for event in events if event["kind"] == "lease_granted"]
    return [f"lease epoch {later} granted after epoch {earlier}"
            for earlier, later in zip(epochs, epochs[1:]) if later != earlier + 1]


def failovers_in(events: list[dict]) -> int:
    """Lease changes after the first grant."""
    return max(0, sum(event["kind"] == "lease_granted" for event in events) - 1)


ONE_BALANCER_NEMESES: dict[str, Callable[[HostCluster, random.Random], Fault]] = {
    "kill_balancer": kill_balancer,
    "freeze_balancer": freeze_balancer,
    "partition_balancer_from_masters": partition_balancer_from_masters,
    "kill_worker": kill_worker,
}
PAIR_NEMESES: dict[str, Callable[[HostCluster, random.Random], Fault]] = {
    "kill_active_balancer": kill_active_balancer,
    "freeze_active_balancer": freeze_active_balancer,
    "partition_active_balancer_from_masters": partition_active_balancer_from_masters,
    "partition_balancers": partition_balancers,
    "kill_both_balancers": kill_both_balancers,
}
MASTER_NEMESES: dict[str, Callable[[HostCluster, random.Random], Fault]] = {
    "kill_leader_repeatedly": kill_leader_repeatedly,
    "freeze_leader": freeze_leader,
    "partition_leader_from_masters": partition_leader_from_masters,
    "restart_all_masters": restart_all_masters,
}
STORAGE_NEMESES: dict[str, Callable[[HostCluster, random.Random], Fault]] = {
    "kill_storage": kill_storage,
    "freeze_storage": freeze_storage,
    "partition_storage": partition_storage,
    "corrupt_replica": corrupt_replica,
}
NEMESES = {**ONE_BALANCER_NEMESES, **PAIR_NEMESES, **MASTER_NEMESES, **STORAGE_NEMESES}


@dataclass
class JobStream:
    """Client threads, each with a connection of its own, submitting small
    proof jobs one after another and following each to its end."""

    cluster_path: pathlib.Path
    clients: int = 3
    chunks: int = 2
    program: bytes = PROOF_PROGRAM
    history: History = field(default_factory=History)
    progress_times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _in_flight: int = 0
    refused_puts: int = 0           # submissions given up because a put could not reach R nodes

    def start(self) -> "JobStream":
        for index in range(self.clients):
            thread = threading.Thread(target=self._run, args=(f"c{index}",), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    @property
    def operations(self) -> int:
        return len(self.history.submissions)

    def succeeded_chunks(self) -> int:
        with self._lock:
            return len(self.progress_times)

    def flowing(self) -> bool:
        """Some chunk has succeeded and some job is in flight: a fault now lands mid-job."""
        with self._lock:
            return bool(self.progress_times) and self._in_flight > 0

    def check_alive(self) -> None:
        if self.errors and any(error.startswith("died") for error in self.errors):
            raise RuntimeError(f"a client thread died: {self.errors}")

    def stop(self, timeout: float = JOB_WAIT_S + 30) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        if any(thread.is_alive() for thread in self._threads):
            raise TimeoutError("a client thread did not finish its job")

    def longest_unavailability(self) -> float:
        with self._lock:
            times = sorted(self.progress_times)
        return max((later - earlier for earlier, later in zip(times, times[1:])), default=0.0)

    def _run(self, client: str) -> None:
        try:
            self._submit_and_follow(client)
        except BaseException as fault:
            self.errors.append(f"died {client}: {fault!r}")
            raise

    def _submit_and_follow(self, client: str) -> None:
        from uds import client as uds_client
        rng = random.Random(client)
        with uds_client.connect(self.cluster_path, timeout=CLIENT_TIMEOUT_S) as connection:
            while not self._stop.is_set():
                inputs = [rng.randbytes(rng.randint(1, 4096)) for _ in range(self.chunks)]
                try:
                    job = connection.submit_job(self.program, chunks=self.chunks, max_retries=5,
                                                chunk_inputs=[{"data": data} for data in inputs], timeout=60)
                except uds_client.RequestTimeout:
                    continue                    # not acknowledged: nothing to check
                except StorageError as fault:   # its files not stored on R nodes: not submitted either
                    self.errors.append(f"{client} put: {fault!r}")
                    self.refused_puts += 1
                    self._stop.wait(0.2)
                    continue
                self.history.acknowledged(client, job.id, inputs)
                with self._lock:
                    self._in_flight += 1
                try:
                    self._follow(client, connection, job.id)
                finally:
                    with self._lock:
                        self._in_flight -= 1

    def _follow(self, client: str, connection, job: str) -> None:
        deadline, succeeded = time.monotonic() + JOB_WAIT_S, 0
        while time.monotonic() < deadline:
            try:
                status = connection.job_status(job, wait=1.0)
            except Exception as fault:          # a request lost to a fault: ask again
                self.errors.append(f"{client} {job}: {fault!r}")
                continue
            self.history.observed(client, status)
            if status.succeeded > succeeded:
                with self._lock:
                    self.progress_times += [time.monotonic()] * (status.succeeded - succeeded)
                succeeded = status.succeeded
            if status.done:
                for chunk in status.chunks:
                    if PROOF_OUTPUT in chunk.outputs:
                        content = self._get(client, connection, chunk.outputs[PROOF_OUTPUT], deadline)
                        if content is not None:     # else the checker finds the output missing
                            self.history.committed_output(job, chunk.chunk, content)
                return

    def _get(self, client: str, connection, file_id: str, deadline: float) -> bytes | None:
        """The file's content, asked again while a storage fault keeps every
        copy out of reach, until `deadline`; None if it never came."""
        while True:
            try:
                return connection.get(file_id)
            except StorageError as fault:
                self.errors.append(f"{client} get {file_id}: {fault!r}")
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.5)


def all_events(cluster_path: pathlib.Path) -> list[dict]:
    """The whole event log, each event as its EVENT record (ids as bytes), for the checker."""
    from uds import client as uds_client
    events, after = [], 0
    with uds_client.connect(cluster_path, timeout=CLIENT_TIMEOUT_S) as connection:
        while True:
            page = connection.events(after=after, limit=1000)
            events += [{**{name: getattr(event, name) for name in event.__slots__},
                        "job": event.job and bytes.fromhex(event.job),
                        "node": event.node and bytes.fromhex(event.node)} for event in page.events]
            if page.through_seq >= page.last_seq or page.through_seq <= after:
                return events
            after = page.through_seq


def apply(nemesis: Callable, cluster: HostCluster, stream: JobStream, rng: random.Random) -> Fault:
    """Inject mid-job, hold, recover, then await progress after the recovery."""
    wait_until(lambda: stream.check_alive() or stream.flowing(), "jobs in flight", timeout=60)
    fault = nemesis(cluster, rng)
    time.sleep(HOLD_S)                          # the fault's duration, not a wait for a result
    fault.recover()
    before = stream.succeeded_chunks()
    wait_until(lambda: stream.check_alive() or stream.succeeded_chunks() >= before + stream.chunks, "progress after " + fault.name,
               timeout=60)
    return fault


def judged_run(nemesis: Callable, cluster: HostCluster, name: str, clients: int = 3) -> list[dict]:
    """Apply `nemesis` once under a job stream of `clients` threads, and
    judge the history: the event log, once the checker found nothing."""
    stream = JobStream(cluster.layout.path, clients=clients).start()
    try:
        apply(nemesis, cluster, stream, random.Random(name))
    finally:
        stream.stop()
    assert stream.operations >= 3
    events = all_events(cluster.layout.path)
    assert check(stream.history, events) == []
    return events


def run(minutes: float, root: pathlib.Path, seed: int = 0) -> dict:
    rng = random.Random(seed)
    network = Network.create()
    cluster = HostCluster.create(root, network, workers=2, loadbalancers=2, masters=3,
                                 storage=3, storage_policy=CHAOS_STORAGE_POLICY)
    faults = leader_changes = 0
    violations: list[Violation] = []
    try:
        cluster.start_all()
        cluster.await_storage_membership()
        stream = JobStream(cluster.layout.path).start()
        deadline = time.monotonic() + minutes * 60
        names = list(NEMESES)
        stuck: list[str] = []
        while time.monotonic() < deadline and not stuck:
            try:
                fault = apply(NEMESES[names[faults % len(names)]], cluster, stream, rng)
            except TimeoutError as unrecovered:     # the cluster did not recover: report it, stop
                stuck.append(f"unavailable: {unrecovered}")
                faults += 1
                break
            faults += 1
            leader_changes += fault.leader_changes
        stream.stop()
        events = all_events(cluster.layout.path)
        violations = check(stream.history, events)
        return {"operations": stream.operations, "refused_puts": stream.refused_puts,
                "faults": faults, "failovers": failovers_in(events),
                "leader_changes": leader_changes,
                "longest_unavailability_s": round(stream.longest_unavailability(), 3),
                "violations": stuck + fencing_violations(events)
                + [f"{v.kind} {v.job}: {v.detail}" for v in violations]}
    finally:
        cluster.cleanup()
        network.teardown()


def main() -> int:
    parser = argparse.ArgumentParser(description="run the nemeses against a cluster on separate hosts")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="uds-chaos-") as folder:
        report = run(arguments.minutes, pathlib.Path(folder) / "cluster", arguments.seed)
    print(json.dumps(report))
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
