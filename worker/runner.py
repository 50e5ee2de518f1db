"""Running one chunk attempt as a process group, and knowing when it ends.

Rules: the program runs in a session (and so a process group) of its own,
in a working folder of its own, with stdin from /dev/null and stdout/stderr
written straight to files there (no thread per chunk). What is stored of a
log is its first LOG_CAP_BYTES; a program whose log passes LOG_KILL_BYTES is
stopped (worker/attempts.py decides that, and when to signal). Its end is
seen through a pidfd that the worker's loop polls. Signals go to the whole
group. When the program exits, whatever it left running in its group is
killed, so nothing outlives its chunk.
"""
from __future__ import annotations

import errno
import os
import pathlib
import shutil
import signal
import subprocess
from dataclasses import dataclass

from uds.worker.attempts import AttemptKey

# Stored of each log; the rest is dropped with a note.
LOG_CAP_BYTES = 16 * 1024 * 1024
# Conventional exit code when the program could not be executed at all.
EXIT_NOT_EXECUTABLE = 127
# Programs inherit the worker's environment, read once.
_BASE_ENVIRONMENT = dict(os.environ)


@dataclass
class RunningChunk:
    key: AttemptKey
    workdir: pathlib.Path
    output_dir: pathlib.Path
    process: subprocess.Popen | None
    pidfd: int | None
    launch_error: str = ""
    exit_code: int | None = None

    @property
    def stdout_path(self) -> pathlib.Path:
        return self.workdir / "stdout.log"

    @property
    def stderr_path(self) -> pathlib.Path:
        return self.workdir / "stderr.log"

    def signal(self, signum: int) -> None:
        """Signal the whole group, unless the program was already reaped."""
        if self.process is not None and self.exit_code is None:
            _signal_group(self.process.pid, signum)

    def end(self, grace_s: float) -> None:
        """Stop now and wait: SIGTERM, up to grace_s for the program to go, then
        SIGKILL the group and reap. For a worker that is shutting down."""
        if self.process is None or self.exit_code is not None:
            return
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
        self.reap()

    def reap(self) -> int:
        """Collect the exit status once the pidfd is readable; kills stragglers."""
        assert self.process is not None
        self.exit_code = self.process.wait()
        # Anything the program left behind in its group goes with it.
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


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        pass


def start_chunk(key: AttemptKey, program: pathlib.Path, args: list[str] | tuple[str, ...], inputs_dir: str,
                chunk_count: int, workdir: pathlib.Path, worker: str) -> RunningChunk:
    """Start the program; a program that cannot be executed gives a chunk
    that has already ended with EXIT_NOT_EXECUTABLE and the reason on stderr."""
    output_dir = workdir / "out"
    try:
        os.mkdir(workdir)
    except FileExistsError:
        pass
    try:
        os.mkdir(output_dir)
    except FileExistsError:
        pass
    chunk = RunningChunk(key=key, workdir=workdir, output_dir=output_dir, process=None, pidfd=None)
    environment = dict(_BASE_ENVIRONMENT)
    environment.update(UDS_CHUNK=str(key.chunk), UDS_CHUNKS=str(chunk_count), UDS_INPUTS=inputs_dir,
                       UDS_OUTPUT=str(output_dir), UDS_JOB=key.job.hex(), UDS_ATTEMPT=str(key.attempt),
                       **{WORKER_MARK: worker})
    try:
        with open(chunk.stdout_path, "wb") as stdout, open(chunk.stderr_path, "wb") as stderr:
            chunk.process = subprocess.Popen(
                [str(program), *args], cwd=workdir, env=environment, stdin=subprocess.DEVNULL,
                stdout=stdout, stderr=stderr, start_new_session=True, close_fds=True)
    except OSError as fault:
        chunk.launch_error = f"cannot execute the program: {_describe_exec_error(fault, program)}"
        chunk.stderr_path.write_text(chunk.launch_error + "\n")
        chunk.exit_code = EXIT_NOT_EXECUTABLE
        return chunk
    chunk.pidfd = os.pidfd_open(chunk.process.pid)
    return chunk


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


def output_files(output_dir: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    """Regular files the program left under its output folder, by relative path."""
    try:
        if not os.listdir(output_dir):
            return []  # the usual case for small chunks: no walk needed
    except OSError:
        return []
    found = []
    for root, dirs, files in os.walk(output_dir, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = pathlib.Path(root) / name
            if path.is_file() and not path.is_symlink():
                found.append((str(path.relative_to(output_dir)), path))
    return found


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
