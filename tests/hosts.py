"""Real daemons on separate network hosts, and real faults between them.

    network = Network.create()                       # a bridge of its own, 10.77.N.0/24
    cluster = HostCluster.create(tmp_path, network, workers=2)
    cluster.start_all()                              # each daemon in a namespace of its own
    pair = HostCluster.create(tmp_path, network, loadbalancers=2)   # hosts "loadbalancer", "loadbalancer1"
    group = HostCluster.create(tmp_path, network, masters=3)        # hosts "master", "master1", "master2"
    stored = HostCluster.create(tmp_path, network, storage=3,        # hosts "storage", "storage1", "storage2"
                                storage_policy={"replicas": 2})
    network.partition(["loadbalancer"], ["master"])  # drop packets both ways
    network.heal()
    cluster.freeze("loadbalancer"); cluster.thaw("loadbalancer")
    cluster.kill9("w0"); cluster.restart("w0")       # same data folder
    cluster.cleanup(); network.teardown()

Each host is a network namespace with one veth on the bridge and no route
beyond the bridge's subnet. The test process is the host named "client":
an address on the bridge in the root namespace, so a partition can cut it
off too (its rules sit in the other host's namespace). Daemons run under
`nsenter --net`, which switches the network namespace only: the mount
namespace is shared, so the worker's FUSE and slot mounts are the root
namespace's and tests/daemons.py's cleanup unmounts them.

Every name starts with PREFIX and a tag of this run; a file under
OWNERS_DIR names the process that owns the tag, so `sweep_leftovers()`
removes only what a dead run left, never a live parallel run's hosts.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import random
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

from daemons import ClusterLayout, Daemon, wait_until
from uds.client.devcluster import pid_alive
from uds.wire import cluster as cluster_file
from uds.wire.keys import create_cluster_keys, export_every_role

PREFIX = "uh"
OWNERS_DIR = pathlib.Path("/run/uds-test-hosts")
CLIENT = "client"
IP = "/usr/sbin/ip"
NFT = "/usr/sbin/nft"
NFT_TABLE = "uds_chaos"
MASTER_PORT, RAFT_PORT, LOADBALANCER_PORT, STORAGE_PORT = 7100, 7101, 7200, 7300


class HostError(RuntimeError):
    """A namespace, link or rule could not be made or removed."""


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise HostError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done


def _in(namespace: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run(IP, "netns", "exec", namespace, *command, check=check)


@dataclass(frozen=True)
class Host:
    name: str
    namespace: str | None           # None: the root namespace (the client)
    address: str

    @property
    def launcher(self) -> list[str]:
        """What goes before a daemon's command to run it on this host."""
        return ["nsenter", f"--net=/run/netns/{self.namespace}", "--"] if self.namespace else []


@dataclass
class Network:
    """A bridge, one namespace per host, and the drop rules of partitions."""

    tag: str
    subnet: int                     # the third octet of 10.77.subnet.0/24
    hosts: dict[str, Host] = field(default_factory=dict)
    cuts: set[frozenset[str]] = field(default_factory=set)

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.tag}br"

    @classmethod
    def create(cls) -> "Network":
        sweep_leftovers()
        used = _run(IP, "-o", "-4", "addr").stdout
        free = [n for n in range(1, 255) if f"10.77.{n}." not in used]
        if not free:
            raise HostError("no free 10.77.N.0/24 subnet")
        network = cls(tag=f"{random.getrandbits(24):06x}", subnet=random.choice(free))
        OWNERS_DIR.mkdir(parents=True, exist_ok=True)
        (OWNERS_DIR / network.tag).write_text(str(os.getpid()))
        try:
            _run(IP, "link", "add", network.bridge, "type", "bridge")
            _run(IP, "addr", "add", f"10.77.{network.subnet}.1/24", "dev", network.bridge)
            _run(IP, "link", "set", network.bridge, "up")
        except HostError:
            network.teardown()
            raise
        network.hosts[CLIENT] = Host(CLIENT, None, f"10.77.{network.subnet}.1")
        return network

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        namespace, outside = f"{PREFIX}{self.tag}-{name}", f"{PREFIX}{self.tag}v{index}"
        address = f"10.77.{self.subnet}.{index}"
        _run(IP, "netns", "add", namespace)
        _run(IP, "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _run(IP, "link", "set", outside, "master", self.bridge, "up")
        _in(namespace, IP, "addr", "add", f"{address}/24", "dev", "eth0")
        _in(namespace, IP, "link", "set", "eth0", "up")
        _in(namespace, IP, "link", "set", "lo", "up")
        _in(namespace, NFT, f"add table inet {NFT_TABLE}; "
            f"add chain inet {NFT_TABLE} input {{ type filter hook input priority 0; }}; "
            f"add chain inet {NFT_TABLE} output {{ type filter hook output priority 0; }}")
        host = self.hosts[name] = Host(name, namespace, address)
        return host

    def partition(self, side: list[str], other: list[str]) -> None:
        """Drop every packet between each host of `side` and each of `other`,
        both ways, until heal()."""
        for a in side:
            for b in other:
                if a == b or frozenset((a, b)) in self.cuts:
                    continue
                self.cuts.add(frozenset((a, b)))
                for near, far in ((a, b), (b, a)):
                    namespace = self.hosts[near].namespace
                    if namespace is None:
                        continue                # the far side's rules cover the client
                    address = self.hosts[far].address
                    _in(namespace, NFT, f"add rule inet {NFT_TABLE} input ip saddr {address} drop; "
                        f"add rule inet {NFT_TABLE} output ip daddr {address} drop")

    def heal(self) -> None:
        for host in self.hosts.values():
            if host.namespace:
                _in(host.namespace, NFT, "flush", "table", "inet", NFT_TABLE, check=False)
        self.cuts.clear()

    def teardown(self) -> None:
        _remove_tag(self.tag)


def _namespaces() -> list[str]:
    listed = _run(IP, "netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(PREFIX)]


def _remove_tag(tag: str) -> None:
    """Kill what runs in the tag's namespaces, delete them and the bridge."""
    for namespace in _namespaces():
        if namespace.startswith(f"{PREFIX}{tag}-"):
            for pid in _run(IP, "netns", "pids", namespace, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _run(IP, "netns", "delete", namespace, check=False)
    _run(IP, "link", "delete", f"{PREFIX}{tag}br", check=False)   # its veths go with the namespaces
    (OWNERS_DIR / tag).unlink(missing_ok=True)


def sweep_leftovers() -> list[str]:
    """Remove the hosts of every run whose owner is gone; the tags removed."""
    tags = {name[len(PREFIX):len(PREFIX) + 6] for name in _namespaces()}
    links = _run(IP, "-o", "link", "show", "type", "bridge", check=False).stdout
    tags |= {word[len(PREFIX):-2] for word in links.replace(":", " ").split()
             if word.startswith(PREFIX) and word.endswith("br") and len(word) == len(PREFIX) + 8}
    removed = []
    for tag in sorted(tags):
        owner = OWNERS_DIR / tag
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            pid = 0
        if pid and pid_alive(pid):
            continue                    # a live run's, this one's among them
        _remove_tag(tag)
        removed.append(tag)
    return removed


def balancer_name(index: int) -> str:
    """The host of entry `index` of [[loadbalancers]]."""
    return "loadbalancer" if index == 0 else f"loadbalancer{index}"


def master_name(index: int) -> str:
    """The host of entry `index` of [[masters]]."""
    return "master" if index == 0 else f"master{index}"


def storage_name(index: int) -> str:
    """The host of entry `index` of [[storage]]."""
    return "storage" if index == 0 else f"storage{index}"


@dataclass
class HostCluster:
    """A phase-1 cluster with each daemon on a host of its own."""

    layout: ClusterLayout
    network: Network
    worker_names: list[str]
    balancer_names: list[str] = field(default_factory=lambda: ["loadbalancer"])
    master_names: list[str] = field(default_factory=lambda: ["master"])
    storage_names: list[str] = field(default_factory=lambda: ["storage"])
    daemons: dict[str, Daemon] = field(default_factory=dict)

    @classmethod
    def create(cls, root: pathlib.Path, network: Network, workers: int = 2, slots: int = 2,
               lease_s: float = 2.0, heartbeat_interval_s: float = 0.25,
               loadbalancers: int = 1, masters: int = 1, storage: int = 1,
               storage_policy: dict | None = None) -> "HostCluster":
        """`loadbalancers` balancers, each on a host of its own: "loadbalancer"
        is entry 0 of [[loadbalancers]], "loadbalancer1" entry 1; likewise
        `masters` masters, "master", "master1", ..., and `storage` storage
        nodes, "storage", "storage1", ..., each with its data folder
        data/storage-K. `storage_policy` is the [storage_policy] table."""
        root.mkdir(parents=True, exist_ok=True)
        create_cluster_keys(root / "cluster-keys")
        export_every_role(root / "cluster-keys", root / "keys")
        balancers = [balancer_name(index) for index in range(loadbalancers)]
        master_hosts = [master_name(index) for index in range(masters)]
        storage_hosts = [storage_name(index) for index in range(storage)]
        address = {name: network.add_host(name).address for name in (*master_hosts, *balancers, *storage_hosts)}
        names = [f"w{index}" for index in range(workers)]
        for name in names:
            network.add_host(name)
        text = cluster_file.render(
            keys="keys",
            masters=[{"address": f"tcp://{address[name]}:{MASTER_PORT}",
                      "raft": f"{address[name]}:{RAFT_PORT}", "data": f"data/master-{index}"}
                     for index, name in enumerate(master_hosts)],
            loadbalancers=[{"address": f"tcp://{address[name]}:{LOADBALANCER_PORT}",
                            "data": f"data/loadbalancer-{index}"} for index, name in enumerate(balancers)],
            storage=[{"address": f"tcp://{address[name]}:{STORAGE_PORT}", "data": f"data/storage-{index}"}
                     for index, name in enumerate(storage_hosts)],
            workers={"data": "data/workers", "slots": slots, "cache_bytes": 1 << 30,
                     "heartbeat_interval_s": heartbeat_interval_s, "lease_s": lease_s},
            storage_policy=storage_policy)
        path = root / "cluster.toml"
        path.write_text(text)
        return cls(layout=ClusterLayout(root=root, path=path), network=network, worker_names=names,
                   balancer_names=balancers, master_names=master_hosts, storage_names=storage_hosts)

    def role_of(self, name: str) -> str:
        if name in self.worker_names:
            return "worker"
        if name in self.master_names:
            return "master"
        if name in self.storage_names:
            return "storage"
        return "loadbalancer" if name in self.balancer_names else name

    def start(self, name: str, wait: bool = True) -> Daemon:
        role = self.role_of(name)
        entry = name if role == "worker" else None
        if role == "loadbalancer":
            entry = str(self.balancer_names.index(name))    # its entry in [[loadbalancers]]
        if role == "master":
            entry = str(self.master_names.index(name))      # its entry in [[masters]]
        if role == "storage":
            entry = str(self.storage_names.index(name))     # its entry in [[storage]]
        daemon = self.layout.start(role, name=entry, wait=wait, launcher=self.network.hosts[name].launcher)
        self.daemons[name] = daemon
        return daemon

    def start_all(self) -> None:
        for name in [*self.storage_names, *self.master_names, *self.balancer_names, *self.worker_names]:
            self.start(name, wait=False)
        for daemon in self.daemons.values():
            daemon.wait_ready()

    def await_storage_membership(self, timeout: float = 30.0) -> None:
        """Return once the masters list every storage node alive, so that
        tests which count copies start from the masters' full view. (A node
        they have not heard from yet is alive to clients and workers too:
        storage/directory.py.)"""
        from uds import client as uds_client
        from uds.wire.enums import NodeRole

        def all_alive() -> bool:
            states = [node["state"] for node in connection.nodes() if node["role"] == NodeRole.STORAGE]
            return states == ["alive"] * len(self.storage_names)
        with uds_client.connect(self.layout.path, timeout=10.0) as connection:
            wait_until(all_alive, "every storage node alive in the masters' membership", timeout=timeout)

    def blobs(self, name: str) -> pathlib.Path:
        """Storage host `name`'s blob folder: blobs/ab/cdef... (see doc/storage.md)."""
        return self.layout.data_of("storage", str(self.storage_names.index(name))) / "blobs"

    def blob_path(self, name: str, file_id: str) -> pathlib.Path:
        """Where storage host `name` keeps the blob of `file_id` (hex)."""
        return self.blobs(name) / file_id[:2] / file_id[2:]

    def holders(self, file_id: str) -> set[str]:
        """The storage hosts whose blob folder holds `file_id` (hex): read
        from disk, so no node is asked and no blob touched."""
        return {name for name in self.storage_names if self.blob_path(name, file_id).is_file()}

    def node_id(self, name: str) -> str | None:
        """The hex node id daemon `name` chose, once it has started."""
        try:
            return (self.daemons[name].data / "node_id").read_text().strip()
        except (KeyError, OSError):
            return None

    def kill9(self, name: str) -> None:
        self.daemons[name].kill9()

    def restart(self, name: str) -> Daemon:
        """Start `name` again on its host with the same data folder (kill -9 first if alive)."""
        self.kill9(name)
        return self.start(name)

    def freeze(self, name: str) -> None:
        os.killpg(self.daemons[name].pid, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        os.killpg(self.daemons[name].pid, signal.SIGCONT)

    def cleanup(self) -> None:
        for daemon in self.daemons.values():
            if daemon.alive():
                try:
                    os.killpg(daemon.pid, signal.SIGCONT)   # a frozen process must run to die cleanly
                except ProcessLookupError:
                    pass
        self.layout.cleanup()


@contextlib.contextmanager
def running_hosts(root: pathlib.Path, **shape) -> Iterator[HostCluster]:
    """A network of its own and a HostCluster.create(root, network, **shape)
    on it, every daemon started and ready; removed again however the block ends."""
    network = Network.create()
    cluster = HostCluster.create(root, network, **shape)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.cleanup()
        network.teardown()
