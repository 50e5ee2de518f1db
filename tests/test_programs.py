"""The worker's program store (worker/programs.py): chunks of one job fetch
their program at once, on helper threads, into one folder."""
import os
import pathlib
import threading
import time

import pytest

from uds.worker import programs
from uds.worker.programs import ProgramStore

PROGRAM = b"#!/bin/sh\necho hello\n"


class CacheOf:
    """Stands in for the block cache: every program is complete at once."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.pinned = 0

    def pin(self, file_id: bytes) -> None:
        self.pinned += 1

    def unpin(self, file_id: bytes) -> None:
        self.pinned -= 1

    def ensure_complete(self, file_id: bytes, size: int) -> pathlib.Path:
        path = self.folder / file_id.hex()
        path.write_bytes(PROGRAM)
        return path


@pytest.fixture
def store(tmp_path):
    (tmp_path / "cache").mkdir()
    return ProgramStore(tmp_path / "programs", CacheOf(tmp_path / "cache"))


def test_a_fetch_survives_another_fetchs_file_renamed_away_while_it_prunes(store, monkeypatch):
    # Another thread's temporary copy, listed and then renamed before its stat.
    gone = store.root / f"{bytes(16).hex()}{programs.TEMPORARY_MARK}12345"
    listed = pathlib.Path.iterdir

    def listing_with_a_file_gone(folder):
        return [*listed(folder), gone]

    monkeypatch.setattr(pathlib.Path, "iterdir", listing_with_a_file_gone)
    program = store.fetch(b"\x01" * 16, len(PROGRAM))
    assert program.read_bytes() == PROGRAM and os.access(program, os.X_OK)
    assert store.cache.pinned == 0


def test_a_program_that_vanished_between_listing_and_stat_is_skipped(store, monkeypatch):
    store.fetch(b"\x02" * 16, len(PROGRAM))
    gone = store.root / (b"\x03" * 16).hex()
    listed = pathlib.Path.iterdir
    monkeypatch.setattr(pathlib.Path, "iterdir", lambda folder: [*listed(folder), gone])
    assert store.fetch(b"\x04" * 16, len(PROGRAM)).exists()


def test_many_chunks_fetching_one_program_at_once_all_get_it(store):
    results, faults = [], []

    def fetch(index: int) -> None:
        try:
            results.append(store.fetch(bytes([index % 3]) * 16, len(PROGRAM)))
        except Exception as fault:
            faults.append(fault)

    threads = [threading.Thread(target=fetch, args=(index,)) for index in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert faults == [] and len(results) == 24
    assert sorted(path.name for path in store.root.iterdir()) == sorted(bytes([i]).hex() * 16 for i in range(3))


def test_the_least_recently_used_idle_programs_beyond_the_limit_are_removed(store, monkeypatch):
    monkeypatch.setattr(programs, "MAX_PROGRAMS", 2)
    old = time.time() - programs.PROGRAM_IDLE_S - 60
    for index in range(3):
        path = store.fetch(bytes([index]) * 16, len(PROGRAM))
        os.utime(path, (old + index, old + index))
    store.fetch(b"\x09" * 16, len(PROGRAM))
    assert sorted(path.name for path in store.root.iterdir()) == sorted(
        [(b"\x02" * 16).hex(), (b"\x09" * 16).hex()])
