"""Carrying out the attempts core's effects on this machine: programs, the
FUSE mount, processes, working folders and uploads to storage.

Rules: nothing here decides anything; each method does what one effect of
worker/attempts.py says and returns the core event that answers it, or
None when a helper thread will hand the answer to `hand_back` later.
Fetching a program and uploading results block, so they run on helper
threads, each with its own storage connection.
"""
from __future__ import annotations

import logging
import os
import pathlib
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from uds.storage.client import StorageClient
from uds.wire.transport import Transport
from uds.worker import attempts as core
from uds.worker.attempts import AttemptKey
from uds.worker.blocks import StorageBlockSource
from uds.worker.cache import BlockCache
from uds.worker.fusefs import FuseMount, clear_stale_mount
from uds.worker.programs import ProgramStore
from uds.worker.runner import RunningChunk, kill_leftovers, output_files, remove_workdir, start_chunk

log = logging.getLogger("worker")

HELPER_THREADS = 4
SIGNALS = {core.SignalName.TERM: signal.SIGTERM, core.SignalName.KILL: signal.SIGKILL}


class AttemptHost:
    def __init__(self, node_id: bytes, data: pathlib.Path, storage_address: str, transport: Transport,
                 cache_bytes: int, hand_back: Callable[[Any], None]) -> None:
        self.node_id, self.storage_address, self.transport = node_id, storage_address, transport
        self.hand_back = hand_back
        self.processes: dict[AttemptKey, RunningChunk] = {}
        self.outputs: dict[AttemptKey, dict[str, pathlib.Path]] = {}
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
        self.helpers = ThreadPoolExecutor(HELPER_THREADS, thread_name_prefix="worker-helper")
        self.handlers: dict[type, Callable[[Any], Any]] = {
            core.FetchProgram: self.fetch, core.Mount: self.add_mount, core.Start: self.start,
            core.Signal: lambda effect: self.processes[effect.key].signal(SIGNALS[effect.signal]),
            core.Unmount: self.remove_mount, core.Upload: self.upload, core.Clean: self.clean,
        }

    def _storage_client(self) -> StorageClient:
        """One storage connection per thread: a socket belongs to one thread."""
        client = getattr(self._clients, "client", None)
        if client is None:
            client = self._clients.client = StorageClient(self.transport, self.storage_address, self.node_id)
        return client

    def pidfds(self) -> dict[int, AttemptKey]:
        return {running.pidfd: key for key, running in self.processes.items() if running.pidfd is not None}

    def log_size(self, key: AttemptKey) -> core.LogSize:
        return core.LogSize(key, self.processes[key].log_bytes())

    def fetch(self, effect: core.FetchProgram) -> core.ProgramFetched | None:
        program_id, program_size = effect.program
        present = self.programs.present(program_id)
        if present is not None:
            return core.ProgramFetched(effect.key, str(present))
        self.helpers.submit(self._fetch, effect.key, program_id, program_size)
        return None

    def _fetch(self, key: AttemptKey, program_id: bytes, program_size: int) -> None:
        """Helper thread."""
        try:
            self.hand_back(core.ProgramFetched(key, str(self.programs.fetch(program_id, program_size))))
        except Exception as fault:  # noqa: BLE001 - reported as the attempt's REJECTED
            self.hand_back(core.ProgramUnavailable(key, f"cannot fetch the program: {fault}"))

    def add_mount(self, effect: core.Mount) -> core.Mounted | core.MountFailed:
        try:
            return core.Mounted(effect.key, self.mount.add_chunk(effect.key.name, dict(effect.inputs)))
        except Exception as fault:  # noqa: BLE001 - reported as the attempt's REJECTED
            log.exception("preparing %s", effect.key.name)
            return core.MountFailed(effect.key, str(fault))

    def start(self, effect: core.Start) -> core.ProcessStarted | core.ProcessExited:
        self.processes[effect.key] = running = start_chunk(
            effect.key, pathlib.Path(effect.program), effect.args, effect.inputs_dir, effect.chunk_count,
            self.work_root / effect.key.name, worker=self.node_id.hex())
        if running.exit_code is not None:  # could not be executed at all
            return self.exited(effect.key)
        return core.ProcessStarted(effect.key)

    def exited(self, key: AttemptKey) -> core.ProcessExited:
        """Once its pidfd is readable (or it could not start): reap the
        group and say what it left."""
        running = self.processes[key]
        if running.process is not None:
            running.reap()
        try:
            read, fetched = self.mount.chunk_counters(key.name)
            faults = self.mount.chunk_faults(key.name)  # inputs it could not be given good bytes of
        except Exception:  # noqa: BLE001 - a missing directory changes nothing here
            read, fetched, faults = 0, 0, []
        self.outputs[key] = dict(output_files(running.output_dir))
        assert running.exit_code is not None
        return core.ProcessExited(key, running.exit_code, running.launch_error, tuple(self.outputs[key]),
                                  _size_of(running.stdout_path), _size_of(running.stderr_path), read, fetched,
                                  infrastructure_error="; ".join(faults))

    def remove_mount(self, effect: core.Unmount) -> None:
        try:
            self.mount.remove_chunk(effect.key.name)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def upload(self, effect: core.Upload) -> None:
        running, outputs = self.processes.pop(effect.key), self.outputs.pop(effect.key)
        files = [(name, outputs[name]) for name in effect.outputs]
        logs = (running.stdout_path if effect.stdout else None, running.stderr_path if effect.stderr else None)
        self.helpers.submit(self._upload, effect.key, running.workdir, files, logs)

    def _upload(self, key: AttemptKey, workdir: pathlib.Path, files: list[tuple[str, pathlib.Path]],
                logs: tuple[pathlib.Path | None, pathlib.Path | None]) -> None:
        """Helper thread: store outputs and logs, then hand the answer back."""
        try:
            client = self._storage_client()
            outputs = {name: client.put_file(path) for name, path in files}
            stdout, stderr = (client.put_file(path) if path else None for path in logs)
            self.hand_back(core.Uploaded(key, outputs, stdout, stderr))
        except Exception as fault:  # noqa: BLE001 - storage trouble is not the program's fault
            log.warning("storing the results of %s failed: %s", key.name, fault)
            self.hand_back(core.UploadFailed(key, str(fault)))
        finally:
            remove_workdir(workdir)

    def clean(self, effect: core.Clean) -> None:
        self.outputs.pop(effect.key, None)
        self.helpers.submit(remove_workdir, self.processes.pop(effect.key).workdir)

    def close(self, grace_s: float) -> None:
        """What still runs is ended (SIGTERM, then SIGKILL after grace_s in
        all), so no program outlives its worker."""
        deadline = time.monotonic() + grace_s
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
