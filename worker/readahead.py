"""Read-ahead for the worker's block cache (worker/cache.py): the blocks after
a sequential reader are fetched by a small pool before the reader asks.

Rules:
- `Readahead` is part of BlockCache, which inherits it: it takes the cache's
  one lock for every change to a file's entry, never holds it across a fetch,
  and fetches through the cache's `_fetch_claimed`, so a block fetched ahead
  is checked against its manifest like any other.
- A reader is sequential when each read starts near where the previous one
  ended and goes further; read-ahead starts only after SEQUENTIAL_TRIGGER_BYTES
  of such reads, and at most READAHEAD_MAX_PENDING_BLOCKS fetches wait or run.
- A read-ahead task holds a reference on the entry (`users`) until it ends; a
  failed one is only logged: the reader fetches the block itself when it gets
  there.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable

from uds.wire.ids import BlockManifest

if TYPE_CHECKING:
    from .cache import _CachedFile

log = logging.getLogger(__name__)

READAHEAD_BLOCKS = 8  # 8 MiB ahead of a sequential reader hides ~8 fetch latencies
READAHEAD_THREADS = 4  # fetches in flight for read-ahead, across all files
READAHEAD_MAX_PENDING_BLOCKS = 32  # queued + running read-ahead fetches; beyond this, skip
SEQUENTIAL_SLACK_BYTES = 256 * 1024  # the kernel keeps ~2 reads of 128 KiB in flight, slightly out of order
SEQUENTIAL_TRIGGER_BYTES = 256 * 1024  # read this much in a row before read-ahead: the kernel's own
#   read-ahead turns a few small nearby reads into a short stream that would not use 8 MiB


class Readahead:
    """BlockCache's read-ahead; what it uses of the cache is declared below."""

    _lock: threading.Lock
    _changed: threading.Condition
    _closed: bool
    _readahead_blocks: int
    _readahead_pending: int
    _readahead_pool: ThreadPoolExecutor
    _fetch_claimed: Callable[[_CachedFile, BlockManifest | None, int], int]
    _release: Callable[[_CachedFile], None]

    def _schedule_readahead(self, entry: _CachedFile, manifest: BlockManifest | None, offset: int,
                            length: int, last: int) -> int:
        """Hand the blocks after a sequential read to the read-ahead pool; returns their bytes."""
        claimed = []
        with self._lock:
            # near where the previous read ended, and going further: a re-read is not a stream
            sequential = (entry.next_offset >= 0 and abs(offset - entry.next_offset) <= SEQUENTIAL_SLACK_BYTES
                          and offset + length > entry.next_offset)
            entry.run_bytes = entry.run_bytes + length if sequential else length
            entry.next_offset = offset + length
            if entry.run_bytes < SEQUENTIAL_TRIGGER_BYTES:
                return 0
            end = min(last + self._readahead_blocks, entry.block_count - 1)
            for index in range(max(last + 1, entry.readahead_upto + 1), end + 1):
                if self._readahead_pending >= READAHEAD_MAX_PENDING_BLOCKS:
                    break
                entry.readahead_upto = index
                if index in entry.present or index in entry.fetching:
                    continue
                entry.fetching.add(index)
                entry.users += 1  # the task's reference; released when it ends
                self._readahead_pending += 1
                claimed.append(index)
        for position, index in enumerate(claimed):
            try:
                self._readahead_pool.submit(self._readahead_task, entry, manifest, index)
            except RuntimeError:  # the pool is shut down: the cache is closing
                for unsubmitted in claimed[position:]:
                    self._end_readahead(entry, unsubmitted, fetched=False)
                return 0
        return sum(entry.block_length(index) for index in claimed)

    def _readahead_task(self, entry: _CachedFile, manifest: BlockManifest | None, index: int) -> None:
        if self._closed:  # queued before close(): drop it
            self._end_readahead(entry, index, fetched=False)
            return
        try:
            self._fetch_claimed(entry, manifest, index)
        except Exception as error:  # the reader fetches the block itself when it gets there
            log.warning("read-ahead of %s block %d failed: %r", entry.file_id.hex(), index, error)
        finally:
            self._end_readahead(entry, index, fetched=True)

    def _end_readahead(self, entry: _CachedFile, index: int, fetched: bool) -> None:
        with self._lock:
            self._readahead_pending -= 1
            if not fetched:
                entry.fetching.discard(index)
                self._changed.notify_all()
        self._release(entry)
