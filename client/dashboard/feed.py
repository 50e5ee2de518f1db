"""What /api/stream sends, for every page at once.

One thread follows the masters' whole event log (`Connection.follow`) and
one polls the cluster's state every POLL_INTERVAL_S; each hands what it
read to the asyncio loop with call_soon_threadsafe, and everything after
that runs on the loop: the Feed fans each item out to the subscribers (one
per open page), counts the rate, keeps the open attempts' bars, and for the
jobs a page watches (?job=) reads the job's status at most every
CHUNKS_BATCH_S after its events, sending the chunks that changed. However
many pages are open, the masters see one follower and one poller.

A subscriber that falls MAX_QUEUED items behind is dropped (its stream
ends; the browser's EventSource reconnects).
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from typing import Any, Callable

from uds.client.dashboard.views import (
    RateMeter, TaskStream, chunk_brief, cluster_json, event_json, job_counts,
)
from uds.client.dashboard.worker_metrics import cached_bytes
from uds.client.events import follow
from uds.errors import ClientError, RequestTimeout
from uds.wire.enums import NodeRole

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 2.0
RATE_INTERVAL_S = 1.0
CHUNKS_BATCH_S = 0.25
# Log events a new page is sent first, and so read back from the log at start.
RECENT_EVENTS = 200
MAX_QUEUED = 2000
# After a fault in a reading thread, the next try.
RETRY_S = 1.0
# The follower's held query returns at least this often, to see whether to
# stop: the dashboard stops within about this, its connections closed.
STOP_CHECK_S = 1.0
# The masters asked one by one for `masters()`: a dead one costs this.
MASTERS_TIMEOUT_S = 1.0


def read_cluster(connection: Any) -> dict:
    """/api/cluster, read now: every master asked directly, the node table
    and the leader's counters (each None when the leader did not answer),
    and each worker's cached bytes from its /metrics."""
    masters = connection.masters(timeout=MASTERS_TIMEOUT_S)
    try:
        nodes = connection.nodes()
        counters = connection.master_stats()
    except ClientError:
        nodes = counters = None
    workers = [node for node in nodes or () if int(node["role"]) == NodeRole.WORKER]
    return cluster_json(masters, nodes, counters, time.time(), cached_bytes(workers))


class Subscriber:
    """One open /api/stream: its queue of (event name, data: a JSON text or
    an object to dump) and the job it watches."""

    def __init__(self, job: str | None) -> None:
        self.job = job
        self.queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()
        self.new = True             # not yet sent its job's chunks in full
        self.dropped = False

    def send(self, name: str, data: Any) -> None:
        if self.dropped:
            return
        if self.queue.qsize() >= MAX_QUEUED:
            self.dropped = True
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait((name, data))


class Feed:
    """The fan-out, on the loop; `start()` starts its threads and timers."""

    def __init__(self, connect: Callable[[], Any], run: Callable[..., Any],
                 poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self._connect = connect             # a new Connection, for a reading thread
        self._run = run                     # await run(fn, *args): fn(connection, *args) on a pool thread
        self.poll_interval_s = poll_interval_s
        self.subscribers: set[Subscriber] = set()
        self.recent: deque[dict] = deque(maxlen=RECENT_EVENTS)
        self.cluster: dict | None = None
        self.cluster_read_at = 0.0          # monotonic
        self.rate = RateMeter()
        self.open_bars = TaskStream(keep_ended=False)
        # Watched jobs to read again: the chunks their events named, or None: every chunk.
        self._dirty: dict[str, set[int] | None] = {}
        self._known: dict[str, dict[int, dict]] = {}     # watched job -> index -> chunk brief
        self._counts: dict[str, dict] = {}
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        self._threads: list[threading.Thread] = []

    # -- life ----------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for target, name in ((self._follow, "dashboard-follower"), (self._poll, "dashboard-poller")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._tasks = [asyncio.create_task(self._every(RATE_INTERVAL_S, self._send_rate)),
                       asyncio.create_task(self._every(CHUNKS_BATCH_S, self._send_chunks))]

    async def stop(self) -> None:
        """Stop the timers and end every stream; the reading threads end
        at their next step (join waits for them)."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for subscriber in self.subscribers:
            subscriber.queue.put_nowait(None)

    def join(self, timeout_s: float = STOP_CHECK_S + 2 * MASTERS_TIMEOUT_S) -> None:
        """Wait (blocking) for the reading threads to close their connections."""
        for thread in self._threads:
            thread.join(timeout_s)

    async def _every(self, interval_s: float, action: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await action()
            except Exception:       # a timer must outlive one bad round
                log.exception("dashboard feed: %s failed", getattr(action, "__name__", action))

    # -- the reading threads -------------------------------------------------

    def _hand(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:        # the loop is closed: we are stopping
            self._stop.set()

    def _follow(self) -> None:
        seq: int | None = None
        live_after = 0          # events up to here happened before the dashboard started
        while not self._stop.is_set():
            try:
                with self._connect() as connection:
                    if seq is None:
                        live_after = connection.events(after=0, limit=1).last_seq
                        seq = max(0, live_after - RECENT_EVENTS)
                    while not self._stop.is_set():
                        try:
                            for event in follow(connection, seq, deadline=time.monotonic() + STOP_CHECK_S):
                                seq = max(seq, event.seq)
                                self._hand(self._on_event, event, event.seq > live_after)
                        except RequestTimeout:
                            continue    # no event within STOP_CHECK_S: see whether to stop, then on
            except Exception as fault:
                log.warning("dashboard: following the event log failed (%s); again in %gs", fault, RETRY_S)
                self._stop.wait(RETRY_S)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                with self._connect() as connection:
                    while not self._stop.is_set():
                        self._hand(self._on_cluster, read_cluster(connection))
                        self._stop.wait(self.poll_interval_s)
            except Exception as fault:
                log.warning("dashboard: reading the cluster failed (%s); again in %gs", fault, RETRY_S)
                self._stop.wait(RETRY_S)

    # -- on the loop -----------------------------------------------------------

    def subscribe(self, job: str | None = None) -> Subscriber:
        subscriber = Subscriber(job)
        self.subscribers.add(subscriber)
        if self.cluster is not None:
            subscriber.send("cluster", self.cluster)
        for item in self.recent:
            subscriber.send("log", item)
        if job is not None:
            self._dirty[job] = None
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        if subscriber.job is not None and not self._watchers(subscriber.job):
            self._known.pop(subscriber.job, None)
            self._counts.pop(subscriber.job, None)
            self._dirty.pop(subscriber.job, None)

    def _watchers(self, job: str) -> list[Subscriber]:
        return [subscriber for subscriber in self.subscribers if subscriber.job == job]

    def _publish(self, name: str, data: Any, job: str | None = None) -> None:
        """Send to every subscriber (of `job`, if given), as JSON made once."""
        text = None
        for subscriber in list(self.subscribers):
            if job is None or subscriber.job == job:
                text = json.dumps(data) if text is None else text
                subscriber.send(name, text)

    def _on_event(self, event: Any, live: bool = True) -> None:
        """One event of the log; `live`: it committed after the dashboard
        started (the recent ones read back at start are not counted in the rate)."""
        if live:
            self.rate.note(event, time.monotonic())
        item = event_json(event)
        self.recent.append(item)
        self._publish("log", item)
        bar = self.open_bars.add(event) if event.job is not None else None
        if event.job is not None and self._watchers(event.job):
            self._note_dirty(event.job, event.chunk)
            if bar is not None:
                self._publish("stream", {"stream": [bar]}, job=event.job)
        elif event.job is None and event.kind == "gap":
            for subscriber in self.subscribers:
                if subscriber.job:
                    self._dirty[subscriber.job] = None

    def _on_cluster(self, cluster: dict) -> None:
        self.cluster = cluster
        self.cluster_read_at = time.monotonic()
        self._publish("cluster", cluster)

    async def _send_rate(self) -> None:
        self._publish("rate", {"at": time.time(), "chunks_per_s": self.rate.rate(time.monotonic())})

    def _note_dirty(self, job: str, chunk: int | None) -> None:
        if job in self._dirty and self._dirty[job] is None:
            return
        if chunk is None:
            self._dirty[job] = None         # a job's own event: read it all
        else:
            self._dirty.setdefault(job, set()).add(chunk)

    async def _send_chunks(self) -> None:
        """Read each watched job that had events: only the span of chunks
        they named (a large job is not read whole at every event), or
        every chunk for a page that has not had them yet."""
        dirty, self._dirty = self._dirty, {}
        for job, chunks in dirty.items():
            watchers = self._watchers(job)
            if not watchers:
                continue
            if any(subscriber.new for subscriber in watchers) or job not in self._known:
                chunks = None
            first, count = (0, None) if chunks is None else (min(chunks), max(chunks) - min(chunks) + 1)
            try:
                status = await self._run(lambda connection, job=job, first=first, count=count:
                                         connection.job_status(job, detail=True, first_chunk=first, max_chunks=count))
            except ClientError as fault:
                log.info("dashboard: job %s not read (%s)", job, fault)
                continue
            self._send_job(job, status)

    def _send_job(self, job: str, status: Any) -> None:
        """Send what changed of the chunks `status` holds (all of them, or a span)."""
        briefs = {chunk.chunk: chunk_brief(chunk) for chunk in status.chunks}
        known = self._known.setdefault(job, {})
        changed = [brief for index, brief in sorted(briefs.items()) if known.get(index) != brief]
        known.update(briefs)
        counts = job_counts(status, cancelled=sum(brief["state"] == "cancelled" for brief in known.values()))
        counts_changed = counts != self._counts.get(job)
        self._counts[job] = counts
        for subscriber in self._watchers(job):
            if subscriber.new:
                subscriber.send("job", counts)
                subscriber.send("chunks", {"chunks": [known[index] for index in sorted(known)]})
                subscriber.new = False
                continue
            if counts_changed:
                subscriber.send("job", counts)
            if changed:
                subscriber.send("chunks", {"chunks": changed})
