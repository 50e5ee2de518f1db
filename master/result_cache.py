"""The result cache: a chunk whose inputs, program and settings hash to the
key of an earlier success is not run again; it takes that success's result
(the same output and log files).

Rules of this module:
- Pure, like master/state.py, and plain picklable data: the cache is part of
  the replicated state, so every replica holds the same entries.
- The key covers everything a chunk's run depends on that the masters know:
  the program's id, the args, the environment the job sets (none can be set
  today, so it is empty), the id of every input the chunk sees by name
  (job-wide and its own, refs resolved), its index and the chunk count, and
  the limits. Two chunks with equal keys are taken to compute the same
  outputs: caching is asked for per job (`cache=True`), by a user who knows
  the program is deterministic.
- In-flight deduplication: while a chunk runs for a key (the key's runner),
  another chunk with that key waits as its twin; the runner's success is the
  twins' result, and a runner that ends otherwise hands the key on.
- Bounded: at most HARD_LIMIT entries whatever the leader's settings; the
  leader's PruneCache applies the cluster file's count and age.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator

import msgpack

from uds.master.commands import FileRef, SubmitJob

# Entries kept whatever PruneCache says: one entry costs about 150 bytes
# plus its packed result.
HARD_LIMIT = 1_000_000

ChunkKey = tuple[bytes, int]


def cache_key(spec: SubmitJob, inputs: dict[str, FileRef], chunk_inputs: dict[str, FileRef],
              chunk: int) -> bytes:
    """The 16-byte key of chunk `chunk` of a job with this spec, given the
    inputs it sees (refs resolved). Sizes are left out: an id is a hash of
    the content."""
    seen = sorted((name, ref[0]) for name, ref in (*inputs.items(), *chunk_inputs.items()))
    environment: list = []      # a job sets no variables of its own yet
    material = msgpack.packb(
        ["uds-chunk-v1", spec.program[0], list(spec.args), environment, seen, chunk, spec.chunk_count,
         sorted(spec.limits.as_body().items()), spec.network], use_bin_type=True)
    return hashlib.blake2b(material, digest_size=16).digest()


@dataclass(slots=True)
class ResultCache:
    # key -> (last used, packed result), least recently used first.
    entries: OrderedDict[bytes, tuple[float, bytes]] = field(default_factory=OrderedDict)
    runners: dict[bytes, ChunkKey] = field(default_factory=dict)
    twins: dict[bytes, list[ChunkKey]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, key: bytes, now: float) -> bytes | None:
        """The packed result recorded for `key`, marked as used now; or None."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.entries[key] = (now, entry[1])
        self.entries.move_to_end(key)
        return entry[1]

    def record(self, key: bytes, packed_result: bytes, now: float) -> list[bytes]:
        """Keep a success; the packed results dropped to stay within HARD_LIMIT."""
        self.entries[key] = (now, packed_result)
        self.entries.move_to_end(key)
        dropped = []
        while len(self.entries) > HARD_LIMIT:
            dropped.append(self.entries.popitem(last=False)[1][1])
        return dropped

    def claim(self, key: bytes, chunk: ChunkKey) -> bool:
        """True: `chunk` runs for the key. False: another chunk does, and
        `chunk` waits for it as a twin."""
        runner = self.runners.get(key)
        if runner is None or runner == chunk:
            self.runners[key] = chunk
            return True
        self.twins.setdefault(key, []).append(chunk)
        return False

    def settle(self, key: bytes, chunk: ChunkKey) -> list[ChunkKey]:
        """`chunk` stopped running for the key (it ended, or its job did):
        the twins that waited for it, no longer waiting for anything."""
        if self.runners.get(key) != chunk:
            return []
        del self.runners[key]
        return self.twins.pop(key, [])

    def drop_twin(self, key: bytes, chunk: ChunkKey) -> None:
        """A twin's job ended: it waits no more."""
        waiting = self.twins.get(key)
        if waiting and chunk in waiting:
            waiting.remove(chunk)
            if not waiting:
                del self.twins[key]

    def prune(self, now: float, max_age_s: float, max_entries: int) -> list[bytes]:
        """Drop entries unused for longer than `max_age_s`, then the least
        recently used beyond `max_entries`; their packed results."""
        dropped = []
        while self.entries:
            key, (used_at, packed) = next(iter(self.entries.items()))
            if used_at >= now - max_age_s and len(self.entries) <= max_entries:
                break
            del self.entries[key]
            dropped.append(packed)
        return dropped

    def packed_results(self) -> Iterator[bytes]:
        for _used_at, packed in self.entries.values():
            yield packed
