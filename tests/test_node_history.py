"""Node records and node history through real daemons: `uds nodes` shows
what every node said of itself (version, cpus, memory, disk, addresses), and
`uds nodes --history NODE` a node's record and its events, oldest first."""
import socket

import pytest

import uds
from uds.client import cli
from uds.daemon.node_facts import machine_cpus
from uds.wire.enums import NodeRole

from daemons import wait_until

WAIT_S = 45.0
ROLES = ("master", "loadbalancer", "storage", "worker")


def _uds(capsys, cluster, *words):
    """`uds WORDS` against the cluster: (exit code, stdout lines, stderr lines)."""
    capsys.readouterr()
    code = cli.main(["--cluster", str(cluster.layout.path), *words])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def _facts_rows(lines):
    """The facts table of `uds nodes`: node id hex -> its cells."""
    start = next(index for index, line in enumerate(lines)
                 if line.split()[:3] == ["node", "version", "cpus"])
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = line.split(maxsplit=7)     # node, version, cpus, memory and disk (number, unit), addresses
        rows[cells[0]] = cells
    return rows


def _record(cluster, role):
    return next(node for node in cluster.connection.nodes() if node["role"] == role and node["state"] == "alive")


def _kinds_of_history(lines):
    """The events section of `uds nodes --history`: (kind, line) in order."""
    start = next(index for index, line in enumerate(lines) if line.endswith(", oldest first:"))
    return [(line.split()[3], line) for line in lines[start + 1:]]


def test_nodes_shows_each_nodes_version_machine_and_addresses(shared_cluster, capsys):
    # The storage node joins with its first heartbeat, which may come after the others.
    wait_until(lambda: sorted({NodeRole(record["role"]).name.lower() for record in shared_cluster.connection.nodes()})
               == sorted(ROLES), "every role listed", WAIT_S)
    code, lines, _ = _uds(capsys, shared_cluster, "nodes", "--long")
    assert code == 0
    rows = _facts_rows(lines)
    records = shared_cluster.connection.nodes()
    entries = shared_cluster.layout.cluster
    listening = {NodeRole.MASTER: entries.masters[0].address, NodeRole.LOADBALANCER: entries.loadbalancers[0].address,
                 NodeRole.STORAGE: entries.storage[0].address}
    for record in records:
        cells = rows[record["node"].hex()]
        assert cells[1] == uds.__version__ and cells[2] == str(machine_cpus()), cells
        assert cells[4].endswith("iB") and cells[6].endswith("iB"), cells     # memory, disk
        addresses = cells[7].split(", ")
        assert addresses == list(record["addresses"]) and addresses, cells
        if record["role"] in listening:          # its own endpoint first, then the host's
            assert addresses[0] == listening[record["role"]], cells
        if record["role"] == NodeRole.MASTER:
            assert entries.masters[0].raft in addresses, cells
        assert record["machine_disk_bytes"] > 0 and record["machine_memory_bytes"] > 0
    # Without --long, one address per node and a count of the others.
    code, lines, _ = _uds(capsys, shared_cluster, "nodes")
    master = _record(shared_cluster, NodeRole.MASTER)
    assert _facts_rows(lines)[master["node"].hex()][7] == \
        f"{master['addresses'][0]} (+{len(master['addresses']) - 1}, see --long)"


def test_history_of_a_worker_that_ran_chunks_was_killed_and_came_back(shared_cluster, capsys):
    connection = shared_cluster.connection
    job = connection.submit_job(b"#!/bin/sh\necho ran > $UDS_OUTPUT/result\n", chunks=4, timeout=60)
    status = job.wait(timeout=WAIT_S)
    assert status.state == "succeeded", status
    worker_hex = status.chunks[0].worker
    ran = sorted(chunk.chunk for chunk in status.chunks if chunk.worker == worker_hex)
    name = shared_cluster.worker_by_node(worker_hex)
    before = next(node for node in connection.nodes() if node["node"].hex() == worker_hex)

    shared_cluster.daemons[name].kill9()
    wait_until(lambda: any(node["node"].hex() == worker_hex and node["state"] == "lost"
                           for node in connection.nodes()), "the killed worker declared lost", WAIT_S)
    shared_cluster.restart(name)
    after = wait_until(lambda: next((node for node in connection.nodes() if node["node"].hex() == worker_hex
                                     and node["state"] == "alive" and node["started_at"] != before["started_at"]),
                                    None), "the restarted worker back", WAIT_S)

    code, lines, err = _uds(capsys, shared_cluster, "nodes", "--history", worker_hex[:10])
    assert code == 0, err
    shown = dict(line.split(":", 1) for line in lines[:lines.index("")])
    assert shown["node"].strip() == worker_hex and shown["role"].strip() == "worker"
    assert shown["state"].strip() == "alive" and shown["version"].strip() == uds.__version__
    assert shown["cpus"].strip() == str(after["cpus"]) and shown["addresses"].strip() == ", ".join(after["addresses"])
    kinds = _kinds_of_history(lines)
    joins = [index for index, (kind, _) in enumerate(kinds) if kind == "node_joined"]
    losses = [index for index, (kind, _) in enumerate(kinds) if kind == "node_lost"]
    ran_events = [index for index, (kind, line) in enumerate(kinds)
                  if kind.startswith("chunk_") and f"job {job.id[:8]}" in line]
    assert len(joins) == 2 and len(losses) == 1, lines
    assert joins[0] < min(ran_events) and max(ran_events) < losses[0] < joins[1], lines
    # Each chunk it ran ends succeeded on it (its start may come first).
    for index in ran:
        mine = [kinds[position][0] for position in ran_events if f"chunk {index} " in kinds[position][1] + " "]
        assert mine[-1] == "chunk_succeeded" and set(mine) <= {"chunk_started", "chunk_succeeded"}, lines
    seqs = [int(line.split()[0]) for _, line in kinds]
    assert seqs == sorted(seqs)


def test_history_of_the_active_balancer_shows_its_lease(shared_cluster, capsys):
    balancer = _record(shared_cluster, NodeRole.LOADBALANCER)
    code, lines, err = _uds(capsys, shared_cluster, "nodes", "--history", balancer["node"].hex())
    assert code == 0, err
    kinds = [kind for kind, _ in _kinds_of_history(lines)]
    assert kinds[0] == "node_joined" and "lease_granted" in kinds, lines
    assert f"lease:      held, epoch {balancer['lease_epoch']}" in lines


@pytest.mark.parametrize("name, message", [
    ("no-such-node", "unknown node 'no-such-node'"),
    (socket.gethostname(), f"node '{socket.gethostname()}' is ambiguous: it names"),
])
def test_a_node_name_that_fits_none_or_many_is_one_line_naming_it(shared_cluster, capsys, name, message):
    code, lines, err = _uds(capsys, shared_cluster, "nodes", "--history", name)
    assert code == 1 and not lines
    assert len(err) == 1 and err[0].startswith("uds: ") and message in err[0], err
