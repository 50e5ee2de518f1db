"""The worker's shell: a DEALER to the load balancer, one FUSE mount for its
lifetime, and a loop that starts chunk attempts, notices their end through
pidfds and reports results.

Rules: the loop never blocks on the network or a program. Fetching a
program into the cache and uploading outputs happen on helper threads, each
with its own storage connection, which hand results back through a queue and
a wake-up pipe. A final status is resent until the load balancer confirms
the masters committed it (status_ack), so a result survives a balancer
restart.
"""
from __future__ import annotations

import logging
import os
import pathlib
import queue
import shutil
import socket as socket_module
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import zmq

import wire
from client.storage_client import StorageClient
from wire.daemon import drain, guarded, wake
from wire.enums import ChunkState, ErrorCode, NodeRole
from wire.transport import Transport, recv_messages, send_message
from worker.blocks import StorageBlockSource
from worker.cache import BlockCache
from worker.fusefs import FuseMount, clear_stale_mount
from worker.runner import (
    KILL_GRACE_S, LOG_KILL_BYTES, ChunkKey, RunningChunk, kill_leftovers, output_files, outputs_refusal,
    remove_workdir, start_chunk,
)

log = logging.getLogger("worker")

HELLO_RETRY_S = 1.0
RESEND_STATUS_S = 2.0
# STARTED is reported only for chunks still running this long after launch:
# a chunk that ends sooner is reported once, final, which halves the messages
# for short chunks. Heartbeats acknowledge assignments meanwhile.
STARTED_DELAY_S = 0.05
# Program executables kept (one per program id); older unused ones are removed.
MAX_PROGRAMS = 256
PROGRAM_IDLE_S = 600.0
PREPARE_THREADS = 4
MESSAGES_PER_WAKEUP = 1000


@dataclass
class Attempt:
    """One chunk attempt on this worker, from assignment to confirmation."""

    key: ChunkKey
    spec: dict                      # program, args, inputs, chunk_count, timeout_s
    inputs: dict[str, tuple[bytes, int]]
    phase: str = "preparing"        # preparing, running, finishing, reported
    cancelled: bool = False
    running: RunningChunk | None = None
    inputs_dir: str = ""
    final: wire.WorkerStatus | None = None
    final_sent_at: float = 0.0
    counters: tuple[int, int] = (0, 0)
    report_started_at: float | None = None   # when to send STARTED, if still running


@dataclass
class Handoff:
    """What a helper thread gives back to the loop."""

    kind: str                       # "prepared" or "uploaded"
    key: ChunkKey
    value: Any = None
    error: str = ""


class WorkerNode:
    def __init__(self, node_id: bytes, data: pathlib.Path, loadbalancer_address: str, storage_address: str,
                 transport: Transport, slots: int, cache_bytes: int, heartbeat_interval_s: float,
                 wake_read: int, wake_write: int) -> None:
        self.node_id = node_id
        self.data = data
        self.transport = transport
        self.slots = slots
        self.cache_bytes = cache_bytes
        self.heartbeat_interval_s = heartbeat_interval_s
        self.host = socket_module.gethostname()
        self.started_at = time.time()
        self.storage_address = storage_address
        self.wake_read, self.wake_write = wake_read, wake_write
        self.handoffs: queue.SimpleQueue[Handoff] = queue.SimpleQueue()
        self.attempts: dict[ChunkKey, Attempt] = {}
        self.counters: dict[str, int] = {}
        self.registered = False
        self.send_full_cache = True
        self.last_hello = 0.0
        self.last_heartbeat = 0.0
        self.next_request_id = 1
        leftovers = kill_leftovers(node_id.hex())
        if leftovers:
            log.warning("killed %d processes left running by an earlier run", leftovers)
        self.work_root = data / "work"
        shutil.rmtree(self.work_root, ignore_errors=True)  # left by a crash: nothing in it runs now
        self.work_root.mkdir(parents=True, exist_ok=True)
        self.programs = data / "programs"
        self.programs.mkdir(exist_ok=True)
        for leftover in self.programs.glob("*.tmp*"):
            leftover.unlink(missing_ok=True)
        self._clients = threading.local()
        self.block_source = StorageBlockSource(self._storage_client)
        self.cache = BlockCache(data / "cache", self.block_source, cache_bytes)
        mountpoint = data / "mnt"
        clear_stale_mount(mountpoint)
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mount = FuseMount(mountpoint, self.cache)
        self.mount.start()
        self.helpers = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="worker-helper")
        self.socket = transport.client_socket(zmq.DEALER, loadbalancer_address)
        self.handlers: dict[type, Callable[[Any, float], None]] = {
            wire.HelloReply: self.on_hello_reply,
            wire.WorkerRequest: self.on_worker_request,
            wire.ChunkCancel: self.on_chunk_cancel,
            wire.StatusAck: self.on_status_ack,
            wire.Error: self.on_error,
        }

    def _storage_client(self) -> StorageClient:
        """One storage connection per thread: a socket belongs to one thread."""
        client = getattr(self._clients, "client", None)
        if client is None:
            client = StorageClient(self.transport, self.storage_address, self.node_id)
            self._clients.client = client
        return client

    # -- loop -----------------------------------------------------------------

    def run(self, stop: Callable[[], bool], on_serving: Callable[[], None]) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.wake_read, zmq.POLLIN)
        on_serving()
        registered_pidfds: set[int] = set()
        while not stop():
            now = time.monotonic()
            timeout_s = self.heartbeat_interval_s / 2
            for attempt in self.attempts.values():
                if attempt.running is not None and attempt.phase == "running":
                    timeout_s = min(timeout_s, max(0.0, attempt.running.next_timer() - now))
                    if attempt.report_started_at is not None:
                        timeout_s = min(timeout_s, max(0.0, attempt.report_started_at - now))
            pidfds = {attempt.running.pidfd: attempt for attempt in self.attempts.values()
                      if attempt.phase == "running" and attempt.running is not None
                      and attempt.running.pidfd is not None}
            for descriptor in registered_pidfds - pidfds.keys():
                poller.unregister(descriptor)
            for descriptor in pidfds.keys() - registered_pidfds:
                poller.register(descriptor, zmq.POLLIN)
            registered_pidfds = set(pidfds)
            ready = dict(poller.poll(int(timeout_s * 1000) + 1))
            now = time.monotonic()
            if self.wake_read in ready:
                drain(self.wake_read)
            while not self.handoffs.empty():
                guarded(log, self._count, self._on_handoff, self.handoffs.get(), now)
            for descriptor, attempt in pidfds.items():
                if descriptor in ready:
                    poller.unregister(descriptor)
                    registered_pidfds.discard(descriptor)
                    guarded(log, self._count, self._on_exit, attempt, now)
            if self.socket in ready:
                for received in recv_messages(self.socket, self.transport, MESSAGES_PER_WAKEUP):
                    self._handle(received, now)
            guarded(log, self._count, self._on_timers, now)

    def _hand_back(self, handoff: Handoff) -> None:
        """From a helper thread: queue it and wake the loop."""
        self.handoffs.put(handoff)
        wake(self.wake_write)

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def _send(self, message: wire.Message) -> bool:
        return send_message(self.socket, wire.encode(message), counters=self.transport)

    def _handle(self, received: Any, now: float) -> None:
        try:
            message = wire.decode(received.frames)
        except wire.WireError as fault:
            self._count("malformed")
            log.warning("undecodable message from the load balancer: %s", fault)
            return
        handler = self.handlers.get(type(message))
        if handler is None:
            log.warning("unexpected %s from the load balancer", type(message).SPEC.name)
            return
        try:
            handler(message, now)
        except Exception:
            log.exception("handling %s", type(message).SPEC.name)

    # -- the load balancer ------------------------------------------------------

    def _hello(self, now: float) -> None:
        self.last_hello = now
        self.next_request_id += 1
        self._send(wire.Hello.make(self.node_id, request_id=self.next_request_id, role=int(NodeRole.WORKER),
                                   slots=self.slots, cache_bytes=self.cache_bytes,
                                   start_time_ms=int(self.started_at * 1000), host=self.host, address="",
                                   version=1))

    def on_hello_reply(self, message: wire.HelloReply, now: float) -> None:
        if not self.registered:
            log.info("registered with the load balancer")
        self.registered = True
        self.send_full_cache = True
        self.last_heartbeat = 0.0
        for attempt in self.attempts.values():
            attempt.final_sent_at = 0.0  # resend unconfirmed results to the (maybe new) balancer

    def on_error(self, message: wire.Error, now: float) -> None:
        if message.error_code == ErrorCode.UNEXPECTED:
            self.registered = False  # "hello first": the balancer restarted or forgot us
        else:
            log.warning("load balancer error %d: %s", message.error_code, message.reason)

    def on_worker_request(self, message: wire.WorkerRequest, now: float) -> None:
        spec = {"job": message.job_uuid, "program": tuple(message.program), "args": list(message.args),
                "inputs": {name: tuple(ref) for name, ref in message.inputs.items()},
                "chunk_count": message.chunk_count, "timeout_s": message.timeout_s}
        for assignment in message.assignments:
            key = ChunkKey(message.job_uuid, assignment["chunk"], assignment["attempt"])
            if key in self.attempts:
                continue  # a repeated assignment
            inputs = dict(spec["inputs"])
            inputs.update({name: tuple(ref) for name, ref in assignment["inputs"].items()})
            attempt = Attempt(key=key, spec=spec, inputs=inputs)
            self.attempts[key] = attempt
            self._count("attempts_accepted")
            program_id, program_size = spec["program"]
            program = self.programs / program_id.hex()
            if program.exists():
                self._launch(attempt, program, "", now)
            else:
                self.helpers.submit(self._prepare, key, program_id, program_size)

    def _prepare(self, key: ChunkKey, program_id: bytes, program_size: int) -> None:
        """Helper thread: the program, whole and verified, as an executable
        shared by every chunk that runs it (programs never change: the id is
        the content's hash). Pinned in the cache while it is copied out."""
        program = self.programs / program_id.hex()
        self.cache.pin(program_id)
        try:
            if not program.exists():
                cached = self.cache.ensure_complete(program_id, program_size)
                temporary = program.with_name(f"{program.name}.tmp{threading.get_ident()}")
                shutil.copyfile(cached, temporary)
                temporary.chmod(0o555)
                os.replace(temporary, program)
                self._forget_old_programs()
            self._hand_back(Handoff("prepared", key, program))
        except Exception as fault:  # noqa: BLE001 - reported as the attempt's failure
            self._hand_back(Handoff("prepared", key, None, f"cannot fetch the program: {fault}"))
        finally:
            self.cache.unpin(program_id)

    def _forget_old_programs(self) -> None:
        programs = sorted(self.programs.iterdir(), key=lambda path: path.stat().st_mtime)
        cutoff = time.time() - PROGRAM_IDLE_S
        for path in programs[:max(0, len(programs) - MAX_PROGRAMS)]:
            if path.stat().st_mtime < cutoff:  # a running process keeps its inode anyway
                path.unlink(missing_ok=True)

    def on_chunk_cancel(self, message: wire.ChunkCancel, now: float) -> None:
        wanted = {(chunk, attempt) for chunk, attempt in message.attempts}
        for key, attempt in self.attempts.items():
            if key.job != message.job_uuid or (wanted and (key.chunk, key.attempt) not in wanted):
                continue
            if attempt.phase == "preparing":
                attempt.cancelled = True
            elif attempt.phase == "running" and attempt.running is not None:
                attempt.running.stop("cancelled", now)
                self._count("attempts_cancelled")

    def on_status_ack(self, message: wire.StatusAck, now: float) -> None:
        for job, chunk, attempt_number, _state in message.attempts:
            key = ChunkKey(job, chunk, attempt_number)
            attempt = self.attempts.get(key)
            if attempt is not None and attempt.phase == "reported":
                del self.attempts[key]

    # -- attempts -----------------------------------------------------------------

    def _on_handoff(self, handoff: Handoff, now: float) -> None:
        attempt = self.attempts.get(handoff.key)
        if attempt is None:
            return
        if handoff.kind == "prepared":
            self._launch(attempt, handoff.value, handoff.error, now)
        elif handoff.kind == "uploaded":
            self._report_final(attempt, handoff.value, now)

    def _launch(self, attempt: Attempt, program: pathlib.Path | None, error: str, now: float) -> None:
        key = attempt.key
        workdir = self.work_root / key.name
        if attempt.cancelled:
            self._report_final(attempt, self._status(attempt, ChunkState.CANCELLED, error="cancelled"), now)
            return
        if program is None:
            # Not the program's fault: the masters will have it run again.
            self._report_final(attempt, self._status(attempt, ChunkState.REJECTED, error=error), now)
            return
        try:
            os.utime(program)  # recently used: kept by _forget_old_programs
            attempt.inputs_dir = self.mount.add_chunk(key.name, attempt.inputs)
        except Exception as fault:  # noqa: BLE001
            log.exception("preparing %s", key.name)
            self._report_final(attempt, self._status(attempt, ChunkState.REJECTED,
                                                     error=f"worker could not prepare the chunk: {fault}"), now)
            return
        attempt.running = start_chunk(key, program, attempt.spec["args"], attempt.inputs_dir,
                                      attempt.spec["chunk_count"], workdir, attempt.spec["timeout_s"],
                                      worker=self.node_id.hex())
        attempt.phase = "running"
        attempt.report_started_at = now + STARTED_DELAY_S
        self._count("attempts_started")
        if attempt.running.exit_code is not None:  # could not be executed at all
            self._on_exit(attempt, now)

    def _on_exit(self, attempt: Attempt, now: float) -> None:
        running = attempt.running
        assert running is not None
        if running.process is not None:
            running.reap()
        attempt.phase = "finishing"
        try:
            attempt.counters = self.mount.remove_chunk(attempt.key.name)
        except Exception:  # noqa: BLE001 - a missing directory changes nothing here
            attempt.counters = (0, 0)
        exit_code = running.exit_code
        if running.stop_reason == "cancelled":
            state, error = ChunkState.CANCELLED, "cancelled"
        elif running.stop_reason == "timed out":
            state, error = ChunkState.TIMED_OUT, f"timed out after {attempt.spec['timeout_s']:g}s"
        elif running.stop_reason == "log too large":
            state, error = ChunkState.FAILED, f"stopped: stdout or stderr passed {LOG_KILL_BYTES} bytes"
        elif exit_code == 0:
            state, error = ChunkState.SUCCEEDED, ""
        else:
            state = ChunkState.FAILED
            error = running.launch_error or (f"killed by signal {-exit_code}" if exit_code < 0
                                             else f"exit code {exit_code}")
        elapsed = running.elapsed(now)
        files = output_files(running.output_dir)
        refusal = outputs_refusal(files)
        if refusal is not None:
            # Storing them could never be reported: fail the chunk, keep the logs.
            state, error, files = ChunkState.FAILED, refusal, []
        logs = [path for path in (running.stdout_path, running.stderr_path) if _size_of(path) > 0]
        if not files and not logs:
            # Nothing to store: report straight away (the common case for tiny chunks).
            status = self._status(attempt, state, exit_code=exit_code, error=error, elapsed_s=elapsed)
            self.helpers.submit(remove_workdir, running.workdir)
            self._report_final(attempt, status, now)
            return
        self.helpers.submit(self._upload, attempt, state, exit_code, error, elapsed, files)

    def _upload(self, attempt: Attempt, state: int, exit_code: int | None, error: str, elapsed: float,
                files: list[tuple[str, pathlib.Path]]) -> None:
        """Helper thread: store outputs and logs, then hand the status back."""
        running = attempt.running
        client = self._storage_client()
        try:
            outputs = {name: client.put_file(path) for name, path in files}
            stdout = self._put_log(client, running.stdout_path)
            stderr = self._put_log(client, running.stderr_path)
            status = self._status(attempt, state, exit_code=exit_code, error=error, elapsed_s=elapsed,
                                  outputs=outputs, stdout=stdout, stderr=stderr)
        except Exception as fault:  # noqa: BLE001 - storage trouble is not the program's fault
            log.warning("storing the results of %s failed: %s", attempt.key.name, fault)
            status = self._status(attempt, ChunkState.REJECTED, error=f"could not store results: {fault}",
                                  elapsed_s=elapsed)
        finally:
            remove_workdir(running.workdir)
        self._hand_back(Handoff("uploaded", attempt.key, status))

    @staticmethod
    def _put_log(client: StorageClient, path: pathlib.Path) -> wire.records.FileRef | None:
        return client.put_file(path) if _size_of(path) > 0 else None

    def _status(self, attempt: Attempt, state: int, exit_code: int | None = None, error: str = "",
                elapsed_s: float = 0.0, outputs: dict | None = None,
                stdout: wire.records.FileRef | None = None,
                stderr: wire.records.FileRef | None = None) -> wire.WorkerStatus:
        read_bytes, fetched_bytes = attempt.counters
        result = wire.ChunkResult(
            exit_code=exit_code, outputs=outputs or {}, stdout=stdout, stderr=stderr, error=error[:4000],
            elapsed_s=elapsed_s, bytes_from_cache=max(0, read_bytes - fetched_bytes),
            bytes_from_storage=fetched_bytes)
        event = wire.ChunkEvent(job=attempt.key.job, chunk=attempt.key.chunk, attempt=attempt.key.attempt,
                                state=int(state), worker=self.node_id, result=result)
        return wire.WorkerStatus.reporting(event, epoch=1)

    def _report_final(self, attempt: Attempt, status: wire.WorkerStatus, now: float) -> None:
        attempt.phase = "reported"
        attempt.final = status
        attempt.final_sent_at = now
        self._count(f"attempts_{wire.ChunkState(status.state).name.lower()}")
        self._send(status)

    # -- timers -------------------------------------------------------------------

    def _on_timers(self, now: float) -> None:
        for attempt in self.attempts.values():
            if attempt.phase == "running" and attempt.running is not None:
                attempt.running.on_timer(now)
                if attempt.report_started_at is not None and now >= attempt.report_started_at:
                    attempt.report_started_at = None
                    self._send(self._status(attempt, ChunkState.STARTED))
        if not self.registered:
            if now - self.last_hello > HELLO_RETRY_S:
                self._hello(now)
            return
        if now - self.last_heartbeat >= self.heartbeat_interval_s:
            self.last_heartbeat = now
            self._heartbeat()
        for attempt in self.attempts.values():
            if attempt.phase == "reported" and now - attempt.final_sent_at > RESEND_STATUS_S:
                attempt.final_sent_at = now
                self._count("statuses_resent")
                self._send(attempt.final)

    def _heartbeat(self) -> None:
        added, removed = self.cache.drain_changes()
        if self.send_full_cache:
            self.send_full_cache = False
            added, removed = self.cache.complete_files(), []
        running = [[key.job, key.chunk, key.attempt] for key, attempt in self.attempts.items()
                   if attempt.phase != "reported"]
        busy = len(running)
        self._send(wire.Heartbeat.make(self.node_id, epoch=1, free_slots=max(0, self.slots - busy),
                                       running_count=busy, running=running,
                                       cache_added=[list(item) for item in added], cache_removed=removed))

    def close(self) -> None:
        """Shut down: what still runs is ended (SIGTERM, then SIGKILL after the
        grace period), so no program outlives its worker."""
        deadline = time.monotonic() + KILL_GRACE_S
        for attempt in self.attempts.values():
            if attempt.running is not None:
                attempt.running.end(max(0.0, deadline - time.monotonic()))
        self.helpers.shutdown(wait=False, cancel_futures=True)
        self.mount.stop()
        self.cache.close()


def _size_of(path: pathlib.Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
