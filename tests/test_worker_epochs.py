"""Epoch fencing in the worker's attempts core: with two load balancers, the
worker says hello and heartbeats to both, obeys only the highest epoch it
has seen, reports to the balancer that sent it, and never stops an attempt
because the epoch rose. Exact effects for small scenarios, then a
hypothesis state machine of two balancers whose epochs interleave."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from uds.wire import ChunkState
from uds.worker.attempts import (
    Assigned, AttemptKey, Attempts, CancelReceived, ChunkAssignment, FetchProgram,
    HelloAnswered, HelloRequired, JobSpec, Mount, Mounted, Phase, ProcessExited, ProcessStarted, ProgramFetched,
    Report, Resend, SayHello, SendHeartbeat, Signal, SignalName, Start, StatusAcknowledged, Tick,
    UnknownEventError,
)

JOB, JOB_B = b"J" * 16, b"K" * 16
PROGRAM = (b"p" * 16, 1_000)
HEARTBEAT_S = 10.0
FIRST, SECOND = 0, 1            # the balancers, by their place in the cluster file


def spec(job: bytes = JOB) -> JobSpec:
    return JobSpec(job, PROGRAM, (), {}, 8, 60.0)


def key(chunk: int, attempt: int = 1, job: bytes = JOB) -> AttemptKey:
    return AttemptKey(job, chunk, attempt)


def assigned(epoch: int, balancer: int, chunk: int, attempt: int = 1, job: bytes = JOB) -> Assigned:
    return Assigned(epoch, spec(job), (ChunkAssignment(chunk, attempt),), balancer)


def pair(slots: int = 2) -> Attempts:
    """A worker registered with both balancers; the first holds epoch 1,
    the second answered as a standby (epoch 0)."""
    core = Attempts(slots, HEARTBEAT_S, balancers=2)
    assert core.handle(Tick(), 0.0) == [SayHello(FIRST), SayHello(SECOND)]
    assert core.handle(HelloAnswered(1, FIRST), 0.0) == [SendHeartbeat(1, slots, (), True, FIRST)]
    assert core.handle(HelloAnswered(0, SECOND), 0.0) == [SendHeartbeat(1, slots, (), True, SECOND)]
    assert (core.epoch, core.followed) == (1, FIRST)
    return core


def running(core: Attempts, epoch: int, balancer: int, chunk: int, now: float) -> AttemptKey:
    k = key(chunk)
    assert core.handle(assigned(epoch, balancer, chunk), now) == [FetchProgram(k, PROGRAM)]
    core.handle(ProgramFetched(k, "/p"), now)
    core.handle(Mounted(k, "/mnt"), now)
    core.handle(ProcessStarted(k), now)
    assert core.phase(k) is Phase.RUNNING
    return k


def test_hello_and_heartbeats_go_to_every_balancer():
    core = pair()
    assert core.handle(Tick(), HEARTBEAT_S) == [SendHeartbeat(1, 2, (), False, FIRST),
                                                SendHeartbeat(1, 2, (), False, SECOND)]
    # One balancer forgets the worker: only it is greeted again.
    core.handle(HelloRequired(SECOND), 11.0)
    assert core.handle(Tick(), 11.0) == [SayHello(SECOND)]
    assert core.registered_with(FIRST) and not core.registered_with(SECOND)


def test_an_assignment_of_a_lower_epoch_is_dropped_and_counted():
    core = pair()
    assert core.handle(assigned(2, SECOND, 0), 1.0) == [FetchProgram(key(0), PROGRAM)]
    assert (core.epoch, core.followed) == (2, SECOND)
    assert core.handle(assigned(1, FIRST, 1), 1.0) == []
    assert core.phase(key(1)) is None
    assert core.counters["stale_epoch_dropped"] == 1
    assert core.counters["epoch_changes"] == 1
    assert core.followed == SECOND


def test_a_cancel_of_a_lower_epoch_is_not_obeyed():
    core = pair()
    k = running(core, 1, FIRST, 0, 1.0)
    core.handle(HelloAnswered(2, SECOND), 2.0)
    assert core.handle(CancelReceived(1, JOB, (), FIRST), 2.0) == []
    assert core.phase(k) is Phase.RUNNING
    assert core.counters["stale_epoch_dropped"] == 1
    # The active balancer's cancel is obeyed.
    assert core.handle(CancelReceived(2, JOB, (), SECOND), 2.0) == [Signal(k, SignalName.TERM)]


def test_an_acknowledgement_of_a_lower_epoch_is_dropped_and_the_report_goes_on():
    core = pair()
    k = running(core, 1, FIRST, 0, 1.0)
    [report] = core.handle(ProcessExited(k, 0), 2.0)[:1]
    assert report == Report(k, ChunkState.SUCCEEDED, 1, report.result, FIRST)
    core.handle(HelloAnswered(2, SECOND), 2.5)
    assert core.handle(StatusAcknowledged(1, (k,), FIRST), 2.5) == []
    assert core.phase(k) is Phase.REPORTED
    assert core.handle(StatusAcknowledged(2, (k,), SECOND), 2.6) == []
    assert core.phase(k) is None


def test_a_higher_epoch_keeps_attempts_running_and_takes_their_reports():
    core = pair()
    done = running(core, 1, FIRST, 0, 1.0)
    still = running(core, 1, FIRST, 1, 1.0)
    [report] = [e for e in core.handle(ProcessExited(done, 0), 2.0) if isinstance(e, Report)]
    assert report.to == FIRST
    # The second balancer takes over: the unacknowledged report goes to it at once.
    effects = core.handle(HelloAnswered(2, SECOND), 3.0)
    assert Resend(Report(done, ChunkState.SUCCEEDED, 2, report.result, SECOND), SECOND) in effects
    assert core.phase(still) is Phase.RUNNING
    assert not any(isinstance(effect, Signal) for effect in effects)
    # Heartbeats carry the new epoch to both, and list the attempt still running.
    assert SendHeartbeat(2, 1, (still,), True, SECOND) in effects
    [final] = [e for e in core.handle(ProcessExited(still, 0), 4.0) if isinstance(e, Report)]
    assert (final.epoch, final.to) == (2, SECOND)


def test_a_standby_answering_hello_is_not_followed():
    core = pair()
    core.handle(HelloRequired(SECOND), 1.0)
    core.handle(HelloAnswered(1, SECOND), 1.5)            # the same epoch: no proof it is active
    assert core.followed == FIRST
    # An order of the current epoch does prove it (a restarted active in its epoch).
    core.handle(assigned(1, SECOND, 0), 2.0)
    assert core.followed == SECOND and "stale_epoch_dropped" not in core.counters


def test_resends_wait_for_the_followed_balancer_to_know_the_worker():
    core = pair()
    k = running(core, 1, FIRST, 0, 1.0)
    [report] = [e for e in core.handle(ProcessExited(k, 0), 2.0) if isinstance(e, Report)]
    core.handle(HelloRequired(FIRST), 2.1)
    assert not any(isinstance(e, Resend) for e in core.handle(Tick(), 10.0))
    assert Resend(report, FIRST) in core.handle(HelloAnswered(1, FIRST), 10.5)


def test_a_message_from_a_balancer_the_worker_does_not_have_is_refused():
    core = pair()
    with pytest.raises(UnknownEventError):
        core.handle(assigned(1, 2, 0), 0.0)


# ---- two balancers whose epochs interleave ----------------------------------------

SLOTS = 2
BALANCERS = 2


class EpochsMachine(RuleBasedStateMachine):
    """Two balancers send orders and hello answers of random epochs; the
    shell answers every request at once. The worker must start nothing
    assigned under an epoch below the highest it had seen, obey no cancel of
    such an epoch, and report to the balancer of the highest epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.core = Attempts(SLOTS, HEARTBEAT_S, balancers=BALANCERS)
        self.now = 0.0
        self.highest = 0                                 # the highest epoch sent so far
        self.follow = 0                                  # whom the worker should report to
        self.epoch_of: dict[AttemptKey, int] = {}        # the epoch each held attempt came under
        self.processes: set[AttemptKey] = set()
        self.dropped = 0

    def _order(self, epoch: int, balancer: int) -> bool:
        """What the worker should make of an order: whether it is obeyed,
        and (before it is fed) whom it follows after."""
        if epoch < self.highest:
            self.dropped += 1
            return False
        self.highest, self.follow = epoch, balancer
        return True

    def _feed(self, event) -> list:
        effects = self.core.handle(event, self.now)
        for effect in effects:
            if isinstance(effect, (Report, Resend)):
                assert effect.to == self.follow, f"{type(effect).__name__} to {effect.to}, not {self.follow}"
            if isinstance(effect, Resend):
                assert (effect.report.epoch, effect.report.to) == (self.highest, self.follow)
        return effects

    def _run(self, effects: list) -> None:
        """Answer every request at once, as far as a running process."""
        for effect in effects:
            if isinstance(effect, FetchProgram):
                self._run(self._feed(ProgramFetched(effect.key, "/p")))
            elif isinstance(effect, Mount):
                self._run(self._feed(Mounted(effect.key, "/mnt")))
            elif isinstance(effect, Start):
                self.processes.add(effect.key)
                self._run(self._feed(ProcessStarted(effect.key)))

    @rule(balancer=st.integers(0, BALANCERS - 1), epoch=st.integers(1, 4), chunk=st.integers(0, 3))
    def assign(self, balancer, epoch, chunk):
        k = key(chunk, attempt=epoch)
        known = self.core.phase(k) is not None
        obeyed = self._order(epoch, balancer)
        effects = self._feed(assigned(epoch, balancer, chunk, attempt=epoch))
        if not obeyed:
            assert effects == [], "an assignment of a stale epoch was started"
            return
        if not known and effects:
            self.epoch_of[k] = epoch
        self._run(effects)

    @rule(balancer=st.integers(0, BALANCERS - 1), epoch=st.integers(1, 4), job=st.sampled_from([JOB, JOB_B]))
    def cancel(self, balancer, epoch, job):
        before = self.core.phases()
        obeyed = self._order(epoch, balancer)
        effects = self._feed(CancelReceived(epoch, job, (), balancer))
        if not obeyed:
            assert effects == [] and self.core.phases() == before, "a cancel of a stale epoch was obeyed"

    @rule(balancer=st.integers(0, BALANCERS - 1), epoch=st.integers(0, 4))
    def hello_answered(self, balancer, epoch):
        before = self.core.phases()
        if epoch > self.highest:
            self.highest, self.follow = epoch, balancer
        effects = self._feed(HelloAnswered(epoch, balancer))
        # A new epoch never stops a running attempt.
        assert not any(isinstance(effect, Signal) for effect in effects)
        assert {k for k, phase in before.items() if phase is Phase.RUNNING} <= \
            {k for k, phase in self.core.phases().items() if phase is Phase.RUNNING}

    @precondition(lambda self: self.processes)
    @rule(data=st.data())
    def exit(self, data):
        k = data.draw(st.sampled_from(sorted(self.processes)))
        self.processes.discard(k)
        self._feed(ProcessExited(k, 0))

    @rule(balancer=st.integers(0, BALANCERS - 1), epoch=st.integers(1, 4))
    def acknowledge_all(self, balancer, epoch):
        reported = [k for k, phase in self.core.phases().items() if phase is Phase.REPORTED]
        obeyed = self._order(epoch, balancer)
        self._feed(StatusAcknowledged(epoch, tuple(reported), balancer))
        if not obeyed:
            assert all(self.core.phase(k) is Phase.REPORTED for k in reported)
        else:
            assert all(self.core.phase(k) is None for k in reported)

    @rule(seconds=st.sampled_from([0.05, 1.0, 2.5, 10.0]))
    def tick(self, seconds):
        self.now += seconds
        effects = self._feed(Tick())
        for effect in effects:
            if isinstance(effect, (Report, Resend, SendHeartbeat)):
                epoch = effect.report.epoch if isinstance(effect, Resend) else effect.epoch
                assert epoch <= self.highest

    @invariant()
    def the_worker_holds_the_highest_epoch_and_follows_its_balancer(self):
        assert (self.core.epoch, self.core.followed) == (self.highest, self.follow)
        assert self.core.counters.get("stale_epoch_dropped", 0) == self.dropped

    @invariant()
    def nothing_held_came_under_a_stale_epoch(self):
        for k in self.core.phases():
            assert k in self.epoch_of


EpochsMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
test_epochs = EpochsMachine.TestCase
