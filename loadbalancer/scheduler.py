"""The load balancer's brain: which worker runs which chunk attempt.

Rules of this module:
- Nothing here imports zmq, reads the clock, sleeps or opens files. Time comes
  in as `now` (seconds on the shell's monotonic clock); `Scheduler.handle()`
  returns effects, and the shell turns each into one message (doc/loadbalancer.md).
- All state is soft. After a failover it is rebuilt from what the master
  re-sends and what workers report, so no handler assumes it saw the start of
  anything: unknown attempts that a worker runs are adopted, unknown workers
  are asked to say hello.
- An attempt number runs on one worker at most. Whenever the scheduler takes an
  attempt back (its worker was lost or restarted, never acknowledged it, was
  full, or two workers claim it) it reports the attempt LOST, so that the master
  issues a new attempt number, and cancels it where it may still run. It never
  re-places the same attempt elsewhere: a stale copy's result would then look
  current to the master.
- The master fences results, not the balancer: every worker status is forwarded.
- An attempt is placed only on a worker where its job's request (memory,
  cpus, disk: wire.capacity) fits beside what that worker's attempts already
  reserve, as well as in a free slot. An attempt that fits nowhere now stays
  pending while younger ones that fit are placed; the masters say why its
  job waits.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Callable, Mapping

# The events and effects are re-exported: callers use them as scheduler.X.
from uds.loadbalancer.events import (  # noqa: F401
    NO_WORKER, AskHello, AssignChunks, Assignment, AttemptKey, CancelOnWorker, CancelRequested,
    ChunkEvent, Dispatched, DispatchAttempt, Effect, Event, FileRef, ForwardToMaster, JobSpec, Note,
    Tick, UnknownEventError, WorkerHeartbeat, WorkerHello, WorkerJoined, WorkerLost,
    WorkerView,
)
from uds.wire.capacity import NO_CAPACITY, Capacity
from uds.wire.enums import FINAL_CHUNK_STATES, ChunkState
from uds.wire.records import NO_FACTS, ChunkResult, NodeFacts

# Attempts that ended (final, lost, cancelled) are remembered so that a late
# heartbeat or a re-sent dispatch naming them is recognised. ~150 bytes each.
MAX_REMEMBERED_ENDED_ATTEMPTS = 100_000
# Jobs cancelled as a whole, remembered for the same reason.
MAX_REMEMBERED_CANCELLED_JOBS = 10_000

class _Ended(Enum):
    FINAL = "final"           # a final status was forwarded
    LOST = "lost"             # the scheduler forwarded LOST
    CANCELLED = "cancelled"   # the master cancelled it


@dataclass(slots=True)
class _Placement:
    assigned_at: float
    acknowledged: bool        # the worker listed it or reported it started
    request: Capacity = NO_CAPACITY   # what it reserves on its worker
    cancelled: bool = False   # cancel sent; the slot stays taken until the worker lets go


@dataclass(slots=True)
class _Worker:
    node: bytes
    slots: int
    cache_capacity_bytes: int
    host: str
    address: str
    started_at: float
    last_seen: float
    capacity: Capacity = NO_CAPACITY            # what it offers (0: not measured)
    sandbox: str = ""
    facts: NodeFacts = NO_FACTS                 # version, machine, addresses
    reserved: Capacity = NO_CAPACITY            # the requests of its attempts, summed
    # Only the first heartbeat after hello says what the worker runs and
    # caches; placing before it would guess both.
    ready: bool = False
    attempts: dict[AttemptKey, _Placement] = field(default_factory=dict)
    cached: dict[bytes, int] = field(default_factory=dict)      # reported by heartbeats
    predicted: OrderedDict[bytes, int] = field(default_factory=OrderedDict)  # it will fetch these
    predicted_bytes: int = 0

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - len(self.attempts)) if self.ready else 0

    def cached_bytes_of(self, files: Mapping[bytes, int]) -> int:
        return sum(size for file_id, size in files.items()
                   if file_id in self.cached or file_id in self.predicted)

    def predict(self, files: Mapping[bytes, int]) -> None:
        for file_id, size in files.items():
            if file_id in self.predicted:
                self.predicted.move_to_end(file_id)     # used again: newest in the LRU
            elif file_id not in self.cached:
                self.predicted[file_id] = size
                self.predicted_bytes += size
        # The worker's cache is an LRU of this capacity: older guesses fall out.
        while self.predicted and self.predicted_bytes > self.cache_capacity_bytes:
            self.predicted_bytes -= self.predicted.popitem(last=False)[1]

    def forget_predicted(self, file_id: bytes) -> None:
        self.predicted_bytes -= self.predicted.pop(file_id, 0)

    def view(self, now: float, state: str = "alive") -> WorkerView:
        return WorkerView(node=self.node, host=self.host, address=self.address, slots=self.slots,
                          free_slots=self.free_slots, running=len(self.attempts),
                          cache_bytes=self.cache_capacity_bytes, started_at=self.started_at,
                          last_seen_s=max(0.0, now - self.last_seen), state=state,
                          capacity=self.capacity, sandbox=self.sandbox, facts=self.facts)


class Scheduler:
    """Places chunk attempts on workers. `handle(event, now) -> effects`.

    `lease_s`: a worker silent for longer is lost, and an attempt its worker
    neither lists nor has finished this long after assignment is lost.
    `settle_s`: nothing is placed until this long after the first event, so
    that after a failover every worker has reported what it runs before the
    master's re-sent attempts are placed (otherwise they could start twice).
    """

    def __init__(self, lease_s: float, settle_s: float = 0.0) -> None:
        self._lease_s = lease_s
        self._settle_s = settle_s
        self._place_from: float | None = None
        self._workers: dict[bytes, _Worker] = {}
        self._pending: OrderedDict[AttemptKey, DispatchAttempt] = OrderedDict()  # FIFO
        self._owner: dict[AttemptKey, bytes] = {}                   # placed attempt -> worker
        self._jobs: dict[bytes, JobSpec] = {}
        self._live_per_job: dict[bytes, int] = {}                   # pending + placed
        self._ended: OrderedDict[AttemptKey, _Ended] = OrderedDict()
        self._cancelled_jobs: OrderedDict[bytes, None] = OrderedDict()
        self._handlers: dict[type, Callable[[Any, float], list[Effect]]] = {
            WorkerHello: self._on_hello,
            WorkerHeartbeat: self._on_heartbeat,
            Dispatched: self._on_dispatched,
            ChunkEvent: self._on_status,
            CancelRequested: self._on_cancel,
            Tick: self._on_tick,
        }

    # ---- public ----------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Effect]:
        handler = self._handlers.get(type(event))
        if handler is None:
            raise UnknownEventError(f"{type(event).__name__} is not a scheduler event")
        if self._place_from is None:
            self._place_from = now + self._settle_s
        effects = handler(event, now)
        if now >= self._place_from:
            effects.extend(self._placement_pass(now))
        return effects

    def capacity(self) -> tuple[int, int]:
        """(total slots, free slots) over alive workers: the credit for the master."""
        workers = self._workers.values()
        return sum(w.slots for w in workers), sum(w.free_slots for w in workers)

    def pending_count(self) -> int:
        return len(self._pending)

    def pending(self) -> tuple[AttemptKey, ...]:
        return tuple(self._pending)

    def assigned(self, worker: bytes) -> tuple[AttemptKey, ...]:
        known = self._workers.get(worker)
        return tuple(known.attempts) if known else ()

    def reserved(self, worker: bytes) -> Capacity:
        """What the attempts placed on `worker` ask for, summed."""
        known = self._workers.get(worker)
        return known.reserved if known else NO_CAPACITY

    def workers(self, now: float) -> list[WorkerView]:
        return [worker.view(now) for worker in self._workers.values()]

    # ---- handlers --------------------------------------------------------

    def _on_hello(self, event: WorkerHello, now: float) -> list[Effect]:
        effects: list[Effect] = []
        known = self._workers.get(event.worker)
        if known is not None and known.started_at != event.started_at:
            # A new process: whatever the old one ran died with it.
            effects.extend(self._take_back_all(known, now, "worker restarted"))
            known = None
        if known is None:
            joined = self._workers[event.worker] = _Worker(
                node=event.worker, slots=event.slots, cache_capacity_bytes=event.cache_bytes,
                host=event.host, address=event.address, started_at=event.started_at, last_seen=now,
                capacity=event.capacity, sandbox=event.sandbox, facts=event.facts)
            effects.append(WorkerJoined(event.worker, joined.view(now)))
            return effects
        known.slots, known.cache_capacity_bytes = event.slots, event.cache_bytes
        known.capacity, known.sandbox, known.facts = event.capacity, event.sandbox, event.facts
        known.host, known.address, known.last_seen = event.host, event.address, now
        # The next heartbeat re-sends the whole cache.
        known.ready = False
        known.cached.clear()
        known.predicted.clear()
        known.predicted_bytes = 0
        return effects

    def _on_heartbeat(self, event: WorkerHeartbeat, now: float) -> list[Effect]:
        worker = self._workers.get(event.worker)
        if worker is None:
            return [AskHello(event.worker)]
        worker.last_seen = now
        # Removals first: a file evicted and fetched again in one period is present.
        for file_id in event.cache_removed:
            worker.cached.pop(file_id, None)
            worker.forget_predicted(file_id)
        for file_id, size in event.cache_added:
            worker.cached[file_id] = size
            worker.forget_predicted(file_id)
        effects: list[Effect] = []
        to_cancel: list[tuple[bytes, AttemptKey]] = []
        listed = dict.fromkeys(AttemptKey(*item) for item in event.running)
        for key in listed:
            effects.extend(self._claim(worker, key, now, to_cancel))
        for key, placement in list(worker.attempts.items()):
            if key in listed:
                continue
            if placement.cancelled:
                self._release(key, _Ended.CANCELLED)    # it has let go
            elif now - placement.assigned_at > self._lease_s:
                effects.extend(self._take_back(key, now, "worker does not run it"))
        effects.extend(self._shed_overflow(worker, now, to_cancel))
        worker.ready = True
        effects.extend(_cancels(to_cancel))
        return effects

    def _on_dispatched(self, event: Dispatched, now: float) -> list[Effect]:
        for spec in event.jobs:
            self._jobs[spec.job] = spec
        effects: list[Effect] = []
        for attempt in event.attempts:
            key = attempt.key
            if key in self._pending or key in self._owner:
                continue                                # re-sent: already here
            if key in self._ended or key.job in self._cancelled_jobs:
                effects.append(Note(f"ignored dispatch of ended attempt {_name(key)}"))
                continue
            problem = self._cannot_run(key)
            if problem:
                # Refuse loudly instead of holding it forever: the master retries.
                self._remember(key, _Ended.FINAL)
                effects.append(ForwardToMaster(ChunkEvent(
                    job=key.job, chunk=key.chunk, attempt=key.attempt, state=int(ChunkState.REJECTED),
                    worker=NO_WORKER, result=ChunkResult(error=f"load balancer: {problem}"))))
                effects.append(Note(f"rejected dispatch of {_name(key)}: {problem}"))
                continue
            self._pending[key] = attempt
            self._track(key)
        for spec in event.jobs:
            if spec.job not in self._live_per_job:
                self._jobs.pop(spec.job, None)          # keeps memory bounded
        return effects

    def _cannot_run(self, key: AttemptKey) -> str:
        spec = self._jobs.get(key.job)
        if spec is None:
            return "no job spec for it"
        if key.chunk >= spec.chunk_count:
            return f"chunk >= chunk_count {spec.chunk_count}"
        return ""

    def _on_status(self, event: ChunkEvent, now: float) -> list[Effect]:
        key = AttemptKey(event.job, event.chunk, event.attempt)
        if event.state == ChunkState.CANCELLED and self._ended.get(key) in (_Ended.LOST, _Ended.FINAL):
            # A copy this balancer cancelled on its own after reporting the
            # attempt LOST or final: to the master it is lost, never a cancel
            # of the chunk (which a CANCELLED committed before that report,
            # in a batch overtaken by this one, would be).
            event = replace(event, state=int(ChunkState.LOST))
        effects: list[Effect] = [ForwardToMaster(event)]
        worker = self._workers.get(event.worker)
        owner = self._owner.get(key)
        if owner != event.worker:
            effects.append(Note(f"status {ChunkState(event.state).name} of {_name(key)} from "
                                f"{event.worker.hex()}, which it is not assigned to"))
        if worker is None:
            effects.append(AskHello(event.worker))
        else:
            worker.last_seen = now
        if event.state not in FINAL_CHUNK_STATES:
            if worker is None:
                return effects                          # adopt it once the worker said hello
            to_cancel: list[tuple[bytes, AttemptKey]] = []
            effects.extend(self._claim(worker, key, now, to_cancel))
            effects.extend(self._shed_overflow(worker, now, to_cancel))
            return effects + _cancels(to_cancel)
        # A final result settles the attempt even from a worker not (yet) known.
        if key in self._pending:                        # re-sent after a failover, done already
            del self._pending[key]
            self._untrack(key)
        elif owner is not None and owner != event.worker:
            # Another copy still runs elsewhere; this result settles the attempt.
            effects.extend(_cancels([(owner, key)]))
        if key in self._owner:
            self._release(key, _Ended.FINAL)
        else:
            self._remember(key, _Ended.FINAL)
        return effects

    def _on_cancel(self, event: CancelRequested, now: float) -> list[Effect]:
        if event.attempts:
            keys = [AttemptKey(event.job, chunk, attempt) for chunk, attempt in event.attempts]
        else:
            self._cancelled_jobs[event.job] = None
            if len(self._cancelled_jobs) > MAX_REMEMBERED_CANCELLED_JOBS:
                self._cancelled_jobs.popitem(last=False)
            keys = [key for key in (*self._pending, *self._owner) if key.job == event.job]
        to_cancel: list[tuple[bytes, AttemptKey]] = []
        for key in keys:
            if key in self._pending:
                del self._pending[key]
                self._untrack(key)
                self._remember(key, _Ended.CANCELLED)
            elif key in self._owner:
                self._workers[self._owner[key]].attempts[key].cancelled = True
                to_cancel.append((self._owner[key], key))
            elif key not in self._ended:
                self._remember(key, _Ended.CANCELLED)   # a worker may still list it
        return _cancels(to_cancel)

    def _on_tick(self, event: Tick, now: float) -> list[Effect]:
        effects: list[Effect] = []
        for worker in list(self._workers.values()):
            if now - worker.last_seen > self._lease_s:
                effects.append(WorkerLost(worker.node, worker.view(now, state="lost")))
                effects.extend(self._take_back_all(worker, now, "worker lost"))
                del self._workers[worker.node]
        return effects

    # ---- placement -------------------------------------------------------

    def _placement_pass(self, now: float) -> list[Effect]:
        candidates = {w.node: w for w in self._workers.values() if w.free_slots > 0}
        batches: dict[tuple[bytes, bytes], list[Assignment]] = {}
        for key, attempt in list(self._pending.items()):
            if not candidates:
                break
            spec = self._jobs[key.job]
            request = spec.request
            fitting = [w for w in candidates.values() if w.capacity.fits(request, w.reserved)]
            if not fitting:
                continue                                # waits for room, or for a worker it fits
            del self._pending[key]
            inputs = _inputs_of(spec, attempt)
            best = min(fitting, key=lambda w: (
                -w.cached_bytes_of(inputs), len(w.attempts) / w.slots, -w.free_slots, w.node))
            self._place(key, best, now, acknowledged=False, request=request)
            best.predict({spec.program[0]: spec.program[1], **inputs})
            batches.setdefault((best.node, key.job), []).append(
                Assignment(key.chunk, key.attempt, attempt.inputs))
            if best.free_slots == 0:
                del candidates[best.node]
        return [AssignChunks(worker, self._jobs[job], tuple(assignments))
                for (worker, job), assignments in batches.items()]

    # ---- attempt bookkeeping ---------------------------------------------

    def _claim(self, worker: _Worker, key: AttemptKey, now: float,
               to_cancel: list[tuple[bytes, AttemptKey]]) -> list[Effect]:
        """`worker` says it runs `key` (heartbeat or STARTED)."""
        owner = self._owner.get(key)
        if owner == worker.node:
            placement = worker.attempts[key]
            placement.acknowledged = True
            if placement.cancelled:
                to_cancel.append((worker.node, key))    # the first cancel may be lost
            return []
        if key in self._ended or key.job in self._cancelled_jobs:
            to_cancel.append((worker.node, key))        # a stale copy: nobody waits for it
            return []
        if owner is not None:
            to_cancel.extend([(owner, key), (worker.node, key)])
            return [Note(f"{_name(key)} claimed by {owner.hex()} and {worker.node.hex()}"),
                    *self._take_back(key, now, "claimed by two workers")]
        # Adopt: we restarted, or the master re-sent it before this report.
        if self._pending.pop(key, None) is None:
            self._track(key)
        spec = self._jobs.get(key.job)
        # It runs already: its request is reserved even where it does not fit.
        self._place(key, worker, now, acknowledged=True, request=spec.request if spec else NO_CAPACITY)
        return []

    def _shed_overflow(self, worker: _Worker, now: float,
                       to_cancel: list[tuple[bytes, AttemptKey]]) -> list[Effect]:
        """More attempts than slots after adopting: the newest unacknowledged
        ones were sent to a worker that is full and will refuse them."""
        excess = len(worker.attempts) - worker.slots
        if excess <= 0:
            return []
        unacknowledged = [key for key, p in worker.attempts.items() if not p.acknowledged]
        effects: list[Effect] = []
        for key in unacknowledged[::-1][:excess]:
            to_cancel.append((worker.node, key))
            effects.extend(self._take_back(key, now, "worker was full"))
        if len(worker.attempts) > worker.slots:
            effects.append(Note(f"worker {worker.node.hex()} runs {len(worker.attempts)} "
                                f"attempts with {worker.slots} slots"))
        return effects

    def _take_back_all(self, worker: _Worker, now: float, reason: str) -> list[Effect]:
        effects: list[Effect] = []
        for key in list(worker.attempts):
            effects.extend(self._take_back(key, now, reason))
        return effects

    def _take_back(self, key: AttemptKey, now: float, reason: str) -> list[Effect]:
        """Unplace `key` for good; the master hears LOST unless it cancelled it."""
        worker = self._workers[self._owner[key]]
        placement = worker.attempts[key]
        if placement.cancelled:
            self._release(key, _Ended.CANCELLED)
            return []
        self._release(key, _Ended.LOST)
        return [ForwardToMaster(ChunkEvent(
            job=key.job, chunk=key.chunk, attempt=key.attempt, state=int(ChunkState.LOST), worker=worker.node,
            result=ChunkResult(error=reason, elapsed_s=max(0.0, now - placement.assigned_at))))]

    def _place(self, key: AttemptKey, worker: _Worker, now: float, acknowledged: bool,
               request: Capacity) -> None:
        worker.attempts[key] = _Placement(now, acknowledged, request)
        worker.reserved = worker.reserved + request
        self._owner[key] = worker.node

    def _release(self, key: AttemptKey, how: _Ended) -> None:
        worker = self._workers[self._owner.pop(key)]
        worker.reserved = worker.reserved - worker.attempts.pop(key).request
        self._untrack(key)
        self._remember(key, how)

    def _track(self, key: AttemptKey) -> None:
        self._live_per_job[key.job] = self._live_per_job.get(key.job, 0) + 1

    def _untrack(self, key: AttemptKey) -> None:
        remaining = self._live_per_job[key.job] - 1
        if remaining:
            self._live_per_job[key.job] = remaining
        else:
            del self._live_per_job[key.job]
            self._jobs.pop(key.job, None)

    def _remember(self, key: AttemptKey, how: _Ended) -> None:
        self._ended[key] = how
        self._ended.move_to_end(key)
        if len(self._ended) > MAX_REMEMBERED_ENDED_ATTEMPTS:
            self._ended.popitem(last=False)


def _inputs_of(spec: JobSpec, attempt: DispatchAttempt) -> dict[bytes, int]:
    """Every input file the attempt can read, each id once, with its size.

    The program is left out of placement: every chunk of a job shares it, so
    counting it would pile a job's chunks onto whichever worker ran the
    first one instead of spreading them over idle workers."""
    files: dict[bytes, int] = {}
    for file_id, size in (*spec.inputs.values(), *attempt.inputs.values()):
        files[file_id] = size
    return files


def _cancels(pairs: list[tuple[bytes, AttemptKey]]) -> list[Effect]:
    """One CancelOnWorker per worker and job, in first-seen order, no repeats."""
    grouped: dict[tuple[bytes, bytes], dict[tuple[int, int], None]] = {}
    for worker, key in pairs:
        grouped.setdefault((worker, key.job), {})[(key.chunk, key.attempt)] = None
    return [CancelOnWorker(worker, job, tuple(attempts))
            for (worker, job), attempts in grouped.items()]


def _name(key: AttemptKey) -> str:
    return f"{key.job.hex()}/{key.chunk}/{key.attempt}"
