"""What must hold after every step of a simulation, and at its end.

Safety, after every step that changed the replicated state:
- a chunk's phase and the state's phase tables agree (no chunk lost from them);
- a final chunk holds the result of its current attempt: its proof output,
  read back from the content store, names this job, this chunk, the attempt
  the state records as current and the worker it records;
- a chunk's result is committed once: one final event in the log, and the
  record never changes afterwards; the job's counters match its chunks;
- a job is created once (one job_submitted event), however many masters
  its submission reached, and under however many request ids;
- every acknowledged job exists;
- the workflow rules (workflow_checks.py): dependencies, holds, start
  times, deadlines, the inputs each chunk saw, the result cache, and the
  client's view of each job's state.
Safety, at every acknowledgement (job_submit_reply, hello_reply,
chunk_events_ack), leader or not:
- what it acknowledges is committed: the job is in the state, the grant
  (holder, epoch) was applied, each event of the batch was applied;
- an acknowledgement as leader (or a chunk_dispatch, which follows the
  commit of its attempts) comes from the master elected to the latest
  office, at an instant when no later election has been held: so two
  masters never acknowledge as leaders at once.
Safety, after every step: the lease epoch never goes back, each epoch has
one holder, and at most one balancer believes it holds the lease.
Storage, after every step and at the end:
- no read (a program fetch, an input read) fails while a node that was up
  and held the file from the read's start is still up: a chunk is never
  rejected for storage while a good replica was there all along; no put
  (an upload) fails while R nodes the membership lists alive were up;
- at the end, every committed output (and log) is on a live node, and, once
  repair has settled, every committed output, the program and the inputs
  are on R live nodes (R = min(2, live nodes)).
Safety, at every assignment a balancer sends a worker: the workflow
rules for a dispatch (every dependency succeeded, the start time came, a
held job released).
Liveness:
- every balancer is in step with each new leader (its target, and
  answered by it as leader: a grant, a refusal of the lease, an
  acknowledgement) within IN_STEP_S of the election, unless a fault stands
  in the way (see `_judge_step`);
- at the end, every acknowledged job finished.
"""
from __future__ import annotations

from typing import Any, Callable

from uds import wire
from uds.master.attempts import chunk_attempts
from uds.master.commands import (
    CHUNK_CACHED, CHUNK_CANCELLED, CHUNK_FAILED, CHUNK_SUCCEEDED, FINAL_PHASES, JOB_SUBMITTED, ChunkPhase,
)
from uds.master.state import ClusterState
from uds.storage.placement import ALIVE
from uds.wire.leader_search import QUIET_S

from .loop import Simulation
from .raft_group import Election, RaftGroup, event_key
from .storage import PROOF_NAME, Proof, StorageCluster, StorageFailure
from .trace import short
from .workflow_checks import WorkflowBroken, WorkflowChecker

# A balancer is back in step with a new leader within this long of its election.
IN_STEP_S = 1.0

FINAL_EVENT_KINDS = frozenset({CHUNK_SUCCEEDED, CHUNK_FAILED, CHUNK_CANCELLED, CHUNK_CACHED})
SUCCEEDED_PHASES = frozenset({ChunkPhase.SUCCEEDED, ChunkPhase.CACHED})


class InvariantBroken(AssertionError):
    """The simulation found the system doing something it must never do."""


class Checker:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.lease_epoch = 0
        self.holders: dict[int, bytes] = {}  # epoch -> its one holder
        self.seen_seq = 0
        self.final_events: dict[tuple[bytes, int], int] = {}
        self.final_records: dict[tuple[bytes, int], tuple] = {}
        self.submitted: dict[bytes, int] = {}   # job -> job_submitted events
        self.unfinished = 0
        self.in_step_checked = 0
        self.failures_seen = 0
        self.workflows: WorkflowChecker | None = None

    def watch(self, group: RaftGroup, store: StorageCluster, acknowledged: dict[bytes, float],
              balancer_names: tuple[str, ...] = (), balancers: Callable[[], list] = list,
              repair: Any = None, client_files: list[tuple[bytes, int]] = (), client: Any = None) -> None:
        """What to check: the Raft group, the storage nodes, the client's
        acknowledged jobs, the balancers' names and the live SimBalancers,
        storage's repair, the files the client put (program, inputs) and
        the client itself (what it asked, what its polls saw)."""
        self.repair = repair
        self.client_files = list(client_files)
        self.balancer_names = balancer_names
        self.group = group
        self.state: ClusterState = group.state
        self.store = store
        self.acknowledged = acknowledged
        self.balancers = balancers
        if client is not None:
            self.workflows = WorkflowChecker(self.state, client, store.proof_of, lambda: group.office)
            client.on_status = self._workflow_rule(self.workflows.status_seen)

    def _workflow_rule(self, check: Callable[..., None]) -> Callable[..., None]:
        def checked(*args: Any) -> None:
            try:
                check(*args)
            except WorkflowBroken as broken:
                raise InvariantBroken(str(broken)) from None
        return checked

    def assigning(self, balancer: str, job: bytes, attempts: list[tuple[int, int]]) -> None:
        """Balancer `balancer` is sending a worker these (chunk, attempt) of `job`."""
        if self.workflows is not None:
            for chunk, attempt in attempts:
                self._workflow_rule(self.workflows.may_run)(job, chunk, self.sim.now,
                                                            f"assigned (attempt {attempt}) by {balancer}")

    def after_step(self) -> None:
        try:
            self._after_step()
        except WorkflowBroken as broken:
            raise InvariantBroken(str(broken)) from None

    def _after_step(self) -> None:
        state = self.state
        self._check_lease()
        if len(self.store.failures) != self.failures_seen:
            self._check_storage_failures()
        if self.workflows is not None and self.workflows.with_deadline:
            self.workflows.deadlines_step(self.sim.now)
        if state.last_seq == self.seen_seq:
            return
        self._count_final_events()
        self.unfinished = 0
        for job, record in state.job_records.items():
            self._check_job(job, record)
        if self.workflows is not None:
            self.workflows.twins_step()
        for job in self.acknowledged:
            if job not in state.job_records:
                raise InvariantBroken(f"acknowledged job {short(job)} is not in the state")

    def _check_lease(self) -> None:
        """Epochs only rise, each has one holder, and never do two balancers
        believe at once that they hold the lease (so at most one assigns)."""
        holder, epoch = self.state.lease()
        if epoch < self.lease_epoch:
            raise InvariantBroken(f"the lease epoch went back from {self.lease_epoch} to {epoch}")
        self.lease_epoch = epoch
        if holder is not None and self.holders.setdefault(epoch, holder) != holder:
            raise InvariantBroken(f"epoch {epoch} has two holders")
        active = [balancer.name for balancer in self.balancers() if balancer.active()]
        if len(active) > 1:
            raise InvariantBroken(f"balancers {active} both believe they hold the lease")

    def _count_final_events(self) -> None:
        events, self.seen_seq = self.state.events_after(self.seen_seq, 1 << 30)
        for event in events:
            if self.workflows is not None:
                self.workflows.event(event)
            if event.kind == JOB_SUBMITTED:
                self.submitted[event.job] = self.submitted.get(event.job, 0) + 1
                if self.submitted[event.job] > 1:
                    raise InvariantBroken(f"job {short(event.job)} created {self.submitted[event.job]} times")
            if event.kind in FINAL_EVENT_KINDS:
                key = (event.job, event.chunk)
                self.final_events[key] = self.final_events.get(key, 0) + 1
                if self.final_events[key] > 1:
                    raise InvariantBroken(f"chunk {event.chunk} of job {short(event.job)} committed "
                                          f"{self.final_events[key]} times (attempt {event.attempt})")

    def _check_job(self, job: bytes, record) -> None:
        state = self.state
        tables = {ChunkPhase.QUEUED: state.queued, ChunkPhase.DISPATCHED: state.dispatched,
                  ChunkPhase.RUNNING: state.running}
        succeeded = 0
        for index, chunk in enumerate(record.chunks):
            key = (job, index)
            for phase, table in tables.items():
                if (key in table) != (chunk.phase is phase):
                    raise InvariantBroken(f"chunk {index} of job {short(job)} is {chunk.phase.label} "
                                          f"but {'in' if key in table else 'not in'} the {phase.label} table")
            if chunk.phase not in FINAL_PHASES:
                continue
            succeeded += chunk.phase in SUCCEEDED_PHASES
            if chunk.phase is ChunkPhase.CANCELLED:
                # Its job was cancelled or failed as a whole (workflow_checks.py
                # judges why); one that was not in flight ends without an event.
                if self.final_events.get(key, 0) > 1:
                    raise InvariantBroken(f"chunk {index} of job {short(job)} cancelled "
                                          f"with {self.final_events[key]} final events")
            else:
                self._check_result(job, index, chunk, record)
            if chunk.phase is not ChunkPhase.CANCELLED and self.final_events.get(key) != 1:
                raise InvariantBroken(f"chunk {index} of job {short(job)} is {chunk.phase.label} "
                                      f"with {self.final_events.get(key, 0)} final events")
            fingerprint = (chunk.phase, chunk.attempt, chunk.worker, chunk.result)
            if self.final_records.setdefault(key, fingerprint) != fingerprint:
                raise InvariantBroken(f"chunk {index} of job {short(job)} changed after it was final: "
                                      f"{self.final_records[key]} became {fingerprint}")
        if succeeded != record.chunks_succeeded:
            raise InvariantBroken(f"job {short(job)} counts {record.chunks_succeeded} chunks succeeded "
                                  f"but {succeeded} are")
        if self.workflows is not None:
            self.workflows.job(job, record, self.sim.now)
        if record.finished_at is None:
            self.unfinished += 1

    def _check_result(self, job: bytes, index: int, chunk, record) -> None:
        ref = chunk.result.outputs.get(PROOF_NAME) if chunk.result else None
        if ref is None:
            # Only a poisoned chunk ends without a program's output.
            if chunk.phase is ChunkPhase.FAILED and chunk.result and chunk.result.error.startswith("poison: "):
                return
            raise InvariantBroken(f"chunk {index} of job {short(job)} is {chunk.phase.label} "
                                  f"without a program's output: {chunk.result}")
        proof = self.store.proof_of(ref)
        if chunk.phase is ChunkPhase.CACHED and proof is not None and self.workflows is not None:
            self.workflows.cached_from(job, index, record, proof)
            return
        expected = Proof(job, index, chunk.attempt, chunk.worker)
        if proof is not None and proof.ran() == expected.ran() and self.workflows is not None:
            self.workflows.check_inputs(job, index, record, proof)
        if proof is None or proof.ran() != expected.ran():
            raise InvariantBroken(
                f"chunk {index} of job {short(job)} committed the output of attempt "
                f"{proof.attempt if proof else '?'} on worker {short(proof.worker) if proof else '?'}, "
                f"but its current attempt is {chunk.attempt} on {short(chunk.worker) if chunk.worker else None}")

    # -- storage -------------------------------------------------------------------

    def _check_storage_failures(self) -> None:
        """A read fails only when no node that was up and held the file
        from its start is up still; a put only when fewer than R nodes the
        membership lists alive were up."""
        store = self.store
        for failure in store.failures[self.failures_seen:]:
            if failure.kind == "read":
                holders = [node.address for node in store.nodes.values()
                           if node.held_since(failure.file_id, failure.started_at)]
                if holders:
                    raise InvariantBroken(self._storage_text(failure, f"{', '.join(holders)} held it, up all along"))
            else:
                able = [node.address for node in store.nodes.values()
                        if node.up and node.up_since <= failure.started_at and store.states[node.address] == ALIVE]
                if len(able) >= failure.wanted:
                    raise InvariantBroken(self._storage_text(failure, f"{', '.join(able)} were up to take it"))
        self.failures_seen = len(store.failures)

    @staticmethod
    def _storage_text(failure: StorageFailure, why_not: str) -> str:
        return (f"a {failure.kind} of {failure.file_id.hex()[:12]} started at {failure.started_at:.4f} s "
                f"failed ({failure.reason}), though {why_not}")

    def _committed_files(self) -> list[tuple[str, bytes]]:
        files = []
        for job, record in self.state.job_records.items():
            for index, chunk in enumerate(record.chunks):
                result = chunk.result if chunk.phase in FINAL_PHASES else None
                if result is None:
                    continue
                refs = [*result.outputs.items(), ("stdout", result.stdout), ("stderr", result.stderr)]
                files += [(f"{name} of chunk {index} of job {short(job)}", bytes(ref[0]))
                          for name, ref in refs if ref is not None]
        return files

    def _check_storage_at_end(self, now: float) -> None:
        store = self.store
        committed = self._committed_files()
        for what, file_id in committed:
            if not store.live_holders(file_id):
                raise InvariantBroken(f"{what} ({file_id.hex()[:12]}) is on no live storage node at {now:.2f} s")
        if self.repair is None:
            return
        left = self.repair.unsettled()
        if left:
            raise InvariantBroken(f"storage repair has not settled by {now:.2f} s: {left} "
                                  f"(membership {store.states})")
        replicas = min(store.replicas, len(store.live()))
        wanted = committed + [("a file the client put", bytes(ref[0])) for ref in self.client_files]
        for what, file_id in wanted:
            holders = store.live_holders(file_id)
            if len(holders) < replicas:
                raise InvariantBroken(f"{what} ({file_id.hex()[:12]}) is on {holders} at {now:.2f} s "
                                      f"after repair settled, not on {replicas} live nodes")

    # -- acknowledgements ----------------------------------------------------------

    def acknowledging(self, master: Any, office: int | None, peer: str, message: wire.Message) -> None:
        """`master` is sending an acknowledgement, as the leader of `office`
        (None: not as leader)."""
        if isinstance(message, wire.JobSubmitReply) and message.job_uuid not in self.state.job_records:
            raise InvariantBroken(f"{master.name} acknowledged job {short(message.job_uuid)}, "
                                  f"which is not committed")
        if isinstance(message, wire.HelloReply):
            holder = peer.encode().ljust(16, b"\0")
            if (holder, message.epoch) not in self.group.committed_grants:
                raise InvariantBroken(f"{master.name} granted {peer} the lease at epoch {message.epoch}, "
                                      f"which is not committed")
        if office is None:
            return
        elected = self.group.elections[office - 1]
        if elected.leader is not master:
            raise InvariantBroken(f"{master.name} acknowledged as the leader of office {office}, "
                                  f"which {elected.leader.name} holds")
        if office != self.group.office:
            latest = self.group.elections[-1].leader.name
            raise InvariantBroken(f"{master.name} acknowledged as the leader of office {office} while "
                                  f"{latest} holds office {self.group.office}")

    def batch_acknowledged(self, master: str, events: list) -> None:
        missing = [event for event in events if event_key(event) not in self.group.committed_events]
        if missing:
            raise InvariantBroken(f"{master} acknowledged a batch whose event for chunk {missing[0].chunk} "
                                  f"of job {short(missing[0].job)} is not committed")

    # -- balancers in step with a new leader -----------------------------------------

    def elected(self, election: Election) -> None:
        for balancer in self.balancer_names:
            self.sim.at(election.at + IN_STEP_S, self._judge_step, election, balancer,
                        election.at + IN_STEP_S)

    def _judge_step(self, election: Election, name: str, deadline: float) -> None:
        """Whether balancer `name` is in step with the leader of `election`
        by `deadline`. Excused, as a fault standing in the way: the leader
        is out of office by the deadline, or froze since the election; the balancer was down,
        restarted or frozen at any time since the election; a message
        between it and a master, sent from IN_STEP_S before the election to
        the deadline, was dropped or held back. A leader that the
        balancer's search had found silent is left out of its rounds for
        QUIET_S (wire/leader_search.py), and a hint ends that quiet only
        once per QUIET_S: if a hint already did within that period, the
        bound is IN_STEP_S after the quiet ends."""
        since, leader = election.at, election.leader
        if (self.group.leader is not leader or self.group.office != election.office or leader.frozen
                or leader.thawed_at >= since):
            return
        balancer = self.sim.nodes.get(name)
        if (balancer is None or balancer.started_at > since or balancer.frozen
                or balancer.thawed_at >= since
                or self.sim.disturbed_between(name, self.group.names, since - IN_STEP_S, deadline)):
            return
        if balancer.answered_at.get(leader.name, -1.0) >= since:
            self.in_step_checked += 1
            return
        index = balancer.search.index_of(leader.name)
        silent_at = balancer.search.silent_at.get(index)
        lifted_at = balancer.search.hint_lifted_at.get(index, -QUIET_S)
        if silent_at is not None and deadline < silent_at + QUIET_S + IN_STEP_S \
                and deadline - lifted_at < QUIET_S + IN_STEP_S:
            self.sim.at(silent_at + QUIET_S + IN_STEP_S, self._judge_step, election, name,
                        silent_at + QUIET_S + IN_STEP_S)
            return
        raise InvariantBroken(f"{name} not in step with {leader.name}, leader since {since:.4f} s "
                              f"(office {election.office}), by {deadline:.4f} s: it asks "
                              f"{balancer.search.address}")

    def all_finished(self, expected_jobs: int) -> bool:
        return (len(self.acknowledged) == expected_jobs and self.unfinished == 0
                and len(self.state.job_records) == expected_jobs)

    def at_end(self, expected_jobs: int, now: float) -> None:
        if len(self.acknowledged) < expected_jobs:
            raise InvariantBroken(f"only {len(self.acknowledged)} of {expected_jobs} submissions "
                                  f"acknowledged by {now:.2f} s")
        for job, record in self.state.job_records.items():
            if record.finished_at is None:
                phases = ", ".join(f"{index}:{chunk.phase.label}/{chunk.attempt}"
                                   for index, chunk in enumerate(record.chunks))
                raise InvariantBroken(f"job {short(job)} unfinished at {now:.2f} s: {phases}")
            for index, chunk in enumerate(record.chunks):
                self._check_attempts(job, index, chunk)
        self._check_storage_at_end(now)

    @staticmethod
    def _check_attempts(job: bytes, index: int, chunk) -> None:
        """Every attempt of the chunk is kept once, numbered 1, 2, ..., and
        each one's timeline runs forward: dispatched, the worker's assigned,
        started, first read, ended and uploaded (each where known), then
        committed (one simulated clock for all; the
        masters keep running_at and committed_at to the millisecond)."""
        views, dropped = chunk_attempts(chunk)
        numbers = [view.attempt for view in views]
        if numbers != list(range(dropped + 1, chunk.attempt + 1)):
            raise InvariantBroken(f"chunk {index} of job {short(job)} at attempt {chunk.attempt} "
                                  f"keeps attempts {numbers} ({dropped} dropped)")
        for view in views:
            result = view.result
            steps = [view.dispatched_at, result.assigned_at or None, result.started_at or None,
                     result.first_read_at or None, result.ended_at or None, result.uploaded_at or None,
                     view.committed_at]
            known = [at for at in steps if at is not None]
            if any(later < earlier - 0.001 for earlier, later in zip(known, known[1:])):
                raise InvariantBroken(f"attempt {view.attempt} of chunk {index} of job {short(job)} "
                                      f"has its timeline out of order: {steps}")
