"""A master's memory after a million chunks have passed through it, and per
chunk queued and not yet run. Prints one JSON line.

With --daemon, a real `python -m uds.master` daemon (one master) is fed with real
messages: a client submits jobs of many chunks, and a stand-in load
balancer holds the master's lease (granted through its hello, renewed every
0.5 s), heartbeats, and answers every chunk_dispatch with the chunk_events a
balancer sends (STARTED, then SUCCEEDED with an output), as fast as the
master dispatches. RSS comes from /proc/PID/status.

First, with no balancer, QUEUED_PROBE chunks are submitted and stay queued:
their RSS growth per chunk is the cost of a live queued chunk. Then the
balancer runs them and the client submits more until --chunks have
succeeded in all. On this 2-core machine that path runs about 1,500-3,000
chunks per second (the master and the stand-in share the cores): 6-11
minutes for a million. By default the same commands, in the batches a
leader proposes, are applied in this process to a ClusterState, the object
every master replicates, with retention as the leader runs it, and RSS is
this process's: a minute or two. The output's "path" says which.

With --dump-stall, a RaftGroup (one member, in this process) holds a state
of --chunks finished chunks and writes a full dump, once on the Raft thread
(useFork off) and once from a forked child (as a master does): the report
gives, for each, the longest gap between Raft ticks and between reads of
the state by another thread (what the node loop does to answer anyone)
while the dump was made.

    python bench/master_memory.py [--daemon] [--chunks N] [--chunks-per-job C] [--queued-probe Q]
    python bench/master_memory.py --dump-stall [--chunks N]
"""
from __future__ import annotations

import argparse
import collections
import json
import gzip
import os
import pathlib
import pickle
import shutil
import sys
import tempfile
import socket
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import zmq  # noqa: E402

from daemons import ClusterLayout  # noqa: E402
from uds import wire  # noqa: E402
from uds.master.commands import DispatchAttempts, ForgetJobs, SubmitJob  # noqa: E402
from uds.master.proposals import MAX_COMMANDS_PER_PROPOSAL  # noqa: E402
from uds.master.raft_node import RaftNode  # noqa: E402
from uds.master.replicated import DUMP_FILE, RaftGroup  # noqa: E402
from uds.master.retention import jobs_to_forget  # noqa: E402
from uds.master.state import ClusterState  # noqa: E402
from uds.wire.cluster import Retention  # noqa: E402
from uds.wire.records import ChunkEvent, ChunkResult  # noqa: E402
from uds.wire.enums import ChunkState, NodeRole  # noqa: E402
from uds.wire.keys import KeyFolder, create_cluster_keys  # noqa: E402
from uds.wire.transport import Transport  # noqa: E402

LIMIT_RSS_BYTES = 300 << 20
LIMIT_BYTES_PER_QUEUED_CHUNK = 1024
# The balancer's free slots: the master dispatches up to twice this ahead.
BALANCER_SLOTS = 2000
EVENTS_PER_MESSAGE = 1000
HEARTBEAT_S = 0.25
HELLO_S = 0.5
# Submissions awaiting their reply, and chunks queued ahead of the balancer.
MAX_SUBMITTING = 4
MAX_BACKLOG_CHUNKS = 50_000
SETTLE_S = 1.0
# What the report gives of the master's stats at the end.
MASTER_COUNTERS = ("jobs_forgotten", "in_flight", "proposals", "commands_proposed", "proposals_timed_out",
                   "raft_journal_syncs")
PROGRAM = (bytes.fromhex("f0" * 16), 1234)
WORKER = bytes.fromhex("77" * 16)
CLIENT_ID = bytes.fromhex("c1" * 16)
BALANCER_ID = bytes.fromhex("b1" * 16)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process, in bytes."""
    values = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            values[name] = int(rest.split()[0]) * 1024
    return values


def rss_line(pid: int) -> str:
    status = proc_status(pid)
    return (f"RSS {status['VmRSS'] >> 20} MiB ({status['RssAnon'] >> 20} anonymous, "
            f"{status['RssFile'] >> 20} file-backed), peak {status['VmHWM'] >> 20} MiB")


class Driver:
    """The client and the stand-in balancer, on one thread and one poller."""

    def __init__(self, layout: ClusterLayout, chunks_per_job: int) -> None:
        address = layout.cluster.masters[0].address
        self.client_transport = Transport(layout.keys(NodeRole.CLIENT))
        self.balancer_transport = Transport(layout.keys(NodeRole.LOADBALANCER))
        self.client = self.client_transport.client_socket(zmq.DEALER, address, NodeRole.MASTER)
        self.balancer = self.balancer_transport.client_socket(zmq.DEALER, address, NodeRole.MASTER)
        self.poller = zmq.Poller()
        self.poller.register(self.client, zmq.POLLIN)
        self.poller.register(self.balancer, zmq.POLLIN)
        self.chunks_per_job = chunks_per_job
        self.next_request = 1
        self.submitting: dict[int, bytes] = {}     # request id -> job id
        self.resubmitted = 0
        self.submitted_chunks = 0
        self.accepted_chunks = 0
        self.succeeded_sent = 0
        # batch id -> the attempts whose SUCCEEDED it carries, until acknowledged
        self.unacknowledged: dict[int, list] = {}
        self.lease_losses = 0
        self.succeeded_committed = 0
        self.outgoing: collections.deque = collections.deque()
        self.epoch = 0
        self.started_ms = int(time.time() * 1000)
        self.next_batch = 1
        self.balancing = False
        self.next_heartbeat = self.next_hello = 0.0
        self.counters: dict[str, int] = {}

    def close(self) -> None:
        for transport in (self.client_transport, self.balancer_transport):
            transport.close()

    # ---- the client ------------------------------------------------------------

    def submit(self, job: bytes | None = None) -> None:
        """A new job, or (a retry) the same job under a new request id."""
        request_id = self.next_request
        self.next_request += 1
        if job is None:
            job = os.urandom(16)
            self.submitted_chunks += self.chunks_per_job
        self.submitting[request_id] = job
        self.client.send_multipart(wire.encode(wire.JobSubmit.make(
            CLIENT_ID, request_id=request_id, job=job, chunk_count=self.chunks_per_job,
            program=list(PROGRAM), args=["--part"], inputs={}, chunk_inputs=[], timeout_s=60.0,
            max_retries=1, name=f"memory {job.hex()[:8]}")))

    def query_stats(self) -> None:
        self.client.send_multipart(wire.encode(wire.StatsQuery.make(CLIENT_ID, request_id=0)))

    def on_client(self, message: wire.Message) -> None:
        if isinstance(message, wire.StatsReply):
            self.counters = dict(message.counters)
        elif isinstance(message, wire.JobSubmitReply):
            if self.submitting.pop(message.request_id, None) is not None and message.created:
                self.accepted_chunks += self.chunks_per_job
        elif isinstance(message, wire.Error) and message.error_code == wire.ErrorCode.BUSY:
            # No commit in time (a starved machine): a client retries, with the same job id.
            job = self.submitting.pop(message.request_id, None)
            if job is not None:
                self.resubmitted += 1
                self.submit(job)
        elif isinstance(message, wire.Error):
            raise RuntimeError(f"master refused a submission: {message.reason}")

    # ---- the balancer ----------------------------------------------------------

    def hello(self) -> None:
        self.outgoing.append(wire.Hello.make(
            BALANCER_ID, request_id=0, role=int(NodeRole.LOADBALANCER), slots=0, cache_bytes=0,
            start_time_ms=self.started_ms, host="bench", address="tcp://bench:1", version=1))

    def on_balancer(self, message: wire.Message) -> None:
        if isinstance(message, wire.HelloReply):
            if self.epoch and message.epoch != self.epoch:
                # The lease lapsed (a starved machine) and came back under a
                # new epoch: the old epoch's events are fenced, so a
                # balancer reports its results again.
                self.lease_losses += 1
                self.epoch = message.epoch
                pending = [attempt for attempts in self.unacknowledged.values() for attempt in attempts]
                self.unacknowledged.clear()
                for first in range(0, len(pending), EVENTS_PER_MESSAGE):
                    self.send_events(pending[first:first + EVENTS_PER_MESSAGE], ChunkState.SUCCEEDED)
            self.epoch = message.epoch
        elif isinstance(message, wire.ChunkDispatch):
            attempts = [(attempt["job"], attempt["chunk"], attempt["attempt"]) for attempt in message.attempts]
            for state in (ChunkState.STARTED, ChunkState.SUCCEEDED):
                for first in range(0, len(attempts), EVENTS_PER_MESSAGE):
                    self.send_events(attempts[first:first + EVENTS_PER_MESSAGE], state)
        elif isinstance(message, wire.ChunkEventsAck):
            self.succeeded_committed += len(self.unacknowledged.pop(message.batch_id, ()))
        elif isinstance(message, wire.Error):
            # "standby" or "hello first" while its lease lapsed: the next hello asks again.
            self.next_hello = min(self.next_hello, time.monotonic() + 0.1)

    def send_events(self, attempts: list, state: ChunkState) -> None:
        succeeded = state == ChunkState.SUCCEEDED
        events = [dict(job=job, chunk=chunk, attempt=attempt, state=int(state), worker=WORKER,
                       worker_started_at=0.0, exit_code=0 if succeeded else None,
                       outputs={"out": (job[:12] + chunk.to_bytes(4, "big"), 100)} if succeeded else {},
                       stdout=None, stderr=None, error="", elapsed_s=0.01 if succeeded else 0.0,
                       bytes_from_cache=0, bytes_from_storage=0, cpu_user_s=0.0, cpu_system_s=0.0,
                       peak_memory_bytes=0, output_bytes=100 if succeeded else 0)
                  for job, chunk, attempt in attempts]
        batch = self.next_batch
        self.next_batch += 1
        if succeeded:
            self.unacknowledged[batch] = attempts
            self.succeeded_sent += len(events)
        self.outgoing.append(wire.ChunkEvents.make(BALANCER_ID, epoch=self.epoch, batch_id=batch,
                                                   event_count=len(events), events=events))

    def balancer_timers(self, now: float) -> None:
        if now >= self.next_hello:
            self.next_hello = now + HELLO_S
            self.hello()
        if self.epoch and now >= self.next_heartbeat:
            self.next_heartbeat = now + HEARTBEAT_S
            self.outgoing.append(wire.Heartbeat.make(BALANCER_ID, epoch=self.epoch, free_slots=BALANCER_SLOTS,
                                                     running_count=0, running=[], cache_added=[],
                                                     cache_removed=[]))

    # ---- the loop ----------------------------------------------------------------

    def step(self, want_chunks: int) -> None:
        now = time.monotonic()
        if self.balancing:
            self.balancer_timers(now)
        backlog = self.accepted_chunks - self.succeeded_sent
        while (self.submitted_chunks < want_chunks and len(self.submitting) < MAX_SUBMITTING
               and (not self.balancing
                    or backlog + len(self.submitting) * self.chunks_per_job < MAX_BACKLOG_CHUNKS)):
            self.submit()
        while self.outgoing:
            try:
                self.balancer.send_multipart(wire.encode(self.outgoing[0]), zmq.NOBLOCK)
            except zmq.Again:
                break
            self.outgoing.popleft()
        for socket, _ in self.poller.poll(10):
            handler = self.on_client if socket is self.client else self.on_balancer
            for _ in range(1000):
                try:
                    frames = socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                handler(wire.decode(frames))

    def submit_all(self, chunks: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.accepted_chunks < chunks:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.accepted_chunks} of {chunks} chunks accepted in {timeout_s}s")
            self.step(chunks)

    def run_all(self, chunks: int, timeout_s: float, progress) -> None:
        self.balancing = True
        deadline = time.monotonic() + timeout_s
        reported = 0
        while self.succeeded_committed < chunks:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.succeeded_committed} of {chunks} chunks done in {timeout_s}s")
            self.step(chunks)
            if self.succeeded_committed >= reported + 100_000:
                reported = self.succeeded_committed
                progress(reported)
                self.query_stats()


def in_process(options: argparse.Namespace, probe: int) -> dict:
    """The daemon's commands applied to a ClusterState here, as its leader
    would propose them: submissions, dispatches up to the balancer's credit,
    STARTED and SUCCEEDED events, and ForgetJobs by the default retention."""
    state = ClusterState()
    retention = Retention()
    per_job = options.chunks_per_job
    clock = [1_000_000.0]

    def apply(commands: list) -> None:
        for first in range(0, len(commands), MAX_COMMANDS_PER_PROPOSAL):
            clock[0] += 0.001
            for outcome in state.apply(commands[first:first + MAX_COMMANDS_PER_PROPOSAL], clock[0]):
                assert outcome.ok, outcome

    def submit(count: int) -> None:
        apply([SubmitJob(job=os.urandom(16), name=f"memory {index}", program=PROGRAM, args=("--part",),
                         inputs={}, chunk_inputs=(), chunk_count=per_job, timeout_s=60.0, max_retries=1)
               for index in range(count)])

    def event(job: bytes, chunk: int, state_: ChunkState) -> ChunkEvent:
        # New id objects per event, as a decoded message gives them.
        succeeded = state_ == ChunkState.SUCCEEDED
        result = ChunkResult(exit_code=0, outputs={"out": (job[:12] + chunk.to_bytes(4, "big"), 100)},
                             elapsed_s=0.01, output_bytes=100) if succeeded else ChunkResult()
        return ChunkEvent(job=job[:8] + job[8:], chunk=chunk, attempt=1, state=int(state_),
                          worker=WORKER[:8] + WORKER[8:], result=result)

    submit(1)
    before_probe = proc_status(os.getpid())
    submit(probe // per_job)
    after_probe = proc_status(os.getpid())
    submitted = per_job + probe
    done = 0
    started = time.monotonic()
    while done < options.chunks:
        if submitted < options.chunks and len(state.queued) < MAX_BACKLOG_CHUNKS:
            submit(1)
            submitted += per_job
        ready = [attempt[:3] for attempt in state.ready_attempts(2 * BALANCER_SLOTS)]
        apply([DispatchAttempts(tuple(ready))])
        apply([event(job, chunk, ChunkState.STARTED) for job, chunk, _ in ready])
        apply([event(job, chunk, ChunkState.SUCCEEDED) for job, chunk, _ in ready])
        done += len(ready)
        forget = jobs_to_forget(state, retention, clock[0])
        if forget:
            apply([ForgetJobs(tuple(forget), retention.history_lines)])
        if done // 100_000 != (done - len(ready)) // 100_000:
            print(f"{done} chunks done, RSS {proc_status(os.getpid())['VmRSS'] >> 20} MiB", file=sys.stderr)
    elapsed = time.monotonic() - started
    final = proc_status(os.getpid())
    # A full dump as pysyncobj writes it when it compacts the log (a master
    # does so in a forked child): pickled, gzipped, streamed to a file.
    dump_started = time.monotonic()
    with tempfile.TemporaryFile() as file:
        with gzip.GzipFile(fileobj=file, mode="wb") as stream:
            pickle.dump(state, stream)
        dump = file.tell()
    return dict(done=done, elapsed=elapsed, before_probe=before_probe, after_probe=after_probe, final=final,
                after_dump=proc_status(os.getpid()), dump_bytes=dump,
                dump_seconds=time.monotonic() - dump_started,
                kept=dict(jobs=len(state.job_records), finished_chunks=state.history.finished_chunks,
                          history_lines=len(state.history.lines), events=len(state.event_log)))


def finished_state(chunks: int, per_job: int) -> ClusterState:
    """A state keeping `chunks` finished chunks (no retention)."""
    state = ClusterState()
    now = 1_000_000.0
    for _ in range(chunks // per_job):
        job = os.urandom(16)
        attempts = tuple((job, chunk, 1) for chunk in range(per_job))
        batches = [[SubmitJob(job=job, name="stall", program=PROGRAM, args=("--part",), inputs={},
                              chunk_inputs=(), chunk_count=per_job, timeout_s=60.0, max_retries=1)],
                   [DispatchAttempts(attempts)],
                   [ChunkEvent(job=job, chunk=chunk, attempt=1, state=int(ChunkState.SUCCEEDED), worker=WORKER,
                               result=ChunkResult(exit_code=0, outputs={"out": (os.urandom(16), 100)},
                                                  elapsed_s=0.01, output_bytes=100))
                    for chunk in range(per_job)]]
        for commands in batches:
            now += 0.001
            for outcome in state.apply(commands, now):
                assert outcome.ok, outcome
    return state


def dump_stall(state: ClusterState, dump_in_child: bool) -> dict:
    """The longest gaps between Raft ticks and between reads of the state
    while a RaftGroup holding `state` writes one full dump."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="uds-bench-dump-"))
    read_fd, write_fd = os.pipe()
    group = None
    tick = RaftNode.doTick
    try:
        keys = KeyFolder(create_cluster_keys(folder / "keys"), NodeRole.MASTER)
        (folder / "data").mkdir()
        group = RaftGroup(free_raft_address(), [], folder / "data", keys, write_fd, dump_in_child=dump_in_child)
        deadline = time.monotonic() + 10.0
        while not group.is_leader:
            assert time.monotonic() < deadline, "the group elected no leader"
            time.sleep(0.01)
        with group.replicated.lock:
            group.replicated.state = state
        for token in (1, 2):        # entries to compact
            group.propose(token, [], time.time())
            group.commits.get(timeout=10.0)
        ticks: list[float] = []

        def timed_tick(node, timeout: float) -> None:
            tick(node, timeout)
            ticks.append(time.monotonic())

        # On the class: an attribute of the node itself would go into its dump.
        node_class = type(group.syncobj)
        tick = node_class.doTick
        node_class.doTick = timed_tick
        dump = folder / "data" / DUMP_FILE
        started = time.monotonic()
        group.syncobj.forceLogCompaction()
        reads = [started]
        while (not dump.exists() or group.syncobj.dump_child()
               or group.syncobj._SyncObj__forceLogCompaction) and time.monotonic() < started + 120:
            group.read(lambda state: len(state.queued))
            reads.append(time.monotonic())
            time.sleep(0.001)
        finished = time.monotonic()
        time.sleep(0.2)     # a tick or two after the dump, to close the last gap
        # From the moment the dump was asked for: the tick under way then
        # (called before the patch) is the one that makes it.
        ends = [started] + [at for at in ticks if at > started]
        gaps = [b - a for a, b in zip(ends, ends[1:])]
        return dict(dump_in_child=dump_in_child, dump_seconds=round(finished - started, 2),
                    dump_mib=round(dump.stat().st_size / (1 << 20), 1),
                    longest_tick_gap_s=round(max(gaps, default=0.0), 3),
                    longest_read_gap_s=round(max(b - a for a, b in zip(reads, reads[1:])), 3))
    finally:
        if group is not None:
            type(group.syncobj).doTick = tick
            group.destroy()
        os.close(read_fd)
        os.close(write_fd)
        shutil.rmtree(folder, ignore_errors=True)


def free_raft_address() -> str:
    """host:port of a TCP port free on 127.0.0.1 (closed again before use)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def through_daemon(options: argparse.Namespace, probe: int) -> dict:
    """The real daemon, fed by the client and the stand-in balancer."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="uds-bench-memory-"))
    layout = ClusterLayout.create(folder)
    driver = master = None
    try:
        master = layout.start("master", name="0")
        driver = Driver(layout, options.chunks_per_job)
        driver.submit_all(options.chunks_per_job, 60.0)         # warm up every path once
        time.sleep(SETTLE_S)
        before_probe = proc_status(master.pid)
        driver.submit_all(options.chunks_per_job + probe, 120.0)
        time.sleep(SETTLE_S)
        after_probe = proc_status(master.pid)
        started = time.monotonic()
        driver.run_all(options.chunks, options.timeout,
                       lambda done: print(f"{done} chunks done, {rss_line(master.pid)}, "
                                          f"{time.monotonic() - started:.0f} s, jobs forgotten "
                                          f"{driver.counters.get('jobs_forgotten', 0)}",
                                          file=sys.stderr, flush=True))
        elapsed = time.monotonic() - started
        driver.query_stats()
        settle_until = time.monotonic() + SETTLE_S
        while time.monotonic() < settle_until:
            driver.step(options.chunks)
        final = proc_status(master.pid)
    except Exception:
        if master is not None:
            print(master.log()[-3000:], file=sys.stderr)
        raise
    finally:
        if driver is not None:
            driver.close()
        layout.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    return dict(done=driver.succeeded_committed, elapsed=elapsed, before_probe=before_probe,
                after_probe=after_probe, final=final, lease_losses=driver.lease_losses,
                resubmitted=driver.resubmitted,
                counters={name: value for name, value in sorted(driver.counters.items())
                          if name in MASTER_COUNTERS or name.startswith("chunk_events")})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1_000_000, help="chunks to pass through in all")
    parser.add_argument("--chunks-per-job", type=int, default=10_000)
    parser.add_argument("--queued-probe", type=int, default=100_000,
                        help="chunks submitted and measured while nothing runs them")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the whole run may take")
    parser.add_argument("--daemon", action="store_true",
                        help="through a real master daemon (slower: 1,500-3,000 chunks/s here)")
    parser.add_argument("--dump-stall", action="store_true",
                        help="the Raft thread's stall while a state of --chunks finished chunks is dumped")
    options = parser.parse_args()
    if options.dump_stall:
        state = finished_state(options.chunks, options.chunks_per_job)
        runs = [dump_stall(state, dump_in_child) for dump_in_child in (False, True)]
        print(json.dumps({"benchmark": "master_dump_stall", "finished_chunks": options.chunks,
                          "rss_mib": round(proc_status(os.getpid())["VmRSS"] / (1 << 20), 1), "runs": runs}))
        return 0
    probe = options.queued_probe - options.queued_probe % options.chunks_per_job

    run = through_daemon(options, probe) if options.daemon else in_process(options, probe)
    final, elapsed = run["final"], run["elapsed"]
    per_queued = (run["after_probe"]["VmRSS"] - run["before_probe"]["VmRSS"]) / max(1, probe)
    report = {
        "benchmark": "master_memory",
        "path": ("a python -m uds.master daemon fed real messages by a client and a stand-in balancer"
                 if options.daemon else
                 "in process: the daemon's commands applied to a ClusterState as its leader proposes them "
                 "(the state alone, without pysyncobj, its log and the daemon's messages)"),
        "chunks": run["done"],
        "chunks_per_job": options.chunks_per_job,
        "seconds": round(elapsed, 1),
        "chunks_per_second": round(run["done"] / elapsed, 1),
        "rss_mib": round(final["VmRSS"] / (1 << 20), 1),
        "rss_anon_mib": round(final["RssAnon"] / (1 << 20), 1),
        "rss_file_mib": round(final["RssFile"] / (1 << 20), 1),
        "rss_peak_mib": round(final["VmHWM"] / (1 << 20), 1),
        "limit_rss_mib": LIMIT_RSS_BYTES >> 20,
        "ratio_to_limit": round(final["VmRSS"] / LIMIT_RSS_BYTES, 3),
        "peak_ratio_to_limit": round(final["VmHWM"] / LIMIT_RSS_BYTES, 3),
        "queued_probe_chunks": probe,
        "bytes_per_queued_chunk": round(per_queued, 1),
        "limit_bytes_per_queued_chunk": LIMIT_BYTES_PER_QUEUED_CHUNK,
        "queued_ratio_to_limit": round(per_queued / LIMIT_BYTES_PER_QUEUED_CHUNK, 3),
    }
    if "lease_losses" in run:
        report.update(lease_losses=run["lease_losses"], submissions_retried=run["resubmitted"],
                      master_counters=run["counters"])
    if "dump_bytes" in run:
        report.update({"snapshot_gzipped_mib": round(run["dump_bytes"] / (1 << 20), 1),
                       "snapshot_seconds": round(run["dump_seconds"], 2),
                       "rss_peak_after_snapshot_mib": round(run["after_dump"]["VmHWM"] / (1 << 20), 1),
                       "kept": run["kept"]})
    print(json.dumps(report))
    within = final["VmRSS"] <= LIMIT_RSS_BYTES and per_queued <= LIMIT_BYTES_PER_QUEUED_CHUNK
    return 0 if run["done"] >= options.chunks and within else 1


if __name__ == "__main__":
    sys.exit(main())
