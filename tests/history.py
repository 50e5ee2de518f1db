"""A record of what clients saw, and the checker that judges it.

Chunk programs of chaos tests write PROOF_PROGRAM's output: one line with
the job id, the chunk index and the sha256 of the input the chunk read, so
an output proves which job, chunk and input it came from. Clients record,
in a `History` shared by their threads, every acknowledged submission
(with the hash of each chunk's input), every status they saw and, at the
end, each committed output's content. `check()` reads that history and the
masters' event log and returns the violations:

- lost: an acknowledged job that did not succeed;
- wrong-output: a committed output that is not its chunk's proof line;
- double-commit: more than one chunk_succeeded event for one chunk;
- backwards: a client saw a job leave a final state, a job's count of
  succeeded or failed chunks fall, or a succeeded chunk change state;
- event-gap: the event log's sequence numbers skip or go back.
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

PROOF_PROGRAM = (b'#!/bin/sh\nset -e\nsleep 0.5\nsum=$(sha256sum < "$UDS_INPUTS/data" | cut -d" " -f1)\n'
                 b'printf "%s %s %s\\n" "$UDS_JOB" "$UDS_CHUNK" "$sum" > "$UDS_OUTPUT/proof"\n')
PROOF_OUTPUT = "proof"
FINAL_STATES = ("succeeded", "failed", "cancelled")


def proof_line(job: str, chunk: int, data: bytes) -> bytes:
    """What PROOF_PROGRAM writes for chunk `chunk` of `job` reading `data`."""
    return f"{job} {chunk} {hashlib.sha256(data).hexdigest()}\n".encode()


@dataclass(frozen=True)
class Submission:
    client: str
    job: str
    at: float
    inputs: tuple[bytes, ...]        # each chunk's input, by chunk index


@dataclass(frozen=True)
class Observation:
    client: str
    job: str
    at: float
    state: str
    succeeded: int
    failed: int
    chunks: tuple[tuple[int, str], ...] = ()    # (chunk, state) pairs, when the client asked for detail


@dataclass(frozen=True)
class Violation:
    kind: str                        # lost, wrong-output, double-commit, backwards
    job: str
    detail: str


@dataclass
class History:
    """Thread-safe: each client thread records into the same history."""

    submissions: list[Submission] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    outputs: dict[tuple[str, int], bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def acknowledged(self, client: str, job: str, inputs: Iterable[bytes]) -> None:
        with self._lock:
            self.submissions.append(Submission(client, job, time.monotonic(), tuple(inputs)))

    def observed(self, client: str, status) -> None:
        """A client saw `status` (a uds.client.JobStatus)."""
        chunks = tuple((chunk.chunk, chunk.state) for chunk in status.chunks)
        with self._lock:
            self.observations.append(Observation(client, status.id, time.monotonic(), status.state,
                                                 status.succeeded, status.failed, chunks))

    def committed_output(self, job: str, chunk: int, content: bytes) -> None:
        with self._lock:
            self.outputs[(job, chunk)] = content


def check(history: History, events: Iterable[dict]) -> list[Violation]:
    """Every violation of the history against the event log (EVENT records)."""
    events = list(events)
    return [*_lost(history), *_wrong_outputs(history), *_double_commits(events), *_backwards(history),
            *_event_gaps(events)]


def _last_seen(history: History) -> dict[str, Observation]:
    last: dict[str, Observation] = {}
    for seen in sorted(history.observations, key=lambda seen: seen.at):
        last[seen.job] = seen
    return last


def _lost(history: History) -> Iterable[Violation]:
    last = _last_seen(history)
    for submission in history.submissions:
        seen = last.get(submission.job)
        if seen is None or seen.state != "succeeded":
            yield Violation("lost", submission.job,
                            f"acknowledged, last seen {seen.state if seen else 'never'}")


def _wrong_outputs(history: History) -> Iterable[Violation]:
    for submission in history.submissions:
        for chunk, data in enumerate(submission.inputs):
            content = history.outputs.get((submission.job, chunk))
            if content is None:
                yield Violation("wrong-output", submission.job, f"chunk {chunk}: no committed output read")
            elif content != proof_line(submission.job, chunk, data):
                yield Violation("wrong-output", submission.job, f"chunk {chunk}: output {content[:200]!r}")


def _double_commits(events: list[dict]) -> Iterable[Violation]:
    commits = Counter((event["job"], event["chunk"]) for event in events if event["kind"] == "chunk_succeeded")
    for (job, chunk), count in sorted(commits.items(), key=lambda item: (item[0][0] or b"", item[0][1] or 0)):
        if count > 1:
            yield Violation("double-commit", job.hex() if job else "", f"chunk {chunk} committed {count} times")


def _backwards(history: History) -> Iterable[Violation]:
    """Per client: what it saw of a job never goes back."""
    last: dict[tuple[str, str], Observation] = {}
    for seen in sorted(history.observations, key=lambda seen: seen.at):
        before = last.get((seen.client, seen.job))
        last[(seen.client, seen.job)] = seen
        if before is None:
            continue
        if before.state in FINAL_STATES and seen.state != before.state:
            yield Violation("backwards", seen.job, f"{seen.client}: job {before.state} -> {seen.state}")
        if seen.succeeded < before.succeeded or seen.failed < before.failed:
            yield Violation("backwards", seen.job, f"{seen.client}: succeeded/failed "
                            f"{before.succeeded}/{before.failed} -> {seen.succeeded}/{seen.failed}")
        now = dict(seen.chunks)
        for chunk, state in before.chunks:
            if state == "succeeded" and chunk in now and now[chunk] != "succeeded":
                yield Violation("backwards", seen.job, f"{seen.client}: chunk {chunk} succeeded -> {now[chunk]}")


def _event_gaps(events: list[dict]) -> Iterable[Violation]:
    """The log may start past 1 (the masters keep a bounded tail), but then runs without a hole."""
    for before, after in zip(events, events[1:]):
        if after["seq"] != before["seq"] + 1:
            yield Violation("event-gap", "", f"event {before['seq']} followed by {after['seq']}")
