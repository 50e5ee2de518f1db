"""A daemon's Prometheus metrics, served as text on http://HOST:PORT/metrics.

Every daemon makes one `DaemonMetrics` for its role. What it already counts
for `stats_query` is exported as it stands, read only when a scraper asks
(`counters_from`, `gauges_from`): a scrape costs the daemon's own loop
nothing. Latencies are histograms observed where they happen; an observation
is a lock and an add, well under the cost of the message that caused it.

Metric names are `uds_<role>_<name>` (counters end in `_total`); each
figure is listed in doc/metrics.md. The HTTP server runs in its own thread,
from prometheus_client, on the address the cluster file gives the daemon
(`metrics = "HOST:PORT"` of its entry, or a worker's `[workers] metrics`
range); a daemon with none configured serves nothing.
"""
from __future__ import annotations

import threading
from typing import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from uds.wire.cluster import ClusterFileError, parse_metrics_address

# Seconds, from a loopback round trip to a stuck chunk: one set of buckets
# for every latency, so dashboards can put any two side by side.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
# Copying a dict the daemon's loop is changing may meet a resize: try again.
READ_ATTEMPTS = 5

# Hosts that bind every interface, and so name none a scraper could use.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})

FigureReader = Callable[[], Mapping[str, float]]


class MetricsAddressError(ValueError):
    """The metrics address is malformed, or no port of it can be bound."""


class DaemonMetrics:
    """The metrics of one daemon process of `role` (master, loadbalancer, storage, worker)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.registry = CollectorRegistry(auto_describe=True)
        self.address: tuple[str, int] | None = None     # where it is served, once serve() ran
        self._server = None

    def name(self, name: str) -> str:
        return f"uds_{self.role}_{name}"

    def histogram(self, name: str, documentation: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
        """A histogram of seconds (unless `buckets` say otherwise), registered here."""
        return Histogram(self.name(name), documentation, registry=self.registry, buckets=buckets)

    def counters_from(self, read: FigureReader, documentation: Mapping[str, str] | None = None) -> None:
        """Export every figure `read()` returns at scrape time as a counter
        `uds_<role>_<figure>_total` (figures only ever grow)."""
        self.registry.register(_FigureCollector(self, read, CounterMetricFamily, documentation or {}))

    def gauges_from(self, read: FigureReader, documentation: Mapping[str, str] | None = None) -> None:
        """Export every figure `read()` returns at scrape time as a gauge `uds_<role>_<figure>`."""
        self.registry.register(_FigureCollector(self, read, GaugeMetricFamily, documentation or {}))

    def serve(self, address: str) -> tuple[str, int]:
        """Serve /metrics on `address`: "HOST:PORT" (port 0: any free one) or
        "HOST:FIRST-LAST" (the first free port of the range). Returns
        (host, port) served on. Raises MetricsAddressError when no port of
        it can be bound, saying why the last one could not."""
        try:
            host, first, last = parse_metrics_address(address)
        except ClusterFileError as fault:
            raise MetricsAddressError(str(fault)) from None
        refusal: OSError | None = None
        for port in range(first, last + 1):
            try:
                server, _thread = start_http_server(port, addr=host, registry=self.registry)
            except OSError as fault:
                refusal = fault
                continue
            self._server = server
            self.address = (host, server.server_address[1])
            return self.address
        where = "no port of" if last > first else "cannot bind"
        raise MetricsAddressError(f"metrics: {where} {address}: {refusal}")

    def close(self) -> None:
        """Stop serving (the scrape under way, if any, ends first)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def url(self, reachable_at: Sequence[str] = ()) -> str:
        """http://HOST:PORT/metrics once served, else "". Served on every
        interface (0.0.0.0, ::), it names the first of `reachable_at`, this
        host's addresses, instead: the wildcard is no address to scrape."""
        if self.address is None:
            return ""
        host, port = self.address
        if host in WILDCARD_HOSTS and reachable_at:
            host = reachable_at[0]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/metrics"


class _FigureCollector(Collector):
    def __init__(self, metrics: DaemonMetrics, read: FigureReader, family: type,
                 documentation: Mapping[str, str]) -> None:
        self._metrics, self._read, self._family, self._documentation = metrics, read, family, documentation
        self._lock = threading.Lock()

    def collect(self) -> Iterator:
        with self._lock:
            figures = _read_figures(self._read)
        for figure, value in sorted(figures.items()):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            text = self._documentation.get(figure, figure.replace("_", " "))
            yield self._family(self._metrics.name(figure), text, value=value)

    def describe(self) -> Iterator:
        # Figures appear as the daemon first counts them: nothing to describe
        # up front, and describing must not read them.
        return iter(())


def prefixed(prefix: str, figures: Mapping[str, float]) -> dict[str, float]:
    """The figures with `prefix` before each name ("transport_", say)."""
    return {prefix + name: value for name, value in figures.items()}


def _read_figures(read: FigureReader) -> dict[str, float]:
    for _ in range(READ_ATTEMPTS):
        try:
            return dict(read())
        except RuntimeError:        # "dictionary changed size during iteration"
            continue
    return {}
