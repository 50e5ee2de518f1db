"""The dashboard's fan-out (client/dashboard/feed.py) on the loop, without
its reading threads: events and job statuses are handed to it directly."""
from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from uds.client.dashboard import feed as feed_module
from uds.client.dashboard.feed import Feed
from uds.client.events import Event
from uds.client.jobs import ChunkStatus, JobStatus
from uds.wire.records import ChunkResult

JOB = "ab" * 16
OTHER = "cd" * 16
WORKER = "ef" * 16


def status(*states: str, state: str = "running") -> JobStatus:
    return JobStatus(id=JOB, name="j", state=state, chunk_count=len(states),
                     succeeded=sum(s == "succeeded" for s in states), failed=0, submitted_at=1.0,
                     finished_at=None, error="",
                     chunks=[ChunkStatus(chunk=i, state=s, attempt=1, worker=None, result=ChunkResult())
                             for i, s in enumerate(states)])


class Statuses:
    """The pool's stand-in: job_status answers the status set last."""

    def __init__(self) -> None:
        self.current = status("queued", "queued")
        self.asked = 0
        self.spans: list[tuple[int, int | None]] = []

    async def run(self, fn, *args):
        self.asked += 1
        return fn(self, *args)

    def job_status(self, job: str, detail: bool = True, first_chunk: int = 0,
                   max_chunks: int | None = None) -> JobStatus:
        self.spans.append((first_chunk, max_chunks))
        end = None if max_chunks is None else first_chunk + max_chunks
        return replace(self.current, chunks=self.current.chunks[first_chunk:end])


def drain(subscriber) -> list[tuple[str, object]]:
    """What the subscriber was sent, JSON texts decoded."""
    items = []
    while not subscriber.queue.empty():
        item = subscriber.queue.get_nowait()
        items.append(item if item is None else (item[0], json.loads(item[1]) if isinstance(item[1], str) else item[1]))
    return items


def event(seq: int, kind: str, job: str = JOB, chunk: int | None = 0) -> Event:
    return Event(seq, 10.0 + seq, kind, job, chunk, 1 if chunk is not None else None, WORKER, "")


def test_a_watching_page_gets_its_jobs_chunks_in_full_then_only_what_changed():
    async def scenario():
        statuses = Statuses()
        feed = Feed(connect=None, run=statuses.run)
        everyone, watcher = feed.subscribe(), feed.subscribe(JOB)
        await feed._send_chunks()
        assert drain(watcher) == [("job", {"job": JOB, "state": "running", "succeeded": 0, "failed": 0,
                                           "cached": 0, "cancelled": 0, "chunk_count": 2}),
                                  ("chunks", {"chunks": [{"index": 0, "state": "queued", "attempt": 1, "worker": None},
                                                         {"index": 1, "state": "queued", "attempt": 1,
                                                          "worker": None}]})]
        statuses.current = status("succeeded", "queued")
        feed._on_event(event(1, "chunk_started"))
        feed._on_event(event(2, "chunk_succeeded"))
        feed._on_event(event(3, "chunk_succeeded", job=OTHER))
        asked = statuses.asked
        await feed._send_chunks()
        assert statuses.asked == asked + 1          # one read for two events of the job, none for the other
        assert statuses.spans[-1] == (0, 1)         # of the chunk they named
        sent = drain(watcher)
        assert [name for name, _ in sent] == ["log", "stream", "log", "stream", "log", "job", "chunks"]
        assert sent[-1] == ("chunks", {"chunks": [{"index": 0, "state": "succeeded", "attempt": 1,
                                                   "worker": None}]})
        assert sent[3][1]["stream"][0]["state"] == "succeeded"
        assert [name for name, _ in drain(everyone)] == ["log", "log", "log"]
        await feed._send_chunks()
        assert drain(watcher) == [] and statuses.asked == asked + 1   # nothing new: nothing read or sent
    asyncio.run(scenario())


def test_a_new_page_gets_the_latest_cluster_and_recent_log_first():
    async def scenario():
        feed = Feed(connect=None, run=Statuses().run)
        feed._on_cluster({"at": 1.0})
        for seq in range(feed_module.RECENT_EVENTS + 5):
            feed._on_event(event(seq + 1, "job_submitted", chunk=None))
        sent = drain(feed.subscribe())
        assert sent[0] == ("cluster", {"at": 1.0})
        assert [data["seq"] for _, data in sent[1:]] == list(range(6, feed_module.RECENT_EVENTS + 6))
    asyncio.run(scenario())


def test_a_page_that_falls_too_far_behind_is_dropped(monkeypatch):
    async def scenario():
        monkeypatch.setattr(feed_module, "MAX_QUEUED", 3)
        feed = Feed(connect=None, run=Statuses().run)
        slow = feed.subscribe()
        for seq in range(5):
            feed._on_event(event(seq + 1, "job_submitted", chunk=None))
        sent = drain(slow)
        assert slow.dropped and len(sent) == 4 and sent[-1] is None
    asyncio.run(scenario())


def test_the_last_page_watching_a_job_forgets_it():
    async def scenario():
        statuses = Statuses()
        feed = Feed(connect=None, run=statuses.run)
        watcher = feed.subscribe(JOB)
        await feed._send_chunks()
        feed.unsubscribe(watcher)
        feed._on_event(event(1, "chunk_succeeded"))
        await feed._send_chunks()
        assert statuses.asked == 1 and not feed._known
    asyncio.run(scenario())


def test_events_of_some_chunks_read_only_their_span_and_keep_the_counts_of_all():
    async def scenario():
        statuses = Statuses()
        statuses.current = status(*["cancelled"] * 2, *["queued"] * 8)
        feed = Feed(connect=None, run=statuses.run)
        watcher = feed.subscribe(JOB)
        await feed._send_chunks()
        assert statuses.spans == [(0, None)]
        drain(watcher)
        statuses.current = status(*["cancelled"] * 2, *["queued"] * 3, "running", "queued", "succeeded",
                                  "queued", "queued")
        feed._on_event(event(1, "chunk_started", chunk=5))
        feed._on_event(event(2, "chunk_succeeded", chunk=7))
        await feed._send_chunks()
        assert statuses.spans[-1] == (5, 3)
        sent = dict((name, data) for name, data in drain(watcher) if name in ("job", "chunks"))
        assert [(c["index"], c["state"]) for c in sent["chunks"]["chunks"]] == [(5, "running"), (7, "succeeded")]
        assert sent["job"]["cancelled"] == 2 and sent["job"]["succeeded"] == 1
    asyncio.run(scenario())
