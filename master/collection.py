"""Garbage collection, the masters' side: what keeps a file from being
collected, and which of the files a storage node asks about may go.

A storage node asks the leader (`gc_check`) about blobs it has not used for
longer than the grace period; the leader answers those that
- no retained job references (its program, inputs, chunk inputs, and the
  outputs, stdout and stderr of its chunks' attempts, past ones included),
- no result in the result cache references (master/result_cache.py),
- no pin covers (a pin covers until `until + gc_grace_s`),
- no job forgotten within `gc_grace_s` referenced (a release).
doc/storage.md gives the whole protocol; doc/master.md its cost here.

Rules of this module:
- Pure, like master/state.py: nothing here reads the clock or touches files.
  Pins and releases are replicated state (`FileHolds`, the state's `holds`),
  changed only by commands applied with their `now` and the grace they
  carry, so every replica drops the same ones at the same entry.
- Both are bounded: at most MAX_PINS pins (a pin beyond is refused), and
  releases are dropped gc_grace_s after they were made. A release is the
  forgotten jobs' file ids packed together, 16 bytes each.
- Answering a gc_check reads the state in two steps: `reference_snapshot`
  under the state's lock, which copies only references to immutable values
  (job specs, packed chunk results, packed releases), and `collectable`
  outside it, which does the unpacking. The leader takes the snapshot only
  once a command it proposed after the gc_check arrived has committed
  (master/storage_requests.py), so no reference committed before the
  request can be missing from it.
"""
from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator

import msgpack

from uds.master.attempts import past_results
from uds.master.commands import (
    PinFiles, PinOutcome, PruneCollection, PruneOutcome, SubmitJob, is_id,
)
from uds.wire.enums import ErrorCode
from uds.wire.ids import ID_BYTES

if TYPE_CHECKING:
    from uds.master.records import JobRecord
    from uds.master.state import ClusterState

# Pins every replica may hold: about 100 bytes each, so 100 MB at most.
MAX_PINS = 1_000_000
# Where a packed chunk result (commands.pack_result) keeps its files.
_OUTPUTS, _STDOUT, _STDERR = 1, 2, 3


@dataclass(slots=True)
class FileHolds:
    """Pins (file -> until, unix seconds) and releases ((released at, the
    ids packed), oldest first). `_expiries` is a heap of (until, file) over
    the pins, with stale entries for pins lengthened since; it is rebuilt
    on load rather than pickled."""

    pins: dict[bytes, float] = field(default_factory=dict)
    releases: deque[tuple[float, bytes]] = field(default_factory=deque)
    _expiries: list[tuple[float, bytes]] = field(default_factory=list, compare=False, repr=False)

    def __getstate__(self) -> tuple:
        return (self.pins, self.releases)

    def __setstate__(self, values: tuple) -> None:
        self.pins, self.releases = values
        self._rebuild_expiries()

    def pin(self, files: Iterable[bytes], until: float) -> None:
        for file in files:
            if self.pins.get(file, -math.inf) < until:
                self.pins[file] = until
                heapq.heappush(self._expiries, (until, file))
        if len(self._expiries) > 2 * len(self.pins) + 1024:
            self._rebuild_expiries()

    def release(self, files: Iterable[bytes], now: float) -> None:
        packed = b"".join(dict.fromkeys(files))
        if packed:
            self.releases.append((now, packed))

    def prune(self, now: float, grace_s: float) -> PruneOutcome:
        """Drop the pins that expired, and the releases made, more than
        `grace_s` before `now`. Costs O(what it drops)."""
        pins_dropped = releases_dropped = 0
        while self._expiries and self._expiries[0][0] + grace_s <= now:
            until, file = heapq.heappop(self._expiries)
            if self.pins.get(file) == until:
                del self.pins[file]
                pins_dropped += 1
        while self.releases and self.releases[0][0] + grace_s <= now:
            releases_dropped += len(self.releases.popleft()[1]) // ID_BYTES
        return PruneOutcome(pins_dropped=pins_dropped, releases_dropped=releases_dropped)

    def pinned(self, file: bytes, now: float, grace_s: float) -> bool:
        until = self.pins.get(file)
        return until is not None and until + grace_s > now

    def recent_releases(self, now: float, grace_s: float) -> list[bytes]:
        """The packed ids of the releases made within `grace_s` of `now`."""
        return [packed for at, packed in self.releases if at + grace_s > now]

    def _rebuild_expiries(self) -> None:
        self._expiries = [(until, file) for file, until in self.pins.items()]
        heapq.heapify(self._expiries)


def _is_grace(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


def pin_files(state: ClusterState, command: PinFiles, now: float) -> PinOutcome:
    """Apply PinFiles: every file listed is held until `until` at least,
    unless the pins would pass MAX_PINS (then nothing changes)."""
    files, until, grace_s = command.files, command.until, command.gc_grace_s
    if (not isinstance(files, (tuple, list)) or not all(is_id(file) for file in files)
            or type(until) not in (int, float) or not math.isfinite(until) or not _is_grace(grace_s)):
        return PinOutcome(ok=False, error="PinFiles needs file ids, an end and a grace in seconds",
                          error_code=ErrorCode.INVALID)
    holds = state.holds
    holds.prune(now, grace_s)
    unique = dict.fromkeys(files)
    added = sum(1 for file in unique if file not in holds.pins)
    if len(holds.pins) + added > MAX_PINS:
        return PinOutcome(ok=False, error=(
            f"{len(holds.pins)} files are pinned and {added} more would pass the bound of {MAX_PINS}: "
            f"pin fewer, or for less time"), error_code=ErrorCode.TOO_LARGE)
    holds.pin(unique, float(until))
    return PinOutcome(pinned=len(unique))


def prune_collection(state: ClusterState, command: PruneCollection, now: float) -> PruneOutcome:
    if not _is_grace(command.gc_grace_s):
        return PruneOutcome(ok=False, error="PruneCollection needs a grace in seconds",
                            error_code=ErrorCode.INVALID)
    return state.holds.prune(now, command.gc_grace_s)


def release_jobs(state: ClusterState, records: list[JobRecord], now: float, grace_s: float) -> None:
    """The files of jobs leaving the state are released at `now`; releases
    past the grace are dropped (ForgetJobs, master/retention.py)."""
    holds = state.holds
    holds.prune(now, grace_s if _is_grace(grace_s) else 0.0)
    holds.release((file for record in records
                   for file in files_of(record.spec, _chunk_results(record), record.resolved)), now)


def _chunk_results(record: JobRecord) -> Iterator[bytes | None]:
    """The packed results of every attempt the job's chunks keep."""
    for chunk in record.chunks:
        yield chunk.packed_result
        if chunk.past:
            yield from past_results(chunk.past)


def release_packed_results(state: ClusterState, packed_results: list[bytes], now: float) -> None:
    """The files of results that leave the result cache are released at `now`."""
    state.holds.release(result_files(packed_results), now)


def files_of(spec: SubmitJob, packed_results: Iterable[bytes | None],
             resolved: tuple[dict, tuple] | None = None) -> Iterator[bytes]:
    """The ids of every file a job references: its program, inputs and chunk
    inputs (`resolved`: with its refs resolved), and the outputs, stdout and
    stderr of its chunks' results (packed as commands.pack_result packs
    them; None: no result yet)."""
    yield spec.program[0]
    inputs, chunk_inputs = (spec.inputs, spec.chunk_inputs) if resolved is None else resolved
    for file, _size in inputs.values():
        yield file
    for per_chunk in chunk_inputs:
        for file, _size in per_chunk.values():
            yield file
    yield from result_files(packed_results)


def result_files(packed_results: Iterable[bytes | None]) -> Iterator[bytes]:
    """The outputs, stdout and stderr of packed results."""
    for packed in packed_results:
        if packed is None:
            continue
        fields = msgpack.unpackb(packed, raw=False, use_list=False)
        for file, _size in fields[_OUTPUTS].values():
            yield file
        for log in (fields[_STDOUT], fields[_STDERR]):
            if log is not None:
                yield log[0]


@dataclass(frozen=True, slots=True)
class ReferenceSnapshot:
    """What a gc_check needs of the state, copied under its lock: the asked
    files that a pin or a release holds, and what to unpack for the rest."""

    asked: frozenset[bytes]
    held: frozenset[bytes]
    # Every retained job: its spec, its chunks' packed results, its resolved
    # inputs, and the `past` of its chunks that have past attempts.
    jobs: tuple[tuple[SubmitJob, tuple[bytes | None, ...], tuple | None, tuple[bytes, ...]], ...]
    releases: tuple[bytes, ...]                                     # packed ids, within the grace
    cached: tuple[bytes, ...] = ()                                  # the result cache's packed results

    def collectable(self) -> set[bytes]:
        """The asked files that nothing references or holds."""
        free = set(self.asked - self.held)
        for packed in self.releases:
            for at in range(0, len(packed), ID_BYTES):
                free.discard(packed[at:at + ID_BYTES])
        for spec, results, resolved, pasts in self.jobs:
            if not free:
                break
            for file in files_of(spec, results, resolved):
                free.discard(file)
            for past in pasts:
                free.difference_update(result_files(past_results(past)))
        if free:
            free.difference_update(result_files(self.cached))
        return free


def reference_snapshot(state: ClusterState, asked: Iterable[bytes], now: float,
                       grace_s: float) -> ReferenceSnapshot:
    """Under the state's lock: O(asked + chunks), copying only references."""
    asked = frozenset(asked)
    holds = state.holds
    return ReferenceSnapshot(
        asked=asked,
        held=frozenset(file for file in asked if holds.pinned(file, now, grace_s)),
        jobs=tuple((record.spec, tuple([chunk.packed_result for chunk in record.chunks]), record.resolved,
                    tuple([chunk.past for chunk in record.chunks if chunk.past]))
                   for record in state.job_records.values()),
        releases=tuple(holds.recent_releases(now, grace_s)),
        cached=tuple(state.result_cache.packed_results()))
