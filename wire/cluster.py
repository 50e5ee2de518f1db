"""The cluster file: one TOML file that every node and client reads.

    keys = "keys"                       # key folder, relative to this file

    [[masters]]
    address = "tcp://127.0.0.1:7100"    # clients, load balancers: ZeroMQ ROUTER
    raft = "127.0.0.1:7110"             # pysyncobj peer address
    data = "data/master-0"
    metrics = "127.0.0.1:9100"          # optional: Prometheus /metrics (doc/metrics.md)

    [[loadbalancers]]
    address = "tcp://127.0.0.1:7200"    # workers connect here
    data = "data/loadbalancer-0"

    [[storage]]
    address = "tcp://127.0.0.1:7300"
    data = "data/storage-0"

    [workers]                           # defaults for every worker
    data = "data/workers"               # a worker named N keeps its data in DATA/N
    slots = 2
    cache_bytes = 1073741824
    heartbeat_interval_s = 0.5
    lease_s = 3.0                       # silence after which a worker is lost
    slot_uids = "61000-61063"           # uids the sandbox runs programs as (default: by node id)
    metrics = "127.0.0.1:9200-9263"     # optional: each worker serves /metrics on the first free port

    [limits]                            # what a job gets when it asks for nothing
    memory = "2G"                       # same keys as a job's limits
    disk = "4G"

    [retention]                         # when finished jobs leave the masters' state
    period_s = 604800                   # 7 days after they finished
    max_finished_jobs = 10000           # or once more are kept, oldest finished first
    max_finished_chunks = 250000        # or once their chunks are more than this
    history_lines = 100000              # forgotten jobs' history lines kept

    [storage_policy]                    # the storage nodes, together (doc/storage.md)
    replicas = 2                        # R: copies of each file (fewer while fewer nodes live)
    heartbeat_interval_s = 1.0          # a storage node's heartbeat to the masters
    lost_after_s = 10.0                 # silence after which the masters declare it lost
    repair_bytes_per_s = 67108864       # bound on the bytes a node pulls for repair
    repair_interval_s = 300.0           # a full repair scan at least this often
    scrub_bytes_per_s = 33554432        # bound on the bytes a node re-hashes
    scrub_interval_s = 86400.0          # a full scrub pass at most this often
    gc_grace_s = 3600.0                 # unreferenced this long before a blob is collected
    gc_interval_s = 600.0               # how often each node runs a collection pass

    [scheduling]                        # how the masters run jobs (doc/cluster.md)
    poison_after = 3                    # workers lost in a row that quarantine a chunk
    cache_max_entries = 100000          # result-cache entries kept, least recently used dropped first
    cache_max_age_s = 604800.0          # and none unused for longer than this (7 days)

Relative paths are relative to the cluster file's folder. See doc/cluster.md.
"""
from __future__ import annotations

import os
import pathlib
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from uds.wire.resources import ResourceLimits, ResourceSpecError


class ClusterFileError(Exception):
    """The cluster file is missing, not TOML, or breaks a rule; says which."""


@dataclass(frozen=True)
class MasterEntry:
    address: str
    raft: str
    data: pathlib.Path
    metrics: str = ""                   # HOST:PORT of its /metrics; "": none


@dataclass(frozen=True)
class ServiceEntry:
    address: str
    data: pathlib.Path
    metrics: str = ""                   # HOST:PORT of its /metrics; "": none


@dataclass(frozen=True)
class WorkerDefaults:
    data: pathlib.Path
    slots: int = 2
    cache_bytes: int = 1 << 30
    heartbeat_interval_s: float = 0.5
    lease_s: float = 3.0
    slot_uids: str = ""                 # "first-last"; empty: the worker's default range
    metrics: str = ""                   # HOST:FIRST-LAST (or HOST:PORT) for /metrics; "": none


@dataclass(frozen=True)
class Cluster:
    path: pathlib.Path
    keys: pathlib.Path
    masters: tuple[MasterEntry, ...]
    loadbalancers: tuple[ServiceEntry, ...]
    storage: tuple[ServiceEntry, ...]
    workers: WorkerDefaults
    extra: dict[str, Any] = field(default_factory=dict)

    def worker_data(self, name: str) -> pathlib.Path:
        return self.workers.data / name


def _require(table: dict, key: str, kind: type, where: str) -> Any:
    if key not in table:
        raise ClusterFileError(f"{where}: missing {key!r}")
    value = table[key]
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise ClusterFileError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


# What a node may connect to: tcp://HOST:PORT (a name, an IPv4 address or
# [an IPv6 address]) or ipc://PATH. Anything else would make ZeroMQ's
# connect raise, in whichever process learnt the address.
_TCP_ENDPOINT = re.compile(r"tcp://(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\]):([0-9]{1,5})")
_IPC_ENDPOINT = re.compile(r"ipc://[\x21-\x7e]{1,100}")


def endpoint_problem(address: str) -> str:
    """Why `address` is not an endpoint a node can connect to, or ""."""
    tcp = _TCP_ENDPOINT.fullmatch(address)
    if tcp is not None and 0 < int(tcp.group(1)) < 65536:
        return ""
    if _IPC_ENDPOINT.fullmatch(address):
        return ""
    return f"{address[:100]!r} is not a tcp://HOST:PORT or ipc://PATH address"


def _address(table: dict, key: str, where: str) -> str:
    value = _require(table, key, str, where)
    problem = endpoint_problem(value)
    if problem:
        raise ClusterFileError(f"{where}.{key}: {problem}")
    return value


def _metrics(table: dict, where: str) -> str:
    """The table's optional `metrics` address, checked; "" when it has none."""
    if "metrics" not in table:
        return ""
    value = _require(table, "metrics", str, where)
    try:
        parse_metrics_address(value)
    except ClusterFileError as fault:
        raise ClusterFileError(f"{where}.{fault}") from None
    return value


def parse_metrics_address(address: str) -> tuple[str, int, int]:
    """(host, first port, last port) of "HOST:PORT" or "HOST:FIRST-LAST"
    ("[V6]:PORT" for an IPv6 host). Raises ClusterFileError saying what is wrong."""
    host, separator, ports = address.rpartition(":")
    if not separator or not host:
        raise ClusterFileError(f"metrics address {address!r}: expected HOST:PORT or HOST:FIRST-LAST")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    first_text, _, last_text = ports.partition("-")
    try:
        first = int(first_text)
        last = int(last_text) if last_text else first
    except ValueError:
        raise ClusterFileError(f"metrics address {address!r}: {ports!r} is not a port or FIRST-LAST") from None
    if not 0 <= first <= last < 65536 or (first == 0 and last != 0):
        raise ClusterFileError(f"metrics address {address!r}: ports must be 0 or 1-65535, first <= last")
    # Imported here: the masters' core reads the cluster file's types and
    # must load no I/O module (tests/test_master_leader.py checks it).
    import socket
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        if not host.replace("-", "").replace(".", "").isalnum():
            raise ClusterFileError(f"metrics address {address!r}: {host!r} is not a host") from None
    return host, first, last


def load(path: str | os.PathLike[str]) -> Cluster:
    file = pathlib.Path(path).resolve()
    try:
        document = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ClusterFileError(f"no cluster file at {file}") from None
    except (OSError, UnicodeDecodeError) as fault:
        raise ClusterFileError(f"cannot read {file}: {fault}") from None
    except tomllib.TOMLDecodeError as fault:
        raise ClusterFileError(f"{file} is not valid TOML: {fault}") from None
    base = file.parent

    def resolve(value: str) -> pathlib.Path:
        return (base / value).resolve()

    def entries(name: str) -> list[dict]:
        value = document.get(name, [])
        if type(value) is not list or not all(type(item) is dict for item in value):
            raise ClusterFileError(f"{name}: expected an array of tables ([[{name}]])")
        if not value:
            raise ClusterFileError(f"{file}: needs at least one [[{name}]]")
        return value

    masters = tuple(
        MasterEntry(_address(item, "address", f"masters[{index}]"),
                    _require(item, "raft", str, f"masters[{index}]"),
                    resolve(_require(item, "data", str, f"masters[{index}]")),
                    _metrics(item, f"masters[{index}]"))
        for index, item in enumerate(entries("masters")))
    services = {}
    for name in ("loadbalancers", "storage"):
        services[name] = tuple(
            ServiceEntry(_address(item, "address", f"{name}[{index}]"),
                         resolve(_require(item, "data", str, f"{name}[{index}]")),
                         _metrics(item, f"{name}[{index}]"))
            for index, item in enumerate(entries(name)))
    workers_table = document.get("workers", {})
    if type(workers_table) is not dict:
        raise ClusterFileError("workers: expected a table ([workers])")
    workers = WorkerDefaults(
        data=resolve(workers_table.get("data", "data/workers")),
        slots=int(workers_table.get("slots", 2)),
        cache_bytes=int(workers_table.get("cache_bytes", 1 << 30)),
        heartbeat_interval_s=float(workers_table.get("heartbeat_interval_s", 0.5)),
        lease_s=float(workers_table.get("lease_s", 3.0)),
        slot_uids=str(workers_table.get("slot_uids", "")),
        metrics=_metrics(workers_table, "workers"),
    )
    if workers.slots < 1 or workers.cache_bytes < 1 or workers.heartbeat_interval_s <= 0 \
            or workers.lease_s <= workers.heartbeat_interval_s:
        raise ClusterFileError("workers: slots and cache_bytes must be positive, "
                               "lease_s longer than heartbeat_interval_s")
    known = {"keys", "masters", "loadbalancers", "storage", "workers"}
    cluster = Cluster(
        path=file, keys=resolve(_require(document, "keys", str, str(file))),
        masters=masters, loadbalancers=services["loadbalancers"], storage=services["storage"],
        workers=workers, extra={key: value for key, value in document.items() if key not in known},
    )
    default_limits(cluster)     # a bad [limits] table is the cluster file's error, found at load
    retention(cluster)          # and so is a bad [retention] table
    storage_policy(cluster)     # and a bad [storage_policy] table
    scheduling(cluster)         # and a bad [scheduling] table
    return cluster


def default_limits(cluster: Cluster) -> ResourceLimits:
    """The [limits] table: what an attempt gets for each limit its job did not ask."""
    table = cluster.extra.get("limits", {})
    if type(table) is not dict:
        raise ClusterFileError("limits: expected a table ([limits])")
    try:
        return ResourceLimits.parse(table)
    except ResourceSpecError as fault:
        raise ClusterFileError(f"limits: {fault}") from None


def _settings(cluster: Cluster, name: str, kinds: dict[str, type]) -> dict[str, Any]:
    """The values table [name] sets, each checked against its kind; unknown keys are an error."""
    table = cluster.extra.get(name, {})
    if type(table) is not dict:
        raise ClusterFileError(f"{name}: expected a table ([{name}])")
    unknown = set(table) - set(kinds)
    if unknown:
        raise ClusterFileError(f"{name}: unknown key(s) {', '.join(sorted(unknown))}")
    return {key: _require(table, key, kind, name) for key, kind in kinds.items() if key in table}


@dataclass(frozen=True)
class Retention:
    """The [retention] table. A finished job leaves the masters' replicated
    state `period_s` after it finished, or sooner, oldest finished first,
    while more than `max_finished_jobs` finished jobs or more than
    `max_finished_chunks` of their chunks are kept. A forgotten job leaves a
    history line; the newest `history_lines` of those are kept."""

    period_s: float = 7 * 24 * 3600.0
    max_finished_jobs: int = 10_000
    max_finished_chunks: int = 250_000
    history_lines: int = 100_000


_RETENTION_KEYS = {"period_s": float, "max_finished_jobs": int, "max_finished_chunks": int,
                   "history_lines": int}


def retention(cluster: Cluster) -> Retention:
    """The [retention] table, its defaults filled in."""
    values = _settings(cluster, "retention", _RETENTION_KEYS)
    if any(value < 0 for value in values.values()):
        raise ClusterFileError("retention: every value must be zero or more")
    return Retention(**values)


@dataclass(frozen=True)
class StoragePolicy:
    """The [storage_policy] table: how the storage nodes keep files together."""

    replicas: int = 2
    heartbeat_interval_s: float = 1.0
    lost_after_s: float = 10.0
    repair_bytes_per_s: int = 64 * 1024 * 1024
    repair_interval_s: float = 300.0
    scrub_bytes_per_s: int = 32 * 1024 * 1024
    scrub_interval_s: float = 86400.0
    gc_grace_s: float = 3600.0
    gc_interval_s: float = 600.0

    def replicas_among(self, live_nodes: int) -> int:
        """R, or every live node while there are fewer than R."""
        return max(1, min(self.replicas, live_nodes))


_STORAGE_POLICY_KEYS = {"replicas": int, "heartbeat_interval_s": float, "lost_after_s": float,
                        "repair_bytes_per_s": int, "repair_interval_s": float,
                        "scrub_bytes_per_s": int, "scrub_interval_s": float,
                        "gc_grace_s": float, "gc_interval_s": float}


def storage_policy(cluster: Cluster) -> StoragePolicy:
    """The [storage_policy] table, its defaults filled in."""
    values = _settings(cluster, "storage_policy", _STORAGE_POLICY_KEYS)
    if any(value <= 0 for value in values.values()):
        raise ClusterFileError("storage_policy: every value must be more than zero")
    policy = StoragePolicy(**values)
    if policy.lost_after_s <= policy.heartbeat_interval_s:
        raise ClusterFileError("storage_policy: lost_after_s must be longer than heartbeat_interval_s")
    return policy


@dataclass(frozen=True)
class Scheduling:
    """The [scheduling] table: how the masters run jobs. A chunk whose
    workers are lost `poison_after` times in a row is quarantined as poison
    (other infrastructure failures never quarantine). The result cache keeps
    at most `cache_max_entries` entries, none unused for longer than
    `cache_max_age_s` (a hit uses an entry); the leader prunes it about
    once a minute."""

    poison_after: int = 3
    cache_max_entries: int = 100_000
    cache_max_age_s: float = 7 * 24 * 3600.0


_SCHEDULING_KEYS = {"poison_after": int, "cache_max_entries": int, "cache_max_age_s": float}


def scheduling(cluster: Cluster) -> Scheduling:
    """The [scheduling] table, its defaults filled in."""
    values = _settings(cluster, "scheduling", _SCHEDULING_KEYS)
    if values.get("poison_after", 1) < 1:
        raise ClusterFileError(f"scheduling.poison_after: must be 1 or more, not {values['poison_after']}")
    for key in ("cache_max_entries", "cache_max_age_s"):
        if not values.get(key, 0) >= 0:     # nan too
            raise ClusterFileError(f"scheduling.{key}: must be zero or more, not {values[key]}")
    return Scheduling(**values)


def render(keys: str, masters: list[dict], loadbalancers: list[dict], storage: list[dict],
           workers: dict, limits: dict | None = None, storage_policy: dict | None = None) -> str:
    """TOML text for a cluster file (values: str, int, float)."""

    def value(item: Any) -> str:
        if isinstance(item, str):
            return '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(item)

    lines = ["# uds cluster file: see doc/cluster.md", f"keys = {value(keys)}", ""]
    for name, tables in (("masters", masters), ("loadbalancers", loadbalancers), ("storage", storage)):
        for table in tables:
            lines.append(f"[[{name}]]")
            lines += [f"{key} = {value(item)}" for key, item in table.items()]
            lines.append("")
    lines.append("[workers]")
    lines += [f"{key} = {value(item)}" for key, item in workers.items()]
    if limits:
        lines += ["", "[limits]"] + [f"{key} = {value(item)}" for key, item in limits.items()]
    if storage_policy:
        lines += ["", "[storage_policy]"] + [f"{key} = {value(item)}" for key, item in storage_policy.items()]
    return "\n".join(lines) + "\n"

