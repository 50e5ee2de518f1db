"""Log compaction with three real Raft groups (master/replicated.py) on
127.0.0.1: a follower stopped while the others commit past several
compactions catches up from the leader's snapshot when it restarts, and
ends with the same state, history lines included."""
from __future__ import annotations

import os
import pickle
import time

import pytest

from uds.master.commands import DispatchAttempts, ForgetJobs, SubmitJob
from uds.master.replicated import DUMP_FILE, RaftGroup
from uds.master.retention import jobs_to_forget
from uds.wire.cluster import Retention
from uds.wire.enums import ChunkState, NodeRole
from uds.wire.keys import KeyFolder, create_cluster_keys
from uds.wire.records import ChunkEvent, ChunkResult

from test_raft_conf import addresses_for, wait_until

# Small enough that a few hundred commits compact the log several times.
COMPACTION_ENTRIES = 40
ROUNDS = 300
CHUNKS = 3
COMMIT_TIMEOUT_S = 10.0
CATCH_UP_S = 20.0
PROGRAM = (b"p" * 16, 10)
WORKER = b"w" * 16
# Keeps few finished jobs, so that the state carries history lines too.
RETENTION = Retention(max_finished_jobs=20, history_lines=100)


class Groups:
    """Three RaftGroups, each with its own data folder, any one restartable."""

    def __init__(self, tmp_path) -> None:
        self.keys = KeyFolder(create_cluster_keys(tmp_path / "keys"), NodeRole.MASTER)
        self.addresses = addresses_for(3)
        self.folders = [tmp_path / f"master-{index}" for index in range(3)]
        self.pipes: list[tuple[int, int]] = []
        self.groups: list[RaftGroup | None] = [None] * 3
        for index in range(3):
            self.folders[index].mkdir()
            self.start(index)

    def start(self, index: int) -> RaftGroup:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self.pipes.append((read_fd, write_fd))
        partners = [address for other, address in enumerate(self.addresses) if other != index]
        group = RaftGroup(self.addresses[index], partners, self.folders[index], self.keys, write_fd,
                          log_compaction_min_entries=COMPACTION_ENTRIES)
        self.groups[index] = group
        return group

    def stop(self, index: int) -> None:
        self.groups[index].destroy()
        self.groups[index] = None

    def leader(self) -> RaftGroup:
        wait_until(lambda: any(group is not None and group.is_leader for group in self.groups), CATCH_UP_S)
        return next(group for group in self.groups if group is not None and group.is_leader)

    def close(self) -> None:
        for index, group in enumerate(self.groups):
            if group is not None:
                self.stop(index)
        for read_fd, write_fd in self.pipes:
            os.close(read_fd)
            os.close(write_fd)


@pytest.fixture
def groups(tmp_path):
    three = Groups(tmp_path)
    try:
        yield three
    finally:
        three.close()


def commit(group: RaftGroup, token: int, commands: list, now: float) -> list:
    group.propose(token, commands, now)
    result = group.commits.get(timeout=COMMIT_TIMEOUT_S)
    assert (result.token, result.failure) == (token, "")
    return result.outcomes


def round_commands(group: RaftGroup, round_number: int, now: float) -> list:
    """A job submitted, dispatched and finished; the oldest finished forgotten."""
    job = round_number.to_bytes(16, "big")
    commands: list = [
        SubmitJob(job=job, name=f"job {round_number}", program=PROGRAM, args=(), inputs={}, chunk_inputs=(),
                  chunk_count=CHUNKS, timeout_s=60.0, max_retries=0),
        DispatchAttempts(tuple((job, chunk, 1) for chunk in range(CHUNKS))),
    ]
    commands += [ChunkEvent(job=job, chunk=chunk, attempt=1, state=int(ChunkState.SUCCEEDED), worker=WORKER,
                            result=ChunkResult(exit_code=0, outputs={"out": (job[:15] + bytes([chunk]), 1)}))
                 for chunk in range(CHUNKS)]
    due = group.read(lambda state: jobs_to_forget(state, RETENTION, now))
    if due:
        commands.append(ForgetJobs(tuple(due), RETENTION.history_lines))
    return commands


def snapshot(group: RaftGroup):
    return group.read(lambda state: pickle.loads(pickle.dumps(state)))


def test_a_follower_that_fell_behind_catches_up_from_a_snapshot(groups):
    leader = groups.leader()
    follower = next(index for index, group in enumerate(groups.groups) if group is not leader)
    now = time.time()
    for round_number in range(1, 11):
        commit(leader, round_number, round_commands(leader, round_number, now), now)
    wait_until(lambda: snapshot(groups.groups[follower]) == snapshot(leader), CATCH_UP_S)
    stopped_at = groups.groups[follower].syncobj.getStatus()["commit_idx"]
    groups.stop(follower)

    dumps_written = 0
    dump_file = groups.folders[groups.groups.index(leader)] / DUMP_FILE
    last_dump = None
    for round_number in range(11, ROUNDS + 1):
        outcomes = commit(leader, round_number, round_commands(leader, round_number, now), now)
        assert all(outcome.ok for outcome in outcomes)
        stamp = dump_file.stat().st_mtime_ns if dump_file.exists() else None
        if stamp != last_dump:
            dumps_written, last_dump = dumps_written + 1, stamp
    status = leader.syncobj.getStatus()
    first_kept = status["commit_idx"] - status["log_len"] + 1
    assert dumps_written >= 3, "the leader compacted its log fewer than three times"
    assert first_kept > stopped_at + 1, "the entries the follower lacks are still in the leader's log"

    expected = snapshot(leader)
    assert len(expected.history.lines) == RETENTION.history_lines
    assert len(expected.history.finished) <= RETENTION.max_finished_jobs + 1
    restarted = groups.start(follower)
    wait_until(lambda: restarted.ready and snapshot(restarted) == expected, CATCH_UP_S)
    # And it carries on in step.
    now += 1.0
    commit(leader, ROUNDS + 1, round_commands(leader, ROUNDS + 1, now), now)
    wait_until(lambda: snapshot(restarted) == snapshot(leader), CATCH_UP_S)
