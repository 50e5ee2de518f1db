"""Programs as executables under DATA/programs, one per program id, shared
by every chunk that runs it (a program never changes: its id is its hash).

Rules: `fetch` blocks (it may read the whole program from storage) and runs
on a helper thread; `present` is a stat and runs on the loop. A program is
written under a temporary name and renamed, so a present one is whole.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import logging
import threading
import time

from uds.worker.cache import BlockCache

log = logging.getLogger("worker")

# What a program being copied in is named, after its id, until it is whole.
TEMPORARY_MARK = ".tmp"
# Program executables kept (one per program id); older unused ones are removed.
MAX_PROGRAMS = 256
PROGRAM_IDLE_S = 600.0


class ProgramStore:
    def __init__(self, root: pathlib.Path, cache: BlockCache) -> None:
        self.root = root
        self.cache = cache
        root.mkdir(exist_ok=True)
        for leftover in root.glob(f"*{TEMPORARY_MARK}*"):
            leftover.unlink(missing_ok=True)

    def present(self, program_id: bytes) -> pathlib.Path | None:
        """The executable if it is here, marked as recently used."""
        path = self.root / program_id.hex()
        try:
            os.utime(path)  # recently used: kept by _forget_old
        except OSError:
            return None
        return path

    def fetch(self, program_id: bytes, program_size: int) -> pathlib.Path:
        """The program, whole and verified, as an executable. Pinned in the
        cache while it is copied out. Raises what the cache raises."""
        program = self.root / program_id.hex()
        self.cache.pin(program_id)
        try:
            if not program.exists():
                cached = self.cache.ensure_complete(program_id, program_size)
                temporary = program.with_name(f"{program.name}{TEMPORARY_MARK}{threading.get_ident()}")
                shutil.copyfile(cached, temporary)
                temporary.chmod(0o555)
                os.replace(temporary, program)
                try:
                    self._forget_old()
                except OSError as fault:    # the program is here: pruning can wait for the next fetch
                    log.warning("cannot prune old programs in %s: %s", self.root, fault)
            return program
        finally:
            self.cache.unpin(program_id)

    def _forget_old(self) -> None:
        """Remove the least recently used programs beyond MAX_PROGRAMS that
        have been idle for PROGRAM_IDLE_S. Another thread's fetch of the same
        program may rename its temporary file away between the listing and
        its stat: files in the making are not programs, and one gone is skipped."""
        programs = []
        for path in self.root.iterdir():
            if TEMPORARY_MARK in path.name:
                continue
            try:
                programs.append((path.stat().st_mtime, path))
            except FileNotFoundError:
                continue
        programs.sort()
        cutoff = time.time() - PROGRAM_IDLE_S
        for used_at, path in programs[:max(0, len(programs) - MAX_PROGRAMS)]:
            if used_at < cutoff:  # a running process keeps its inode anyway
                path.unlink(missing_ok=True)
