"""Where the time goes for one chunk, hop by hop: one-chunk /bin/true jobs
run one at a time on a dev cluster whose daemons write a timestamp for
every message they send and receive (and the masters for every proposal
and journal sync); prints, for each step, the median time since the client
began `submit_job`. Timestamps are wall-clock, shared by the daemons of
one machine.

    python bench/hops.py [--masters 1|3|5] [--jobs N]

The daemons are started through a wrapper that runs them under this file
(`--daemon MODULE ARGS...`), which wraps wire.transport's send and receive
before the daemon imports them.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import runpy
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
IGNORED = {"Heartbeat", "StatusAck", "NodeReport", "Hello", "HelloReply"}  # not part of a chunk's story
PAUSE_BETWEEN_JOBS_S = 0.05                          # one job's story at a time


def run_daemon(argv: list[str]) -> None:
    """Run `python -m MODULE ARGS` with its messages traced to $UDS_HOPS_DIR."""
    from uds import wire
    import uds.wire.transport as transport
    module, role = argv[0], argv[0].split(".")[-1]
    out = open(pathlib.Path(os.environ["UDS_HOPS_DIR"]) / f"{role}-{os.getpid()}.log", "a", buffering=1)

    def describe(frames) -> tuple[str, str]:
        try:
            message = wire.decode(list(frames))
        except Exception:
            return "?", "-"
        try:
            job = message.job_uuid.hex()[:8]
        except Exception:
            job = "-"
        return type(message).__name__, job

    original_recv, original_send = transport.recv_message, transport.send_message

    def recv_message(socket, counters):
        received = original_recv(socket, counters)
        if received is not None:
            out.write(f"{time.time():.6f} {role} recv %s %s\n" % describe(received.frames))
        return received

    def send_message(socket, frames, peer=None, counters=None):
        frames = list(frames)
        out.write(f"{time.time():.6f} {role} send %s %s\n" % describe(frames))
        return original_send(socket, frames, peer=peer, counters=counters)

    def recv_messages(socket, counters, limit):
        for _ in range(limit):
            received = recv_message(socket, counters)
            if received is None:
                return
            yield received

    transport.recv_message, transport.send_message, transport.recv_messages = \
        recv_message, send_message, recv_messages
    if role == "master":
        import uds.master.replicated as replicated
        propose, sync = replicated.RaftGroup.propose, replicated.RaftGroup.sync_journal

        def traced_propose(self, token, commands, now):
            out.write(f"{time.time():.6f} {role} propose {len(commands)} -\n")
            return propose(self, token, commands, now)

        def traced_sync(self):
            sync(self)
            out.write(f"{time.time():.6f} {role} synced - -\n")

        replicated.RaftGroup.propose, replicated.RaftGroup.sync_journal = traced_propose, traced_sync
    if role == "worker":
        trace_worker(out)
    sys.argv = [module, *argv[1:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def trace_worker(out) -> None:
    """The worker's own steps for an attempt: each host call's start and end."""
    import uds.worker.host as host

    def traced(name, method):
        def call(self, effect_or_key, *rest):
            key = getattr(effect_or_key, "key", effect_or_key)
            job = getattr(key, "job", b"").hex()[:8] or "-"
            out.write(f"{time.time():.6f} worker {name}< - {job}\n")
            try:
                return method(self, effect_or_key, *rest)
            finally:
                out.write(f"{time.time():.6f} worker {name}> - {job}\n")
        return call

    for name in ("fetch", "add_mount", "start", "exited", "upload", "_upload", "remove_mount", "_tidy"):
        setattr(host.AttemptHost, name, traced(name, getattr(host.AttemptHost, name)))


def measure(masters: int, jobs: int, trace_dir: pathlib.Path) -> list[tuple[str, float, float, float]]:
    wrapper = trace_dir / "python"
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = "-m" ]; then shift; exec "{sys.executable}" "{HERE / "hops.py"}" '
                       f'--daemon "$@"; fi\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    os.environ["UDS_HOPS_DIR"] = str(trace_dir)
    real_python, sys.executable = sys.executable, str(wrapper)
    sys.path.insert(0, str(HERE))
    from cluster import dev_cluster, true_binary
    marks = []
    try:
        with dev_cluster(workers=2, slots=2, masters=masters) as connection:
            program = connection.put(true_binary())
            for _ in range(10):  # warm up
                connection.submit_job(program, timeout=30).wait(timeout=30)
            for _ in range(jobs):
                began = time.time()
                job = connection.submit_job(program, timeout=30)
                submitted = time.time()
                while not connection.job_status(job.id, detail=False, wait=5.0).done:
                    pass
                marks.append((job.id[:8], began, submitted, time.time()))
                time.sleep(PAUSE_BETWEEN_JOBS_S)
    finally:
        sys.executable = real_python
    return marks


def report(marks: list, trace_dir: pathlib.Path) -> list[dict]:
    events = []
    for path in trace_dir.glob("*.log"):
        for line in path.read_text().splitlines():
            at, role, kind, what, job = line.split()
            events.append((float(at), f"{role}-{path.stem.rsplit('-', 1)[1]}", kind, what, job))
    events.sort()
    leader = next(who for _, who, kind, what, _ in events if kind == "send" and what == "JobSubmitReply")

    def name(who: str) -> str:
        return "leader" if who == leader else "follower" if who.startswith("master") else who.rsplit("-", 1)[0]

    steps: dict[tuple, list[float]] = collections.defaultdict(list)
    for job, began, submitted, ended in marks:
        story = [(at, name(who), kind, what) for at, who, kind, what, event_job in events
                 if began <= at <= ended and what not in IGNORED and event_job in (job, "-")]
        story += [(submitted, "client", "submit returned", ""), (ended, "client", "result seen", "")]
        seen: collections.Counter = collections.Counter()
        for at, who, kind, what in sorted(story):
            seen[who, kind, what] += 1
            steps[who, kind, what, seen[who, kind, what]].append((at - began) * 1000)
    rows = [{"ms": round(statistics.median(times), 2), "who": key[0], "event": f"{key[1]} {key[2]}".strip(),
             "nth": key[3], "jobs": len(times)}
            for key, times in steps.items() if len(times) >= len(marks) // 2]
    return sorted(rows, key=lambda row: row["ms"])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--daemon":
        run_daemon(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masters", type=int, default=1, choices=(1, 3, 5))
    parser.add_argument("--jobs", type=int, default=30)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="uds-hops-") as folder:
        trace_dir = pathlib.Path(folder)
        marks = measure(options.masters, options.jobs, trace_dir)
        rows = report(marks, trace_dir)
    print(f"median ms since submit_job began, {options.jobs} one-chunk jobs, {options.masters} master(s)")
    for row in rows:
        print(f"{row['ms']:9.2f}  {row['who']:13s} {row['event']:28s} #{row['nth']}  ({row['jobs']} jobs)")
    print(json.dumps({"benchmark": "hops", "masters": options.masters, "jobs": options.jobs,
                      "result_seen_ms": next(row["ms"] for row in rows if row["event"] == "result seen")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
