"""What the worker's attempts core (worker/attempts.py) takes in and gives
out. Events are what the shell, or a simulation, feeds `Attempts.handle()`;
effects are what it returns, each carried out by the shell. Plain frozen
data: nothing here does anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping, NamedTuple, Union

from uds.wire.enums import ChunkState
from uds.wire.records import ChunkResult
from uds.wire.resources import NO_LIMITS, NO_USAGE, ResourceLimits, Usage

FileRef = tuple[bytes, int]                     # (file id, size in bytes)
# A load balancer, by its place in the cluster file's list: events say which
# one a message came from, and effects which one a message goes to.
Balancer = int


class AttemptKey(NamedTuple):
    job: bytes
    chunk: int
    attempt: int

    @property
    def name(self) -> str:
        """The attempt's folder name, in the mount and under DATA/work."""
        return f"{self.job.hex()}-{self.chunk}-{self.attempt}"


class SignalName(Enum):
    TERM = "SIGTERM"
    KILL = "SIGKILL"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What every attempt of one job shares (the job part of worker_request)."""

    job: bytes
    program: FileRef
    args: tuple[str, ...]
    inputs: Mapping[str, FileRef]
    chunk_count: int
    timeout_s: float
    limits: ResourceLimits = NO_LIMITS  # the job's, the cluster file's [limits] filled in by the masters
    network: bool = False               # whether its chunks may reach the network


@dataclass(frozen=True, slots=True)
class ChunkAssignment:
    chunk: int
    attempt: int
    inputs: Mapping[str, FileRef] = field(default_factory=dict)


# ---- events: what the shell feeds in ---------------------------------------

@dataclass(frozen=True, slots=True)
class Assigned:
    """A worker_request: one job, one or more attempts of its chunks."""

    epoch: int
    job: JobSpec
    chunks: tuple[ChunkAssignment, ...]
    balancer: Balancer = 0


@dataclass(frozen=True, slots=True)
class CancelReceived:
    """chunk_cancel: these (chunk, attempt) pairs of a job, or all when empty."""

    epoch: int
    job: bytes
    attempts: tuple[tuple[int, int], ...] = ()
    balancer: Balancer = 0


@dataclass(frozen=True, slots=True)
class StatusAcknowledged:
    """status_ack: the masters committed a final state of these attempts."""

    epoch: int
    attempts: tuple[AttemptKey, ...]
    balancer: Balancer = 0


@dataclass(frozen=True, slots=True)
class HelloAnswered:
    epoch: int
    balancer: Balancer = 0


@dataclass(frozen=True, slots=True)
class HelloRequired:
    """The balancer answered "hello first": it restarted or forgot us."""

    balancer: Balancer = 0


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class ProgramFetched:
    key: AttemptKey
    program: str                        # where the executable is, for Start


@dataclass(frozen=True, slots=True)
class ProgramUnavailable:
    key: AttemptKey
    reason: str


@dataclass(frozen=True, slots=True)
class Mounted:
    key: AttemptKey
    inputs_dir: str


@dataclass(frozen=True, slots=True)
class MountFailed:
    key: AttemptKey
    reason: str


@dataclass(frozen=True, slots=True)
class ProcessStarted:
    key: AttemptKey


@dataclass(frozen=True, slots=True)
class ProcessExited:
    """The process group is gone: what it left behind, as the shell saw it."""

    key: AttemptKey
    exit_code: int                      # negative: killed by that signal
    launch_error: str = ""              # why it could not be executed at all
    outputs: tuple[str, ...] = ()       # files left under $UDS_OUTPUT
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    bytes_read: int = 0                 # through the mount
    bytes_fetched: int = 0              # of those, fetched from storage
    limit_exceeded: str = ""            # which limit ended it, for people: an application failure
    infrastructure_error: str = ""      # not the program's fault (a corrupt input, say): run it elsewhere
    usage: Usage = NO_USAGE             # cpu, peak memory and wall time, as measured
    outputs_refused: str = ""           # an output that is not a plain file, named: an application failure


@dataclass(frozen=True, slots=True)
class FirstRead:
    """The attempt's program read an input through the mount for the first
    time. A notice, not an answer: sent once per attempt, and only by an
    attempt whose program reads."""

    key: AttemptKey


@dataclass(frozen=True, slots=True)
class LogSize:
    key: AttemptKey
    size_bytes: int                     # the larger of stdout and stderr


@dataclass(frozen=True, slots=True)
class Uploaded:
    key: AttemptKey
    outputs: Mapping[str, FileRef]
    stdout: FileRef | None = None
    stderr: FileRef | None = None


@dataclass(frozen=True, slots=True)
class UploadFailed:
    key: AttemptKey
    reason: str


# Raised inside the core from Tick; never sent by a shell.
@dataclass(frozen=True, slots=True)
class DeadlinePassed:
    key: AttemptKey


@dataclass(frozen=True, slots=True)
class GraceOver:
    key: AttemptKey


Event = Union[Assigned, CancelReceived, StatusAcknowledged, HelloAnswered, HelloRequired, Tick,
              ProgramFetched, ProgramUnavailable, Mounted, MountFailed, ProcessStarted, ProcessExited,
              FirstRead, LogSize, Uploaded, UploadFailed]


# ---- effects: what the shell carries out -------------------------------------

@dataclass(frozen=True, slots=True)
class FetchProgram:
    """Bring the program whole into the cache and make it executable."""

    key: AttemptKey
    program: FileRef


@dataclass(frozen=True, slots=True)
class Mount:
    """Show the attempt's inputs under the mount, pinned in the cache."""

    key: AttemptKey
    inputs: Mapping[str, FileRef]


@dataclass(frozen=True, slots=True)
class Start:
    """Run the program in a process group of its own, in a working folder of its own."""

    key: AttemptKey
    program: str
    args: tuple[str, ...]
    inputs_dir: str
    chunk_count: int
    limits: ResourceLimits = NO_LIMITS
    network: bool = False



@dataclass(frozen=True, slots=True)
class Signal:
    """Signal the attempt's whole process group."""

    key: AttemptKey
    signal: SignalName


@dataclass(frozen=True, slots=True)
class Unmount:
    key: AttemptKey


@dataclass(frozen=True, slots=True)
class Upload:
    """Store these outputs (names under $UDS_OUTPUT) and the non-empty logs,
    then remove the working folder."""

    key: AttemptKey
    outputs: tuple[str, ...]
    stdout: bool
    stderr: bool


@dataclass(frozen=True, slots=True)
class Clean:
    """Remove the attempt's working folder: nothing in it is stored."""

    key: AttemptKey


@dataclass(frozen=True, slots=True)
class Report:
    """Send a worker_status."""

    key: AttemptKey
    state: ChunkState
    epoch: int
    result: ChunkResult
    to: Balancer = 0                    # the balancer followed when it was made


@dataclass(frozen=True, slots=True)
class Resend:
    """Send an unacknowledged final report again."""

    report: Report
    to: Balancer = 0                    # the balancer followed now


@dataclass(frozen=True, slots=True)
class SayHello:
    to: Balancer = 0


@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    """A heartbeat; the cache's changes (or, with full_cache, its whole list)
    are the shell's to add."""

    epoch: int
    free_slots: int
    running: tuple[AttemptKey, ...]
    full_cache: bool
    to: Balancer = 0


Effect = Union[FetchProgram, Mount, Start, Signal, Unmount, Upload, Clean, Report, Resend, SayHello,
               SendHeartbeat]
