"""make demo: word frequencies of the licence texts on this machine, counted
by a two-stage pipeline on a real dev cluster, checked against a local count.

Starts a dev cluster with two workers in a folder of its own, uploads the
texts and submits two jobs at once: a map, one chunk per group of files
(each chunk sees only its own files under $UDS_INPUTS and writes their word
counts), and a one-chunk reduce that reads every map chunk's counts
(`outputs_ref`: counts.json.0, counts.json.1, ...) and merges them. The
masters hold the reduce as `waiting` until the map has succeeded. The demo
prints the top words, checks them against counting locally, and stops the
cluster.

    python scripts/demo.py [--masters 1|3|5] [--loadbalancers 2]

runs it on three or five Raft masters and a balancer pair
(`make demo DEMO_ARGS="--masters 3 --loadbalancers 2"`).
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from uds import client  # noqa: E402
from uds.client import devcluster  # noqa: E402
from uds.client.cli import Progress  # noqa: E402

LICENSES = pathlib.Path("/usr/share/common-licenses")
CHUNKS = 4
TOP = 10
WORD = re.compile(r"[a-z']+")

PROGRAM = b'''#!/usr/bin/env python3
"""Count the words of every file in $UDS_INPUTS; write counts.json to $UDS_OUTPUT."""
import collections, json, os, re
word = re.compile(r"[a-z']+")
counts = collections.Counter()
folder = os.environ["UDS_INPUTS"]
for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as text:
        counts.update(word.findall(text.read().lower()))
with open(os.path.join(os.environ["UDS_OUTPUT"], "counts.json"), "w") as out:
    json.dump(counts, out)
print(f"chunk {os.environ['UDS_CHUNK']} of {os.environ['UDS_CHUNKS']}: "
      f"{sum(counts.values())} words in {len(os.listdir(folder))} files")
'''

REDUCE = b'''#!/usr/bin/env python3
"""Merge the counts.json.N of every map chunk in $UDS_INPUTS into $UDS_OUTPUT/counts.json."""
import collections, json, os
counts = collections.Counter()
folder = os.environ["UDS_INPUTS"]
parts = sorted(os.listdir(folder))
for name in parts:
    with open(os.path.join(folder, name)) as part:
        counts.update(json.load(part))
with open(os.path.join(os.environ["UDS_OUTPUT"], "counts.json"), "w") as out:
    json.dump(counts, out)
print(f"merged {' '.join(parts)}: {sum(counts.values())} words")
'''


def texts() -> list[pathlib.Path]:
    files = sorted(path for path in LICENSES.iterdir() if path.is_file() and not path.is_symlink())
    if not files:
        sys.exit(f"demo: no licence texts in {LICENSES}")
    return files


def local_counts(files: list[pathlib.Path]) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for path in files:
        counts.update(WORD.findall(path.read_text(encoding="utf-8", errors="replace").lower()))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run the word-count demo on a dev cluster")
    parser.add_argument("--masters", type=int, default=1, choices=devcluster.MASTER_COUNTS,
                        help="masters in the dev cluster's Raft group")
    parser.add_argument("--loadbalancers", type=int, default=1, metavar="N",
                        help="load balancers in the dev cluster (2: a pair, one active)")
    parser.add_argument("--storage", type=int, default=1, metavar="N",
                        help="storage nodes in the dev cluster (each file on two of them when N > 1)")
    options = parser.parse_args(argv)
    files = texts()
    folder = pathlib.Path(tempfile.mkdtemp(prefix="uds-demo-"))
    print(f"starting a dev cluster with {options.masters} master(s), {options.loadbalancers} load balancer(s), "
          f"{options.storage} storage node(s) and 2 workers in {folder} ...")
    started = time.monotonic()
    try:
        devcluster.start(folder, workers=2, slots=2, detach=True, loadbalancers=options.loadbalancers,
                         masters=options.masters, storage=options.storage)
        print(f"cluster ready in {time.monotonic() - started:.1f}s")
        with client.connect(folder) as connection:
            chunk_inputs = [{} for _ in range(CHUNKS)]
            for index, path in enumerate(files):
                chunk_inputs[index % CHUNKS][path.name] = connection.put(path)
            print(f"uploaded {len(files)} licence texts from {LICENSES}")
            words = connection.submit_job(PROGRAM, chunk_inputs=chunk_inputs, chunks=CHUNKS,
                                          timeout=60, name="word-count")
            merge = connection.submit_job(REDUCE, inputs={"counts.json": words.outputs_ref("counts.json")},
                                          timeout=60, name="merge-counts")
            print(f"submitted the map, job {words.id} with {CHUNKS} chunks, and the reduce, job "
                  f"{merge.id}, which is {merge.status(detail=False).state} until the map succeeds")
            statuses = {}
            for job, name in ((words, "word-count"), (merge, "merge-counts")):
                bar = Progress(name, stream=sys.stdout)
                statuses[job.id] = status = job.wait(timeout=120, progress=lambda s: bar.update(
                    s.finished, s.chunk_count, f"{s.finished}/{s.chunk_count} chunks"))
                bar.close()
                if status.state != "succeeded":
                    print(f"demo: job {status.name} {status.state}: {status.error}")
                    for chunk in status.chunks:
                        print(f"chunk {chunk.chunk}: {chunk.state} {chunk.result.error}")
                        if chunk.stderr:
                            print(connection.get(chunk.stderr).decode(errors="replace"))
                    return 1
                for chunk in status.chunks:
                    result = chunk.result
                    print(f"  {status.name} chunk {chunk.chunk} on worker {chunk.worker[:8]}: "
                          f"{result.elapsed_s:.2f}s, {result.bytes_from_storage} bytes from storage, "
                          f"{result.bytes_from_cache} from cache; stdout: "
                          f"{connection.get(chunk.stdout).decode().strip()}")
            merged = collections.Counter(json.loads(
                connection.get(statuses[merge.id].chunks[0].outputs["counts.json"])))
        print(f"\ntop {TOP} words of {sum(merged.values())}:")
        for word, count in merged.most_common(TOP):
            print(f"  {count:>7}  {word}")
        expected = local_counts(files)
        if merged != expected:
            print("demo: MISMATCH with the local count")
            return 1
        print(f"\nmatches the local count ({len(expected)} distinct words); "
              f"{time.monotonic() - started:.1f}s in all")
        return 0
    finally:
        devcluster.stop(folder)
        print("dev cluster stopped")


if __name__ == "__main__":
    sys.exit(main())
