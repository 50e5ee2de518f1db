"""What must hold of workflow jobs (dependencies, holds, start times,
deadlines, the result cache), checked by `Checker` (checks.py):

- no chunk of a job is dispatched or taken from the cache (a
  chunk_dispatched or chunk_cached event), nor assigned to a worker by a
  balancer, before every job it depends on has succeeded, before its start
  time, or, for a held job, before the client asked for its release and the
  release committed; a job is released only when the client asked;
- a job whose dependency failed or was cancelled is final at once (in the
  same step), failed or cancelled; a job succeeds only after each of its
  dependencies did;
- a job fails as a whole (not through a chunk of its own) only for its
  deadline, reached, or for a dependency that failed; it is cancelled only
  when the client asked, or for a dependency that was cancelled; a chunk
  ends cancelled only with its job failed or cancelled so;
- a job with a deadline is final by DEADLINE_BOUND_S after it (or after
  its submission committed, when that came later);
- each chunk ran with the inputs its spec names: its proof lists, by name,
  the file ids that the checker resolves on its own from the spec and the
  producing chunks' committed results (job0's chunk i for SAME_CHUNK, every
  chunk as name.0, name.1, ... for ALL_CHUNKS);
- a cached chunk holds the result of a chunk that ran, with its inputs; of
  two twins (identical cache jobs), a chunk never runs while its twin's
  does, and when both succeed one of them ran and the other shows its
  outputs;
- as the client's status polls see a job, its state never goes back
  (held, waiting, queued, running, final), and a final one is committed so.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from uds.master.commands import (
    ALL_CHUNKS, CHUNK_CACHED, CHUNK_DISPATCHED, IN_FLIGHT_PHASES, JOB_READY, JOB_RELEASED, JOB_SUBMITTED,
    JOB_WIDE, SAME_CHUNK, ChunkPhase, Event,
)
from uds.master.workflow import dependencies
from uds.wire.enums import JobState

from .storage import Proof
from .trace import short

if TYPE_CHECKING:
    from uds.master.records import JobRecord
    from uds.master.state import ClusterState

    from .client import SimClient

# A job is final this long after its deadline at the latest: a leader may
# be frozen, killed or cut off for a while, and a new one elected 0.25-0.6 s
# later, before its RunTimers commits.
DEADLINE_BOUND_S = 6.0
DEADLINE_EXCEEDED = "deadline exceeded"
# How far along a job is as the client sees it: never less than before.
_RANK = {JobState.HELD: 0, JobState.WAITING: 1, JobState.QUEUED: 2, JobState.RUNNING: 3,
         JobState.SUCCEEDED: 4, JobState.FAILED: 4, JobState.CANCELLED: 4}


def due_by(record: JobRecord) -> float:
    """When a job with a deadline must end at the earliest: its deadline,
    or its submission's commit when a leaderless cluster held it past that."""
    return max(record.spec.deadline, record.submitted_at)


class WorkflowBroken(AssertionError):
    """A workflow rule broken (checks.py reports it as InvariantBroken)."""


class WorkflowChecker:
    def __init__(self, state: ClusterState, client: SimClient, proof_of, office) -> None:
        self.state = state
        self.client = client
        self.proof_of = proof_of                # file ref -> Proof | None
        self.office = office                    # () -> the office now
        self.twins: list[tuple[bytes, bytes]] = []
        self.released: set[bytes] = set()       # jobs whose release committed
        self.submitted_in: dict[bytes, int] = {}
        self.handoffs = 0                       # jobs made ready under a later office than they were submitted in
        self.with_deadline: list[bytes] = []    # jobs with a deadline, not yet seen final
        self.last_seen: dict[bytes, JobState] = {}
        self.statuses = 0                       # status replies the client's polls judged

    # -- events ----------------------------------------------------------------------

    def event(self, event: Event) -> None:
        kind = event.kind
        if kind == JOB_SUBMITTED:
            self.submitted_in[event.job] = self.office()
            if self.state.job_records[event.job].spec.deadline is not None:
                self.with_deadline.append(event.job)
        elif kind == JOB_RELEASED:
            if event.job not in self.client.released_at:
                raise WorkflowBroken(f"job {short(event.job)} released, but the client never asked")
            self.released.add(event.job)
        elif kind == JOB_READY:
            self.handoffs += self.office() > self.submitted_in.get(event.job, self.office())
        elif kind in (CHUNK_DISPATCHED, CHUNK_CACHED):
            verb = "dispatched" if kind == CHUNK_DISPATCHED else "taken from the cache"
            self.may_run(event.job, event.chunk, event.at, verb)

    def may_run(self, job: bytes, chunk: int, at: float, verb: str) -> None:
        """A chunk of `job` is dispatched, cached or assigned at `at`: every
        dependency succeeded by then, its start time came, its release was asked."""
        record = self.state.job_records.get(job)
        if record is None:
            return
        spec = record.spec
        for dependency in dependencies(spec):
            producer = self.state.job_records.get(dependency)
            if producer is None or producer.state is not JobState.SUCCEEDED or producer.finished_at > at:
                state = producer.state.name.lower() if producer is not None else "unknown"
                raise WorkflowBroken(f"chunk {chunk} of job {short(job)} {verb} at {at:.4f} s while its "
                                     f"dependency {short(dependency)} is {state}")
        if spec.start_at is not None and at < spec.start_at:
            raise WorkflowBroken(f"chunk {chunk} of job {short(job)} {verb} at {at:.4f} s, before its start "
                                 f"at {spec.start_at:.4f} s")
        if spec.hold and (job not in self.released or self.client.released_at.get(job, at + 1) > at):
            raise WorkflowBroken(f"chunk {chunk} of held job {short(job)} {verb} at {at:.4f} s before its release")

    # -- jobs, after every step that changed the state ---------------------------------

    def job(self, job: bytes, record: JobRecord, now: float) -> None:
        spec = record.spec
        outcomes = {dependency: self.state.job_state(dependency) for dependency in dependencies(spec)}
        ended = [dependency for dependency, state in outcomes.items()
                 if state in (JobState.FAILED, JobState.CANCELLED)]
        state = record.state
        if ended and record.finished_at is None:
            raise WorkflowBroken(f"job {short(job)} is {state.name.lower()}, though its dependency "
                                 f"{short(ended[0])} is {outcomes[ended[0]].name.lower()}")
        if state is JobState.SUCCEEDED and any(value is not JobState.SUCCEEDED for value in outcomes.values()):
            raise WorkflowBroken(f"job {short(job)} succeeded before its dependencies: {outcomes}")
        if record.failed_by and state is JobState.FAILED:
            self._judge_failure(job, record, outcomes)
        if record.cancelled:
            self._judge_cancel(job, record, outcomes)
        if any(chunk.phase is ChunkPhase.CANCELLED for chunk in record.chunks) and not (
                record.cancelled or record.failed_by):
            raise WorkflowBroken(f"a chunk of job {short(job)} is cancelled, but its job was neither "
                                 f"cancelled nor failed as a whole")

    def deadlines_step(self, now: float) -> None:
        """After every step, changed state or not: a job is final by
        DEADLINE_BOUND_S after its deadline."""
        for job in self.with_deadline:
            record = self.state.job_records[job]
            if record.finished_at is None and now > due_by(record) + DEADLINE_BOUND_S:
                raise WorkflowBroken(f"job {short(job)} unfinished at {now:.4f} s, its deadline "
                                     f"{record.spec.deadline:.4f} s long past (submitted at "
                                     f"{record.submitted_at:.4f} s)")
        self.with_deadline = [job for job in self.with_deadline
                              if self.state.job_records[job].finished_at is None]

    def _judge_failure(self, job: bytes, record: JobRecord, outcomes: dict) -> None:
        why, spec = record.failed_by, record.spec
        if why == DEADLINE_EXCEEDED:
            if spec.deadline is None or record.finished_at < spec.deadline:
                raise WorkflowBroken(f"job {short(job)} failed for its deadline at {record.finished_at:.4f} s, "
                                     f"before it ({spec.deadline})")
            return
        for dependency, state in outcomes.items():
            if why == f"dependency {dependency.hex()} failed" and state is JobState.FAILED:
                return
        raise WorkflowBroken(f"job {short(job)} failed as a whole for no reason it may: {why!r}")

    def _judge_cancel(self, job: bytes, record: JobRecord, outcomes: dict) -> None:
        asked = self.client.cancelled_at.get(job)
        if asked is not None and asked <= record.finished_at:
            return
        for dependency, state in outcomes.items():
            if record.first_error == f"dependency {dependency.hex()} was cancelled" and state is JobState.CANCELLED:
                return
        raise WorkflowBroken(f"job {short(job)} cancelled, though the client did not ask "
                             f"and no dependency was: {record.first_error!r}")

    def twins_step(self) -> None:
        records = self.state.job_records
        for first, second in self.twins:
            if first not in records or second not in records:
                continue
            for index, (one, other) in enumerate(zip(records[first].chunks, records[second].chunks)):
                if one.phase in IN_FLIGHT_PHASES and other.phase in IN_FLIGHT_PHASES:
                    raise WorkflowBroken(f"chunk {index} of twins {short(first)} and {short(second)} "
                                         f"runs in both at once")
                succeeded = (ChunkPhase.SUCCEEDED, ChunkPhase.CACHED)
                if one.phase in succeeded and other.phase in succeeded:
                    if (one.phase is ChunkPhase.CACHED) == (other.phase is ChunkPhase.CACHED):
                        raise WorkflowBroken(f"chunk {index} of twins {short(first)} and {short(second)}: "
                                             f"{one.phase.label} and {other.phase.label}, not one run and one cached")
                    if one.result.outputs != other.result.outputs:
                        raise WorkflowBroken(f"chunk {index} of twins {short(first)} and {short(second)} "
                                             f"shows other outputs than its twin")

    # -- what each chunk saw ------------------------------------------------------------

    def expected_inputs(self, record: JobRecord, index: int) -> tuple[tuple[str, bytes], ...] | None:
        """The inputs chunk `index` must have been given, by name, resolved
        here from its spec and the producers' committed results (None: a
        producer is not final with its outputs yet)."""
        spec = record.spec
        seen = {name: bytes(ref[0]) for name, ref in spec.inputs.items()}
        if spec.chunk_inputs:
            seen.update((name, bytes(ref[0])) for name, ref in spec.chunk_inputs[index].items())
        for ref in spec.refs:
            if ref.chunk not in (JOB_WIDE, index):
                continue
            producer = self.state.job_records.get(ref.job)
            if producer is None:
                return None
            if ref.from_chunk == SAME_CHUNK:
                wanted = [(ref.name, index)]
            elif ref.from_chunk == ALL_CHUNKS:
                wanted = [(f"{ref.name}.{k}", k) for k in range(producer.spec.chunk_count)]
            else:
                wanted = [(ref.name, ref.from_chunk)]
            for name, producing in wanted:
                result = producer.chunks[producing].result
                if result is None or ref.output not in result.outputs:
                    return None
                seen[name] = bytes(result.outputs[ref.output][0])
        return tuple(sorted(seen.items()))

    def check_inputs(self, job: bytes, index: int, record: JobRecord, proof: Proof) -> None:
        expected = self.expected_inputs(record, index)
        if expected != proof.inputs:
            raise WorkflowBroken(f"chunk {index} of job {short(job)} ran with inputs "
                                 f"{_names(proof.inputs)}, not {_names(expected)}")

    def cached_from(self, job: bytes, index: int, record: JobRecord, proof: Proof) -> None:
        """A CACHED chunk: its proof names a chunk of a cache job that ran
        and succeeded with this very result, fed the inputs this one names."""
        source = self.state.job_records.get(proof.job)
        if source is None or not source.spec.cache or proof.job == job:
            raise WorkflowBroken(f"chunk {index} of job {short(job)} is cached from {short(proof.job)}, "
                                 f"no other cache job")
        ran = source.chunks[proof.chunk]
        if (ran.phase is not ChunkPhase.SUCCEEDED or (ran.attempt, ran.worker) != (proof.attempt, proof.worker)
                or ran.packed_result != record.chunks[index].packed_result):
            raise WorkflowBroken(f"chunk {index} of job {short(job)} is cached from chunk {proof.chunk} of "
                                 f"{short(proof.job)}, which is {ran.phase.label} with another result")
        self.check_inputs(job, index, record, proof)

    # -- the client's view ----------------------------------------------------------------

    def status_seen(self, job: bytes, state: JobState) -> None:
        before = self.last_seen.get(job)
        if before is not None and _RANK[state] < _RANK[before]:
            raise WorkflowBroken(f"the client saw job {short(job)} go back from {before.name.lower()} "
                                 f"to {state.name.lower()}")
        if before is not None and _RANK[before] == 4 and state is not before:
            raise WorkflowBroken(f"the client saw job {short(job)} {before.name.lower()}, then {state.name.lower()}")
        self.last_seen[job] = state
        self.statuses += 1
        if _RANK[state] == 4 and self.state.job_state(job) is not state:
            raise WorkflowBroken(f"the client was told job {short(job)} is {state.name.lower()}, "
                                 f"which is not committed")


def _names(inputs) -> str:
    if inputs is None:
        return "(not resolvable yet)"
    return ", ".join(f"{name}={file_id.hex()[:8]}" for name, file_id in inputs) or "none"
