"""Carrying out the attempts core's effects on this machine: programs, the
FUSE mount, processes in their sandbox (worker/sandbox.py), working
folders, limits and usage, and uploads to storage.

Rules: nothing here decides anything; each method does what one effect of
worker/attempts.py says and returns the core event that answers it, or
None when a helper thread will hand the answer to `hand_back` later.
Fetching a program and uploading results block, so they run on helper
threads. Storage is the cluster's nodes as one (storage/replicas.py): inputs
are read from whichever replica has them good, results stored on R nodes.
"""
from __future__ import annotations

import logging
import os
import pathlib
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable

from uds.daemon.metrics import DaemonMetrics
from uds.storage.replicas import ReplicatedStorage
from uds.wire.resources import NO_LIMITS, ResourceLimits, Usage, chunk_disk_cap
from uds.wire.transport import Transport
from uds.worker import attempts as core
from uds.worker.attempts import AttemptKey
from uds.worker.blocks import ReplicatedBlockSource
from uds.worker.cache import BlockCache
from uds.worker.cgroups import cpu_time_reason, disk_reason
from uds.worker.fusefs import FuseMount, clear_stale_mount
from uds.worker.outputs import OutputRefused, collect, open_output
from uds.worker.programs import ProgramStore
from uds.worker.runner import (
    RunningChunk, StuckAttemptError, chunk_environment, kill_leftovers, launch, remove_workdir, start_chunk,
)
from uds.worker.sandbox import (
    INPUTS_PATH, OUTPUT_PATH, SPARE_SLOTS, WORK_PATH, NoFreeSlot,
    Sandbox, default_uids,
)

log = logging.getLogger("worker")

HELPER_THREADS = 4
# Consecutive blocks of one input start at different replicas (bench/storage.py).
SPREAD_READS = False
# Free space below which a slot filesystem counts as full.
SLOT_FULL_BYTES = 1 << 20
SIGNALS = {core.SignalName.TERM: signal.SIGTERM, core.SignalName.KILL: signal.SIGKILL}
UNSAFE_LABEL = "none (--unsafe-no-sandbox)"


@dataclass(frozen=True)
class SandboxSettings:
    """How this worker boxes its programs (see worker/sandbox.py)."""

    enabled: bool = True
    slot_uids: range | None = None          # None: a block of its own, chosen by node id
    defaults: ResourceLimits = NO_LIMITS    # the cluster's [limits]
    hidden: tuple[pathlib.Path, ...] = ()   # more folders the programs must not see (keys, data)
    slots: int = 2


class AttemptHost:
    def __init__(self, node_id: bytes, data: pathlib.Path, storage: ReplicatedStorage, transport: Transport,
                 cache_bytes: int, hand_back: Callable[[Any], None],
                 sandbox: SandboxSettings = SandboxSettings(enabled=False),
                 metrics: DaemonMetrics | None = None) -> None:
        """`metrics`: where block fetches and FUSE reads are timed (none: nowhere)."""
        self.node_id, self.storage, self.transport = node_id, storage, transport
        self.hand_back = hand_back
        self.processes: dict[AttemptKey, RunningChunk] = {}
        self.outputs: dict[AttemptKey, dict[str, int]] = {}
        self.defaults = sandbox.defaults
        self.sandbox: Sandbox | None = None
        self.sandbox_label = UNSAFE_LABEL
        os.chmod(data, 0o700)       # a second line behind the box: no slot user may enter
        if sandbox.enabled:
            uids = sandbox.slot_uids or default_uids(node_id.hex(), sandbox.slots + SPARE_SLOTS)
            self.sandbox = Sandbox(node_id.hex(), data, sandbox.hidden, sandbox.slots, uids,
                                   chunk_disk_cap(sandbox.defaults))
            self.sandbox_label = self.sandbox.label
            log.info("programs run in a sandbox: %s, slot uids %d-%d", self.sandbox_label, uids[0], uids[-1])
            ended = self.sandbox.end_leftovers()
            if ended:
                log.warning("ended %d attempt cgroups left by an earlier run", ended)
        else:
            log.warning("programs run unconfined, as this worker's own user (--unsafe-no-sandbox)")
        leftovers = kill_leftovers(node_id.hex())
        if leftovers:
            log.warning("killed %d processes left running by an earlier run", leftovers)
        self.work_root = data / "work"
        shutil.rmtree(self.work_root, ignore_errors=True)  # left by a crash: nothing in it runs now
        self.work_root.mkdir(parents=True, exist_ok=True)
        fetch_seconds = read_seconds = None
        if metrics is not None:
            fetch_seconds = metrics.histogram(
                "block_fetch_seconds", "Fetching one block of an input from storage, failed fetches too.").observe
            read_seconds = metrics.histogram(
                "fuse_read_seconds", "Answering one read of the FUSE mount, from the cache or storage.").observe
        source = ReplicatedBlockSource(storage, spread=SPREAD_READS, observe_fetch=fetch_seconds)
        self.cache = BlockCache(data / "cache", source, cache_bytes)
        self.programs = ProgramStore(data / "programs", self.cache)
        mountpoint = data / "mnt"
        clear_stale_mount(mountpoint)
        mountpoint.mkdir(parents=True, exist_ok=True)
        # Programs run as slot users: the mount must let other users in.
        self.mount = FuseMount(mountpoint, self.cache, allow_other=self.sandbox is not None)
        if read_seconds is not None:
            self.mount.observe_reads(read_seconds)
        self.mount.start()
        self.helpers = ThreadPoolExecutor(HELPER_THREADS, thread_name_prefix="worker-helper")
        self.handlers: dict[type, Callable[[Any], Any]] = {
            core.FetchProgram: self.fetch, core.Mount: self.add_mount, core.Start: self.start,
            core.Signal: lambda effect: self.processes[effect.key].signal(SIGNALS[effect.signal]),
            core.Unmount: self.remove_mount, core.Upload: self.upload, core.Clean: self.clean,
        }

    def pidfds(self) -> dict[int, AttemptKey]:
        return {running.pidfd: key for key, running in self.processes.items() if running.pidfd is not None}

    def log_size(self, key: AttemptKey) -> core.LogSize:
        """The logs' size, for the core; on the way, the limits only the worker
        can watch while the program runs (cpu time over all its processes,
        the disk its folders take) are checked, and a passed one ends it."""
        running = self.processes[key]
        watch_limits(running)
        return core.LogSize(key, running.log_bytes())

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
            first_read = core.FirstRead(effect.key)         # told once, from a FUSE thread
            return core.Mounted(effect.key, self.mount.add_chunk(effect.key.name, dict(effect.inputs),
                                                                 lambda: self.hand_back(first_read)))
        except Exception as fault:  # noqa: BLE001 - reported as the attempt's REJECTED
            log.exception("preparing %s", effect.key.name)
            return core.MountFailed(effect.key, str(fault))

    def start(self, effect: core.Start) -> core.ProcessStarted | core.ProcessExited:
        workdir = self.work_root / effect.key.name
        if self.sandbox is None:
            running = start_chunk(effect.key, pathlib.Path(effect.program), effect.args, effect.inputs_dir,
                                  effect.chunk_count, workdir, worker=self.node_id.hex())
        else:
            try:
                running = self._start_boxed(effect, workdir)
            except (NoFreeSlot, OSError) as fault:
                log.warning("cannot box %s: %s", effect.key.name, fault)
                return core.ProcessExited(effect.key, 0, infrastructure_error=f"cannot build the sandbox: {fault}")
        self.processes[effect.key] = running
        if running.exit_code is not None:  # could not be executed at all
            return self.exited(effect.key)
        return core.ProcessStarted(effect.key)

    def _start_boxed(self, effect: core.Start, workdir: pathlib.Path) -> RunningChunk:
        assert self.sandbox is not None
        limits = effect.limits.with_defaults(self.defaults)
        # The slot filesystem holds at most its size: no job gets more disk than that.
        capacity = self.sandbox.slot_disk_bytes
        limits = replace(limits, disk_bytes=min(limits.disk_bytes or capacity, capacity))
        slot = self.sandbox.acquire()
        try:
            cgroup = self.sandbox.cgroup(effect.key.name, limits)
        except OSError:
            self.sandbox.release(slot)
            raise
        running = RunningChunk(key=effect.key, workdir=workdir, output_dir=slot.output, process=None, pidfd=None,
                               cgroup=cgroup, program_uid=slot.uid, slot=slot)
        environment = chunk_environment(effect.key, effect.chunk_count, INPUTS_PATH, OUTPUT_PATH,
                                        self.node_id.hex())
        environment.update(HOME=WORK_PATH, TMPDIR="/tmp")
        command = self.sandbox.command(slot, cgroup, limits, effect.program, effect.args, effect.inputs_dir,
                                       effect.network)
        return launch(running, pathlib.Path(effect.program), command, workdir, environment)

    def exited(self, key: AttemptKey) -> core.ProcessExited:
        """Once its pidfd is readable (or it could not start): end everything
        it left running, measure it, and only then look at what it wrote."""
        running = self.processes[key]
        try:
            if running.process is not None:
                running.reap()
        except StuckAttemptError as fault:
            log.error("%s", fault)
            return core.ProcessExited(key, 0, infrastructure_error=str(fault))
        try:
            read, fetched = self.mount.chunk_counters(key.name)
            faults = self.mount.chunk_faults(key.name)  # inputs it could not be given good bytes of
        except Exception:  # noqa: BLE001 - a missing directory changes nothing here
            read, fetched, faults = 0, 0, []
        limit_exceeded, usage = account(running)
        refused = ""
        try:
            self.outputs[key] = dict(collect(str(running.output_dir)))
        except (OutputRefused, OSError) as fault:
            refused, self.outputs[key] = str(fault), {}
        assert running.exit_code is not None
        return core.ProcessExited(key, running.exit_code, running.launch_error, tuple(self.outputs[key]),
                                  _size_of(running.stdout_path), _size_of(running.stderr_path), read, fetched,
                                  limit_exceeded=limit_exceeded, usage=usage, outputs_refused=refused,
                                  infrastructure_error="; ".join(faults))

    def remove_mount(self, effect: core.Unmount) -> None:
        try:
            self.mount.remove_chunk(effect.key.name)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def upload(self, effect: core.Upload) -> None:
        running = self.processes.pop(effect.key)
        self.outputs.pop(effect.key)
        logs = (running.stdout_path if effect.stdout else None, running.stderr_path if effect.stderr else None)
        self.helpers.submit(self._upload, running, list(effect.outputs), logs)

    def _upload(self, running: RunningChunk, names: list[str],
                logs: tuple[pathlib.Path | None, pathlib.Path | None]) -> None:
        """Helper thread: store outputs and logs, then hand the answer back.
        Each output is opened without following links and stored from that
        descriptor."""
        try:
            client = self.storage
            outputs = {}
            for name in names:
                descriptor = open_output(str(running.output_dir), name)
                try:
                    outputs[name] = client.put_descriptor(descriptor)
                finally:
                    os.close(descriptor)
            stdout, stderr = (client.put_file(path) if path else None for path in logs)
            self.hand_back(core.Uploaded(running.key, outputs, stdout, stderr))
        except Exception as fault:  # noqa: BLE001 - storage trouble is not the program's fault
            log.warning("storing the results of %s failed: %s", running.key.name, fault)
            self.hand_back(core.UploadFailed(running.key, str(fault)))
        finally:
            self._tidy(running)

    def clean(self, effect: core.Clean) -> None:
        self.outputs.pop(effect.key, None)
        running = self.processes.pop(effect.key, None)
        if running is None:
            # It never started (no sandbox slot, say): only its folder may be left.
            self.helpers.submit(remove_workdir, self.work_root / effect.key.name)
            return
        self.helpers.submit(self._tidy, running)

    def _tidy(self, running: RunningChunk) -> None:
        """Helper thread: remove the attempt's folders; give its slot back emptied."""
        remove_workdir(running.workdir)
        if running.slot is not None and self.sandbox is not None:
            self.sandbox.empty(running.slot)
            self.sandbox.release(running.slot)

    def close(self, grace_s: float) -> None:
        """What still runs is ended (SIGTERM, then SIGKILL after grace_s in
        all), so no program outlives its worker."""
        deadline = time.monotonic() + grace_s
        for running in self.processes.values():
            running.end(max(0.0, deadline - time.monotonic()))
        self.helpers.shutdown(wait=False, cancel_futures=True)
        self.mount.stop()
        self.cache.close()
        if self.sandbox is not None:
            self.sandbox.close()


def watch_limits(running: RunningChunk) -> None:
    """End a running attempt that passed a limit only the worker can watch:
    cpu time over all its processes, the disk its folders take."""
    if running.cgroup is None or running.exit_code is not None or running.limit_exceeded:
        return
    limits = running.cgroup.limits
    if limits.cpu_time_s and running.cgroup.cpu_seconds() > limits.cpu_time_s:
        running.stop(cpu_time_reason(limits.cpu_time_s))
    elif limits.disk_bytes and (running.slot.used_bytes() >= limits.disk_bytes or _slot_full(running.slot.root)):
        running.stop(disk_reason(limits.disk_bytes))


def account(running: RunningChunk) -> tuple[str, Usage]:
    """Which limit ended the attempt (for people), and what it used;
    removes its cgroup."""
    wall_s = max(0.0, (running.ended_at or time.monotonic()) - running.started_at)
    cgroup = running.cgroup
    if cgroup is None:
        return "", Usage(wall_s=wall_s)
    usage = replace(cgroup.usage(), wall_s=wall_s)
    reason = running.limit_exceeded or cgroup.limit_reached()
    limits, failed = cgroup.limits, running.exit_code != 0
    if not reason and failed and limits.cpu_time_s and (
            usage.cpu_user_s + usage.cpu_system_s >= limits.cpu_time_s or running.exit_code == -signal.SIGXCPU):
        reason = cpu_time_reason(limits.cpu_time_s)
    if not reason and failed and limits.disk_bytes and (
            running.exit_code == -signal.SIGXFSZ or running.slot.used_bytes() >= limits.disk_bytes
            or _slot_full(running.slot.root)):
        reason = disk_reason(limits.disk_bytes)
    cgroup.remove()
    return reason, usage


def _slot_full(root: pathlib.Path) -> bool:
    """Less than a block group left: a write there failed for want of space."""
    stats = os.statvfs(root)
    return stats.f_bavail * stats.f_frsize < SLOT_FULL_BYTES


def _size_of(path: pathlib.Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
