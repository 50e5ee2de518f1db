"""The dashboard's JSON: what the client library returns, as the objects
of the HTTP API (doc/dashboard.md).

Nothing here does I/O, reads the clock or imports aiohttp: each function
takes client objects (and the time, where one is needed) and returns plain
dicts of str, int, float, bool, None and lists, ready for json.dumps. Ids
are lowercase hex, times unix seconds, sizes bytes; a figure not known is
None.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Iterable, Sequence

from uds.client.attempts import TIMELINE_STEPS
from uds.wire.enums import NodeRole

# A chunk's state as the pages colour it. "delayed" (a retry waiting out
# its backoff) is queued for the eye.
CHUNK_STATES = ("waiting", "queued", "dispatched", "running", "succeeded", "failed", "cancelled", "cached")
_CHUNK_STATE_OF = {**{state: state for state in CHUNK_STATES}, "delayed": "queued"}
# Event kinds that end a chunk attempt, and the state its bar ends in.
ATTEMPT_END_KINDS = {"chunk_succeeded": "succeeded", "chunk_failed": "failed", "chunk_retried": "failed",
                     "chunk_lost": "lost", "chunk_cancelled": "cancelled"}
ATTEMPT_START_KIND = "chunk_started"
ATTEMPT_DISPATCH_KIND = "chunk_dispatched"
# Chunks counted in the rate: each ended for good, or came from the cache.
RATE_KINDS = frozenset({"chunk_succeeded", "chunk_failed", "chunk_cached"})
USAGE_FIELDS = ("wall_s", "cpu_user_s", "cpu_system_s", "peak_memory_bytes", "bytes_from_cache",
                "bytes_from_storage", "output_bytes")


def chunk_state(state: str) -> str:
    """The page's name for a chunk report's state."""
    return _CHUNK_STATE_OF.get(state, state)


def file_ref(ref: Any) -> dict | None:
    """A wire file reference (id bytes, size) as {"id", "size"}; None stays None."""
    if not ref:
        return None
    return {"id": bytes(ref[0]).hex(), "size": int(ref[1])}


def named_refs(refs: dict) -> list[dict]:
    """{name: (id, size)} as [{"name", "id", "size"}], by name."""
    return [{"name": name, **file_ref(ref)} for name, ref in sorted(refs.items())]


def _hex(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else bytes(value).hex()


def _time(value: float | None) -> float | None:
    """A time the wire gives as 0 or None when not known."""
    return float(value) if value else None


# -- jobs ------------------------------------------------------------------------

def summary_json(summary: Any) -> dict:
    """A JobSummary of `c.jobs()` as a line of /api/jobs."""
    return {"job": summary.id, "name": summary.name, "state": summary.state,
            "submitted_at": summary.submitted_at, "started_at": summary.started_at,
            "finished_at": summary.finished_at, "chunk_count": summary.chunk_count,
            "succeeded": summary.succeeded, "failed": summary.failed, "cancelled": summary.cancelled,
            "cached": summary.cached, "past_retention": summary.past_retention, "error": summary.error}


def chunk_json(chunk: Any) -> dict:
    """A ChunkStatus as a chunk of /api/jobs/<job>."""
    result = chunk.result
    return {"index": chunk.chunk, "state": chunk_state(chunk.state), "attempt": chunk.attempt,
            "worker": chunk.worker, "exit_code": result.exit_code, "elapsed_s": result.elapsed_s or None,
            "error": result.error, "outputs": named_refs(result.outputs),
            "stdout": file_ref(result.stdout), "stderr": file_ref(result.stderr)}


def chunk_brief(chunk: Any) -> dict:
    """What the `chunks` event of /api/stream says of a chunk."""
    return {"index": chunk.chunk, "state": chunk_state(chunk.state), "attempt": chunk.attempt,
            "worker": chunk.worker}


def job_counts(status: Any, cancelled: int | None = None) -> dict:
    """The `job` event of /api/stream: a job's state and counts; `cancelled`
    when its status holds only some of its chunks (else counted from them)."""
    return {"job": status.id, "state": status.state, "succeeded": status.succeeded, "failed": status.failed,
            "cached": status.cached, "cancelled": _cancelled(status) if cancelled is None else cancelled,
            "chunk_count": status.chunk_count}


def _cancelled(status: Any) -> int:
    """JobStatus carries no count of cancelled chunks: those its reports say."""
    return sum(1 for chunk in status.chunks if chunk.state == "cancelled")


def job_json(status: Any, spec: Any = None, dependents: Sequence[str] = (),
             stream: Sequence[dict] = ()) -> dict:
    """A JobStatus (with its chunks) as /api/jobs/<job>. `spec`: its JobSpec
    (program, args, inputs), None when the masters no longer keep it;
    `dependents`: jobs known to wait for it; `stream`: its task stream."""
    program = file_ref(spec.program) if spec is not None else None
    starts = [bar["start"] for bar in stream if bar["start"] is not None]
    return {"job": status.id, "name": status.name, "state": status.state, "chunk_count": status.chunk_count,
            "succeeded": status.succeeded, "failed": status.failed, "cached": status.cached,
            "cancelled": _cancelled(status), "submitted_at": status.submitted_at,
            "started_at": min(starts) if starts else None, "finished_at": status.finished_at,
            "error": status.error, "waiting": status.waiting, "past_retention": status.past_retention,
            "program": program, "args": list(spec.args) if spec is not None else [],
            "inputs": named_refs(spec.inputs) if spec is not None else [],
            "after": list(status.after), "dependents": list(dependents),
            "chunks": [chunk_json(chunk) for chunk in status.chunks], "stream": list(stream)}


def attempt_json(attempt: Any) -> dict:
    """An Attempt of `c.attempts()` as one of /api/jobs/<job>/chunks/<i>/attempts."""
    result = attempt.result
    usage = result.usage
    return {"number": attempt.number, "state": attempt.state, "failure": attempt.failure,
            "worker": attempt.worker, "exit_code": result.exit_code, "error": result.error,
            "usage": {name: getattr(usage, name) for name in USAGE_FIELDS},
            "timeline": {step: attempt.timeline.get(step) for step in TIMELINE_STEPS},
            "stdout": file_ref(result.stdout), "stderr": file_ref(result.stderr),
            "outputs": named_refs(result.outputs)}


def dependents_of(job: str, afters: dict[str, Iterable[str]]) -> list[str]:
    """The jobs among `afters` (job -> the jobs it waits for) that wait for `job`."""
    return sorted(other for other, after in afters.items() if job in after)


# -- the task stream -------------------------------------------------------------

class TaskStream:
    """The bars of a job's task stream, from its events: one per attempt
    that ran on a worker, from its chunk_started to the event that ended it.
    A chunk that ends within one report of its worker has no chunk_started:
    its bar starts at its dispatch. With keep_ended=False it holds only the
    attempts still open, of any number of jobs (the feed's, which sees
    every job's events)."""

    def __init__(self, keep_ended: bool = True) -> None:
        self.keep_ended = keep_ended
        self._bars: dict[tuple, dict] = {}
        self._dispatched: dict[tuple, float] = {}

    def add(self, event: Any) -> dict | None:
        """Take one event; the bar it opened or closed, else None."""
        if event.chunk is None or event.attempt is None:
            return None
        key = (event.job, event.chunk, event.attempt)
        if event.kind == ATTEMPT_DISPATCH_KIND:
            self._dispatched[key] = event.at
            return None
        if event.kind == ATTEMPT_START_KIND:
            self._dispatched.pop(key, None)
            bar = {"chunk": event.chunk, "attempt": event.attempt, "worker": event.node,
                   "start": event.at, "end": None, "state": "running"}
        elif event.kind in ATTEMPT_END_KINDS:
            dispatched = self._dispatched.pop(key, None)
            bar = self._bars.get(key)
            if bar is None:
                if event.node is None:
                    return None         # never reached a worker: no bar
                bar = {"chunk": event.chunk, "attempt": event.attempt, "worker": event.node,
                       "start": dispatched, "end": None, "state": "running"}
            bar = {**bar, "end": event.at, "state": ATTEMPT_END_KINDS[event.kind],
                   "worker": bar["worker"] or event.node}
        else:
            return None
        if self.keep_ended or bar["end"] is None:
            self._bars[key] = bar
        else:
            self._bars.pop(key, None)
        return bar

    def bars(self) -> list[dict]:
        """Every bar, by start (those with no known start last)."""
        return sorted(self._bars.values(), key=lambda bar: (bar["start"] is None, bar["start"] or 0,
                                                            bar["chunk"], bar["attempt"]))


def task_stream(events: Iterable[Any]) -> list[dict]:
    stream = TaskStream()
    for event in events:
        stream.add(event)
    return stream.bars()


# -- the rate --------------------------------------------------------------------

class RateMeter:
    """Chunks that ended per second, over the last `window_s` seconds of
    events seen (times on the caller's monotonic clock)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._ends: deque[float] = deque()

    def note(self, event: Any, now: float) -> None:
        if event.kind in RATE_KINDS:
            self._ends.append(now)

    def rate(self, now: float) -> float:
        while self._ends and self._ends[0] <= now - self.window_s:
            self._ends.popleft()
        return len(self._ends) / self.window_s


# -- events ----------------------------------------------------------------------

def event_json(event: Any) -> dict:
    """An Event of the masters' log as the `log` event of /api/stream."""
    return {"seq": event.seq, "kind": event.kind, "at": event.at, "job": event.job, "chunk": event.chunk,
            "attempt": event.attempt, "node": event.node, "text": event_text(event)}


def event_text(event: Any) -> str:
    """One line for people: the kind, then what it names."""
    return " ".join([event.kind.replace("_", " "), *event.named()]).strip()


# -- the cluster -----------------------------------------------------------------

def master_json(record: Any) -> dict:
    return {"address": record.address, "role": record.role, "term": record.term,
            "commit_index": record.commit_index, "lag": record.lag}


def leader_address(masters: Sequence[Any]) -> str | None:
    """The confirmed leader's address, else one that calls itself leader."""
    leaders = [m for m in masters if m.role == "leader"]
    confirmed = [m for m in leaders if m.confirmed_leader]
    chosen = confirmed or leaders
    return chosen[0].address if chosen else None


def _role(node: dict) -> int:
    return int(node["role"])


def balancer_json(node: dict, active_epoch: int) -> dict:
    epoch = int(node.get("lease_epoch", 0))
    return {"node": _hex(node["node"]), "host": node["host"], "address": node["address"], "state": node["state"],
            "active": bool(epoch) and epoch == active_epoch and node["state"] == "alive", "epoch": epoch}


def storage_json(node: dict) -> dict:
    figures = node.get("figures") or {}
    repair = None
    if "repair_pending" in figures or "repaired_files" in figures:
        repair = {"pending": figures.get("repair_pending"), "repaired": figures.get("repaired_files")}
    return {"node": _hex(node["node"]), "host": node["host"], "address": node["address"], "state": node["state"],
            "used_bytes": figures.get("used_bytes"), "free_bytes": figures.get("free_bytes"),
            "blobs": figures.get("blob_count"), "repair": repair}


def worker_json(node: dict, cached: dict[str, int] | None = None) -> dict:
    """`cached`: hex node id -> the bytes its block cache holds (its /metrics).
    A worker listens on nothing of its own: its address is the first it
    names (its metrics URL, when it serves one)."""
    address = node["address"] or next(iter(node.get("addresses") or ()), "")
    return {"node": _hex(node["node"]), "name": node["host"], "address": address, "state": node["state"],
            "slots": node["slots"], "free_slots": node["free_slots"], "running": node["running"],
            "cpus": node.get("millicpus", 0) / 1000 if node.get("millicpus") else None,
            "memory_bytes": node.get("memory_bytes") or None,
            "cached_bytes": (cached or {}).get(_hex(node["node"])),
            "cache_capacity_bytes": node.get("cache_bytes") or None}


def cluster_json(masters: Sequence[Any], nodes: Sequence[dict] | None, counters: dict | None, at: float,
                 cached: dict[str, int] | None = None) -> dict:
    """/api/cluster: `masters` from `c.masters()`, `nodes` from `c.nodes()`
    and `counters` from `c.master_stats()` (None: the leader did not answer);
    `cached`: the workers' cached bytes, by hex node id."""
    nodes = nodes or []
    balancers = [node for node in nodes if _role(node) == NodeRole.LOADBALANCER]
    active_epoch = max((int(node.get("lease_epoch", 0)) for node in balancers), default=0)
    return {"at": at, "masters": [master_json(record) for record in masters],
            "leader": leader_address(masters),
            "balancers": [balancer_json(node, active_epoch) for node in balancers],
            "storage": [storage_json(node) for node in nodes if _role(node) == NodeRole.STORAGE],
            "workers": [worker_json(node, cached) for node in nodes if _role(node) == NodeRole.WORKER],
            "counters": dict(counters) if counters is not None else {}}

