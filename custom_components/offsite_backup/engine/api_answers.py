"""What the gateway answers, typed: the data classes the client returns, and the parsers that build them from JSON.

A parser raises ``BadAnswer`` (or KeyError, TypeError, ValueError) when the JSON does not have the expected shape;
the client turns that into a ``GatewayUnavailableError``.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

# -------------------------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-instance limits set on the gateway."""

    max_backup_bytes: int
    part_size: int
    retention: Any
    url_ttl: int


@dataclass(frozen=True, slots=True)
class Usage:
    """What the instance holds in storage (completed backups and the parts of its upload in progress)."""

    bytes: int
    backups: int
    quota_bytes: int | None

    @property
    def percent(self) -> float | None:
        """The share of the quota used, or None without a quota."""
        return 100.0 * self.bytes / self.quota_bytes if self.quota_bytes else None


@dataclass(frozen=True, slots=True)
class InstancePolicy:
    """The retention and delete protection in force for the instance."""

    keep_last: int
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    protect_days: int
    object_lock: bool


@dataclass(frozen=True, slots=True)
class NotifyTarget:
    """The house's notify URL as the gateway shows it: without its path and query (``https://ntfy.sh/…``)."""

    url: str
    format: str


@dataclass(frozen=True, slots=True)
class Watch:
    """The gateway's view of the instance (its watchdog): the state, and when it expects the next backup."""

    state: str  # ok, late, never, paused
    expect_every: int | None  # seconds; None while paused
    last_success_at: datetime | None
    due_at: datetime | None  # "the gateway expects a backup by"; None while paused
    notify: NotifyTarget | None  # the house's outside alerts, if set
    operator_alerts: bool  # the gateway's operator is told too


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """``PUT /v1/instance/notify``: the notify URL as stored (shown without its path and query) and the key its
    notifications are signed with."""

    url: str
    format: str
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """``GET /v1/instance``: who the token belongs to, its limits, and (newer gateways) its usage, its policy and
    the watchdog's view."""

    id: str
    name: str
    limits: Limits
    usage: Usage | None = None
    policy: InstancePolicy | None = None
    watch: Watch | None = None


@dataclass(frozen=True, slots=True)
class BackupInit:
    """``POST /v1/backups``: the new upload and how to cut it."""

    id: str
    part_size: int
    part_count: int
    url_ttl: int
    parts: tuple[PartUrl, ...] = ()
    """The first parts' URLs, if the create asked for them (``part_urls``)."""


@dataclass(frozen=True, slots=True)
class PartUrl:
    """A presigned URL for one part (``PUT`` with ``Content-Length``)."""

    part_number: int
    url: str = field(repr=False)
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class StoredPart:
    """A part storage already holds (``GET /v1/backups/{id}/parts``)."""

    part_number: int
    etag: str
    size: int


@dataclass(frozen=True, slots=True)
class CompletedPart:
    """One entry of ``POST /v1/backups/{id}/complete``."""

    part_number: int
    etag: str


@dataclass(frozen=True, slots=True)
class RemoteBackup:
    """A backup as the gateway describes it."""

    id: str
    name: str
    size: int
    sha256: str | None
    status: str
    created_at: datetime
    completed_at: datetime | None
    part_size: int
    part_count: int
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DownloadLink:
    """``POST /v1/backups/{id}/download``: a presigned GET."""

    url: str = field(repr=False)
    expires_at: datetime


# ------------------------------------------------------------------------------------------------ parsing


class BadAnswer(Exception):
    """The gateway's JSON did not have the expected shape."""


def _obj(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadAnswer
    return value


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise BadAnswer
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadAnswer
    return value


def _time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise BadAnswer
    return datetime.fromisoformat(value)


def parse_list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data[key]
    if not isinstance(value, list):
        raise BadAnswer
    return value


def parse_backup(value: Any) -> RemoteBackup:
    data = _obj(value)
    sha256 = data.get("sha256")
    completed = data.get("completed_at")
    metadata = data.get("metadata")
    return RemoteBackup(
        id=_str(data, "id"),
        name=_str(data, "name"),
        size=_int(data, "size"),
        sha256=sha256 if isinstance(sha256, str) else None,
        status=_str(data, "status"),
        created_at=_time(data["created_at"]),
        completed_at=_time(completed) if completed is not None else None,
        part_size=_int(data, "part_size"),
        part_count=_int(data, "part_count"),
        metadata=metadata if isinstance(metadata, dict) else {},
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date; ``None`` when absent or junk."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _usage(value: Any) -> Usage | None:
    if value is None:
        return None  # a gateway older than usage reports
    data = _obj(value)
    quota = data.get("quota_bytes")
    if quota is not None and (not isinstance(quota, int) or isinstance(quota, bool)):
        raise BadAnswer
    return Usage(bytes=_int(data, "bytes"), backups=_int(data, "backups"), quota_bytes=quota)


def _policy(value: Any) -> InstancePolicy | None:
    if value is None:
        return None
    data = _obj(value)
    return InstancePolicy(
        keep_last=_int(data, "keep_last"),
        keep_daily=_int(data, "keep_daily"),
        keep_weekly=_int(data, "keep_weekly"),
        keep_monthly=_int(data, "keep_monthly"),
        protect_days=_int(data, "protect_days"),
        object_lock=data.get("object_lock") is True,
    )


def _optional_time(value: Any) -> datetime | None:
    return None if value is None else _time(value)


def _notify_target(value: Any) -> NotifyTarget | None:
    if value is None:
        return None
    data = _obj(value)
    return NotifyTarget(url=_str(data, "url"), format=_str(data, "format"))


def _watch(value: Any) -> Watch | None:
    if value is None:
        return None  # a gateway older than its watchdog
    data = _obj(value)
    every = data.get("expect_every")
    if every is not None and (not isinstance(every, int) or isinstance(every, bool)):
        raise BadAnswer
    return Watch(
        state=_str(data, "state"),
        expect_every=every,
        last_success_at=_optional_time(data.get("last_success_at")),
        due_at=_optional_time(data.get("due_at")),
        notify=_notify_target(data.get("notify")),
        operator_alerts=data.get("operator_alerts") is True,
    )


def parse_notify_settings(data: dict[str, Any]) -> NotifySettings:
    notify = _obj(data["notify"])
    return NotifySettings(
        url=_str(notify, "url"), format=_str(notify, "format"), secret=_str(notify, "secret")
    )


def parse_instance(data: dict[str, Any]) -> InstanceInfo:
    limits = _obj(data["limits"])
    return InstanceInfo(
        id=_str(data, "id"),
        name=_str(data, "name"),
        limits=Limits(
            max_backup_bytes=_int(limits, "max_backup_bytes"),
            part_size=_int(limits, "part_size"),
            retention=limits.get("retention"),
            url_ttl=_int(limits, "url_ttl"),
        ),
        usage=_usage(data.get("usage")),
        policy=_policy(data.get("policy")),
        watch=_watch(data.get("watch")),
    )


def parse_init(data: dict[str, Any]) -> BackupInit:
    return BackupInit(
        id=_str(data, "id"),
        part_size=_int(data, "part_size"),
        part_count=_int(data, "part_count"),
        url_ttl=_int(data, "url_ttl"),
        parts=tuple(parse_part_urls(data)) if "parts" in data else (),
    )


def parse_part_urls(data: dict[str, Any]) -> list[PartUrl]:
    return [
        PartUrl(
            part_number=_int(item, "part_number"), url=_str(item, "url"), expires_at=_time(item["expires_at"])
        )
        for item in map(_obj, parse_list(data, "parts"))
    ]


def parse_stored_parts(data: dict[str, Any]) -> list[StoredPart]:
    return [
        StoredPart(part_number=_int(item, "part_number"), etag=_str(item, "etag"), size=_int(item, "size"))
        for item in map(_obj, parse_list(data, "parts"))
    ]


def parse_download_link(data: dict[str, Any]) -> DownloadLink:
    return DownloadLink(url=_str(data, "url"), expires_at=_time(data["expires_at"]))


_URL_IN_TEXT = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")


def redact_urls(text: str) -> str:
    """Drop the query (signature, credentials) of any URL in ``text``."""
    return _URL_IN_TEXT.sub(r"\1?…", text)


def redact_notify_url(url: str) -> str:
    """A notify URL as logs, diagnostics and the gateway show it: scheme, host and port; the path and the query,
    which may be secret (an ntfy topic, a Gotify token), become ``…``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "…"
    if ":" in host:
        host = f"[{host}]"
    where = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    return where + ("/…" if parts.path.strip("/") or parts.query else "/")
