"""The Raft group around master/state.py.

`ReplicatedState.apply_packed(packed, now)` is the replicated method: it
carries a whole batch of commands, so one Raft entry commits many
submissions or chunk events. The batch travels packed (`pack_commands`: a
pickle, deflated), because every member keeps each entry twice until the
next compaction, in memory and in the journal's mapped pages: a chunk's
STARTED and SUCCEEDED events took about 260 bytes pickled, about 25 packed
(doc/master.md#memory). `apply`, the unpacked form, stays so that a journal
written before packing still replays. Both and the commit callbacks run on
the Raft thread; the node loop reads the state under `lock` and learns of
commits through a queue and a wake-up pipe (see RaftGroup.propose).

The log is compacted into a full dump every LOG_COMPACTION_MIN_ENTRIES
entries, every LOG_COMPACTION_MIN_TIME_S, and whenever the journal holds
more than LOG_COMPACTION_MAX_BYTES. The dump is written by a forked child
(`useFork`, made safe by master/raft_node.py), so that pickling a large
state does not hold the Raft thread and the GIL for seconds.

The Raft thread is ours, not pysyncobj's automatic one: pysyncobj appends a
command at the end of one tick and commits it in the next, and with no peer
to answer nothing wakes that next tick before its period ends, so a
one-master group would take 50 ms per commit. While a proposal is
outstanding we tick twice in a row (append, then commit) and, alone, again
after BUSY_TICK_S; otherwise, and always with peers (whose answers wake the
tick), every IDLE_TICK_S.
"""
from __future__ import annotations

import logging
import os
import pathlib
import pickle
import queue
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable

from pysyncobj import FAIL_REASON, SyncObjConsumer, replicated
from pysyncobj.node import TCPNode

from uds.master.raft import CONFIRMED_LEADERSHIP_S, syncobj_conf
from uds.master.raft_node import RaftNode, forget_dump_forks, guard_dump_forks
from uds.master.state import ClusterState
from uds.daemon.runtime import wake
from uds.wire.keys import KeyFolder
from uds.wire.records import ChunkEvent

# Wait between ticks while proposals are outstanding, and when idle.
BUSY_TICK_S = 0.0005
IDLE_TICK_S = 0.05
JOURNAL_FILE = "raft.journal"
DUMP_FILE = "raft.dump"
# Compact the journal into a full dump once it holds this many entries, is
# this old, or holds this many bytes: the entries stay in memory and in the
# journal's mapped pages until then, both counted in a master's RSS.
LOG_COMPACTION_MIN_ENTRIES = 20_000
LOG_COMPACTION_MIN_TIME_S = 60
LOG_COMPACTION_MAX_BYTES = 8 << 20
# Worker ids shared between chunk records (ReplicatedState._share_worker_ids);
# far more than a cluster has workers.
MAX_SHARED_WORKER_IDS = 100_000
# zlib's fastest level: a batch of 2,000 chunk events packs in about 1 ms.
PACK_LEVEL = 1


def pack_commands(commands: list) -> bytes:
    return zlib.compress(pickle.dumps(commands, protocol=pickle.HIGHEST_PROTOCOL), PACK_LEVEL)


def unpack_commands(packed: bytes) -> list:
    # Entries come only from members that hold the cluster's Raft password.
    return pickle.loads(zlib.decompress(packed))


class ReplicatedState(SyncObjConsumer):
    def __init__(self) -> None:
        # Set before SyncObjConsumer.__init__, which marks existing attributes
        # as not to be serialised: the lock and the ids stay local, the state
        # replicates.
        self.lock = threading.Lock()
        self.worker_ids: dict[bytes, bytes] = {}
        super().__init__()
        self.state = ClusterState()

    @replicated
    def apply(self, commands: list, now: float) -> list:
        with self.lock:
            return self.state.apply(commands, now)

    @replicated
    def apply_packed(self, packed: bytes, now: float) -> list:
        commands = unpack_commands(packed)
        self._share_worker_ids(commands)
        with self.lock:
            return self.state.apply(commands, now)

    def _share_worker_ids(self, commands: list) -> None:
        """One bytes object per worker id: a chunk record keeps the id of the
        worker that ran it, and each event unpacks its own copy (49 bytes a
        finished chunk). The events are ours, fresh from the unpickler."""
        if len(self.worker_ids) > MAX_SHARED_WORKER_IDS:
            self.worker_ids.clear()
        for command in commands:
            if type(command) is ChunkEvent and command.worker is not None:
                object.__setattr__(command, "worker", self.worker_ids.setdefault(command.worker, command.worker))


@dataclass(frozen=True)
class RaftRecord:
    """Where this member stands in the group, for `uds nodes`."""
    role: str                   # follower, candidate or leader (RAFT_ROLES)
    term: int
    commit_index: int
    last_applied: int
    leader: str | None          # the Raft address of the leader it follows (itself when leading)


@dataclass
class Commit:
    token: int
    outcomes: list | None      # None when the proposal failed
    failure: str


@dataclass
class MembershipCommitted:
    """The outcome of `RaftGroup.change_membership`, on `commits` too."""
    token: object
    failure: str               # "" once committed; else pysyncobj's reason (request_denied, ...)
    commit_index: int


class RaftGroup:
    """A SyncObj with our state, persistent in `data`, password from `keys`."""

    def __init__(self, self_address: str, partner_addresses: list[str], data: pathlib.Path,
                 keys: KeyFolder, wake_fd: int, *,
                 log_compaction_min_entries: int = LOG_COMPACTION_MIN_ENTRIES,
                 log_compaction_max_bytes: int = LOG_COMPACTION_MAX_BYTES, dump_in_child: bool = True) -> None:
        self.replicated = ReplicatedState()
        self.commits: queue.SimpleQueue[Commit | MembershipCommitted] = queue.SimpleQueue()
        self._wake_fd = wake_fd
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._outstanding = 0
        self._outstanding_lock = threading.Lock()
        self.journal_syncs = 0
        self.forced_compactions = 0
        self._log_compaction_max_bytes = log_compaction_max_bytes
        self._compact_above = log_compaction_max_bytes
        conf = syncobj_conf(
            keys, journalFile=str(data / JOURNAL_FILE), fullDumpFile=str(data / DUMP_FILE),
            logCompactionMinEntries=log_compaction_min_entries,
            logCompactionMinTime=LOG_COMPACTION_MIN_TIME_S,
            onReady=self._ready.set,
            # The dump is written by a child forked from the Raft thread;
            # RaftNode keeps it from touching anything but the pickle and its
            # file (master/raft_node.py). Off, the Raft thread writes it.
            useFork=dump_in_child,
            autoTick=False,
        )
        self.syncobj = RaftNode(self_address, partner_addresses, conf, [self.replicated],
                                confirm_s=CONFIRMED_LEADERSHIP_S, before_acknowledge=self.sync_journal)
        # pysyncobj writes its journal into an mmap and never syncs it; we sync
        # it before a commit is answered, and a follower before it acknowledges
        # an append, so what a master acknowledged survives a power loss and
        # not only a crash. fsync of the file writes the map's dirty pages
        # like msync, but without holding the GIL (mmap.flush holds it), so
        # the node loop runs on meanwhile.
        self._journal_fd = os.open(data / JOURNAL_FILE, os.O_RDONLY)
        self._thread = threading.Thread(target=self._tick_forever, name="raft", daemon=True)
        self._thread.start()
        # pysyncobj logs a CRITICAL "truncating already-applied log entries" in
        # normal operation; it is noise to anyone reading a master's log.
        logging.getLogger("pysyncobj").setLevel(logging.ERROR)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def is_leader(self) -> bool:
        """Leader, and heard from a majority within CONFIRMED_LEADERSHIP_S:
        only such a leader may answer what must be current."""
        return self.ready and self.syncobj.confirmed_leader()

    def leader_address(self) -> str | None:
        """The Raft address of the leader, if it was heard from within the
        minimum election timeout (a killed leader is not named for longer)."""
        leader = self.syncobj.live_leader()
        return None if leader is None else str(getattr(leader, "address", leader))

    def record(self) -> RaftRecord:
        node = self.syncobj
        return RaftRecord(role=node.role(), term=node._getTerm(), commit_index=node.commit_index(),
                          last_applied=node.last_applied(), leader=self.leader_address())

    def propose(self, token: int, commands: list, now: float) -> None:
        """Replicate a batch; its outcome arrives later on `commits`."""

        def on_commit(outcomes: Any, error: int) -> None:
            # The Raft thread: hand over and wake the node loop.
            with self._outstanding_lock:
                self._outstanding -= 1
            if error == FAIL_REASON.SUCCESS:
                self.sync_journal()
                self.commits.put(Commit(token, outcomes, ""))
            else:
                self.commits.put(Commit(token, None, f"raft: {_fail_reason(error)}"))
            wake(self._wake_fd)

        with self._outstanding_lock:
            self._outstanding += 1
        self.replicated.apply_packed(pack_commands(commands), now, callback=on_commit)

    # -- membership (uds admin masters) ------------------------------------------

    def members(self) -> list[str]:
        """The Raft addresses of the group as this member sees it, itself first."""
        others = sorted(str(node.address) for node in self.syncobj.otherNodes)
        return [str(self.syncobj.selfNode.address), *others]

    def client_address_of(self, raft_address: str) -> str | None:
        """The client address a member was added with (`change_membership`);
        None for members known only from the cluster file."""
        for node in self.syncobj.otherNodes:
            if node.address == raft_address:
                return getattr(node, "client_address", None)
        return None

    def change_membership(self, token: object, add: bool, raft_address: str, client_address: str = "") -> None:
        """Add a member to the group, or remove one; the outcome arrives on
        `commits` as a MembershipCommitted. The client address travels in
        the log entry with the member (a pysyncobj Node's attributes), so
        every member, and one restarted from its journal or a snapshot,
        knows where clients reach a master that no cluster file it read
        names."""
        node = TCPNode(raft_address, client_address=client_address) if add else TCPNode(raft_address)

        def on_commit(_result: Any, error: int) -> None:
            with self._outstanding_lock:
                self._outstanding -= 1
            if error == FAIL_REASON.SUCCESS:
                self.sync_journal()
            failure = "" if error == FAIL_REASON.SUCCESS else _fail_reason(error)
            self.commits.put(MembershipCommitted(token, failure, self.syncobj.commit_index()))
            wake(self._wake_fd)

        with self._outstanding_lock:
            self._outstanding += 1
        change = self.syncobj.addNodeToCluster if add else self.syncobj.removeNodeFromCluster
        change(node, callback=on_commit)

    def sync_journal(self) -> None:
        """Wait until the journal's pages are on disk."""
        try:
            os.fsync(self._journal_fd)
            self.journal_syncs += 1
        except OSError as fault:
            logging.getLogger("master.raft").warning("journal sync failed: %s", fault)

    def read(self, reader: Callable[[ClusterState], Any]) -> Any:
        with self.replicated.lock:
            return reader(self.replicated.state)

    def _compact_if_large(self) -> None:
        """Force a compaction when the journal holds more than its bound of
        bytes; again only once it grew by half the bound more, should the
        entries beyond the applied ones be what holds it there."""
        size = self.syncobj.journal_bytes()
        if size <= self._log_compaction_max_bytes:
            self._compact_above = self._log_compaction_max_bytes
        elif size > self._compact_above and not self.syncobj.dump_child():
            self.syncobj.forceLogCompaction()
            self.forced_compactions += 1
            self._compact_above = size + self._log_compaction_max_bytes // 2

    def _tick_forever(self) -> None:
        log = logging.getLogger("master.raft")
        guard_dump_forks()
        try:
            self._tick_until_stopped(log)
        finally:
            self.syncobj.destroy()
            forget_dump_forks()

    def _tick_until_stopped(self, log: logging.Logger) -> None:
        while not self._stopping.is_set():
            try:
                # Alone, nothing but the clock wakes the tick that commits
                # what was appended, so it must come soon. With peers, their
                # answers wake it (and a proposal always does): a short wait
                # would add no speed, only a thread spinning against the node
                # loop for the GIL and for the cores.
                alone = not self.syncobj.otherNodes
                self.syncobj.doTick(BUSY_TICK_S if self._outstanding > 0 and alone else IDLE_TICK_S)
                if self._outstanding > 0:
                    # A tick appends what arrived at its end, and handles a
                    # peer's answer there too; one more commits it at once.
                    self.syncobj.doTick(0.0)
                self._compact_if_large()
            except Exception:  # one bad tick must not end replication
                log.exception("raft tick failed")
                time.sleep(IDLE_TICK_S)

    def destroy(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5.0)
        if not self._thread.is_alive():
            # Its end killed a dump's child still writing; reap it.
            self.syncobj.reap_dump_child()
        os.close(self._journal_fd)


def _fail_reason(code: int) -> str:
    names = {value: name for name, value in vars(FAIL_REASON).items() if name.isupper()}
    return names.get(code, str(code)).lower()
