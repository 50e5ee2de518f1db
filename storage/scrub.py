"""The scrub: re-hash every blob in the background, at a bounded rate, and
take a blob that no longer hashes to its id out of service.

Rules:
- A pass visits the blobs in id order, starting after the last one it
  finished (DATA/scrub_position, written every SAVE_EVERY blobs and at the
  end of a pass): in a cycle through the ids, the next one is the one
  scrubbed longest ago, and a restart resumes where the pass was instead of
  starting over. A blob stored since is met when the cycle reaches its id.
- A pass starts at most every scrub_interval_s; between passes the thread
  only waits.
- Bytes hashed keep to scrub_bytes_per_s (storage/pacing.py).
- A blob that does not hash to its id (or whose size disagrees with its
  manifest's) is handed to `on_corrupt`: the node moves it to
  DATA/corrupt/, counts it and pulls a good copy from another replica.
- A blob deleted while it is read (collection) is skipped.
"""
from __future__ import annotations

import logging
import os
import pathlib
import threading
import time
from collections.abc import Callable, Iterable

from uds.storage.blobstore import BlobStore
from uds.storage.pacing import Pacer
from uds.wire.ids import BLOCK_BYTES, FileHasher

POSITION_FILE = "scrub_position"
# Blobs between two saves of the position: a crash repeats at most these.
SAVE_EVERY = 100

COUNTER_NAMES = ("scrubbed_blobs", "scrubbed_bytes", "scrub_passes", "scrub_errors")

log = logging.getLogger("storage.scrub")


def scrub_order(file_ids: Iterable[bytes], position: bytes | None) -> list[bytes]:
    """The rest of the pass: ids after `position` in id order (all of them
    when there is no position). Pure."""
    return sorted(file_id for file_id in file_ids if position is None or file_id > position)


def blob_is_sound(path: pathlib.Path, file_id: bytes, pause: Callable[[int], None]) -> bool | None:
    """Whether the blob at `path` hashes to `file_id`; None if it is gone.
    `pause(nbytes)` after each block keeps the rate."""
    hasher = FileHasher()
    try:
        with open(path, "rb", buffering=0) as blob:
            while block := blob.read(BLOCK_BYTES):
                hasher.update(block)
                pause(len(block))
    except FileNotFoundError:
        return None
    return hasher.digest() == file_id


class Scrubber(threading.Thread):
    """The scrub's thread; see the module's rules."""

    def __init__(self, store: BlobStore, bytes_per_s: int, interval_s: float,
                 on_corrupt: Callable[[bytes], None], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name="storage-scrub", daemon=True)
        self.store = store
        self.pacer = Pacer(bytes_per_s)
        self.interval_s = interval_s
        self.on_corrupt = on_corrupt
        self.clock = clock
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.position_path = store.root / POSITION_FILE
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.is_set():
            started = self.clock()
            try:
                self.scrub_pass()
            except Exception:  # noqa: BLE001 - a disk fault ends the pass, not the scrub
                log.exception("scrub pass failed")
                self.counters["scrub_errors"] += 1
            self._stopping.wait(max(0.0, started + self.interval_s - self.clock()))

    def scrub_pass(self) -> None:
        order = scrub_order((blob.file_id for blob in self.store.list_blobs()), self._load_position())
        for done, file_id in enumerate(order, 1):
            if self._stopping.is_set():
                if done > 1:
                    self._save_position(order[done - 2])
                return
            try:
                sound = blob_is_sound(self.store.path_of(file_id), file_id, self._pause)
            except OSError as fault:        # unreadable: not proof of damage, and not sound either
                log.error("scrub cannot read %s: %s", file_id.hex(), fault)
                self.counters["scrub_errors"] += 1
                continue
            if sound is False:
                log.error("blob %s no longer hashes to its id: moved aside", file_id.hex())
                self.on_corrupt(file_id)
            if sound is not None:
                self.counters["scrubbed_blobs"] += 1
            if done % SAVE_EVERY == 0:
                self._save_position(file_id)
        if not self._stopping.is_set():
            self.counters["scrub_passes"] += 1
            self._save_position(None)

    def _pause(self, nbytes: int) -> None:
        self.counters["scrubbed_bytes"] += nbytes
        self._stopping.wait(self.pacer.spent(nbytes, self.clock()))

    def _load_position(self) -> bytes | None:
        try:
            text = self.position_path.read_text().strip()
            return bytes.fromhex(text) if text else None
        except (OSError, ValueError):
            return None

    def _save_position(self, file_id: bytes | None) -> None:
        temporary = self.position_path.with_suffix(".tmp")
        temporary.write_text(file_id.hex() if file_id else "")
        os.replace(temporary, self.position_path)
