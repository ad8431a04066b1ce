"""Prometheus metrics of workers and dispatchers (`--metrics-port`), one definition each.

Counted in the process that does the work: with `WORKER_CLASS=forking` a job's counts stay in its
work horse and are lost with it, so scrape `simple` workers (the default).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

PREFIX = "codex_langfuse"

entries_filed = Counter(f"{PREFIX}_entries_filed", "Stream entries filed under their run by a dispatcher")
entries_poisoned = Counter(f"{PREFIX}_entries_poisoned", "Stream entries moved to the poison stream")
entries_late = Counter(f"{PREFIX}_entries_late", "Entries that came after their run was closed (or their gap given up)")
runs_reused = Counter(f"{PREFIX}_runs_reused", "Run ids a second run instance reused")
events_folded = Counter(f"{PREFIX}_events_folded", "Entries folded into observations by a worker")
spans_sent = Counter(f"{PREFIX}_spans_sent", "Spans sent to the destination (each request's spans)")
spans_accepted = Counter(f"{PREFIX}_spans_accepted", "Spans the destination accepted")
spans_rejected = Counter(f"{PREFIX}_spans_rejected", "Spans refused for good", ["reason"])
dead_letters = Counter(f"{PREFIX}_dead_letters", "Items put in the dead letters", ["reason"])
retries = Counter(f"{PREFIX}_delivery_retries", "Delivery attempts that failed transiently and were scheduled again")
runs_delivered = Counter(f"{PREFIX}_runs_delivered", "Runs closed with everything delivered")
delivery_delay = Histogram(
    f"{PREFIX}_delivery_delay_seconds", "From the end of an observation (as the producer read it) to its acceptance",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 24 * 3600),
)
stream_lag = Gauge(f"{PREFIX}_stream_lag", "Stream entries no dispatcher has read yet")
stream_pending = Gauge(f"{PREFIX}_stream_pending", "Stream entries read but not yet acknowledged")
redis_reconnects = Counter(f"{PREFIX}_redis_reconnects", "Times the process lost Redis and waited for it", ["role"])


def serve(port: int, address: str = "0.0.0.0") -> None:
    """The /metrics endpoint in a daemon thread."""
    start_http_server(port, addr=address)
