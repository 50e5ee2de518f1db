"""Known bugs planted in the real cores, to prove the simulation catches
them. Each is a patch of a module as it is loaded (master/state.py's
handler table or methods, wire/leader_search.py's LeaderSearch, the
simulation's model of the Raft group), applied by `planted(name)` and
undone afterwards.

- stale_result_accepted: the fence is gone for results: a late SUCCEEDED
  of an earlier attempt becomes the chunk's result whatever the chunk does.
- stale_result_accepted_in_flight: the subtle one: the fence lets an earlier
  attempt through only while the chunk's newer attempt is dispatched or
  running (a one-line change of `_apply_chunk_event`).
- lost_chunk_never_redispatched: a lost attempt (its worker lost, restarted,
  or refusing it) is counted but no new attempt is queued.
- duplicate_result_committed_twice: a repeated SUCCEEDED of the attempt that
  already succeeded is committed again.
- leader_search_ignores_silence: the search for the leader never takes a
  silent master for gone (LeaderSearch.overdue is always False): it moves
  on only when a master refuses, as before issue 9, so a dead or frozen
  leader keeps the balancers and clients.
- deposed_leader_acknowledges: the masters' leadership is not confirmed: a
  leader cut off from the others goes on as leader for pysyncobj's 30 s
  fallback, and what it proposes commits, as if the group needed no
  majority; so it acknowledges while the new leader does.
- reads_never_fail_over: storage/placement.py's read_order names only the
  first live node, so a read gives up when that one is down or lacks the
  file, though another holds it.
- replica_set_counts_lost_nodes: replica_set takes the top R nodes whether
  alive or lost, so repair never puts a lost node's files back on R live
  nodes.
- dependents_released_on_first_success: a job waiting for several jobs
  is released when the first of them succeeds, not the last (one line of
  master/workflow.py's `settle_dependents`).
- new_leader_never_fires_timers: a leader that takes office after the
  first believes a RunTimers of its own is outstanding, so it never
  proposes one: start times, deadlines and backoffs wait for ever.
- same_chunk_ref_reads_chunk_zero: a SAME_CHUNK reference gives every
  chunk the producer's chunk 0 output (master/workflow.py's `resolve_from`).
- twins_run_at_once: the result cache's in-flight deduplication is gone:
  a chunk whose twin is running runs too.
- events_query_repeats_its_cursor: an events_query is answered from the
  event at `after_seq`, not after it (one character of
  master/event_log.py's `events_matching`), so a subscriber reads one
  event twice at each request.
"""
from __future__ import annotations

import inspect
import textwrap
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator

from uds.master import client_requests, event_log, housekeeping, workflow
from uds.master import state as state_module
from uds.master.result_cache import ResultCache
from uds.storage import placement, repair
from uds.master.commands import FINAL_PHASES, ChunkEvent, ChunkPhase
from uds.master.state import CHUNK_SUCCEEDED, ChunkAction, ChunkEventOutcome, ClusterState
from uds.wire.enums import ChunkState
from uds.wire.leader_search import LeaderSearch

from . import storage_repair
from .raft_group import RaftGroup

Patch = tuple[Any, str, Any]        # (object, attribute or key, new value)


def _chunk_of(state: ClusterState, event: ChunkEvent):
    record = state.job_records.get(event.job)
    if record is None or type(event.chunk) is not int or not 0 <= event.chunk < len(record.chunks):
        return None, None
    return record, record.chunks[event.chunk]


def _stale_result_accepted() -> list[Patch]:
    original = state_module._HANDLERS[ChunkEvent]

    def apply(state: ClusterState, event: ChunkEvent, now: float):
        record, chunk = _chunk_of(state, event)
        if (chunk is not None and event.state == ChunkState.SUCCEEDED and event.attempt < chunk.attempt
                and chunk.phase not in FINAL_PHASES):
            if chunk.phase is ChunkPhase.QUEUED:
                state_module._move(state.queued, state.dispatched, (event.job, event.chunk))
                chunk.phase = ChunkPhase.DISPATCHED
            event = replace(event, attempt=chunk.attempt)
        return original(state, event, now)

    return [(state_module._HANDLERS, ChunkEvent, apply)]


def _source_patched(function: Callable, old: str, new: str, module: Any = state_module) -> Callable:
    """`function` compiled again from its source with `old` replaced by
    `new`, in the namespace of `module`."""
    source = textwrap.dedent(inspect.getsource(function))
    if source.count(old) != 1:
        raise LookupError(f"{function.__qualname__} no longer contains {old!r}")
    namespace = dict(vars(module))
    exec(compile(source.replace(old, new), module.__file__, "exec"), namespace)
    return namespace[function.__name__]


def _stale_result_accepted_in_flight() -> list[Patch]:
    patched = _source_patched(
        ClusterState._apply_chunk_event, "if event.attempt != chunk.attempt:",
        "if event.attempt != chunk.attempt and chunk.phase not in IN_FLIGHT_PHASES:")
    return [(state_module._HANDLERS, ChunkEvent, patched)]


def _lost_chunk_never_redispatched() -> list[Patch]:
    def lose(state: ClusterState, job_record, event: ChunkEvent, chunk, now: float) -> None:
        chunk.lost_count += 1           # counted, but the attempt stays in flight

    return [(state_module._ACTIONS, ChunkAction.LOSE, lose), (ClusterState, "_lose", lose)]


def _duplicate_result_committed_twice() -> list[Patch]:
    original = state_module._HANDLERS[ChunkEvent]

    def apply(state: ClusterState, event: ChunkEvent, now: float):
        record, chunk = _chunk_of(state, event)
        if (chunk is not None and chunk.phase is ChunkPhase.SUCCEEDED and event.attempt == chunk.attempt
                and event.state == ChunkState.SUCCEEDED):
            record.chunks_succeeded += 1
            state._log(now, CHUNK_SUCCEEDED, job=event.job, chunk=event.chunk, attempt=event.attempt,
                       node=event.worker)
            return ChunkEventOutcome(phase=chunk.phase.label)
        return original(state, event, now)

    return [(state_module._HANDLERS, ChunkEvent, apply)]


def _leader_search_ignores_silence() -> list[Patch]:
    def overdue(self: LeaderSearch, now: float, patience_s: float = 0.0) -> bool:
        return False

    return [(LeaderSearch, "overdue", overdue)]


def _deposed_leader_acknowledges() -> list[Patch]:
    return [(RaftGroup, "unconfirmed_leadership", True)]


def _reads_never_fail_over() -> list[Patch]:
    original = placement.read_order

    def read_order(file_id: bytes, members):
        return original(file_id, members)[:1]

    return [(placement, "read_order", read_order)]


def _replica_set_counts_lost_nodes() -> list[Patch]:
    def replica_set(file_id: bytes, members, replicas: int):
        return placement.rendezvous_order(file_id, members)[:replicas]

    return [(module, "replica_set", replica_set) for module in (placement, repair, storage_repair)]


def _dependents_released_on_first_success() -> list[Patch]:
    patched = _source_patched(
        workflow.settle_dependents,
        "dependent.waiting_for = tuple(other for other in dependent.waiting_for if other != job)",
        "dependent.waiting_for = ()", workflow)
    return [(workflow, "settle_dependents", patched)]


# The first leader takes office within this long of the start; a later one is new.
FIRST_OFFICE_S = 0.2


def _new_leader_never_fires_timers() -> list[Patch]:
    original = housekeeping.Housekeeping._housekeeping_take_office

    def take_office(self, now: float) -> None:
        original(self, now)
        if now > FIRST_OFFICE_S:
            self._firing_timers = True

    return [(housekeeping.Housekeeping, "_housekeeping_take_office", take_office)]


def _same_chunk_ref_reads_chunk_zero() -> list[Patch]:
    patched = _source_patched(workflow.resolve_from, "targets = [(chunk_inputs[index], ref.name, index)",
                              "targets = [(chunk_inputs[index], ref.name, 0)", workflow)
    return [(workflow, "resolve_from", patched)]


def _twins_run_at_once() -> list[Patch]:
    def claim(self: ResultCache, key: bytes, chunk) -> bool:
        self.runners[key] = chunk
        return True

    return [(ResultCache, "claim", claim)]


def _events_query_repeats_its_cursor() -> list[Patch]:
    patched = _source_patched(event_log.events_matching, "start_seq = max(after_seq + 1, first_kept)",
                              "start_seq = max(after_seq, first_kept)", event_log)
    return [(client_requests, "events_matching", patched)]


BUGS: dict[str, Callable[[], list[Patch]]] = {
    "stale_result_accepted": _stale_result_accepted,
    "stale_result_accepted_in_flight": _stale_result_accepted_in_flight,
    "lost_chunk_never_redispatched": _lost_chunk_never_redispatched,
    "duplicate_result_committed_twice": _duplicate_result_committed_twice,
    "leader_search_ignores_silence": _leader_search_ignores_silence,
    "deposed_leader_acknowledges": _deposed_leader_acknowledges,
    "reads_never_fail_over": _reads_never_fail_over,
    "replica_set_counts_lost_nodes": _replica_set_counts_lost_nodes,
    "dependents_released_on_first_success": _dependents_released_on_first_success,
    "new_leader_never_fires_timers": _new_leader_never_fires_timers,
    "same_chunk_ref_reads_chunk_zero": _same_chunk_ref_reads_chunk_zero,
    "twins_run_at_once": _twins_run_at_once,
    "events_query_repeats_its_cursor": _events_query_repeats_its_cursor,
}


@contextmanager
def planted(name: str) -> Iterator[None]:
    patches = BUGS[name]()
    saved = []
    for target, key, value in patches:
        if isinstance(target, dict):
            saved.append((target, key, target[key]))
            target[key] = value
        else:
            saved.append((target, key, target.__dict__[key]))
            setattr(target, key, value)
    try:
        yield
    finally:
        for target, key, value in reversed(saved):
            if isinstance(target, dict):
                target[key] = value
            else:
                setattr(target, key, value)
