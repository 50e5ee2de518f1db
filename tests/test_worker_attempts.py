"""The worker's attempts core: exact effects and phases for small scenarios,
errors for events a phase does not allow, and a hypothesis state machine of
a shell that answers the core's requests in any order."""
from __future__ import annotations

import ast
import pathlib

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from uds.wire import FINAL_CHUNK_STATES, ChunkState
from uds.wire.resources import Usage
from uds.worker import attempts
from uds.worker.attempts import (
    EPOCH, HELLO_RETRY_S, KILL_GRACE_S, RESEND_STATUS_S, STARTED_DELAY_S,
    TRANSITIONS, Assigned, AttemptKey, Attempts, CancelReceived, ChunkAssignment, ChunkResult, Clean,
    DeadlinePassed, FetchProgram, FirstRead, GraceOver, HelloAnswered, HelloRequired, InvalidTransition, JobSpec, LogSize,
    Mount, Mounted, MountFailed, Phase, ProcessExited, ProcessStarted, ProgramFetched, ProgramUnavailable,
    Report, Resend, SayHello, SendHeartbeat, Signal, SignalName, Start, StatusAcknowledged, Tick,
    UnknownEventError, Unmount, Upload, Uploaded, UploadFailed,
)
from uds.worker.exit_reports import LOG_KILL_BYTES, MAX_OUTPUT_FILES

JOB, JOB_B = b"J" * 16, b"K" * 16
PROGRAM = (b"p" * 16, 1_000)
SHARED = {"shared": (b"s" * 16, 10)}
OWN = {"own": (b"o" * 16, 20)}
HEARTBEAT_S = 10.0


def spec(job: bytes = JOB, timeout_s: float = 60.0) -> JobSpec:
    return JobSpec(job, PROGRAM, ("--x",), SHARED, 8, timeout_s)


def key(chunk: int, attempt: int = 1, job: bytes = JOB) -> AttemptKey:
    return AttemptKey(job, chunk, attempt)


def assigned(*pairs: tuple[int, int], job: bytes = JOB, timeout_s: float = 60.0) -> Assigned:
    return Assigned(EPOCH, spec(job, timeout_s), tuple(ChunkAssignment(c, a, OWN) for c, a in pairs))


def registered(slots: int = 2) -> Attempts:
    core = Attempts(slots, HEARTBEAT_S)
    assert core.handle(Tick(), 0.0) == [SayHello()]
    assert core.handle(HelloAnswered(EPOCH), 0.0) == [SendHeartbeat(EPOCH, slots, (), True)]
    return core


def running(core: Attempts, chunk: int, now: float, timeout_s: float = 60.0) -> AttemptKey:
    """Assign one attempt and answer every request until it runs."""
    k = key(chunk)
    core.handle(assigned((chunk, 1), timeout_s=timeout_s), now)
    core.handle(ProgramFetched(k, "/programs/p"), now)
    core.handle(Mounted(k, f"/mnt/{k.name}"), now)
    assert core.handle(ProcessStarted(k), now) == []
    assert core.phase(k) is Phase.RUNNING
    return k


def final(k: AttemptKey, state: ChunkState, **result) -> Report:
    return Report(k, state, EPOCH, ChunkResult(**result))


# ---- the path of one attempt ------------------------------------------------

def test_an_assignment_is_fetched_mounted_and_started():
    core = registered()
    k = key(0)
    assert core.handle(assigned((0, 1)), 1.0) == [FetchProgram(k, PROGRAM)]
    assert core.phase(k) is Phase.FETCHING
    assert core.handle(ProgramFetched(k, "/programs/p"), 1.0) == [Mount(k, {**SHARED, **OWN})]
    assert core.phase(k) is Phase.MOUNTING
    assert core.handle(Mounted(k, "/mnt/x"), 1.0) == [Start(k, "/programs/p", ("--x",), "/mnt/x", 8)]
    assert core.phase(k) is Phase.STARTING
    assert core.handle(ProcessStarted(k), 1.0) == []
    assert core.phase(k) is Phase.RUNNING
    assert core.free_slots() == 1
    assert core.counters == {"attempts_accepted": 1, "attempts_started": 1}


def test_a_short_chunk_is_reported_once_final_without_an_upload():
    core = registered()
    k = running(core, 0, now=1.0)
    effects = core.handle(ProcessExited(k, 0, bytes_read=100, bytes_fetched=30), 1.02)
    assert effects == [final(k, ChunkState.SUCCEEDED, exit_code=0, elapsed_s=pytest.approx(0.02),
                             bytes_from_cache=70, bytes_from_storage=30), Unmount(k), Clean(k)]
    assert core.phase(k) is Phase.REPORTED
    assert core.free_slots() == 2
    assert core.handle(Tick(), 1.03) == []      # no STARTED for a chunk that ended within the delay


def test_a_chunk_still_running_after_the_delay_is_reported_started():
    core = registered()
    k = running(core, 0, now=1.0)
    assert core.handle(Tick(), 1.0 + STARTED_DELAY_S / 2) == []
    assert core.handle(Tick(), 1.0 + STARTED_DELAY_S) == [Report(k, ChunkState.STARTED, EPOCH, ChunkResult())]
    assert core.handle(Tick(), 1.0 + 2 * STARTED_DELAY_S) == []


def test_outputs_and_logs_are_uploaded_before_the_final_report():
    core = registered()
    k = running(core, 0, now=1.0)
    effects = core.handle(ProcessExited(k, 3, outputs=("a", "b/c"), stderr_bytes=5), 2.0)
    assert effects == [Unmount(k), Upload(k, ("a", "b/c"), False, True)]
    assert core.phase(k) is Phase.UPLOADING
    assert core.free_slots() == 1                # the slot is held until the report
    outputs = {"a": (b"a" * 16, 1), "b/c": (b"c" * 16, 2)}
    assert core.handle(Uploaded(k, outputs, None, (b"e" * 16, 5)), 2.5) == [
        final(k, ChunkState.FAILED, exit_code=3, error="exit code 3", elapsed_s=1.0, outputs=outputs,
              stderr=(b"e" * 16, 5), output_bytes=8)]
    assert core.counters["attempts_failed"] == 1


def test_an_attempt_reports_what_it_used():
    core = registered()
    k = running(core, 0, now=1.0)
    usage = Usage(cpu_user_s=0.75, cpu_system_s=0.25, peak_memory_bytes=64 << 20, wall_s=9.0)
    core.handle(ProcessExited(k, 0, outputs=("a",), stdout_bytes=3, bytes_read=100, bytes_fetched=40,
                              usage=usage), 2.0)
    [report] = core.handle(Uploaded(k, {"a": (b"a" * 16, 1000)}, (b"o" * 16, 3)), 2.5)
    assert report.result.usage == Usage(cpu_user_s=0.75, cpu_system_s=0.25, peak_memory_bytes=64 << 20,
                                        bytes_from_cache=60, bytes_from_storage=40, output_bytes=1003,
                                        wall_s=1.0)


WALL_CLOCK = 1_764_500_000.0


def timed(slots: int = 2) -> Attempts:
    """A registered core that knows the wall clock: unix seconds at its zero."""
    core = Attempts(slots, HEARTBEAT_S, wall_clock_offset_s=WALL_CLOCK)
    core.handle(Tick(), 0.0)
    core.handle(HelloAnswered(EPOCH), 0.0)
    return core


def test_a_final_report_carries_the_attempts_timeline_in_unix_seconds():
    core = timed()
    k = key(0)
    core.handle(assigned((0, 1)), 1.0)
    core.handle(ProgramFetched(k, "/programs/p"), 1.5)
    core.handle(Mounted(k, "/mnt/x"), 2.0)
    core.handle(ProcessStarted(k), 2.25)
    core.handle(ProcessExited(k, 0, stdout_bytes=3), 4.0)
    [report] = core.handle(Uploaded(k, {}, (b"o" * 16, 3), None), 4.5)
    assert (report.result.assigned_at, report.result.started_at, report.result.ended_at) == (
        WALL_CLOCK + 1.0, WALL_CLOCK + 2.25, WALL_CLOCK + 4.0)
    assert report.result.elapsed_s == 1.75


def test_the_timeline_has_the_first_read_and_the_upload_in_their_order():
    core = timed()
    k = key(0)
    core.handle(assigned((0, 1)), 1.0)
    core.handle(ProgramFetched(k, "/programs/p"), 1.5)
    core.handle(Mounted(k, "/mnt/x"), 2.0)
    assert core.handle(FirstRead(k), 2.1) == []         # before it runs: not the running program's
    core.handle(ProcessStarted(k), 2.25)
    assert core.handle(FirstRead(k), 2.5) == []
    assert core.handle(FirstRead(k), 3.0) == []         # only the first counts
    core.handle(ProcessExited(k, 0, outputs=("a",)), 4.0)
    assert core.handle(FirstRead(k), 4.2) == []         # a straggler after the end is not
    [report] = core.handle(Uploaded(k, {"a": (b"a" * 16, 1)}), 4.5)
    result = report.result
    timeline = (result.assigned_at, result.started_at, result.first_read_at, result.ended_at, result.uploaded_at)
    assert timeline == tuple(WALL_CLOCK + at for at in (1.0, 2.25, 2.5, 4.0, 4.5))
    assert list(timeline) == sorted(timeline)
    assert core.handle(FirstRead(k), 5.0) == []         # reported: nothing changes
    assert core.unacknowledged()[k].result.first_read_at == WALL_CLOCK + 2.5
    core.handle(StatusAcknowledged(EPOCH, (k,)), 6.0)
    assert core.handle(FirstRead(k), 6.5) == []         # forgotten: ignored, never an error


def test_a_program_that_reads_no_input_and_stores_nothing_has_neither_step():
    core = timed()
    k = key(0)
    core.handle(assigned((0, 1)), 1.0)
    core.handle(ProgramFetched(k, "/programs/p"), 1.0)
    core.handle(Mounted(k, "/mnt/x"), 1.0)
    core.handle(ProcessStarted(k), 1.5)
    [report, *_] = core.handle(ProcessExited(k, 0), 2.0)
    assert (report.result.first_read_at, report.result.uploaded_at) == (0.0, 0.0)
    assert report.result.ended_at == WALL_CLOCK + 2.0


def test_a_failed_upload_stored_nothing_so_it_has_no_upload_time():
    core = timed()
    k = running(core, 0, now=1.0)
    core.handle(FirstRead(k), 1.25)
    core.handle(ProcessExited(k, 0, stdout_bytes=3), 2.0)
    [report] = core.handle(UploadFailed(k, "no storage node"), 2.5)
    assert (report.result.first_read_at, report.result.uploaded_at) == (WALL_CLOCK + 1.25, 0.0)


def test_a_stopped_program_keeps_its_first_read():
    core = timed()
    k = running(core, 0, now=1.0)
    core.handle(CancelReceived(EPOCH, JOB), 1.5)
    assert core.phase(k) is Phase.STOPPING
    core.handle(FirstRead(k), 1.75)                     # it still runs until it exits
    [report, *_] = core.handle(ProcessExited(k, -15), 2.0)
    assert report.result.first_read_at == WALL_CLOCK + 1.75


def test_an_attempt_that_never_ran_its_program_ends_when_it_is_reported():
    core = timed()
    k = key(0)
    core.handle(assigned((0, 1)), 1.0)
    [report] = core.handle(ProgramUnavailable(k, "gone"), 3.0)
    assert (report.result.assigned_at, report.result.started_at, report.result.ended_at) == (
        WALL_CLOCK + 1.0, 0.0, WALL_CLOCK + 3.0)


def test_without_a_wall_clock_the_timeline_is_not_known():
    core = registered()
    k = running(core, 0, now=1.0)
    core.handle(FirstRead(k), 1.5)
    [report, *_] = core.handle(ProcessExited(k, 0), 2.0)
    assert (report.result.assigned_at, report.result.started_at, report.result.ended_at) == (0.0, 0.0, 0.0)
    assert (report.result.first_read_at, report.result.uploaded_at) == (0.0, 0.0)


def test_a_limit_exceeded_fails_with_its_reason_and_keeps_the_peak():
    core = registered()
    k = running(core, 0, now=1.0)
    [report, *_] = core.handle(ProcessExited(k, -9, limit_exceeded="memory limit 512 MiB exceeded (peak 512 MiB)",
                                             usage=Usage(peak_memory_bytes=512 << 20)), 2.0)
    assert report.state is ChunkState.FAILED
    assert report.result.error == "memory limit 512 MiB exceeded (peak 512 MiB)"
    assert report.result.peak_memory_bytes == 512 << 20


def test_a_failed_upload_is_rejected_not_the_programs_fault():
    core = registered()
    k = running(core, 0, now=1.0)
    core.handle(ProcessExited(k, 0, outputs=("a",)), 2.0)
    assert core.handle(UploadFailed(k, "storage down"), 2.5) == [
        final(k, ChunkState.REJECTED, error="could not store results: storage down", elapsed_s=1.0)]


def test_a_failed_upload_keeps_what_the_attempt_used():
    core = registered()
    k = running(core, 0, now=1.0)
    core.handle(ProcessExited(k, 0, outputs=("a",), usage=Usage(cpu_user_s=2.0)), 2.0)
    [report] = core.handle(UploadFailed(k, "storage down"), 2.5)
    assert report.result.exit_code is None and report.result.cpu_user_s == 2.0


def test_a_program_that_cannot_be_fetched_is_rejected():
    core = registered()
    core.handle(assigned((0, 1)), 1.0)
    assert core.handle(ProgramUnavailable(key(0), "cannot fetch the program: gone"), 1.5) == [
        final(key(0), ChunkState.REJECTED, error="cannot fetch the program: gone")]
    assert core.counters["attempts_rejected"] == 1


def test_a_chunk_whose_inputs_cannot_be_mounted_is_rejected():
    core = registered()
    core.handle(assigned((0, 1)), 1.0)
    core.handle(ProgramFetched(key(0), "/p"), 1.0)
    assert core.handle(MountFailed(key(0), "bad name"), 1.0) == [
        final(key(0), ChunkState.REJECTED, error="worker could not prepare the chunk: bad name")]


def test_a_program_that_cannot_be_executed_fails_with_the_reason():
    core = registered()
    core.handle(assigned((0, 1)), 1.0)
    core.handle(ProgramFetched(key(0), "/p"), 1.0)
    core.handle(Mounted(key(0), "/mnt/x"), 1.0)
    effects = core.handle(ProcessExited(key(0), 127, launch_error="cannot execute the program: no",
                                        stderr_bytes=30), 1.0)
    assert effects == [Unmount(key(0)), Upload(key(0), (), False, True)]
    assert core.counters.get("attempts_started") is None


@pytest.mark.parametrize("exit_code, error", [(-9, "killed by signal 9"), (2, "exit code 2")])
def test_a_failure_says_how_the_program_ended(exit_code, error):
    core = registered()
    k = running(core, 0, now=1.0)
    assert core.handle(ProcessExited(k, exit_code), 1.0)[0] == final(k, ChunkState.FAILED, exit_code=exit_code,
                                                                     error=error)


def test_outputs_that_cannot_be_reported_fail_the_chunk_but_keep_the_logs():
    core = registered()
    k = running(core, 0, now=1.0)
    names = tuple(str(index) for index in range(MAX_OUTPUT_FILES + 1))
    assert core.handle(ProcessExited(k, 0, outputs=names, stdout_bytes=1), 1.0) == [
        Unmount(k), Upload(k, (), True, False)]
    report = core.handle(Uploaded(k, {}, (b"o" * 16, 1)), 1.0)[0]
    assert report.state == ChunkState.FAILED and "at most 10000 are allowed" in report.result.error


# ---- stopping -----------------------------------------------------------------

def test_cancel_terminates_the_group_then_kills_it_after_the_grace():
    core = registered()
    k = running(core, 0, now=1.0)
    assert core.handle(CancelReceived(EPOCH, JOB, ((0, 1),)), 2.0) == [Signal(k, SignalName.TERM)]
    assert core.phase(k) is Phase.STOPPING
    assert core.handle(CancelReceived(EPOCH, JOB), 2.5) == []          # once is enough
    assert Signal(k, SignalName.KILL) not in core.handle(Tick(), 2.0 + KILL_GRACE_S / 2)
    assert Signal(k, SignalName.KILL) in core.handle(Tick(), 2.0 + KILL_GRACE_S)
    assert Signal(k, SignalName.KILL) not in core.handle(Tick(), 3.0 + KILL_GRACE_S)
    assert core.handle(ProcessExited(k, -9), 5.0)[0] == final(k, ChunkState.CANCELLED, exit_code=-9,
                                                               error="cancelled", elapsed_s=4.0)
    assert core.counters["attempts_cancelled"] == 1      # counted once, by its report


def test_a_cancel_of_another_job_or_attempt_changes_nothing():
    core = registered()
    k = running(core, 0, now=1.0)
    assert core.handle(CancelReceived(EPOCH, JOB_B), 2.0) == []
    assert core.handle(CancelReceived(EPOCH, JOB, ((0, 2),)), 2.0) == []
    assert core.phase(k) is Phase.RUNNING


def test_a_cancel_before_the_start_is_reported_when_the_pending_step_answers():
    core = registered()
    core.handle(assigned((0, 1), (1, 1)), 1.0)
    assert core.handle(CancelReceived(EPOCH, JOB), 1.0) == []
    assert core.handle(ProgramFetched(key(0), "/p"), 1.0) == [final(key(0), ChunkState.CANCELLED, error="cancelled")]
    # Cancelled while mounting: the mount is released.
    core2 = registered()
    core2.handle(assigned((0, 1)), 1.0)
    core2.handle(ProgramFetched(key(0), "/p"), 1.0)
    core2.handle(CancelReceived(EPOCH, JOB), 1.0)
    assert core2.handle(Mounted(key(0), "/mnt/x"), 1.0) == [Unmount(key(0)),
                                                           final(key(0), ChunkState.CANCELLED, error="cancelled")]


def test_a_cancel_while_starting_stops_the_process_as_soon_as_it_runs():
    core = registered()
    core.handle(assigned((0, 1)), 1.0)
    core.handle(ProgramFetched(key(0), "/p"), 1.0)
    core.handle(Mounted(key(0), "/mnt/x"), 1.0)
    core.handle(CancelReceived(EPOCH, JOB), 1.0)
    assert core.handle(ProcessStarted(key(0)), 1.0) == [Signal(key(0), SignalName.TERM)]
    assert core.phase(key(0)) is Phase.STOPPING


def test_a_chunk_past_its_timeout_is_stopped_and_timed_out():
    core = registered()
    k = running(core, 0, now=1.0, timeout_s=5.0)
    assert Signal(k, SignalName.TERM) not in core.handle(Tick(), 5.9)
    assert core.next_wakeup() <= 6.0
    assert Signal(k, SignalName.TERM) in core.handle(Tick(), 6.0)
    assert core.handle(ProcessExited(k, -15), 6.5)[0] == final(
        k, ChunkState.TIMED_OUT, exit_code=-15, error="timed out after 5s", elapsed_s=5.5)
    assert core.counters["attempts_timed_out"] == 1


def test_a_program_whose_log_is_too_large_is_stopped_and_fails():
    core = registered()
    k = running(core, 0, now=1.0)
    assert core.handle(LogSize(k, LOG_KILL_BYTES), 2.0) == []
    assert core.handle(LogSize(k, LOG_KILL_BYTES + 1), 2.0) == [Signal(k, SignalName.TERM)]
    assert core.handle(LogSize(k, LOG_KILL_BYTES + 2), 2.1) == []
    report = core.handle(ProcessExited(k, -15), 3.0)[0]
    assert (report.state, report.result.error) == (ChunkState.FAILED,
                                                   f"stopped: stdout or stderr passed {LOG_KILL_BYTES} bytes")


# ---- reports until acknowledged ------------------------------------------------

def test_a_final_report_is_resent_until_acknowledged_and_never_after():
    core = registered()
    k = running(core, 0, now=0.0)
    report = core.handle(ProcessExited(k, 0), 0.0)[0]
    core.handle(Tick(), 0.5)
    assert Resend(report) not in core.handle(Tick(), RESEND_STATUS_S - 0.1)
    assert Resend(report) in core.handle(Tick(), RESEND_STATUS_S)
    assert Resend(report) not in core.handle(Tick(), RESEND_STATUS_S + 1)
    assert Resend(report) in core.handle(Tick(), 2 * RESEND_STATUS_S)
    assert core.counters["statuses_resent"] == 2
    assert core.handle(StatusAcknowledged(EPOCH, (k,)), 5.0) == []
    assert core.phase(k) is None
    assert all(not isinstance(e, Resend) for t in range(6, 20) for e in core.handle(Tick(), float(t)))
    assert core.handle(StatusAcknowledged(EPOCH, (k,)), 30.0) == []      # a repeated ack


def test_reports_are_resent_at_once_to_a_balancer_that_answers_hello_again():
    core = registered()
    k = running(core, 0, now=0.0)
    report = core.handle(ProcessExited(k, 0), 0.0)[0]
    assert core.handle(HelloRequired(), 0.5) == []
    assert core.handle(Tick(), 1.0) == [SayHello()]          # a second since the first hello
    assert core.handle(Tick(), 5.0) == [SayHello()]          # not registered: no resend, hello again
    assert core.handle(Tick(), 5.5) == []
    assert core.handle(HelloAnswered(EPOCH), 5.6) == [SendHeartbeat(EPOCH, 2, (), True), Resend(report)]


def test_a_repeated_assignment_is_ignored_even_after_it_finished():
    core = registered()
    k = running(core, 0, now=0.0)
    assert core.handle(assigned((0, 1)), 0.1) == []
    core.handle(ProcessExited(k, 0), 0.2)
    assert core.handle(assigned((0, 1)), 0.3) == []
    core.handle(StatusAcknowledged(EPOCH, (k,)), 0.4)
    assert core.handle(assigned((0, 1)), 0.5) == []
    assert core.handle(assigned((0, 2)), 0.5) == [FetchProgram(key(0, 2), PROGRAM)]
    assert core.counters["attempts_accepted"] == 2


def test_heartbeats_list_what_runs_and_the_free_slots():
    core = registered(slots=2)
    running(core, 0, now=0.1)
    core.handle(assigned((1, 1)), 0.1)
    assert core.handle(Tick(), 9.9) == [Report(key(0), ChunkState.STARTED, EPOCH, ChunkResult())]
    assert core.handle(Tick(), 10.0) == [SendHeartbeat(EPOCH, 0, (key(0), key(1)), False)]
    core.handle(ProcessExited(key(0), 0), 10.5)
    assert SendHeartbeat(EPOCH, 1, (key(1),), False) in core.handle(Tick(), 20.0)


def test_more_assignments_than_slots_are_run_with_no_free_slot_reported():
    core = registered(slots=1)
    core.handle(assigned((0, 1), (1, 1)), 0.0)
    assert core.free_slots() == 0
    assert core.handle(Tick(), 10.0)[-1] == SendHeartbeat(EPOCH, 0, (key(0), key(1)), False)


# ---- what the core refuses ----------------------------------------------------------

def test_an_event_a_phase_does_not_allow_names_event_phase_and_attempt():
    core = registered()
    core.handle(assigned((0, 1)), 0.0)
    with pytest.raises(InvalidTransition, match=rf"ProcessStarted in phase FETCHING for attempt {JOB.hex()}/0/1"):
        core.handle(ProcessStarted(key(0)), 0.0)
    with pytest.raises(InvalidTransition, match="Uploaded in phase FETCHING"):
        core.handle(Uploaded(key(0), {}), 0.0)
    assert core.phase(key(0)) is Phase.FETCHING     # unchanged


def test_an_answer_for_an_attempt_not_held_is_refused():
    core = registered()
    with pytest.raises(InvalidTransition, match="not held"):
        core.handle(ProcessExited(key(3), 0), 0.0)


def test_an_event_of_another_kind_is_refused():
    with pytest.raises(UnknownEventError):
        registered().handle(object(), 0.0)


def test_every_transition_leads_to_a_phase():
    for (phase, event_type), targets in TRANSITIONS.items():
        assert isinstance(phase, Phase) and targets and all(isinstance(target, Phase) for target in targets)
        assert Phase.DONE not in targets or (phase, event_type) == (Phase.REPORTED, StatusAcknowledged)


def test_the_core_imports_no_io():
    forbidden = {"zmq", "threading", "socket", "time", "os", "llfuse", "subprocess", "signal"}
    core = pathlib.Path(attempts.__file__)
    for path in (core, core.with_name("attempt_events.py"), core.with_name("exit_reports.py")):
        tree = ast.parse(path.read_text())
        names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        names |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module}
        assert not names & forbidden, f"{path.name} imports {names & forbidden}"


# ---- a shell that answers in any order --------------------------------------------

SLOTS = 2
ANSWERS = {"fetch": (ProgramFetched, ProgramUnavailable), "mount": (Mounted, MountFailed),
           "upload": (Uploaded, UploadFailed)}


class AttemptsMachine(RuleBasedStateMachine):
    """Drives the core as a shell that performs effects late and sometimes
    fails them, with a balancer that cancels, acknowledges and forgets."""

    def __init__(self) -> None:
        super().__init__()
        self.core = Attempts(SLOTS, heartbeat_interval_s=1.0)
        self.now = 0.0
        self.pending: dict[AttemptKey, str] = {}        # the request awaiting an answer
        self.processes: set[AttemptKey] = set()         # started, not yet exited
        self.assigned: set[AttemptKey] = set()
        self.finals: dict[AttemptKey, list[Report]] = {}
        self.acknowledged: set[AttemptKey] = set()
        self.last_sent: dict[AttemptKey, float] = {}
        self.registered = False

    def _feed(self, event) -> list:
        effects = self.core.handle(event, self.now)
        for effect in effects:
            self._observe(effect)
        return effects

    def _observe(self, effect) -> None:
        if isinstance(effect, FetchProgram):
            self.pending[effect.key] = "fetch"
        elif isinstance(effect, Mount):
            self.pending[effect.key] = "mount"
        elif isinstance(effect, Start):
            self.pending[effect.key] = "start"
        elif isinstance(effect, Upload):
            self.pending[effect.key] = "upload"
        elif isinstance(effect, Signal):
            assert effect.key in self.processes or self.pending.get(effect.key) == "start"
        elif isinstance(effect, Report) and effect.state in FINAL_CHUNK_STATES:
            assert effect.key not in self.pending and effect.key not in self.processes
            assert effect.key not in self.acknowledged
            self.finals.setdefault(effect.key, []).append(effect)
            self.last_sent[effect.key] = self.now
        elif isinstance(effect, Resend):
            report = effect.report
            assert report.key not in self.acknowledged, "resent after its acknowledgement"
            assert self.finals[report.key] == [report]
            self.last_sent[report.key] = self.now
        elif isinstance(effect, SendHeartbeat):
            assert 0 <= effect.free_slots <= SLOTS
            assert set(effect.running) == {k for k in self.assigned
                                           if k not in self.finals} & set(self.core.phases())

    @rule(chunk=st.integers(0, 3), attempt=st.integers(1, 2), job=st.sampled_from([JOB, JOB_B]))
    def assign(self, chunk, attempt, job):
        k = key(chunk, attempt, job)
        effects = self._feed(assigned((chunk, attempt), job=job, timeout_s=5.0))
        if k in self.assigned:
            assert effects == []
        else:
            assert effects == [FetchProgram(k, PROGRAM)]
        self.assigned.add(k)

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), succeed=st.booleans())
    def answer(self, data, succeed):
        k = data.draw(st.sampled_from(sorted(self.pending)))
        kind = self.pending.pop(k)
        if kind == "start":
            if succeed:
                self.processes.add(k)
                self._feed(ProcessStarted(k))
            else:
                self._feed(ProcessExited(k, 127, launch_error="no"))
            return
        success, failure = ANSWERS[kind]
        if not succeed:
            self._feed(failure(k, "broken"))
        elif kind == "fetch":
            self._feed(success(k, "/p"))
        elif kind == "mount":
            self._feed(success(k, "/mnt/x"))
        else:
            self._feed(success(k, {}))

    @precondition(lambda self: self.processes)
    @rule(data=st.data(), exit_code=st.sampled_from([0, 1, -9]), outputs=st.booleans())
    def exit(self, data, exit_code, outputs):
        k = data.draw(st.sampled_from(sorted(self.processes)))
        self.processes.discard(k)
        self._feed(ProcessExited(k, exit_code, outputs=("out",) if outputs else ()))

    @precondition(lambda self: self.assigned)
    @rule(data=st.data())
    def first_read(self, data):
        # A notice in any phase, of an attempt held or forgotten: never an effect, never an error.
        assert self._feed(FirstRead(data.draw(st.sampled_from(sorted(self.assigned))))) == []

    @precondition(lambda self: self.processes)
    @rule(data=st.data())
    def log_grows(self, data):
        self._feed(LogSize(data.draw(st.sampled_from(sorted(self.processes))), LOG_KILL_BYTES + 1))

    @rule(job=st.sampled_from([JOB, JOB_B]), chunk=st.none() | st.integers(0, 3))
    def cancel(self, job, chunk):
        self._feed(CancelReceived(EPOCH, job, () if chunk is None else ((chunk, 1),)))

    @precondition(lambda self: self.finals)
    @rule(data=st.data())
    def acknowledge(self, data):
        k = data.draw(st.sampled_from(sorted(self.finals)))
        self._feed(StatusAcknowledged(EPOCH, (k,)))
        self.acknowledged.add(k)
        assert self.core.phase(k) is None

    @rule(seconds=st.sampled_from([0.01, 0.3, 1.0, 2.5]))
    def tick(self, seconds):
        self.now += seconds
        self._feed(Tick())
        self._check_resends()

    @rule()
    def hello_answered(self):
        self._feed(HelloAnswered(EPOCH))
        self.registered = True
        # The balancer may be new: every unconfirmed result goes to it at once.
        assert all(self.last_sent[k] == self.now for k in self.finals if k not in self.acknowledged)

    @rule()
    def hello_required(self):
        self._feed(HelloRequired())
        self.registered = False

    @rule(data=st.data(), event_type=st.sampled_from([ProgramFetched, Mounted, ProcessStarted, Uploaded,
                                                      DeadlinePassed, GraceOver]))
    def illegal(self, data, event_type):
        """An answer nobody asked for is refused and changes nothing."""
        if not self.assigned:
            return
        k = data.draw(st.sampled_from(sorted(self.assigned)))
        phase = self.core.phase(k)
        if (phase, event_type) in TRANSITIONS and self.pending.get(k) is not None:
            return                                      # that would be a real answer
        if event_type in (DeadlinePassed, GraceOver):
            return                                      # internal: never fed by a shell
        event = {ProgramFetched: lambda: ProgramFetched(k, "/p"), Mounted: lambda: Mounted(k, "/m"),
                 ProcessStarted: lambda: ProcessStarted(k), Uploaded: lambda: Uploaded(k, {})}[event_type]()
        before = self.core.phases()
        with pytest.raises(InvalidTransition):
            self.core.handle(event, self.now)
        assert self.core.phases() == before

    def _check_resends(self) -> None:
        if not self.registered:
            return
        for k in self.finals:
            if k not in self.acknowledged:
                assert self.now - self.last_sent[k] < RESEND_STATUS_S, f"{k} not resent"

    @invariant()
    def slots_stay_within_the_total(self):
        busy = sum(1 for k, phase in self.core.phases().items() if phase is not Phase.REPORTED)
        assert 0 <= self.core.free_slots() <= SLOTS
        assert self.core.free_slots() == max(0, SLOTS - busy)

    @invariant()
    def held_attempts_are_assigned_and_unacknowledged(self):
        held = set(self.core.phases())
        assert held <= self.assigned and not held & self.acknowledged
        assert {k for k, phase in self.core.phases().items() if phase is Phase.REPORTED} == \
            {k for k in self.finals if k not in self.acknowledged}

    @invariant()
    def at_most_one_final_report_per_attempt(self):
        assert all(len(reports) == 1 for reports in self.finals.values())

    def teardown(self) -> None:
        """Once every request is answered and every process has ended, every
        attempt has exactly one final report."""
        for _ in range(20):
            if not self.pending and not self.processes:
                break
            for k in sorted(self.pending):
                self.answer_all(k)
            for k in sorted(self.processes):
                self.processes.discard(k)
                self._feed(ProcessExited(k, 0))
        assert not self.pending and not self.processes
        assert set(self.finals) == self.assigned
        assert all(len(reports) == 1 for reports in self.finals.values())

    def answer_all(self, k: AttemptKey) -> None:
        kind = self.pending.pop(k)
        if kind == "start":
            self.processes.add(k)
            self._feed(ProcessStarted(k))
        else:
            self._feed({"fetch": ProgramFetched(k, "/p"), "mount": Mounted(k, "/m"), "upload": Uploaded(k, {})}[kind])


AttemptsMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])
test_attempts_machine = AttemptsMachine.TestCase
