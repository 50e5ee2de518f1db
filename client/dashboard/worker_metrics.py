"""A worker's cached bytes, from its own /metrics (doc/metrics.md).

The masters know the size of a worker's block cache, not how full it is;
the worker serves that as the gauge `uds_worker_cached_bytes`, and names its
metrics URL (http://HOST:PORT/metrics) among the addresses of its facts.
The poller asks every alive worker at once, each with a short timeout: a
worker that does not answer shows no figure.
"""
from __future__ import annotations

import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from prometheus_client.parser import text_string_to_metric_families

CACHED_BYTES = "uds_worker_cached_bytes"
SCRAPE_TIMEOUT_S = 0.5
MAX_SCRAPES_AT_ONCE = 16
# A metrics text larger than this is not a worker's.
MAX_METRICS_BYTES = 1 << 20


def metrics_url(node: dict) -> str | None:
    """The worker's /metrics URL among its addresses, if it names one."""
    for address in node.get("addresses", ()):
        if address.startswith("http://") and address.endswith("/metrics"):
            return address
    return None


def gauge_value(text: str, name: str) -> float | None:
    """The value of the gauge `name` (without labels) in a Prometheus text, or None."""
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and not sample.labels:
                    return float(sample.value)
    except ValueError:
        return None
    return None


def _scrape(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as reply:
            text = reply.read(MAX_METRICS_BYTES).decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    value = gauge_value(text, CACHED_BYTES)
    return None if value is None else int(value)


def cached_bytes(workers: Sequence[dict]) -> dict[str, int]:
    """Hex node id -> cached bytes, for the alive workers that answered."""
    urls = {bytes(node["node"]).hex(): url for node in workers
            if node.get("state") == "alive" and (url := metrics_url(node)) is not None}
    if not urls:
        return {}
    with ThreadPoolExecutor(min(MAX_SCRAPES_AT_ONCE, len(urls))) as pool:
        values = dict(zip(urls, pool.map(_scrape, urls.values())))
    return {node: value for node, value in values.items() if value is not None}
