"""Running one chunk attempt as a process, and knowing when it ends.

Rules: the program runs in a session of its own, with stdin from /dev/null
and stdout/stderr written straight to files the worker opened (no thread
per chunk). What is stored of a log is its first LOG_CAP_BYTES; a program
whose log passes LOG_KILL_BYTES is stopped (worker/attempts.py decides
that, and when to signal). Its end is seen through a pidfd that the
worker's loop polls. Sandboxed (worker/sandbox.py), the attempt has a
cgroup: SIGTERM goes to its processes that run as the slot's user, and
its end is freeze, kill, wait until empty. Unsandboxed, signals go to the
process group. Either way nothing outlives its chunk.
"""
from __future__ import annotations

import errno
import os
import pathlib
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

from uds.worker.attempts import AttemptKey
from uds.worker.cgroups import AttemptCgroup
from uds.worker.sandbox import Slot

# Stored of each log; the rest is dropped with a note.
LOG_CAP_BYTES = 16 * 1024 * 1024
# Conventional exit code when the program could not be executed at all.
EXIT_NOT_EXECUTABLE = 127
# Programs inherit the worker's environment, read once.
_BASE_ENVIRONMENT = dict(os.environ)


@dataclass
class RunningChunk:
    key: AttemptKey
    workdir: pathlib.Path               # the worker's folder of the attempt: its logs
    output_dir: pathlib.Path
    process: subprocess.Popen | None
    pidfd: int | None
    launch_error: str = ""
    exit_code: int | None = None
    cgroup: AttemptCgroup | None = None
    program_uid: int | None = None      # the slot user the program runs as
    slot: Slot | None = None            # the sandbox slot it holds, if any
    started_at: float = field(default_factory=time.monotonic)
    ended_at: float = 0.0
    limit_exceeded: str = ""            # a limit the worker saw passed while it ran

    @property
    def stdout_path(self) -> pathlib.Path:
        return self.workdir / "stdout.log"

    @property
    def stderr_path(self) -> pathlib.Path:
        return self.workdir / "stderr.log"

    def signal(self, signum: int) -> None:
        """Signal the program's processes, unless it was already reaped."""
        if self.process is None or self.exit_code is not None:
            return
        if self.cgroup is None:
            _signal_group(self.process.pid, signum)
        elif signum == signal.SIGKILL:
            self.cgroup.end()
        else:
            # Not bubblewrap itself: it would take the box down with SIGKILL.
            self.cgroup.signal(signum, uid=self.program_uid)

    def stop(self, reason: str) -> None:
        """A limit was passed: end everything now, and say why once it has exited."""
        if not self.limit_exceeded:
            self.limit_exceeded = reason
        self.signal(signal.SIGKILL)

    def end(self, grace_s: float) -> None:
        """Stop now and wait: SIGTERM, up to grace_s for the program to go, then
        SIGKILL everything and reap. For a worker that is shutting down."""
        if self.process is None or self.exit_code is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
        self.reap()

    def reap(self) -> int:
        """Collect the exit status once the pidfd is readable; ends everything
        the program left running before anything it wrote is looked at."""
        assert self.process is not None
        self.exit_code = self.process.wait()
        self.ended_at = time.monotonic()
        if self.cgroup is not None:
            if not self.cgroup.end():
                raise StuckAttemptError(f"{self.key.name}: processes left in its cgroup would not die")
            if 128 < self.exit_code <= 128 + 64:
                # bubblewrap reports a program killed by signal N as 128 + N.
                self.exit_code = 128 - self.exit_code
        else:
            _signal_group(self.process.pid, signal.SIGKILL)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        for path in (self.stdout_path, self.stderr_path):
            cap_log(path)
        return self.exit_code

    def log_bytes(self) -> int:
        try:
            return max(self.stdout_path.stat().st_size, self.stderr_path.stat().st_size)
        except OSError:
            return 0


class StuckAttemptError(Exception):
    """An attempt's cgroup did not empty: something in it cannot be killed."""


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        pass


def chunk_environment(key: AttemptKey, chunk_count: int, inputs_dir: str, output_dir: str,
                      worker: str) -> dict[str, str]:
    environment = dict(_BASE_ENVIRONMENT)
    environment.update(UDS_CHUNK=str(key.chunk), UDS_CHUNKS=str(chunk_count), UDS_INPUTS=inputs_dir,
                       UDS_OUTPUT=output_dir, UDS_JOB=key.job.hex(), UDS_ATTEMPT=str(key.attempt),
                       **{WORKER_MARK: worker})
    return environment


def start_chunk(key: AttemptKey, program: pathlib.Path, args: list[str] | tuple[str, ...], inputs_dir: str,
                chunk_count: int, workdir: pathlib.Path, worker: str) -> RunningChunk:
    """Start the program with no sandbox (--unsafe-no-sandbox): in the
    worker's own namespaces, as the worker's user, in workdir."""
    output_dir = workdir / "out"
    _make_folder(workdir)
    _make_folder(output_dir)
    chunk = RunningChunk(key=key, workdir=workdir, output_dir=output_dir, process=None, pidfd=None)
    environment = chunk_environment(key, chunk_count, inputs_dir, str(output_dir), worker)
    return launch(chunk, program, [str(program), *args], workdir, environment)


def launch(chunk: RunningChunk, program: pathlib.Path, command: list[str], cwd: pathlib.Path,
           environment: dict[str, str]) -> RunningChunk:
    """Run `command` with the logs as stdout and stderr; a program that cannot
    be executed gives a chunk that has already ended with EXIT_NOT_EXECUTABLE
    and the reason on stderr."""
    _make_folder(chunk.workdir)
    reason = not_executable(program)
    try:
        with open(chunk.stdout_path, "wb") as stdout, open(chunk.stderr_path, "wb") as stderr:
            if reason is None:
                chunk.process = subprocess.Popen(
                    command, cwd=cwd, env=environment, stdin=subprocess.DEVNULL,
                    stdout=stdout, stderr=stderr, start_new_session=True, close_fds=True)
    except OSError as fault:
        reason = _describe_exec_error(fault, program)
    if reason is not None:
        chunk.launch_error = f"cannot execute the program: {reason}"
        chunk.stderr_path.write_text(chunk.launch_error + "\n")
        chunk.exit_code = EXIT_NOT_EXECUTABLE
        chunk.ended_at = time.monotonic()
        return chunk
    chunk.pidfd = os.pidfd_open(chunk.process.pid)
    return chunk


def not_executable(program: pathlib.Path) -> str | None:
    """Why the program could not be executed, found before starting it (in a
    box, the failed exec would be the box's and read as an exit code)."""
    try:
        with open(program, "rb") as file:
            head = file.read(256)
    except OSError as fault:
        return fault.strerror or str(fault)
    if not os.access(program, os.X_OK):
        return "it is not executable"
    if head.startswith(b"\x7fELF"):
        return None
    if head.startswith(b"#!"):
        interpreter = _shebang(program)
        if not interpreter:
            return "its #! line names no interpreter"
        if not os.access(interpreter, os.X_OK):
            return f"its interpreter {interpreter!r} does not exist"
        return None
    return "it is neither a binary for this machine nor a script with a #! line"


def _make_folder(path: pathlib.Path) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


def cap_log(path: pathlib.Path) -> None:
    """Keep the first LOG_CAP_BYTES of a finished program's log, noting the rest."""
    try:
        size = path.stat().st_size
    except OSError:
        return
    if size > LOG_CAP_BYTES:
        os.truncate(path, LOG_CAP_BYTES)
        with open(path, "ab") as log:
            log.write(f"\n[uds: {size - LOG_CAP_BYTES} more bytes dropped]\n".encode())


def _describe_exec_error(fault: OSError, program: pathlib.Path) -> str:
    if fault.errno == errno.ENOENT and program.exists():
        interpreter = _shebang(program)
        if interpreter:
            return f"its interpreter {interpreter!r} does not exist"
    if fault.errno == errno.ENOEXEC:
        return "it is neither a binary for this machine nor a script with a #! line"
    return f"{fault.strerror or fault}"


def _shebang(program: pathlib.Path) -> str:
    try:
        with open(program, "rb") as file:
            first = file.readline(256)
    except OSError:
        return ""
    if first.startswith(b"#!"):
        parts = first[2:].strip().split()
        return parts[0].decode(errors="replace") if parts else ""
    return ""


def remove_workdir(workdir: pathlib.Path) -> None:
    """Remove an attempt's working folder. It usually holds only the two logs
    and an empty output folder: four system calls instead of a tree walk."""
    try:
        for name in ("stdout.log", "stderr.log"):
            try:
                os.unlink(workdir / name)
            except FileNotFoundError:
                pass
        os.rmdir(workdir / "out")
        os.rmdir(workdir)
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)


# -- processes left by a worker that died ------------------------------------

WORKER_MARK = "UDS_WORKER"


def kill_leftovers(worker: str) -> int:
    """SIGKILL every process that carries this worker's mark (UDS_WORKER=<its
    node id> in its environment): what an earlier run of the worker that died
    left running. A process whose number was reused carries no such mark.
    Returns how many were killed."""
    mark = f"{WORKER_MARK}={worker}".encode()
    killed = 0
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            os.kill(int(entry.name), signal.SIGKILL)
            killed += 1
        except (OSError, ProcessLookupError):
            continue
    return killed
