"""Prometheus metrics: an observer of the recorder, so they count what the audit log holds.

Naming follows Prometheus conventions: the ``audience_purge_`` prefix, counters end in
``_total``, durations are in seconds, and no audience id is ever a label. Ids deleted and
failed carry a ``campaign_id`` label for the first :data:`MAX_CAMPAIGN_LABELS` campaigns a
run meets; later ones share the value ``other``, so a file with thousands of campaigns
cannot blow up a Prometheus server (the report and the audit log have every campaign).

Each run has its own registry (no process-wide state): ``/metrics`` serves it, and a
one-shot Job pushes it to a Pushgateway at the end (see :mod:`worker.runtime.health`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MAX_CAMPAIGN_LABELS = 50
RATE_WINDOW_S = 10.0
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Row and id outcomes, by the event that ends them.
_ROW_EVENTS = {
    "rejected": "rejected",
    "other_shard": "other_shard",
}
_ID_EVENTS = {"deleted": "deleted", "failed": "failed", "unconfirmed": "unconfirmed"}


class Metrics:
    """Observer: the run's counters and gauges, in a registry of its own."""

    def __init__(self, *, rate_per_second: float) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ids = Counter(
            "audience_purge_ids",
            "Input rows and audience ids by outcome (deleted, failed, rejected, duplicate, "
            "already_done, other_shard, unconfirmed)",
            ["outcome"],
            registry=r,
        )
        self.campaign_ids = Counter(
            "audience_purge_campaign_ids",
            f"Ids deleted or failed per campaign (the first {MAX_CAMPAIGN_LABELS} campaigns; "
            "then campaign_id=other)",
            ["campaign_id", "outcome"],
            registry=r,
        )
        self.requests = Counter(
            "audience_purge_requests",
            "delete-audience answers by status class (2xx, 4xx, 5xx, none: no answer) and "
            "meaning (deleted, retryable, rate_limited, permanent, too_large, fatal, error)",
            ["status_class", "outcome"],
            registry=r,
        )
        self.retries = Counter("audience_purge_retries", "Requests that were retries", registry=r)
        self.rate_limited = Counter(
            "audience_purge_rate_limited", "Answers with status 429", registry=r
        )
        self.rate_wait = Counter(
            "audience_purge_rate_limit_wait_seconds",
            "Time senders spent waiting for the rate limit",
            registry=r,
        )
        self.in_flight = Gauge(
            "audience_purge_requests_in_flight", "Requests sent and not answered yet", registry=r
        )
        self.concurrency_limit = Gauge(
            "audience_purge_concurrency_limit",
            "Requests allowed in flight now (the adaptive limit, or the fixed --concurrency)",
            registry=r,
        )
        self.latency = Histogram(
            "audience_purge_request_duration_seconds",
            "Time from sending a request to its answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rate_configured = Gauge(
            "audience_purge_rate_configured_per_second",
            "The configured request rate (--rate), per second",
            registry=r,
        )
        self.rate_configured.set(rate_per_second)
        self.rate_effective = Gauge(
            "audience_purge_rate_effective_per_second",
            f"Requests started per second over the last {RATE_WINDOW_S:g} s",
            registry=r,
        )
        self._starts: deque[float] = deque()
        self.rate_effective.set_function(self._effective_rate)
        self.started = Gauge(
            "audience_purge_run_start_time_seconds", "When the run started (Unix time)", registry=r
        )
        self.started.set(time.time())
        self.last_success = Gauge(
            "audience_purge_last_success_timestamp_seconds",
            "When a batch was last confirmed deleted (Unix time)",
            registry=r,
        )
        self.input_rows = Gauge(
            "audience_purge_input_rows",
            "Lines in the input file (unknown for a pipe: not set)",
            registry=r,
        )
        self.entries = Counter(
            "audience_purge_stream_entries",
            "Stream entries acknowledged or dead-lettered (consume), or enqueued (enqueue)",
            ["outcome"],
            registry=r,
        )
        self.stream_lag = Gauge(
            "audience_purge_stream_lag",
            "Entries in the stream not yet delivered to the consumer group (consume)",
            registry=r,
        )
        self._campaigns: set[int] = set()

    def follow_concurrency(self, limit: Callable[[], float]) -> None:
        """Read the concurrency limit at each scrape: it moves between events."""
        self.concurrency_limit.set_function(limit)

    def on_event(self, event: str, fields: Mapping[str, Any]) -> None:
        if event in _ROW_EVENTS:
            self.ids.labels(_ROW_EVENTS[event]).inc()
        elif event == "duplicates":
            self.ids.labels("duplicate").inc(len(fields["lines"]))
        elif event == "already_done":
            self.ids.labels("already_done").inc(fields["rows"])
        elif event in _ID_EVENTS:
            self._ids(_ID_EVENTS[event], fields)
        elif event == "request":
            self._request(fields)
        elif event == "answered":
            self._answered(fields)
        elif event in ("acknowledged", "dead_lettered", "enqueued"):
            self.entries.labels(event).inc()

    def _ids(self, outcome: str, fields: Mapping[str, Any]) -> None:
        n = len(fields.get("audience_ids") or ())
        self.ids.labels(outcome).inc(n)
        if outcome == "unconfirmed" or "campaign_id" not in fields:
            return
        self.campaign_ids.labels(self._campaign_label(fields["campaign_id"]), outcome).inc(n)
        if outcome == "deleted":
            self.last_success.set(time.time())

    def _campaign_label(self, campaign: int) -> str:
        if campaign in self._campaigns or len(self._campaigns) < MAX_CAMPAIGN_LABELS:
            self._campaigns.add(campaign)
            return str(campaign)
        return "other"

    def _request(self, fields: Mapping[str, Any]) -> None:
        self.in_flight.inc()
        if fields.get("retry"):
            self.retries.inc()
        self.rate_wait.inc(float(fields.get("waited_s") or 0.0))
        self._starts.append(time.monotonic())
        self._prune()

    def _answered(self, fields: Mapping[str, Any]) -> None:
        self.in_flight.dec()
        status = fields.get("status")
        status_class = f"{int(status) // 100}xx" if status else "none"
        self.requests.labels(status_class, fields.get("kind") or "error").inc()
        if status == 429:
            self.rate_limited.inc()
        if fields.get("latency_s") is not None:
            self.latency.observe(float(fields["latency_s"]))

    def _effective_rate(self) -> float:
        self._prune()
        return len(self._starts) / RATE_WINDOW_S

    def _prune(self) -> None:
        cutoff = time.monotonic() - RATE_WINDOW_S
        while self._starts and self._starts[0] < cutoff:
            self._starts.popleft()
