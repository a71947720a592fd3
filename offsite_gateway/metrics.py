"""Prometheus metrics, in a registry of the app's own (several apps may live in one test process).

Every label has a bounded set of values that no request can extend: a route is the pattern of one the app serves
(anything else is `unmatched`, with the method `other`), a method one of the usual seven, a status one the app
answers, an operation or reason one of the gateway's own.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """The gateway's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "offsite_gateway_requests",
            "HTTP requests by route (the pattern, not the path) and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "offsite_gateway_request_duration_seconds",
            "HTTP request duration by route",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.part_urls_signed = Counter(
            "offsite_gateway_part_urls_signed", "Part upload URLs signed", registry=self.registry
        )
        self.bytes_completed = Counter(
            "offsite_gateway_bytes_completed", "Bytes of backups completed", registry=self.registry
        )
        self.backups_completed = Counter(
            "offsite_gateway_backups_completed", "Backups completed", registry=self.registry
        )
        self.uploads_in_progress = Gauge(
            "offsite_gateway_uploads_in_progress", "Uploads in progress", registry=self.registry
        )
        self.storage_errors = Counter(
            "offsite_gateway_storage_errors",
            "Storage calls that failed, by operation",
            ["operation"],
            registry=self.registry,
        )
        self.sweeps = Counter("offsite_gateway_sweeps", "Sweeper runs", registry=self.registry)
        self.swept = Counter(
            "offsite_gateway_swept",
            "What the sweeper cleaned up, by kind (stale, orphan, deleted)",
            ["kind"],
            registry=self.registry,
        )
        # No label anyone could multiply (an address, a path, a method of their own): the sources are in the log.
        self.auth_failures = Counter(
            "offsite_gateway_auth_failures",
            "Requests to /v1 (or /metrics) without a valid token",
            registry=self.registry,
        )
        self.uploads_refused = Counter(
            "offsite_gateway_uploads_refused",
            "Completes refused because storage holds something else than was declared and signed, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.retention_deleted = Counter(
            "offsite_gateway_retention_deleted", "Backups deleted by retention", registry=self.registry
        )
        # Readiness (GET /readyz's probes), at each scrape: whether the database and storage answer.
        self.check_up = Gauge(
            "offsite_gateway_check_up",
            "1 if the check (database, storage) answered the last probe, else 0 (probed at most every 5 s)",
            ["check"],
            registry=self.registry,
        )
        # The watchdog (offsite_gateway/watchdog.py) and its outbox (outbox.py), set at each of their runs.
        self.watch_runs = Counter(
            "offsite_gateway_watch_runs", "Looks of the watchdog at every instance", registry=self.registry
        )
        self.instances_by_state = Gauge(
            "offsite_gateway_instances",
            "Active instances by the watchdog's state (ok, late, never, paused), at its last look",
            ["state"],
            registry=self.registry,
        )
        self.oldest_late_seconds = Gauge(
            "offsite_gateway_oldest_late_seconds",
            "Seconds since the instance late the longest (late or never) was due a backup; 0 if none is late",
            registry=self.registry,
        )
        self.instances_near_quota = Gauge(
            "offsite_gateway_instances_near_quota",
            "Active instances holding at least 90 % of their quota in completed backups",
            registry=self.registry,
        )
        self.stored_bytes = Gauge(
            "offsite_gateway_stored_bytes",
            "Bytes of every active instance's completed backups (and those being deleted) in storage",
            registry=self.registry,
        )
        self.storage_quota_bytes = Gauge(
            "offsite_gateway_storage_quota_bytes",
            "OFFSITE_GATEWAY_STORAGE_QUOTA: what the bucket may hold (only when set)",
            registry=self.registry,
        )
        self.notices_sent = Counter(
            "offsite_gateway_notices_sent",
            "Notifications delivered, by recipient (owner, operator) and channel (webhook, email)",
            ["recipient", "channel"],
            registry=self.registry,
        )
        self.notice_failures = Counter(
            "offsite_gateway_notice_failures",
            "Notification attempts that failed, by channel and reason (timeout, connect, http_5xx, "
            "forbidden_address, redirect, ...)",
            ["channel", "reason"],
            registry=self.registry,
        )
        self.notices_given_up = Counter(
            "offsite_gateway_notices_given_up",
            "Notifications given up (a failure no retry helps, or NOTIFY_ATTEMPTS attempts), by channel",
            ["channel"],
            registry=self.registry,
        )
        self.notices_pending = Gauge(
            "offsite_gateway_notices_pending",
            "Notifications waiting in the outbox (every node's), at this node's last delivery run",
            registry=self.registry,
        )
        self.notice_seconds = Histogram(
            "offsite_gateway_notice_duration_seconds",
            "How long a notification attempt took, by channel",
            ["channel"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        data: bytes = generate_latest(self.registry)
        return data
