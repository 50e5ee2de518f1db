"""Garbage collection, the node's side: which blobs to ask the masters
about, in what pages, and what one pass found and deleted.

Rules (the protocol is in doc/storage.md):
- A candidate is a blob unused (mtime) for longer than the grace period,
  by this node's clock, at the moment of the listing.
- The leader is asked gc_check in pages of at most MAX_FILES_PER_MESSAGE
  ids, one page at a time. Only ids that were asked count in an answer.
- The shell deletes an answered blob only if its mtime is still older
  than the grace period at the moment of deletion (BlobStore.delete_if_idle,
  under the lock that touches take); a dry run deletes nothing and
  reports every answered candidate.
- A page the leader did not answer deletes nothing; the pass ends there.
- A blob collected here is not taken back from a repair offer for the
  grace period after (Tombstones): another holder whose copy the leader
  would clear too would otherwise hand it back with a fresh mtime, and
  the two would pass it to and fro for ever. A put of it ends its
  tombstone: anything that references the file again put it first.

Pure: no sockets, no clock, no files.
"""
from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

from uds.storage.blobstore import BlobInfo
from uds.wire.storage_messages import MAX_FILES_PER_MESSAGE


def candidates(blobs: Iterable[BlobInfo], now_unix: float, grace_s: float) -> list[BlobInfo]:
    """The blobs unused for longer than the grace period, oldest first."""
    cutoff = now_unix - grace_s
    return sorted((blob for blob in blobs if blob.mtime < cutoff), key=lambda blob: (blob.mtime, blob.file_id))


@dataclass
class GcPass:
    """One collection pass: its candidates, the pages asked, and the outcome."""

    dry_run: bool
    candidates: list[BlobInfo]
    page_size: int = MAX_FILES_PER_MESSAGE
    asked: int = 0                               # candidates sent in pages so far
    page: list[BlobInfo] = field(default_factory=list)
    # (id, size) of what was deleted or, on a dry run, would be.
    collected: list[tuple[bytes, int]] = field(default_factory=list)
    kept_in_use: int = 0                         # answered, but used since the listing
    complete: bool = False                       # every page answered

    def next_page(self) -> list[bytes] | None:
        """The ids to ask about next; None once every page was asked."""
        if self.asked >= len(self.candidates):
            self.complete = True
            self.page = []
            return None
        self.page = self.candidates[self.asked:self.asked + self.page_size]
        self.asked += len(self.page)
        return [blob.file_id for blob in self.page]

    def answered(self, files: Iterable[bytes]) -> list[BlobInfo]:
        """The leader's answer to the current page: the blobs it clears, in
        the page's order (ids it was not asked about are ignored)."""
        cleared = {bytes(file_id) for file_id in files}
        return [blob for blob in self.page if blob.file_id in cleared]

    def deleted(self, blob: BlobInfo, size: int | None) -> None:
        """The shell's deletion of a cleared blob: its size, or None if it
        was used since the listing (or is gone) and so kept."""
        if size is None:
            self.kept_in_use += 1
        else:
            self.collected.append((blob.file_id, size))

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.collected)


class Tombstones:
    """The blobs collected here within the last `keep_s` seconds: id ->
    when, oldest first. Time comes in."""

    def __init__(self, keep_s: float) -> None:
        self.keep_s = keep_s
        self._when: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._when)

    def collected(self, file_id: bytes, now: float) -> None:
        self._when.pop(file_id, None)
        self._when[file_id] = now
        self.prune(now)

    def put_again(self, file_id: bytes) -> None:
        self._when.pop(file_id, None)

    def refuses(self, file_id: bytes, now: float) -> bool:
        """Whether an offer of `file_id` is turned down: collected within keep_s."""
        self.prune(now)
        return file_id in self._when

    def prune(self, now: float) -> None:
        while self._when:
            file_id, when = next(iter(self._when.items()))
            if now - when < self.keep_s:
                return
            del self._when[file_id]
