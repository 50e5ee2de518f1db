"""The full dump and the log's bounds (master/replicated.py, master/raft_node.py):
a dump is written by a child forked from the Raft thread, which is reaped,
dies with that thread and runs none of the parent's signal handlers; the
journal is compacted once it holds more than its bound of bytes; and a
master restarts from a dump made so to an equal state."""
from __future__ import annotations

import os
import pickle
import signal
import threading
import time

import pytest

from uds.master.commands import DispatchAttempts, SubmitJob
from uds.master.raft_node import forget_dump_forks, guard_dump_forks
from uds.master.replicated import DUMP_FILE, RaftGroup, pack_commands, unpack_commands
from uds.wire.enums import ChunkState, NodeRole
from uds.wire.keys import KeyFolder, create_cluster_keys
from uds.wire.records import ChunkEvent, ChunkResult

from test_raft_conf import addresses_for, wait_until

COMMIT_TIMEOUT_S = 10.0
DEADLINE_S = 10.0
CHUNKS = 200
PROGRAM = (b"p" * 16, 10)
WORKER = b"w" * 16
# Small enough that a few batches of chunk events pass it.
MAX_JOURNAL_BYTES = 16 << 10


@pytest.fixture
def keys(tmp_path):
    return KeyFolder(create_cluster_keys(tmp_path / "keys"), NodeRole.MASTER)


class LoneMaster:
    """One RaftGroup alone in its group, restartable on the same folder."""

    def __init__(self, keys: KeyFolder, folder) -> None:
        self.keys, self.folder = keys, folder
        self.max_journal_bytes = MAX_JOURNAL_BYTES
        [self.address] = addresses_for(1)
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.group: RaftGroup | None = None
        self.token = 0

    def start(self) -> RaftGroup:
        self.group = RaftGroup(self.address, [], self.folder, self.keys, self.write_fd,
                               log_compaction_max_bytes=self.max_journal_bytes)
        wait_until(lambda: self.group.is_leader, DEADLINE_S)
        return self.group

    def commit(self, commands: list, now: float) -> list:
        self.token += 1
        self.group.propose(self.token, commands, now)
        result = self.group.commits.get(timeout=COMMIT_TIMEOUT_S)
        assert (result.token, result.failure) == (self.token, "")
        return result.outcomes

    def state(self):
        return self.group.read(lambda state: pickle.loads(pickle.dumps(state)))

    def stop(self) -> None:
        if self.group is not None:
            self.group.destroy()
            self.group = None

    def close(self) -> None:
        self.stop()
        os.close(self.read_fd)
        os.close(self.write_fd)


@pytest.fixture
def master(keys, tmp_path):
    folder = tmp_path / "master"
    folder.mkdir()
    lone = LoneMaster(keys, folder)
    try:
        yield lone
    finally:
        lone.close()


def job_commands(number: int) -> list[list]:
    """A job of CHUNKS chunks submitted, dispatched, started and finished: four batches."""
    job = number.to_bytes(16, "big")
    attempts = [(job, chunk, 1) for chunk in range(CHUNKS)]
    submit = SubmitJob(job=job, name=f"job {number}", program=PROGRAM, args=(), inputs={}, chunk_inputs=(),
                       chunk_count=CHUNKS, timeout_s=60.0, max_retries=0)
    events = [[ChunkEvent(job=job, chunk=chunk, attempt=1, state=int(state), worker=WORKER,
                          result=ChunkResult(exit_code=0, outputs={"out": (os.urandom(16), 1)})
                          if state == ChunkState.SUCCEEDED else ChunkResult())
               for _, chunk, _ in attempts] for state in (ChunkState.STARTED, ChunkState.SUCCEEDED)]
    return [[submit], [DispatchAttempts(tuple(attempts))], *events]


def test_a_batch_packs_to_a_fraction_of_its_pickle_and_back():
    [_, _, started, succeeded] = job_commands(1)
    for batch in (started, succeeded):
        assert unpack_commands(pack_commands(batch)) == batch
    assert len(pack_commands(started)) < len(pickle.dumps(started)) / 4


def test_the_dump_is_written_by_a_reaped_child_and_a_master_restarts_from_it(master, monkeypatch):
    forks: list[tuple[int, int]] = []      # (thread, child pid)
    fork = os.fork

    def recording_fork() -> int:
        pid = fork()
        if pid:
            forks.append((threading.get_ident(), pid))
        return pid

    monkeypatch.setattr(os, "fork", recording_fork)
    group = master.start()
    now = time.time()
    for number in range(1, 6):
        for commands in job_commands(number):
            assert all(outcome.ok for outcome in master.commit(commands, now))
    dump = master.folder / DUMP_FILE
    # The journal passed its bound: a compaction was forced and written by a
    # child of the Raft thread, which the ticks reaped.
    wait_until(lambda: dump.exists() and not group.syncobj.dump_child(), DEADLINE_S)
    assert group.forced_compactions >= 1
    assert forks and {thread for thread, _ in forks} == {group._thread.ident}, \
        "the dump was not written by a child of the Raft thread"
    assert group.syncobj.journal_bytes() < 4 * MAX_JOURNAL_BYTES
    for _, pid in forks:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)     # reaped already
    expected = master.state()
    assert len(expected.job_records) == 5

    master.stop()
    restarted = master.start()
    assert master.state() == expected
    assert restarted.syncobj.last_applied() >= group.syncobj.last_applied()
    # And it carries on from there.
    for commands in job_commands(6):
        master.commit(commands, now)
    assert len(master.state().job_records) == 6


def test_a_dump_child_runs_no_handler_of_the_parent_and_dies_with_its_thread():
    """A fork from a guarded thread (as pysyncobj's dump is) gets the default
    SIGTERM and is killed when the thread that forked it ends."""
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    report_read, report_write = os.pipe()
    children: list[int] = []

    def fork_like_a_dump() -> None:
        guard_dump_forks()
        try:
            pid = os.fork()
            if pid == 0:
                default = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
                os.write(report_write, b"default" if default else b"inherited")
                time.sleep(DEADLINE_S)
                os._exit(0)
            children.append(pid)
            # The thread outlives the child's start, as the Raft thread does.
            reports.append(os.read(report_read, 16))
        finally:
            forget_dump_forks()

    reports: list[bytes] = []
    try:
        thread = threading.Thread(target=fork_like_a_dump)
        thread.start()
        thread.join()
        assert reports == [b"default"]
        [pid] = children
        started = time.monotonic()
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert time.monotonic() - started < DEADLINE_S / 2
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.close(report_read)
        os.close(report_write)


def test_a_fork_from_another_thread_is_left_alone():
    report_read, report_write = os.pipe()
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        pid = os.fork()
        if pid == 0:
            inherited = signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
            os.write(report_write, b"inherited" if inherited else b"default")
            os._exit(0)
        assert os.read(report_read, 16) == b"inherited"
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.close(report_read)
        os.close(report_write)


def test_a_journal_of_unpacked_entries_still_replays(master):
    """Entries written before batches were packed call `apply` with the
    commands themselves; a master restarted on such a journal replays them."""
    master.max_journal_bytes = 64 << 20     # no dump: the journal alone replays
    group = master.start()
    now = time.time()
    commits: list = []
    for commands in job_commands(1):
        group.replicated.apply(commands, now, callback=lambda outcomes, error: commits.append((outcomes, error)))
    wait_until(lambda: len(commits) == 4, DEADLINE_S)
    assert all(error == 0 and all(outcome.ok for outcome in outcomes) for outcomes, error in commits)
    expected = master.state()
    assert len(expected.job_records) == 1 and not (master.folder / DUMP_FILE).exists()

    master.stop()
    master.start()
    assert master.state() == expected
