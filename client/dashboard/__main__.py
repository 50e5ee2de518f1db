"""python -m uds.client.dashboard --cluster FILE --listen HOST:PORT [--admin-token-file F]

Serves the dashboard until SIGTERM or SIGINT. Prints one line,
`dashboard: http://HOST:PORT/`, once it listens (with port 0, the port the
system chose). Exits 2 with one line for a bad argument or a refused bind
(a non-loopback address without an admin token).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import pathlib
import signal
import sys
from typing import TYPE_CHECKING

from uds.client.dashboard.auth import Gate, TokenFileError, TokenRequiredError, parse_listen, read_token_file

if TYPE_CHECKING:
    from uds.client.dashboard.server import Dashboard

# The server (aiohttp) is imported once the arguments and the bind rules
# are known to be good, so that a refusal is quick.

DEFAULT_LISTEN = "127.0.0.1:8265"
EXIT_USAGE = 2


class DashboardStartError(Exception):
    """The dashboard cannot start; says why."""


def cluster_token(cluster_path: pathlib.Path) -> str | None:
    """The cluster's admin token, from the client role's key folder."""
    from uds.wire import cluster as cluster_file
    from uds.wire.enums import NodeRole
    from uds.wire.keys import open_role
    try:
        return open_role(cluster_file.load(cluster_path).keys, NodeRole.CLIENT).admin_token()
    except Exception:   # a key folder without the token, or not readable: actions stay off
        return None


def make_dashboard(cluster_path: pathlib.Path, listen: str, token_file: str | None = None) -> "Dashboard":
    """Raises DashboardStartError for a bad --listen, token file, or a refused bind."""
    try:
        host, _ = parse_listen(listen)
        token = read_token_file(token_file) if token_file else cluster_token(cluster_path)
        gate = Gate.for_listen(host, token)
    except (ValueError, TokenFileError, TokenRequiredError) as fault:
        raise DashboardStartError(str(fault)) from None
    from uds.client.dashboard.server import Dashboard
    return Dashboard(cluster_path, gate, listen)


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


async def serve(dashboard: "Dashboard", say=print) -> None:
    """Listen, say the URL, serve until SIGTERM or SIGINT."""
    from aiohttp import web
    from uds.client.dashboard.server import make_app
    host, port = parse_listen(dashboard.listen)
    runner = web.AppRunner(make_app(dashboard), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as fault:
        await runner.cleanup()
        raise DashboardStartError(f"cannot listen on {dashboard.listen}: {fault.strerror}") from None
    bound = runner.addresses[0][1] if runner.addresses else port
    dashboard.listen = f"{host}:{bound}"
    say(f"dashboard: {url_of(host, bound)}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(cluster_path: pathlib.Path, listen: str, token_file: str | None = None) -> int:
    """Serve until interrupted; 0, or EXIT_USAGE with one line on stderr."""
    try:
        dashboard = make_dashboard(cluster_path, listen, token_file)
        asyncio.run(serve(dashboard))
    except DashboardStartError as fault:
        print(f"uds dashboard: {fault}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uds.client.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True, help="the cluster file")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"where to serve (default {DEFAULT_LISTEN}; port 0: any free one)")
    parser.add_argument("--admin-token-file", metavar="FILE",
                        help="the admin token (default: the cluster's, from the client key folder)")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s dashboard %(levelname)s %(message)s")
    from uds.client.api import find_cluster_file
    from uds.errors import NoClusterError
    try:
        cluster_path = find_cluster_file(options.cluster)
    except NoClusterError as fault:
        print(f"uds dashboard: {fault}", file=sys.stderr)
        return EXIT_USAGE
    return run(cluster_path, options.listen, options.admin_token_file)


if __name__ == "__main__":
    sys.exit(main())
