"""pysyncobj's SyncObj with the four things a master needs and it lacks.

1. Leadership that is confirmed. `SyncObj._isLeader()` is true from the
   election until the fallback, whether or not anyone still follows.
   `confirmed_leader(now)` is true only while this node is leader and has
   heard a follower's answer, in this term, from enough followers to make a
   majority with itself, within `confirm_s`. pysyncobj's own record of
   answers (`__lastResponseTime`, which drives its fallback) starts every
   follower at the time of the election, as if it had answered then; the
   answers kept here are only real ones.
2. Followers that do not vote while they follow. pysyncobj grants a vote to
   any candidate with a higher term, so a node returning from a partition
   could have a new leader elected at once, while the old one still counts
   itself confirmed. Here a follower that heard from its leader less than
   `raftMinTimeout` ago ignores a RequestVote (Raft thesis, section 4.2.3);
   so a follower that answered the leader at time t votes for nobody before
   t + raftMinTimeout, and `confirm_s` stays below that.
3. Followers that acknowledge only what is on disk. pysyncobj writes its
   journal into an mmap it never syncs and answers an append at once. Here
   `before_acknowledge` (a journal sync) runs before the answer whenever the
   message changed the journal: one sync per append message, however many
   entries it carried.
4. A vote that outlives a power loss. pysyncobj stores the term and the
   vote (`JOURNAL.meta`) by writing a temporary file and renaming it, and
   syncs neither; a member that forgot its vote could vote twice in one
   term. Here the file and its folder are synced before the vote or the
   term is acted on.
5. A full dump made by a child that touches nothing else. With `useFork`
   pysyncobj forks on the Raft thread, and the child pickles the state,
   gzips it into `DUMP.tmp`, renames it over the dump and leaves with
   `os._exit` (no atexit handlers, no flush of the parent's buffers); the
   parent reaps it from its ticks. The child has only the forking thread:
   it never touches ZeroMQ, the state's lock or the journal. What it could
   still inherit is set right here, in the child, before pysyncobj's code
   runs (`guard_dump_forks`): the parent's signal handlers go back to the
   defaults, so a SIGTERM to the group does not run the master's shutdown
   in the child; and the child is killed when the thread that forked it
   ends (PR_SET_PDEATHSIG, which the child sets first thing: the Raft
   thread outlives that by far), so no orphan renames an old dump over a
   newer one after its master died or was restarted. `reap_dump_child` waits for
   it when the node is destroyed.

The hooks override pysyncobj's private (name-mangled) methods
`_SyncObj__onMessageReceived`, `_SyncObj__sendNextNodeIdx` and
`_SyncObj__setCurrentTerm`, and read its serializer's child and journal's
size; tests/test_raft_node.py and tests/test_master_dump.py pin them against
the installed pysyncobj.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from typing import Any, Callable

from pysyncobj import SyncObj

# pysyncobj's numbering of its states; a master's stats give `raft_role` so.
RAFT_ROLES = ("follower", "candidate", "leader")

# An answer to the leader's append (the acknowledgement) and the request for a vote.
ACKNOWLEDGEMENT = "next_node_idx"
APPEND = "append_entries"
VOTE_REQUEST = "request_vote"

# prctl(2): deliver this signal to the calling process when its parent thread ends.
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)
# Threads whose forks are full dumps (guard_dump_forks), and the process they forked from.
_DUMP_THREADS: set[int] = set()
_forked_from = [0]


class RaftNode(SyncObj):
    def __init__(self, self_address: str, partner_addresses: list[str], conf: Any,
                 consumers: list, confirm_s: float,
                 before_acknowledge: Callable[[], None] = lambda: None) -> None:
        if confirm_s >= conf.raftMinTimeout:
            raise ValueError(f"confirm_s {confirm_s} must stay below raftMinTimeout {conf.raftMinTimeout}")
        self.confirm_s = confirm_s
        self.before_acknowledge = before_acknowledge
        self.votes_ignored = 0
        self.acknowledgement_syncs = 0
        # Follower id -> (term, monotonic time) of its last answer while we led.
        self._answers: dict[str, tuple[int, float]] = {}
        self._heard_leader_at = float("-inf")
        self._journal_mark: tuple = ()
        # Everything above is set before SyncObj.__init__, which keeps the
        # attributes it finds out of its snapshots.
        super().__init__(self_address, partner_addresses, conf, consumers=consumers)

    # -- queries (any thread) ---------------------------------------------------

    def confirmed_leader(self, now: float | None = None) -> bool:
        """Leader, and answered by a majority within `confirm_s` in this term."""
        if not self._isLeader():
            return False
        now = time.monotonic() if now is None else now
        term = self._getTerm()
        fresh = sum(1 for answer_term, at in list(self._answers.values())
                    if answer_term == term and now - at < self.confirm_s)
        # The group as it stands now: `uds admin masters` may have changed it.
        return 1 + fresh > (len(self._SyncObj__otherNodes) + 1) / 2

    def live_leader(self, now: float | None = None) -> Any:
        """The leader this node follows, if heard from within the minimum
        election timeout (itself while it leads); else None, so that a
        follower never points anyone at a leader that has gone silent."""
        if self._isLeader():
            return self._getLeader()
        now = time.monotonic() if now is None else now
        return self._getLeader() if self._follows_a_live_leader(now) else None

    def role(self) -> str:
        """leader, follower or candidate, as pysyncobj holds it."""
        return RAFT_ROLES[self._SyncObj__raftState]

    def commit_index(self) -> int:
        return self._SyncObj__raftCommitIndex

    def last_applied(self) -> int:
        return self._SyncObj__raftLastApplied

    # -- hooks (the Raft thread) ------------------------------------------------

    def _SyncObj__onMessageReceived(self, node: Any, message: dict) -> None:
        kind = message.get("type")
        now = time.monotonic()
        if kind == VOTE_REQUEST and self._follows_a_live_leader(now):
            self.votes_ignored += 1
            return
        if kind == APPEND and message.get("term", -1) >= self._getTerm():
            self._heard_leader_at = now
        if kind == ACKNOWLEDGEMENT and self._isLeader():
            self._answers[node.id] = (self._getTerm(), now)
        self._journal_mark = self._journal_position()
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _SyncObj__sendNextNodeIdx(self, node: Any, reset: bool = False, nextNodeIdx: int | None = None,
                                  success: bool = False) -> None:
        if self._journal_position() != self._journal_mark:
            self.before_acknowledge()
            self.acknowledgement_syncs += 1
            self._journal_mark = self._journal_position()
        SyncObj._SyncObj__sendNextNodeIdx(self, node, reset=reset, nextNodeIdx=nextNodeIdx, success=success)

    def _SyncObj__setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        SyncObj._SyncObj__setCurrentTerm(self, term, votedForNodeId)
        journal = self._SyncObj__conf.journalFile
        if journal:
            _sync_file(journal + ".meta")
            _sync_file(os.path.dirname(os.path.abspath(journal)))

    # -- the full dump's child and the journal (the Raft thread) ------------------

    def dump_child(self) -> int:
        """The pid of the child writing a full dump, 0 while none runs."""
        pid = self._SyncObj__serializer._Serializer__pid
        return pid if pid > 0 else 0

    def reap_dump_child(self) -> None:
        """Wait for a dump's child; call once the Raft thread has ended,
        which kills it (PR_SET_PDEATHSIG) if it was still writing."""
        pid = self.dump_child()
        if pid:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self._SyncObj__serializer._Serializer__pid = 0

    def journal_bytes(self) -> int:
        """How much of the journal file holds entries (0 without a file)."""
        return getattr(self._SyncObj__raftLog, "_FileJournal__currentOffset", 0)

    def _follows_a_live_leader(self, now: float) -> bool:
        return (not self._isLeader() and self._getLeader() is not None
                and now - self._heard_leader_at < self._SyncObj__conf.raftMinTimeout)

    def _journal_position(self) -> tuple:
        """What changes whenever entries are added, removed or replaced."""
        log = self._SyncObj__raftLog
        size = len(log)
        return (size, log[-1][1], log[-1][2]) if size else (0,)


def _sync_file(path: str) -> None:
    """fsync a file or a folder (for a rename in it)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as fault:
        logging.getLogger("master.raft").warning("cannot sync %s: %s", path, fault)


def guard_dump_forks() -> None:
    """Mark the calling thread as the one whose forks write full dumps."""
    _DUMP_THREADS.add(threading.get_ident())


def forget_dump_forks() -> None:
    _DUMP_THREADS.discard(threading.get_ident())


def _before_fork() -> None:
    _forked_from[0] = os.getpid()


def _in_dump_child() -> None:
    # The forking thread is the child's one thread (and its main thread, so
    # it may set signal handlers); other forks of the process are not ours.
    if threading.get_ident() not in _DUMP_THREADS:
        return
    _DUMP_THREADS.clear()
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != _forked_from[0]:
        os._exit(1)     # the parent died before prctl took effect
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


os.register_at_fork(before=_before_fork, after_in_child=_in_dump_child)
