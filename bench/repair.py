"""Repair after a storage node is lost for good, measured with real daemons
on this machine: a master and three storage nodes (tests/daemons.py), R = 2.
TOTAL_MiB of files of FILE_MiB each are put through the client, one node
is killed -9 and never restarted, and the clock runs from the kill until
every file is on two live nodes again (read from the nodes' blob folders:
a blob appears there only complete). Prints one JSON line.

Each run is made once per repair rate of RATES_MiBps (the second is the
default of [storage_policy]), on a fresh cluster, with heartbeat_interval_s
and lost_after_s at their defaults (1 s, 10 s):

- repair_s: from the kill until every file is back on two live nodes;
- declared_lost_s: from the kill until the masters list the node lost;
- repaired_MiB: the bytes the victim held, each copied once to a new home;
- repair_MiBps: repaired_MiB over (repair_s - declared_lost_s), against
  the policy's repair_bytes_per_s, which bounds each receiving node (two
  receive here, so the bound on the whole is twice the rate).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from daemons import ClusterLayout, wait_until  # noqa: E402
from uds import client as uds_client  # noqa: E402
from uds.wire.cluster import StoragePolicy  # noqa: E402
from uds.wire.enums import NodeRole  # noqa: E402

MiB = 1 << 20
TOTAL_BYTES = int(os.environ.get("UDS_BENCH_TOTAL_MIB", "1024")) * MiB
FILE_BYTES = int(os.environ.get("UDS_BENCH_FILE_MIB", "64")) * MiB
RATES_MiBps = (512, StoragePolicy.repair_bytes_per_s // MiB)
NODES = 3
REPLICAS = 2
VICTIM = 1                      # its [[storage]] entry
CLIENT_TIMEOUT_S = 60.0


def storage_states(connection) -> dict[str, str]:
    return {node["address"]: node["state"] for node in connection.nodes() if node["role"] == NodeRole.STORAGE}


def holders(layout: ClusterLayout, file_id: str) -> set[int]:
    return {index for index in range(NODES)
            if (layout.data_of("storage", str(index)) / "blobs" / file_id[:2] / file_id[2:]).is_file()}


def run(work: pathlib.Path, sources: list[pathlib.Path], rate_mibps: int) -> dict:
    layout = ClusterLayout.create(work, storage=NODES,
                                  storage_policy={"replicas": REPLICAS, "repair_bytes_per_s": rate_mibps * MiB})
    try:
        nodes = [layout.start("storage", name=str(index), wait=False) for index in range(NODES)]
        layout.start("master")
        for node in nodes:
            node.wait_ready()
        with uds_client.connect(layout.path, timeout=CLIENT_TIMEOUT_S) as connection:
            wait_until(lambda: sorted(storage_states(connection).values()) == ["alive"] * NODES,
                       "every storage node alive", timeout=60)
        # A fresh connection: its first put asks the masters, who list all three.
        with uds_client.connect(layout.path, timeout=CLIENT_TIMEOUT_S) as connection:
            started = time.monotonic()
            files = [connection.put(source) for source in sources]
            put_s = time.monotonic() - started
            assert all(len(holders(layout, file_id)) == REPLICAS for file_id in files)
            held = [file_id for file_id in files if VICTIM in holders(layout, file_id)]
            victim_address = layout.cluster.storage[VICTIM].address
            killed_at = time.monotonic()
            nodes[VICTIM].kill9()
            lost_at = wait_until(lambda: storage_states(connection)[victim_address] == "lost" and time.monotonic(),
                                 "the victim declared lost", timeout=120)
            live = set(range(NODES)) - {VICTIM}
            done_at = wait_until(lambda: all(holders(layout, file_id) >= live for file_id in held)
                                 and time.monotonic(), "every file on both live nodes", timeout=600)
        repaired = len(held) * FILE_BYTES
        return {"repair_bytes_per_s_MiB": rate_mibps, "put_s": round(put_s, 2),
                "put_MiBps": round(len(files) * FILE_BYTES / MiB / put_s, 1),
                "declared_lost_s": round(lost_at - killed_at, 2), "repair_s": round(done_at - killed_at, 2),
                "repaired_files": len(held), "repaired_MiB": repaired // MiB,
                "repair_MiBps": round(repaired / MiB / (done_at - lost_at), 1),
                "repair_rate_bound_MiBps": rate_mibps * len(live)}
    finally:
        layout.cleanup()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    figures: dict = {"benchmark": "repair", "total_MiB": TOTAL_BYTES // MiB, "file_MiB": FILE_BYTES // MiB,
                     "nodes": NODES, "replicas": REPLICAS, "lost_after_s": StoragePolicy.lost_after_s, "runs": []}
    with tempfile.TemporaryDirectory(prefix="uds-repair-bench-") as folder:
        work = pathlib.Path(folder)
        sources = []
        for index in range(TOTAL_BYTES // FILE_BYTES):
            sources.append(work / f"file-{index}")
            sources[-1].write_bytes(os.urandom(FILE_BYTES))
        for rate in RATES_MiBps:
            figures["runs"].append(run(work / f"cluster-{rate}", sources, rate))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
