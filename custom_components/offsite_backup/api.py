"""Typed async client of the Offsite Backup gateway API v1 (docs/api-v1.md).

Plain asyncio + aiohttp, no Home Assistant import: the integration injects its shared ``ClientSession``.

Every v1 route has a method returning a typed dataclass. Failures raise a subclass of :class:`GatewayError`
carrying the gateway's ``code`` and ``message`` (and the HTTP ``status``):

=============================  ==========================================================================
``GatewayAuthError``           401 (and 403): the token is wrong or revoked → start a reauth flow
``GatewayNotFoundError``       404: no such backup for this instance
``GatewayQuotaError``          413: over quota, backup too large, request body too large (``used_bytes``,
                               ``needed_bytes``, ``quota_bytes`` when the gateway gives them)
``GatewayProtectedError``      403 ``protected``: the backup cannot be deleted yet (``deletable_at``)
``GatewayConflictError``       409: an upload already running, upload not in progress, parts missing…
``GatewayUnavailableError``    connection errors, timeouts, 5xx, answers that are not the expected JSON
``GatewayRateLimitedError``    429 (a ``GatewayUnavailableError``; ``retry_after`` in seconds when given)
``GatewayError``               anything else (e.g. 400 ``invalid_request``)
=============================  ==========================================================================

The token is never part of an exception message or of ``repr()``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

__all__ = [
    "BackupInit",
    "CompletedPart",
    "DownloadLink",
    "DownloadStream",
    "GatewayAuthError",
    "GatewayClient",
    "GatewayConflictError",
    "GatewayError",
    "GatewayNotFoundError",
    "GatewayQuotaError",
    "GatewayRateLimitedError",
    "GatewayUnavailableError",
    "InstanceInfo",
    "Limits",
    "PartUrl",
    "RemoteBackup",
    "StoredPart",
    "parse_retry_after",
    "redact_urls",
]

DEFAULT_TIMEOUT = 30.0
"""Seconds allowed for one gateway call (connect, send, answer)."""

DOWNLOAD_CHUNK = 1 << 20

# ----------------------------------------------------------------------------------------------- errors


class GatewayError(Exception):
    """A gateway call failed; ``message`` is meant for a person, ``code`` is the gateway's stable code.

    ``details`` holds the error object's other fields, e.g. ``backup_id`` with 409 ``upload_in_progress``.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details: dict[str, Any] = dict(details or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}, status={self.status!r})"


class GatewayAuthError(GatewayError):
    """The gateway refused the token (401): it is wrong or was revoked. Start a reauth."""


class GatewayNotFoundError(GatewayError):
    """The backup does not exist, or belongs to another instance (404)."""


class GatewayQuotaError(GatewayError):
    """Over quota or too large (413); the numbers the gateway gave, when it gave them."""

    def _bytes(self, key: str) -> int | None:
        value = self.details.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    @property
    def used_bytes(self) -> int | None:
        """What the instance holds in storage already."""
        return self._bytes("used_bytes")

    @property
    def needed_bytes(self) -> int | None:
        """What the refused backup needed."""
        return self._bytes("needed_bytes")

    @property
    def quota_bytes(self) -> int | None:
        """The instance's quota."""
        return self._bytes("quota_bytes")


class GatewayProtectedError(GatewayError):
    """403 ``protected``: the backup is under delete protection; ``gateway_message`` says until when."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Mapping[str, Any] | None = None,
        gateway_message: str = "",
    ) -> None:
        super().__init__(message, code=code, status=status, details=details)
        self.gateway_message = gateway_message or message


class GatewayConflictError(GatewayError):
    """The request conflicts with the backup's state (409), e.g. ``upload_in_progress``, ``not_uploading``."""


class GatewayUnavailableError(GatewayError):
    """The gateway could not be reached, timed out, failed (5xx) or did not answer the expected JSON."""


class GatewayRateLimitedError(GatewayUnavailableError):
    """Too many requests (429); try again after ``retry_after`` seconds (``None`` when not given)."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, details=details)
        self.retry_after = retry_after


_STATUS_ERRORS: dict[int, type[GatewayError]] = {
    401: GatewayAuthError,
    403: GatewayAuthError,
    404: GatewayNotFoundError,
    409: GatewayConflictError,
    413: GatewayQuotaError,
}

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
class InstanceInfo:
    """``GET /v1/instance``: who the token belongs to, its limits, and (newer gateways) its usage and policy."""

    id: str
    name: str
    limits: Limits
    usage: Usage | None = None
    policy: InstancePolicy | None = None


@dataclass(frozen=True, slots=True)
class BackupInit:
    """``POST /v1/backups``: the new upload and how to cut it."""

    id: str
    part_size: int
    part_count: int
    url_ttl: int


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


class _BadAnswer(Exception):
    """The gateway's JSON did not have the expected shape."""


def _obj(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _BadAnswer
    return value


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise _BadAnswer
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise _BadAnswer
    return value


def _time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise _BadAnswer
    return datetime.fromisoformat(value)


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data[key]
    if not isinstance(value, list):
        raise _BadAnswer
    return value


def _backup(value: Any) -> RemoteBackup:
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
        raise _BadAnswer
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


def _instance(data: dict[str, Any]) -> InstanceInfo:
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
    )


def _init(data: dict[str, Any]) -> BackupInit:
    return BackupInit(
        id=_str(data, "id"),
        part_size=_int(data, "part_size"),
        part_count=_int(data, "part_count"),
        url_ttl=_int(data, "url_ttl"),
    )


def _part_urls(data: dict[str, Any]) -> list[PartUrl]:
    return [
        PartUrl(
            part_number=_int(item, "part_number"), url=_str(item, "url"), expires_at=_time(item["expires_at"])
        )
        for item in map(_obj, _list(data, "parts"))
    ]


def _stored_parts(data: dict[str, Any]) -> list[StoredPart]:
    return [
        StoredPart(part_number=_int(item, "part_number"), etag=_str(item, "etag"), size=_int(item, "size"))
        for item in map(_obj, _list(data, "parts"))
    ]


def _download_link(data: dict[str, Any]) -> DownloadLink:
    return DownloadLink(url=_str(data, "url"), expires_at=_time(data["expires_at"]))


_URL_IN_TEXT = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")


def redact_urls(text: str) -> str:
    """Drop the query (signature, credentials) of any URL in ``text``."""
    return _URL_IN_TEXT.sub(r"\1?…", text)


# ------------------------------------------------------------------------------------------------- client


class GatewayClient:
    """Client of one gateway for one instance token."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        token: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._session = session
        self._url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"GatewayClient(url={self._url!r})"

    @property
    def url(self) -> str:
        """The gateway's base URL (without a trailing slash)."""
        return self._url

    @property
    def session(self) -> aiohttp.ClientSession:
        """The injected HTTP session (the uploader uses it for the part PUTs)."""
        return self._session

    # ------------------------------------------------------------------------------------------ transport

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        expect: int = 200,
        auth: bool = True,
    ) -> Any:
        """Call the gateway and return the decoded JSON answer (``None`` for 204)."""
        what = f"{method} {path}"
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session.request(
                    method,
                    self._url + path,
                    json=body,
                    headers=self._headers if auth else None,
                ) as resp:
                    status = resp.status
                    raw = await resp.read()
                    retry_after = resp.headers.get("Retry-After")
        except TimeoutError as err:
            raise GatewayUnavailableError(
                f"The gateway at {self._url} did not answer {what} within {self._timeout:g} s"
            ) from err
        except aiohttp.ClientError as err:
            detail = redact_urls(str(err)) or type(err).__name__
            raise GatewayUnavailableError(f"Cannot reach the gateway at {self._url}: {detail}") from err

        if status == expect and status == 204:
            return None
        try:
            data: Any = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status == expect:
            if data is None:
                raise GatewayUnavailableError(
                    f"The gateway at {self._url} answered {what} with something that is not JSON: "
                    "is this the right URL?",
                    status=status,
                )
            return data
        code: str | None = None
        message = f"HTTP {status}"
        details: dict[str, Any] = {}
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            error = data["error"]
            code = error.get("code") if isinstance(error.get("code"), str) else None
            if isinstance(error.get("message"), str) and error["message"]:
                message = error["message"]
            details = {key: value for key, value in error.items() if key not in ("code", "message")}
        elif 200 <= status < 300:
            message = f"unexpected HTTP {status}"
        text = f"Gateway refused {what}: {message}" if code else f"Gateway answered {what} with {message}"
        if status == 429:
            raise GatewayRateLimitedError(
                text, code=code, status=status, details=details, retry_after=parse_retry_after(retry_after)
            )
        if status >= 500 or code is None:
            # 5xx, or not the gateway's JSON error (a reverse proxy's page, a wrong URL…)
            raise GatewayUnavailableError(text, code=code, status=status, details=details)
        if status == 403 and code == "protected":
            raise GatewayProtectedError(
                text, code=code, status=status, details=details, gateway_message=message
            )
        raise _STATUS_ERRORS.get(status, GatewayError)(text, code=code, status=status, details=details)

    async def _call(self, method: str, path: str, *, body: Any = None, expect: int = 200) -> dict[str, Any]:
        data = await self._request(method, path, body=body, expect=expect)
        if not isinstance(data, dict):
            raise GatewayUnavailableError(f"The gateway answered {method} {path} with an unexpected body")
        return data

    async def _parsed[T](
        self,
        method: str,
        path: str,
        read: Callable[[dict[str, Any]], T],
        *,
        body: Any = None,
        expect: int = 200,
    ) -> T:
        """Call the gateway and read its answer with ``read``; an answer of another shape is the gateway failing."""
        data = await self._call(method, path, body=body, expect=expect)
        try:
            return read(data)
        except (KeyError, TypeError, ValueError, _BadAnswer) as err:
            raise GatewayUnavailableError(
                f"The gateway answered {method} {path} with an unexpected body"
            ) from err

    # -------------------------------------------------------------------------------------------- routes

    async def get_instance(self) -> InstanceInfo:
        """``GET /v1/instance``: validate the token and read the limits."""
        return await self._parsed("GET", "/v1/instance", _instance)

    async def create_backup(
        self,
        *,
        name: str,
        size: int,
        metadata: Mapping[str, Any] | None = None,
        sha256: str | None = None,
    ) -> BackupInit:
        """``POST /v1/backups``: start a multipart upload."""
        body: dict[str, Any] = {"name": name, "size": size}
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if sha256 is not None:
            body["sha256"] = sha256
        return await self._parsed("POST", "/v1/backups", _init, body=body, expect=201)

    async def sign_parts(self, backup_id: str, part_numbers: Iterable[int]) -> list[PartUrl]:
        """``POST /v1/backups/{id}/parts``: presigned PUT URLs for up to 100 parts."""
        path = f"/v1/backups/{_seg(backup_id)}/parts"
        return await self._parsed("POST", path, _part_urls, body={"part_numbers": list(part_numbers)})

    async def list_parts(self, backup_id: str) -> list[StoredPart]:
        """``GET /v1/backups/{id}/parts``: the parts storage already holds (to resume)."""
        return await self._parsed("GET", f"/v1/backups/{_seg(backup_id)}/parts", _stored_parts)

    async def complete_backup(
        self,
        backup_id: str,
        parts: Iterable[CompletedPart],
        *,
        sha256: str | None = None,
    ) -> RemoteBackup:
        """``POST /v1/backups/{id}/complete``: assemble the parts (every part number exactly once)."""
        body: dict[str, Any] = {
            "parts": [{"part_number": part.part_number, "etag": part.etag} for part in parts]
        }
        if sha256 is not None:
            body["sha256"] = sha256
        path = f"/v1/backups/{_seg(backup_id)}/complete"
        return await self._parsed("POST", path, lambda data: _backup(data["backup"]), body=body)

    async def abort_upload(self, backup_id: str) -> None:
        """``DELETE /v1/backups/{id}/upload``: abort the multipart upload (the backup becomes ``failed``)."""
        await self._request("DELETE", f"/v1/backups/{_seg(backup_id)}/upload", expect=204)

    async def list_backups(self) -> list[RemoteBackup]:
        """``GET /v1/backups``: completed backups, newest first."""
        return await self._parsed(
            "GET", "/v1/backups", lambda data: [_backup(item) for item in _list(data, "backups")]
        )

    async def get_backup(self, backup_id: str) -> RemoteBackup:
        """``GET /v1/backups/{id}``: one backup, whatever its status."""
        return await self._parsed(
            "GET", f"/v1/backups/{_seg(backup_id)}", lambda data: _backup(data["backup"])
        )

    async def delete_backup(self, backup_id: str) -> None:
        """``DELETE /v1/backups/{id}``: delete the object (or abort the upload)."""
        await self._request("DELETE", f"/v1/backups/{_seg(backup_id)}", expect=204)

    async def download_url(self, backup_id: str) -> DownloadLink:
        """``POST /v1/backups/{id}/download``: a presigned GET URL of a completed backup."""
        return await self._parsed("POST", f"/v1/backups/{_seg(backup_id)}/download", _download_link)

    async def download(
        self, backup_id: str, *, chunk_size: int = DOWNLOAD_CHUNK, read_timeout: float = 120.0
    ) -> DownloadStream:
        """Open a completed backup for reading: ``async for chunk in await client.download(id)``.

        The presigned URL is asked for and the GET is started before this returns, so a missing backup raises
        here (``GatewayNotFoundError``) rather than in the middle of the stream. Chunks of at most ``chunk_size``
        bytes are streamed, never the whole object. The connection is released at the end of the stream, on an
        error, or by ``aclose()`` (even before the first chunk). Errors while streaming raise
        ``GatewayUnavailableError``.
        """
        link = await self.download_url(backup_id)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=read_timeout)
        try:
            resp = await self._session.get(URL(link.url, encoded=True), timeout=timeout)
        except (TimeoutError, aiohttp.ClientError) as err:
            detail = redact_urls(str(err)) or type(err).__name__
            raise GatewayUnavailableError(f"Cannot reach storage to download {backup_id}: {detail}") from err
        if resp.status != 200:
            status = resp.status
            resp.release()
            if status == 404:
                raise GatewayNotFoundError(
                    f"Storage no longer holds backup {backup_id}", code="not_found", status=404
                )
            raise GatewayUnavailableError(
                f"Storage answered HTTP {status} to the download of backup {backup_id}", status=status
            )
        return DownloadStream(resp, chunk_size, backup_id)


class DownloadStream:
    """A backup being downloaded: an async iterator of chunks that owns the storage connection.

    Unlike an async generator, closing it releases the connection even when iteration never started.
    """

    def __init__(self, resp: aiohttp.ClientResponse, chunk_size: int, backup_id: str) -> None:
        """Stream ``resp``'s body in chunks of at most ``chunk_size`` bytes."""
        self._resp = resp
        self._chunks = resp.content.iter_chunked(chunk_size)
        self._backup_id = backup_id

    def __aiter__(self) -> DownloadStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            self._resp.release()
            raise
        except (TimeoutError, aiohttp.ClientError) as err:
            self._resp.release()
            detail = redact_urls(str(err)) or type(err).__name__
            raise GatewayUnavailableError(
                f"Download of backup {self._backup_id} broke off: {detail}"
            ) from err

    async def aclose(self) -> None:
        """Release the connection (at once, whether the stream was read or not)."""
        self._resp.release()

    @property
    def closed(self) -> bool:
        """Whether the connection is released."""
        return self._resp.closed


def _seg(value: str) -> str:
    """Quote an id for use as one path segment."""
    return quote(value, safe="")
