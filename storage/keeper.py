"""The storage node's thread that talks to the cluster: its heartbeat to
the masters (and the membership they answer), the repair scans that offer
its blobs to their other replicas, and the collection passes it checks with
the leader.

Rules:
- Every socket here is this thread's: one DEALER per master (the leader is
  found by wire/leader_search.py, as the load balancer finds it) and one
  per other storage node. Other threads hand it work through `request_gc`
  and a wake pipe; it answers a client's gc_run through `reply`, which the
  service loop sends.
- Nothing the masters do or fail to do stops the node serving. Until the
  leader answers a heartbeat the membership is the cluster file's
  [[storage]] entries, all alive; an error or silence keeps the last known.
- A membership whose live addresses differ from the last starts a repair
  scan at once; otherwise a scan starts repair_interval_s after the last
  one started, and never while one runs.
- A collection pass asks the leader about one page at a time. A page the
  leader does not answer within GC_PAGE_TIMEOUT_S (through refusals and
  silences) ends the pass, and nothing of it is deleted: while the leader
  cannot be reached, nothing is deleted.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import queue
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import zmq

from uds import wire
from uds.daemon.runtime import drain, wake, wake_pipe
from uds.storage.blobstore import BlobStore
from uds.storage.collection import GcPass, Tombstones, candidates
from uds.storage.placement import ALIVE, StorageMember
from uds.storage.repair import RepairScan
from uds.wire import ErrorCode, Message, PutStatus, WireError
from uds.wire.cluster import StoragePolicy
from uds.wire.enums import NodeRole
from uds.wire.leader_hint import leader_hint
from uds.wire.leader_search import LeaderSearch
from uds.wire.records import NO_FACTS, NodeFacts
from uds.wire.storage_messages import MAX_FILES_PER_MESSAGE
from uds.wire.transport import Transport, recv_messages, send_message

VERSION = 1
# How long one poll waits: bounds how late a timer or a stop is seen.
POLL_INTERVAL_MS = 100
# The leader answers a gc_check page within this, through refusals and
# silences, or the pass ends with that page undeleted.
GC_PAGE_TIMEOUT_S = 15.0
# gc_run requests waiting for a pass, beyond which a client gets ERR_BUSY.
GC_REQUESTS_QUEUED = 16
# How often the blob count and bytes used are counted again for the heartbeat.
INVENTORY_REFRESH_S = 5.0
# A file_replicate is given up after this, plus the time its target needs
# to pull it and the files queued before it (REPLICATES_PER_TARGET) at
# the repair rate.
REPLICATE_TIMEOUT_S = 60.0
MESSAGES_PER_WAKEUP = 256
# After a step failed (a disk fault, say): the pause before the next, so a
# lasting fault costs a log line a second, not a spinning thread.
KEEPER_ERROR_PAUSE_S = 1.0

COUNTER_NAMES = (
    "heartbeats_sent", "heartbeat_replies", "membership_changes",
    "repair_scans", "repair_offers_sent", "repair_offers_confirmed", "repair_offers_failed",
    "trimmed_blobs", "trimmed_bytes",
    "gc_passes", "gc_passes_incomplete", "gc_deleted_blobs", "gc_deleted_bytes", "gc_kept_in_use",
    "keeper_errors",
)

log = logging.getLogger("storage.keeper")
Reply = Callable[[bytes, Message], None]


@dataclass
class GcRequest:
    peer: bytes
    request_id: int
    dry_run: bool


@dataclass
class GcRound:
    """A pass under way: the pure pass, who waits for it, and its page in flight."""
    work: GcPass
    waiting: list[GcRequest]
    request_id: int = 0                  # of the gc_check in flight; 0: none
    page: list[bytes] = field(default_factory=list)
    page_since: float = 0.0              # when the page was first sent
    page_sent: bool = False              # sent to the current target


def members_from_cluster(addresses: Sequence[str]) -> tuple[StorageMember, ...]:
    """The membership the cluster file seeds: every [[storage]] entry, alive."""
    return tuple(StorageMember(address) for address in addresses)


def members_from_reply(reply: wire.StorageHeartbeatReply) -> tuple[StorageMember, ...]:
    return tuple(StorageMember(entry["address"], bytes(entry["node"]), entry["state"], entry["free_bytes"])
                 for entry in reply.nodes)


def live_addresses(members: Sequence[StorageMember]) -> frozenset[str]:
    return frozenset(member.address for member in members if member.state == ALIVE)


class Keeper(threading.Thread):
    """See the module's rules."""

    def __init__(self, transport: Transport, node_id: bytes, address: str, store: BlobStore,
                 policy: StoragePolicy, masters: Sequence[str], storage: Sequence[str],
                 reply: Reply, figures: Callable[[], dict[str, int]],
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 facts: NodeFacts = NO_FACTS) -> None:
        super().__init__(name="storage-keeper", daemon=True)
        self.transport = transport
        self.node_id = node_id
        self.address = address
        self.store = store
        self.policy = policy
        self.master_addresses = tuple(masters)
        self.reply = reply
        self.figures = figures
        self.facts_body = facts.as_body()      # gathered once at start, sent in every heartbeat
        self.clock = clock
        self.wall = wall
        self.host = socket.gethostname()
        self.start_time_ms = int(wall() * 1000)
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        # Read by other threads: each is replaced whole, never changed in place.
        self.members: tuple[StorageMember, ...] = members_from_cluster(storage)
        self.inventory: tuple[int, int] = (0, 0)        # blob count, bytes
        self.scan: RepairScan | None = None
        self.gc: GcRound | None = None
        self._tombstones = Tombstones(policy.gc_grace_s)
        self._tombstones_lock = threading.Lock()
        self._gc_requests: queue.Queue[GcRequest] = queue.Queue()
        self._gc_waiting: collections.deque[GcRequest] = collections.deque()
        self._request_ids = itertools.count(1)
        self._stopping = threading.Event()
        self._wake_read, self._wake_write = wake_pipe()
        self.search = LeaderSearch(self.master_addresses, random.Random())
        self._masters: list[zmq.Socket] = []
        self._peers: dict[str, zmq.Socket] = {}
        self._poller = zmq.Poller()
        self._next: dict[str, float] = {}        # timer -> when it is due (clock)

    # -- other threads' side ------------------------------------------------

    @property
    def repair_pending(self) -> int:
        scan = self.scan
        return 0 if scan is None else scan.pending

    def request_gc(self, peer: bytes, request_id: int, dry_run: bool) -> bool:
        """A client's gc_run: queued for the next pass; False if too many wait."""
        if self._gc_requests.qsize() + len(self._gc_waiting) >= GC_REQUESTS_QUEUED:
            return False
        self._gc_requests.put(GcRequest(peer, request_id, dry_run))
        wake(self._wake_write)
        return True

    def refuses_offer(self, file_id: bytes) -> bool:
        """Whether this node collected `file_id` within the grace period, and
        so does not take it back from a repair offer (storage/collection.py)."""
        with self._tombstones_lock:
            return self._tombstones.refuses(file_id, self.clock())

    def put_again(self, file_id: bytes) -> None:
        with self._tombstones_lock:
            self._tombstones.put_again(file_id)

    def stop(self) -> None:
        self._stopping.set()
        wake(self._wake_write)

    # -- the loop -------------------------------------------------------------

    def run(self) -> None:
        try:
            for address in self.master_addresses:
                self._add_master(address)
            self._poller.register(self._wake_read, zmq.POLLIN)
            now = self.clock()
            self._next = {"heartbeat": now, "inventory": now, "scan": now,
                          "gc": now + self.policy.gc_interval_s}
            while not self._stopping.is_set():
                try:
                    self._step(self.clock())
                except Exception:  # noqa: BLE001 - a disk or peer fault must not end the duties
                    log.exception("keeper step failed")
                    self.counters["keeper_errors"] += 1
                    self._stopping.wait(KEEPER_ERROR_PAUSE_S)
        finally:
            for sock in [*self._masters, *self._peers.values()]:
                sock.close()

    def close(self) -> None:
        """Release the wake pipe, once the thread has ended."""
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _step(self, now: float) -> None:
        due = self._next
        if now >= due["inventory"]:
            self._count_inventory()
            due["inventory"] = now + INVENTORY_REFRESH_S
        if now >= due["heartbeat"] and self.search.due(now) is not None:
            self._heartbeat(now)
            due["heartbeat"] = now + self.policy.heartbeat_interval_s
        if self.search.overdue(now) and self.gc is not None:
            self.gc.page_sent = False       # ask the next master
        if self.scan is None or (self.scan.done and now >= due["scan"]):
            self._start_scan(now)
            due["scan"] = now + self.policy.repair_interval_s
        self._drive_scan(now)
        if self.gc is None and (self._gc_waiting or now >= due["gc"]):
            if not self._gc_waiting:
                due["gc"] = now + self.policy.gc_interval_s
            self._start_gc(now)
        self._drive_gc(now)
        self._poll(now)

    def _poll(self, now: float) -> None:
        ready = dict(self._poller.poll(POLL_INTERVAL_MS))
        if self._wake_read in ready:
            drain(self._wake_read)
            while True:
                try:
                    self._gc_waiting.append(self._gc_requests.get_nowait())
                except queue.Empty:
                    break
        now = self.clock()
        for index, sock in enumerate(self._masters):
            if sock in ready:
                for message in self._receive(sock):
                    self._on_master(index, message, now)
        for address, sock in list(self._peers.items()):
            if sock in ready:
                for message in self._receive(sock):
                    self._on_peer(message)

    def _receive(self, sock: zmq.Socket) -> list[Message]:
        messages = []
        for received in recv_messages(sock, self.transport, MESSAGES_PER_WAKEUP):
            try:
                messages.append(wire.decode(received.frames))
            except WireError as fault:
                log.warning("dropped an undecodable message: %s", fault)
        return messages

    def _add_master(self, address: str) -> None:
        sock = self.transport.client_socket(zmq.DEALER, address, NodeRole.MASTER)
        self._masters.append(sock)
        self._poller.register(sock, zmq.POLLIN)

    def _send_master(self, message: Message, now: float) -> None:
        send_message(self._masters[self.search.target], wire.encode(message), counters=self.transport)
        self.search.asked(now)

    # -- membership -------------------------------------------------------------

    def _heartbeat(self, now: float) -> None:
        figures = {name: int(value) for name, value in self.figures().items()}
        self._send_master(wire.StorageHeartbeat.make(
            self.node_id, request_id=next(self._request_ids), start_time_ms=self.start_time_ms,
            host=self.host[:255], address=self.address, version=VERSION, figures=figures, **self.facts_body), now)
        self.counters["heartbeats_sent"] += 1

    def _count_inventory(self) -> None:
        count = used = 0
        for blob in self.store.list_blobs():
            count += 1
            used += blob.size
        self.inventory = (count, used)

    def heartbeat_figures(self) -> dict[str, int]:
        """The figures of the heartbeat that are this thread's to know."""
        disk = shutil.disk_usage(self.store.root)
        count, used = self.inventory
        return {"capacity_bytes": disk.total, "used_bytes": used, "free_bytes": disk.free,
                "blob_count": count, "repair_pending": self.repair_pending}

    def _on_master(self, index: int, message: Message, now: float) -> None:
        self.search.heard_from(index, now)
        if isinstance(message, wire.StorageHeartbeatReply):
            self.search.served(index, now)
            self.counters["heartbeat_replies"] += 1
            self._set_members(members_from_reply(message), now)
        elif isinstance(message, wire.GcCheckReply):
            self.search.served(index, now)
            if self.gc is not None and message.request_id == self.gc.request_id:
                self._gc_answered(message.files, now)
        elif isinstance(message, wire.Error):
            hint = leader_hint(message)
            if message.error_code == ErrorCode.NOT_LEADER:
                before = self.search.target
                self.search.refused(index, hint, now)
                for address in self.search.addresses[len(self._masters):]:
                    self._add_master(address)
                if self.gc is not None and self.search.target != before:
                    self.gc.page_sent = False
            elif self.gc is not None and message.request_id == self.gc.request_id:
                log.warning("gc_check refused by %s: %s", self.search.addresses[index], message.reason)
                self._end_gc(complete=False)
            else:
                log.debug("master %s: %s", self.search.addresses[index], message.reason)

    def _set_members(self, members: tuple[StorageMember, ...], now: float) -> None:
        if not members or members == self.members:
            return
        changed = live_addresses(members) != live_addresses(self.members)
        self.members = members
        if changed:
            self.counters["membership_changes"] += 1
            log.info("storage membership: %s", ", ".join(sorted(live_addresses(members))))
            self._start_scan(now)

    # -- repair -------------------------------------------------------------------

    def _start_scan(self, now: float) -> None:
        members = self.members
        replicas = self.policy.replicas_among(len(live_addresses(members)))
        rate = self.policy.repair_bytes_per_s
        self.scan = RepairScan.plan(
            self.address, ((blob.file_id, blob.size) for blob in self.store.list_blobs()), members, replicas,
            self._request_ids, timeout_s=lambda length: REPLICATE_TIMEOUT_S + 4 * length / rate)
        self.counters["repair_scans"] += 1

    def _drive_scan(self, now: float) -> None:
        scan = self.scan
        if scan is None:
            return
        self.counters["repair_offers_failed"] += len(scan.expire(now))
        for send in scan.sends(now):
            sock = self._peers.get(send.target)
            if sock is None:
                sock = self._peers[send.target] = self.transport.client_socket(
                    zmq.DEALER, send.target, NodeRole.STORAGE)
                self._poller.register(sock, zmq.POLLIN)
            send_message(sock, wire.encode(wire.FileReplicate.make(
                self.node_id, request_id=send.request_id, file=send.file_id, file_length=send.length,
                source=self.address)), counters=self.transport)
            self.counters["repair_offers_sent"] += 1

    def _on_peer(self, message: Message) -> None:
        scan = self.scan
        if scan is None:
            return
        if isinstance(message, wire.FilePutReply):
            confirmed = message.status in (PutStatus.PRESENT, PutStatus.STORED)
        elif isinstance(message, wire.Error):
            confirmed = False
        else:
            return
        offer = scan.answered(message.request_id, confirmed)
        if offer is None:
            return
        if confirmed:
            self.counters["repair_offers_confirmed"] += 1
            for file_id, _ in scan.take_trimmable():
                size = self.store.remove(file_id)
                if size is not None:
                    self.counters["trimmed_blobs"] += 1
                    self.counters["trimmed_bytes"] += size
                    log.info("trimmed %s: its whole replica set holds it", file_id.hex())
        else:
            self.counters["repair_offers_failed"] += 1
            log.info("%s did not take %s: %s", offer.target, offer.file_id.hex(),
                     getattr(message, "reason", message))

    # -- collection ---------------------------------------------------------------

    def _start_gc(self, now: float) -> None:
        waiting = []
        if self._gc_waiting:
            dry_run = self._gc_waiting[0].dry_run
            waiting = [request for request in self._gc_waiting if request.dry_run == dry_run]
            self._gc_waiting = collections.deque(r for r in self._gc_waiting if r.dry_run != dry_run)
        else:
            dry_run = False
        found = candidates(self.store.list_blobs(), self.wall(), self.policy.gc_grace_s)
        self.gc = GcRound(GcPass(dry_run, found), waiting)
        self.counters["gc_passes"] += 1
        self._next_gc_page(now)

    def _next_gc_page(self, now: float) -> None:
        gc = self.gc
        assert gc is not None
        page = gc.work.next_page()
        if page is None:
            self._end_gc(complete=True)
            return
        gc.page, gc.page_since, gc.page_sent = page, now, False

    def _drive_gc(self, now: float) -> None:
        gc = self.gc
        if gc is None:
            return
        if now - gc.page_since > GC_PAGE_TIMEOUT_S:
            log.warning("no master leader answered gc_check within %.0f s: nothing more deleted",
                        GC_PAGE_TIMEOUT_S)
            self._end_gc(complete=False)
            return
        if not gc.page_sent and self.search.due(now) is not None:
            gc.request_id = next(self._request_ids)
            self._send_master(wire.GcCheck.make(self.node_id, request_id=gc.request_id, files=gc.page), now)
            gc.page_sent = True

    def _gc_answered(self, files: list, now: float) -> None:
        gc = self.gc
        assert gc is not None
        cutoff = self.wall() - self.policy.gc_grace_s
        for blob in gc.work.answered(files):
            if gc.work.dry_run:
                gc.work.deleted(blob, blob.size)
                continue
            size = self.store.delete_if_idle(blob.file_id, cutoff)
            gc.work.deleted(blob, size)
            if size is None:
                self.counters["gc_kept_in_use"] += 1
            else:
                self.counters["gc_deleted_blobs"] += 1
                self.counters["gc_deleted_bytes"] += size
                with self._tombstones_lock:
                    self._tombstones.collected(blob.file_id, now)
        self._next_gc_page(now)

    def _end_gc(self, complete: bool) -> None:
        gc = self.gc
        assert gc is not None
        self.gc = None
        work = gc.work
        if not complete:
            self.counters["gc_passes_incomplete"] += 1
        verb = "would delete" if work.dry_run else "deleted"
        log.info("collection pass: %d blob(s) unused past the grace period, %s %d (%d bytes)%s",
                 len(work.candidates), verb, len(work.collected), work.bytes,
                 "" if complete else ", the leader did not answer every page")
        for request in gc.waiting:
            if not complete and not work.collected:
                self.reply(request.peer, wire.Error.replying(
                    self.node_id, request.request_id, int(wire.MessageType.GC_RUN), ErrorCode.BUSY,
                    "no master leader answered gc_check: nothing was deleted"))
                continue
            self.reply(request.peer, wire.GcRunReply.make(
                self.node_id, request_id=request.request_id, dry_run=int(work.dry_run),
                blobs_examined=len(work.candidates), bytes=work.bytes,
                files=[[file_id, size] for file_id, size in work.collected[:MAX_FILES_PER_MESSAGE]]))
