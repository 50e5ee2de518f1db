"""Connections to the cluster for the dashboard's request handlers.

The client library is synchronous and a Connection is not thread-safe, so
each thread of a small pool holds its own, made on first use, and a
handler awaits `clients.run(fn, ...)`, which calls fn(connection, ...) on
one of those threads.
"""
from __future__ import annotations

import asyncio
import pathlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from uds.client.api import Connection

T = TypeVar("T")
# Requests of a page are small; a few at once is plenty on a dev machine.
HANDLER_THREADS = 4
# A page should hear quickly that the masters do not answer.
REQUEST_TIMEOUT_S = 5.0


class Clients:
    """A pool of threads, each with its own Connection to the cluster."""

    def __init__(self, cluster_path: pathlib.Path, threads: int = HANDLER_THREADS,
                 timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.cluster_path = cluster_path
        self.timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="dashboard-client")
        self._local = threading.local()
        self._made: list[Connection] = []
        self._made_lock = threading.Lock()

    def connect(self) -> Connection:
        """A new Connection, for a thread of its own."""
        return Connection(self.cluster_path, timeout=self.timeout_s)

    def _connection(self) -> Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self.connect()
            with self._made_lock:
                self._made.append(connection)
        return connection

    def _call(self, fn: Callable[..., T], args: tuple) -> T:
        return fn(self._connection(), *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(connection, *args) on a pool thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn, args)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._made_lock:
            for connection in self._made:
                connection.close()
            self._made.clear()
