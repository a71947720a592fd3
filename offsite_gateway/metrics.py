"""Prometheus metrics, in a registry of the app's own (several apps may live in one test process)."""

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
        self.auth_failures = Counter(
            "offsite_gateway_auth_failures",
            "Requests to /v1 without a valid token, by source (an IPv4 address or an IPv6 /64; the first 100 "
            'sources seen, then "other")',
            ["source"],
            registry=self.registry,
        )
        self.retention_deleted = Counter(
            "offsite_gateway_retention_deleted", "Backups deleted by retention", registry=self.registry
        )

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        data: bytes = generate_latest(self.registry)
        return data
