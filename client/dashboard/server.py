"""The dashboard's web server: its routes, headers and event stream
(doc/dashboard.md has the HTTP API).

Rules:
- Every reply is JSON made by json.dumps, a file's bytes, or a static file
  of the package: the server never builds HTML from data, and every
  response carries SECURITY_HEADERS.
- Handlers read the cluster only through the client library, on the pool
  threads of clients.py; the event stream is the Feed's (feed.py).
- Errors are {"error": text} with a 4xx/5xx status.
"""
from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import re
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

import uds
from uds.client.dashboard.auth import TOKEN_COOKIE, TOKEN_HEADER, TOKEN_QUERY, Gate
from uds.client.dashboard.clients import Clients
from uds.client.dashboard.feed import POLL_INTERVAL_S, Feed, read_cluster
from uds.client.dashboard.views import (
    attempt_json, dependents_of, job_json, summary_json, task_stream,
)
from uds.client.events import job_events
from uds.client.job_list import BadJobQueryError
from uds.errors import ClientError, InvalidJobError, RequestTimeout, UnknownJobError

log = logging.getLogger(__name__)

STATIC_DIR = pathlib.Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; object-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
JOBS_LIMIT_DEFAULT = 200
JOBS_LIMIT_MAX = 10_000
# Jobs submitted after a job that are asked whether they wait for it.
DEPENDENTS_LOOKAHEAD = 100
FILE_PIECE_BYTES = 1 << 20
TEXT_VIEW_BYTES = 1 << 20
SSE_KEEPALIVE_S = 15.0
# The most jobs whose `after` is remembered (it never changes once submitted).
AFTER_CACHE_MAX = 10_000
_HEX_ID = re.compile(r"[0-9a-fA-F]{32}")
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._+-]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATE = web.AppKey("dashboard", object)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/json")


def error_response(status: int, text: str) -> web.Response:
    return json_response({"error": text}, status=status)


def safe_filename(name: str, fallback: str) -> str:
    """A download's file name with nothing a header or a file system could
    misread: the last path part, unsafe characters as "_", at most 100."""
    name = _UNSAFE_FILENAME.sub("_", name.rsplit("/", 1)[-1]).lstrip(".")[:100]
    return name or fallback


def _job_id(request: web.Request) -> str:
    job = request.match_info["job"]
    if not _HEX_ID.fullmatch(job):
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{job[:40]!r} is not a job id (32 hex characters)"}),
                                 content_type="application/json")
    return job.lower()


class Dashboard:
    """The server's state: where it reads the cluster, its gate and its feed."""

    def __init__(self, cluster_path: pathlib.Path, gate: Gate, listen: str,
                 poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.cluster_path = cluster_path
        self.gate = gate
        self.listen = listen
        self.clients = Clients(cluster_path)
        self.feed = Feed(self.clients.connect, self.clients.run, poll_interval_s)
        self.afters: dict[str, tuple[str, ...]] = {}

    # -- pages and session ---------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            return error_response(404, "the dashboard's pages are not installed")
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

    async def session(self, request: web.Request) -> web.Response:
        return json_response({"cluster": str(self.cluster_path), "admin": self.gate.token is not None,
                              "listen": self.listen, "version": uds.__version__})

    # -- reads -----------------------------------------------------------------

    async def cluster(self, request: web.Request) -> web.Response:
        feed = self.feed
        if feed.cluster is not None and time.monotonic() - feed.cluster_read_at < 1.5 * feed.poll_interval_s:
            return json_response(feed.cluster)
        return json_response(await self.clients.run(read_cluster))

    async def jobs(self, request: web.Request) -> web.Response:
        query = request.query
        states = [s for s in query.get("state", "").split(",") if s.strip()] or None
        since: Any = query.get("since") or None
        try:
            limit = int(query.get("limit", JOBS_LIMIT_DEFAULT))
        except ValueError:
            return error_response(400, f"limit must be a positive integer, not {query.get('limit')!r}")
        limit = min(limit, JOBS_LIMIT_MAX)
        try:
            listed = await self.clients.run(lambda c: c.jobs(state=states, since=since, limit=limit))
        except BadJobQueryError as fault:
            return error_response(400, str(fault))
        return json_response({"jobs": [summary_json(summary) for summary in listed]})

    async def job(self, request: web.Request) -> web.Response:
        job = _job_id(request)
        # Three questions at once, each on a pool thread of its own.
        status, spec, stream = await asyncio.gather(
            self.clients.run(lambda c: c.job_status(job, detail=True)), self.clients.run(_job_spec, job),
            self.clients.run(lambda c: task_stream(job_events(c, job, follow_on=False))))
        dependents = await self.clients.run(self._dependents, job, status.submitted_at)
        return json_response(job_json(status, spec, dependents, stream))

    def _dependents(self, connection: Any, job: str, submitted_at: float) -> list[str]:
        """The jobs submitted since `job` that wait for it: each one's
        `after` asked once and remembered."""
        if len(self.afters) > AFTER_CACHE_MAX:
            self.afters.clear()
        for summary in connection.jobs(since=submitted_at, limit=DEPENDENTS_LOOKAHEAD):
            if summary.id != job and summary.id not in self.afters and not summary.past_retention:
                try:
                    self.afters[summary.id] = connection.job_status(summary.id, detail=False).after
                except UnknownJobError:
                    self.afters[summary.id] = ()
        return dependents_of(job, dict(self.afters))     # a copy: other pool threads add to it

    async def attempts(self, request: web.Request) -> web.Response:
        job = _job_id(request)
        try:
            index = int(request.match_info["index"])
        except ValueError:
            return error_response(400, "a chunk index is an integer from 0")
        listed = await self.clients.run(lambda c: c.attempts(job, index))
        return json_response({"attempts": [attempt_json(attempt) for attempt in listed],
                              "dropped": listed.dropped})

    async def file(self, request: web.Request) -> web.StreamResponse:
        file_hex = request.match_info["file"]
        if not _HEX_ID.fullmatch(file_hex):
            return error_response(400, "a file id is 32 hex characters")
        file_id = bytes.fromhex(file_hex)
        size = await self.clients.run(lambda c: c.storage.stat(file_id))
        if size is None:
            return error_response(404, f"no file {file_hex.lower()} on any storage node")
        as_text = request.query.get("view") == "text"
        if as_text:
            length = min(size, TEXT_VIEW_BYTES)
            data = await self.clients.run(lambda c: c.storage.read(file_id, 0, length)) if length else b""
            headers = {"X-UDS-Truncated": "1"} if size > length else {}
            return web.Response(body=data, headers=headers, content_type="text/plain", charset="utf-8")
        name = safe_filename(request.query.get("name", ""), file_hex.lower())
        response = web.StreamResponse(headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{name}"'})
        await response.prepare(request)
        offset = 0
        while offset < size:
            length = min(FILE_PIECE_BYTES, size - offset)
            piece = await self.clients.run(lambda c, at=offset, n=length: c.storage.read(file_id, at, n))
            await response.write(piece)
            offset += length
        await response.write_eof()
        return response

    # -- actions ---------------------------------------------------------------

    async def cancel(self, request: web.Request) -> web.Response:
        return await self._act(request, lambda c, job: c.cancel_job(job))

    async def release(self, request: web.Request) -> web.Response:
        return await self._act(request, lambda c, job: c.release_job(job))

    async def _act(self, request: web.Request, action: Callable[[Any, str], Any]) -> web.Response:
        refusal = self.gate.check_action(request.headers.get(TOKEN_HEADER))
        if refusal is not None:
            return error_response(refusal.status, refusal.reason)
        job = _job_id(request)
        await self.clients.run(action, job)
        return await self.job(request)

    # -- the event stream ------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        job = request.query.get("job")
        if job is not None:
            if not _HEX_ID.fullmatch(job):
                return error_response(400, "job must be a job id (32 hex characters)")
            job = job.lower()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        subscriber = self.feed.subscribe(job)
        try:
            await response.write(b"retry: 2000\n\n")
            while True:
                try:
                    item = await asyncio.wait_for(subscriber.queue.get(), SSE_KEEPALIVE_S)
                except asyncio.TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                name, data = item
                text = data if isinstance(data, str) else json.dumps(data)
                await response.write(f"event: {name}\ndata: {text}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.feed.unsubscribe(subscriber)
        return response

    # -- life --------------------------------------------------------------------

    async def on_startup(self, app: web.Application) -> None:
        self.feed.start()

    async def on_shutdown(self, app: web.Application) -> None:
        """Ends every open event stream, so that none holds up the stop."""
        await self.feed.stop()

    async def on_cleanup(self, app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.feed.join)
        await loop.run_in_executor(None, self.clients.close)


def _job_spec(connection: Any, job: str) -> Any:
    """The job's program, args and inputs; None when the masters no longer
    keep them (or do not know the query)."""
    ask = getattr(connection, "job_spec", None)
    if ask is None:
        return None
    try:
        return ask(job)
    except UnknownJobError:
        return None


# -- middleware ------------------------------------------------------------------

@web.middleware
async def gate_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    dashboard: Dashboard = request.app[STATE]
    query_token = request.query.get(TOKEN_QUERY)
    refusal = dashboard.gate.check_host(request.headers.get("Host")) or dashboard.gate.check_request(request.path, request.headers.get(TOKEN_HEADER),
                                           request.cookies.get(TOKEN_COOKIE), query_token)
    if refusal is not None:
        return error_response(refusal.status, refusal.reason)
    response = await handler(request)
    if dashboard.gate.sets_cookie(query_token) and not response.prepared:
        response.set_cookie(TOKEN_COOKIE, query_token, httponly=True, samesite="Strict", path="/")
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The client library's errors as {"error"} replies."""
    try:
        return await handler(request)
    except web.HTTPException as http:
        if http.content_type == "application/json" or http.status < 400:
            raise
        return error_response(http.status, http.reason)
    except UnknownJobError as fault:
        return error_response(404, str(fault))
    except (InvalidJobError, BadJobQueryError) as fault:
        return error_response(400, str(fault))
    except RequestTimeout as fault:
        return error_response(503, f"the masters did not answer: {fault}")
    except ClientError as fault:
        return error_response(502, str(fault))


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def make_app(dashboard: Dashboard) -> web.Application:
    app = web.Application(middlewares=[gate_middleware, error_middleware])
    app[STATE] = dashboard
    app.on_response_prepare.append(_security_headers)
    app.on_startup.append(dashboard.on_startup)
    app.on_shutdown.append(dashboard.on_shutdown)
    app.on_cleanup.append(dashboard.on_cleanup)
    router = app.router
    for path in ("/", "/jobs", "/jobs/{job}"):
        router.add_get(path, dashboard.page)
    router.add_get("/api/session", dashboard.session)
    router.add_get("/api/cluster", dashboard.cluster)
    router.add_get("/api/jobs", dashboard.jobs)
    router.add_get("/api/jobs/{job}", dashboard.job)
    router.add_get("/api/jobs/{job}/chunks/{index}/attempts", dashboard.attempts)
    router.add_post("/api/jobs/{job}/cancel", dashboard.cancel)
    router.add_post("/api/jobs/{job}/release", dashboard.release)
    router.add_get("/api/files/{file}", dashboard.file)
    router.add_get("/api/stream", dashboard.stream)
    router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
    return app
