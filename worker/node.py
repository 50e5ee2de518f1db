"""The worker's shell: a DEALER to the load balancer, one FUSE mount for its
lifetime, processes watched through pidfds, and a loop that turns all of it
into events for the attempts core (worker/attempts.py) and carries out the
effects the core returns. Every decision is the core's.

Rules: the loop never blocks on the network or a program. Fetching a
program and uploading outputs happen on helper threads, each with its own
storage connection, which hand their answer (a core event) back through a
queue and a wake-up pipe. Every other effect is carried out on the loop and,
when it has an answer, answered at once.
"""
from __future__ import annotations

import logging
import os
import pathlib
import queue
import shutil
import signal
import socket as socket_module
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import zmq

import wire
from client.storage_client import StorageClient
from wire.daemon import drain, guarded, handle_request, wake
from wire.enums import ErrorCode, NodeRole
from wire.transport import Transport, recv_messages, send_message
from worker import attempts as core
from worker.attempts import AttemptKey
from worker.blocks import StorageBlockSource
from worker.cache import BlockCache
from worker.fusefs import FuseMount, clear_stale_mount
from worker.programs import ProgramStore
from worker.runner import RunningChunk, kill_leftovers, output_files, remove_workdir, start_chunk

log = logging.getLogger("worker")

PREPARE_THREADS = 4
MESSAGES_PER_WAKEUP = 1000
# How often the logs of running programs are measured for the core's limit.
LOG_CHECK_S = 0.1
SIGNALS = {core.SignalName.TERM: signal.SIGTERM, core.SignalName.KILL: signal.SIGKILL}


def status_message(node_id: bytes, report: core.Report) -> wire.WorkerStatus:
    """The worker_status that carries a report: the one place it is built."""
    key, result = report.key, report.result
    return wire.WorkerStatus.make(
        node_id, job=key.job, state=int(report.state), epoch=report.epoch, chunk=key.chunk,
        attempt=key.attempt, exit_code=result.exit_code,
        outputs={name: list(ref) for name, ref in result.outputs.items()},
        stdout=list(result.stdout) if result.stdout else None,
        stderr=list(result.stderr) if result.stderr else None, error=result.error[:4000],
        elapsed_s=result.elapsed_s, bytes_from_cache=result.bytes_from_cache,
        bytes_from_storage=result.bytes_from_storage)


class WorkerNode:
    def __init__(self, node_id: bytes, data: pathlib.Path, loadbalancer_address: str, storage_address: str,
                 transport: Transport, slots: int, cache_bytes: int, heartbeat_interval_s: float,
                 wake_read: int, wake_write: int) -> None:
        self.node_id, self.transport, self.storage_address = node_id, transport, storage_address
        self.slots, self.cache_bytes = slots, cache_bytes
        self.heartbeat_interval_s = heartbeat_interval_s
        self.host = socket_module.gethostname()
        self.started_at = time.time()
        self.wake_read, self.wake_write = wake_read, wake_write
        self.core = core.Attempts(slots, heartbeat_interval_s)
        self.answers: queue.SimpleQueue[Any] = queue.SimpleQueue()     # core events from helpers
        self.processes: dict[AttemptKey, RunningChunk] = {}
        self.outputs: dict[AttemptKey, dict[str, pathlib.Path]] = {}
        self.counters: dict[str, int] = {}
        self.next_request_id = 1
        self.last_log_check = 0.0
        leftovers = kill_leftovers(node_id.hex())
        if leftovers:
            log.warning("killed %d processes left running by an earlier run", leftovers)
        self.work_root = data / "work"
        shutil.rmtree(self.work_root, ignore_errors=True)  # left by a crash: nothing in it runs now
        self.work_root.mkdir(parents=True, exist_ok=True)
        self._clients = threading.local()
        self.cache = BlockCache(data / "cache", StorageBlockSource(self._storage_client), cache_bytes)
        self.programs = ProgramStore(data / "programs", self.cache)
        mountpoint = data / "mnt"
        clear_stale_mount(mountpoint)
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mount = FuseMount(mountpoint, self.cache)
        self.mount.start()
        self.helpers = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="worker-helper")
        self.socket = transport.client_socket(zmq.DEALER, loadbalancer_address)
        self.handlers: dict[type, Callable[[Any, Any, float], None]] = {
            wire.HelloReply: lambda m, peer, now: self._apply(core.HelloAnswered(m.epoch), now),
            wire.WorkerRequest: self.on_worker_request,
            wire.ChunkCancel: lambda m, peer, now: self._apply(core.CancelReceived(
                m.epoch, m.job_uuid, tuple((chunk, attempt) for chunk, attempt in m.attempts)), now),
            wire.StatusAck: lambda m, peer, now: self._apply(core.StatusAcknowledged(
                m.epoch, tuple(AttemptKey(job, chunk, attempt) for job, chunk, attempt, _ in m.attempts)), now),
            wire.Error: self.on_error,
        }
        self.effects: dict[type, Callable[[Any, float], Any]] = {
            core.FetchProgram: self.do_fetch, core.Mount: self.do_mount, core.Start: self.do_start,
            core.Signal: lambda e, now: self.processes[e.key].signal(SIGNALS[e.signal]),
            core.Unmount: self.do_unmount, core.Upload: self.do_upload, core.Clean: self.do_clean,
            core.Report: lambda e, now: self._send(status_message(self.node_id, e)),
            core.Resend: lambda e, now: self._send(status_message(self.node_id, e.report)),
            core.SayHello: self.do_hello, core.SendHeartbeat: self.do_heartbeat,
        }

    def _storage_client(self) -> StorageClient:
        """One storage connection per thread: a socket belongs to one thread."""
        client = getattr(self._clients, "client", None)
        if client is None:
            client = self._clients.client = StorageClient(self.transport, self.storage_address, self.node_id)
        return client

    def stats(self) -> dict[str, int]:
        return {**self.counters, **self.core.counters}

    # -- loop -----------------------------------------------------------------

    def run(self, stop: Callable[[], bool], on_serving: Callable[[], None]) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.wake_read, zmq.POLLIN)
        on_serving()
        watched: dict[int, AttemptKey] = {}
        while not stop():
            pidfds = {running.pidfd: key for key, running in self.processes.items() if running.pidfd is not None}
            for descriptor in watched.keys() - pidfds.keys():
                poller.unregister(descriptor)
            for descriptor in pidfds.keys() - watched.keys():
                poller.register(descriptor, zmq.POLLIN)
            watched = pidfds
            now = time.monotonic()
            wakeup = self.core.next_wakeup()
            timeout_s = self.heartbeat_interval_s / 2 if wakeup is None else min(
                self.heartbeat_interval_s / 2, max(0.0, wakeup - now))
            ready = dict(poller.poll(int(timeout_s * 1000) + 1))
            now = time.monotonic()
            if self.wake_read in ready:
                drain(self.wake_read)
            while not self.answers.empty():
                guarded(log, self._count, self._apply, self.answers.get(), now)
            for descriptor, key in pidfds.items():
                if descriptor in ready:
                    guarded(log, self._count, self._on_exit, key, now)
            if self.socket in ready:
                for received in recv_messages(self.socket, self.transport, MESSAGES_PER_WAKEUP):
                    handle_request(received, self.handlers, now, "a worker", self._refuse, self._count, log)
            if now - self.last_log_check >= LOG_CHECK_S:
                self.last_log_check = now
                for key in self.core.in_phase(core.Phase.RUNNING):
                    guarded(log, self._count, self._apply, core.LogSize(key, self.processes[key].log_bytes()), now)
            guarded(log, self._count, self._apply, core.Tick(), now)

    def _apply(self, event: Any, now: float) -> None:
        """Hand an event to the core and carry out its effects; an effect
        answered at once feeds its answer back in, in order."""
        events = deque([event])
        while events:
            for effect in self.core.handle(events.popleft(), now):
                answer = self.effects[type(effect)](effect, now)
                if answer is not None:
                    events.append(answer)

    def _hand_back(self, answer: Any) -> None:
        """From a helper thread: queue the answer and wake the loop."""
        self.answers.put(answer)
        wake(self.wake_write)

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def _send(self, message: wire.Message) -> None:
        send_message(self.socket, wire.encode(message), counters=self.transport)

    def _refuse(self, peer: Any, request_id: int, failed_type: int, code: int, reason: str) -> None:
        # Never answered: the balancer would take an error for a request of ours.
        log.warning("dropped a message from the load balancer (error %d): %s", code, reason)

    # -- messages from the load balancer ----------------------------------------

    def on_worker_request(self, message: wire.WorkerRequest, peer: Any, now: float) -> None:
        job = core.JobSpec(message.job_uuid, (message.program[0], message.program[1]), tuple(message.args),
                           {name: (ref[0], ref[1]) for name, ref in message.inputs.items()},
                           message.chunk_count, message.timeout_s)
        chunks = tuple(core.ChunkAssignment(item["chunk"], item["attempt"],
                                            {name: (ref[0], ref[1]) for name, ref in item["inputs"].items()})
                       for item in message.assignments)
        self._apply(core.Assigned(message.epoch, job, chunks), now)

    def on_error(self, message: wire.Error, peer: Any, now: float) -> None:
        if message.error_code == ErrorCode.UNEXPECTED:
            self._apply(core.HelloRequired(), now)  # "hello first": the balancer restarted or forgot us
        else:
            log.warning("load balancer error %d: %s", message.error_code, message.reason)

    # -- effects ---------------------------------------------------------------------

    def do_fetch(self, effect: core.FetchProgram, now: float) -> core.ProgramFetched | None:
        program_id, program_size = effect.program
        present = self.programs.present(program_id)
        if present is not None:
            return core.ProgramFetched(effect.key, str(present))
        self.helpers.submit(self._fetch, effect.key, program_id, program_size)
        return None

    def _fetch(self, key: AttemptKey, program_id: bytes, program_size: int) -> None:
        """Helper thread."""
        try:
            self._hand_back(core.ProgramFetched(key, str(self.programs.fetch(program_id, program_size))))
        except Exception as fault:  # noqa: BLE001 - reported as the attempt's REJECTED
            self._hand_back(core.ProgramUnavailable(key, f"cannot fetch the program: {fault}"))

    def do_mount(self, effect: core.Mount, now: float) -> core.Mounted | core.MountFailed:
        try:
            return core.Mounted(effect.key, self.mount.add_chunk(effect.key.name, dict(effect.inputs)))
        except Exception as fault:  # noqa: BLE001 - reported as the attempt's REJECTED
            log.exception("preparing %s", effect.key.name)
            return core.MountFailed(effect.key, str(fault))

    def do_start(self, effect: core.Start, now: float) -> core.ProcessStarted | core.ProcessExited:
        self.processes[effect.key] = running = start_chunk(
            effect.key, pathlib.Path(effect.program), effect.args, effect.inputs_dir, effect.chunk_count,
            self.work_root / effect.key.name, worker=self.node_id.hex())
        if running.exit_code is not None:  # could not be executed at all
            return self._exited(effect.key)
        return core.ProcessStarted(effect.key)

    def _on_exit(self, key: AttemptKey, now: float) -> None:
        self.processes[key].reap()
        self._apply(self._exited(key), now)

    def _exited(self, key: AttemptKey) -> core.ProcessExited:
        running = self.processes[key]
        try:
            read, fetched = self.mount.chunk_counters(key.name)
        except Exception:  # noqa: BLE001 - a missing directory changes nothing here
            read, fetched = 0, 0
        self.outputs[key] = dict(output_files(running.output_dir))
        assert running.exit_code is not None
        return core.ProcessExited(key, running.exit_code, running.launch_error, tuple(self.outputs[key]),
                                  _size_of(running.stdout_path), _size_of(running.stderr_path), read, fetched)

    def do_unmount(self, effect: core.Unmount, now: float) -> None:
        try:
            self.mount.remove_chunk(effect.key.name)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def do_upload(self, effect: core.Upload, now: float) -> None:
        running, outputs = self.processes.pop(effect.key), self.outputs.pop(effect.key)
        files = [(name, outputs[name]) for name in effect.outputs]
        logs = (running.stdout_path if effect.stdout else None, running.stderr_path if effect.stderr else None)
        self.helpers.submit(self._upload, effect.key, running.workdir, files, logs)

    def _upload(self, key: AttemptKey, workdir: pathlib.Path, files: list[tuple[str, pathlib.Path]],
                logs: tuple[pathlib.Path | None, pathlib.Path | None]) -> None:
        """Helper thread: store outputs and logs, then hand the answer back."""
        try:
            client = self._storage_client()
            outputs = {name: tuple(client.put_file(path)) for name, path in files}
            stdout, stderr = (tuple(client.put_file(path)) if path else None for path in logs)
            self._hand_back(core.Uploaded(key, outputs, stdout, stderr))
        except Exception as fault:  # noqa: BLE001 - storage trouble is not the program's fault
            log.warning("storing the results of %s failed: %s", key.name, fault)
            self._hand_back(core.UploadFailed(key, str(fault)))
        finally:
            remove_workdir(workdir)

    def do_clean(self, effect: core.Clean, now: float) -> None:
        self.outputs.pop(effect.key, None)
        self.helpers.submit(remove_workdir, self.processes.pop(effect.key).workdir)

    def do_hello(self, effect: core.SayHello, now: float) -> None:
        self.next_request_id += 1
        self._send(wire.Hello.make(self.node_id, request_id=self.next_request_id, role=int(NodeRole.WORKER),
                                   slots=self.slots, cache_bytes=self.cache_bytes,
                                   start_time_ms=int(self.started_at * 1000), host=self.host, address="",
                                   version=1))

    def do_heartbeat(self, effect: core.SendHeartbeat, now: float) -> None:
        added, removed = self.cache.drain_changes()
        if effect.full_cache:
            added, removed = self.cache.complete_files(), []
        self._send(wire.Heartbeat.make(self.node_id, epoch=effect.epoch, free_slots=effect.free_slots,
                                       running_count=len(effect.running), running=[list(k) for k in effect.running],
                                       cache_added=[list(item) for item in added], cache_removed=removed))

    def close(self) -> None:
        """Shut down: what still runs is ended (SIGTERM, then SIGKILL after the
        grace period), so no program outlives its worker."""
        deadline = time.monotonic() + core.KILL_GRACE_S
        for running in self.processes.values():
            running.end(max(0.0, deadline - time.monotonic()))
        self.helpers.shutdown(wait=False, cancel_futures=True)
        self.mount.stop()
        self.cache.close()


def _size_of(path: pathlib.Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
