"""uds client library: `connect()`, `put()`, `get()`, `submit_job()`.

The module-level functions use one default connection, opened on first use
(from $UDS_CLUSTER, else the running dev cluster). See doc/client.md.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from uds.client.api import Connection, connect, find_cluster_file
from uds.errors import (
    AuthenticationRefused, ClientError, InvalidJobError, JobFailed, JobTimeout, NoClusterError, RemoteError,
    RequestTimeout, UnknownJobError,
)
from uds.client.events import Event, EventsPage
from uds.client.jobs import ChunkStatus, Job, JobSpec, JobStatus, OutputRef
from uds.wire.records import ChunkResult

_default: Connection | None = None


def _connection() -> Connection:
    global _default
    if _default is None:
        _default = connect()
    return _default


def put(source: Any) -> str:
    return _connection().put(source)


def get(file_id: str) -> bytes:
    return _connection().get(file_id)


def submit_job(program: Any, **options: Any) -> Job:
    return _connection().submit_job(program, **options)


def as_completed(jobs: Iterable[Job], timeout: float | None = None) -> Iterator[Job]:
    return _connection().as_completed(jobs, timeout=timeout)


__all__ = ["connect", "put", "get", "submit_job", "as_completed", "find_cluster_file", "Connection",
           "Job", "JobSpec", "JobStatus", "ChunkStatus", "OutputRef", "ChunkResult", "Event", "EventsPage", "AuthenticationRefused", "ClientError",
           "InvalidJobError", "JobFailed",
           "JobTimeout", "NoClusterError", "RemoteError", "RequestTimeout", "UnknownJobError"]
