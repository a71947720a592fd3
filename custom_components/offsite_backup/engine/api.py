"""Typed async client of the Offsite Backup gateway API v1 (docs/api-v1.md).

Plain asyncio + aiohttp: the integration injects its shared ``ClientSession``.

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

The token is never part of an exception message or of ``repr()``. The errors live in ``api_errors``, the typed
answers and their parsers in ``api_answers``; everything is importable from here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from .api_answers import (
    BackupInit,
    BadAnswer,
    CompletedPart,
    DownloadLink,
    InstanceInfo,
    InstancePolicy,
    Limits,
    NotifySettings,
    NotifyTarget,
    PartUrl,
    RemoteBackup,
    StoredPart,
    Usage,
    Watch,
    parse_backup,
    parse_download_link,
    parse_init,
    parse_instance,
    parse_list,
    parse_notify_settings,
    parse_part_urls,
    parse_retry_after,
    parse_stored_parts,
    redact_notify_url,
    redact_urls,
)
from .api_errors import (
    STATUS_ERRORS,
    GatewayAuthError,
    GatewayConflictError,
    GatewayError,
    GatewayNotFoundError,
    GatewayProtectedError,
    GatewayQuotaError,
    GatewayRateLimitedError,
    GatewayUnavailableError,
)

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
    "GatewayProtectedError",
    "GatewayQuotaError",
    "GatewayRateLimitedError",
    "GatewayUnavailableError",
    "InstanceInfo",
    "InstancePolicy",
    "Limits",
    "NotifySettings",
    "NotifyTarget",
    "PartUrl",
    "RemoteBackup",
    "StoredPart",
    "Usage",
    "Watch",
    "parse_retry_after",
    "redact_notify_url",
    "redact_urls",
]

DEFAULT_TIMEOUT = 30.0
"""Seconds allowed for one gateway call (connect, send, answer)."""

DOWNLOAD_CHUNK = 1 << 20

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
        raise STATUS_ERRORS.get(status, GatewayError)(text, code=code, status=status, details=details)

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
        except (KeyError, TypeError, ValueError, BadAnswer) as err:
            raise GatewayUnavailableError(
                f"The gateway answered {method} {path} with an unexpected body"
            ) from err

    # -------------------------------------------------------------------------------------------- routes

    async def get_instance(self) -> InstanceInfo:
        """``GET /v1/instance``: validate the token and read the limits."""
        return await self._parsed("GET", "/v1/instance", parse_instance)

    async def set_notify(self, url: str, fmt: str) -> NotifySettings:
        """``PUT /v1/instance/notify``: where the gateway tells this house that its backups stopped (and are back).

        The gateway checks the address at once (``GatewayError`` with code ``forbidden_address`` for a private one
        it does not allow). Nothing of the URL is in an exception's message."""
        return await self._parsed(
            "PUT", "/v1/instance/notify", parse_notify_settings, body={"url": url, "format": fmt}
        )

    async def clear_notify(self) -> None:
        """``DELETE /v1/instance/notify``: no more outside alerts to this house."""
        await self._request("DELETE", "/v1/instance/notify", expect=204)

    async def create_backup(
        self,
        *,
        name: str,
        size: int,
        metadata: Mapping[str, Any] | None = None,
        sha256: str | None = None,
        part_urls: int = 0,
    ) -> BackupInit:
        """``POST /v1/backups``: start a multipart upload (with the URLs of its first ``part_urls`` parts)."""
        body: dict[str, Any] = {"name": name, "size": size}
        if part_urls:
            body["part_urls"] = part_urls
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if sha256 is not None:
            body["sha256"] = sha256
        return await self._parsed("POST", "/v1/backups", parse_init, body=body, expect=201)

    async def sign_parts(self, backup_id: str, part_numbers: Iterable[int]) -> list[PartUrl]:
        """``POST /v1/backups/{id}/parts``: presigned PUT URLs for up to 100 parts."""
        path = f"/v1/backups/{_seg(backup_id)}/parts"
        return await self._parsed("POST", path, parse_part_urls, body={"part_numbers": list(part_numbers)})

    async def list_parts(self, backup_id: str) -> list[StoredPart]:
        """``GET /v1/backups/{id}/parts``: the parts storage already holds (to resume)."""
        return await self._parsed("GET", f"/v1/backups/{_seg(backup_id)}/parts", parse_stored_parts)

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
        return await self._parsed("POST", path, lambda data: parse_backup(data["backup"]), body=body)

    async def abort_upload(self, backup_id: str) -> None:
        """``DELETE /v1/backups/{id}/upload``: abort the multipart upload (the backup becomes ``failed``)."""
        await self._request("DELETE", f"/v1/backups/{_seg(backup_id)}/upload", expect=204)

    async def list_backups(self) -> list[RemoteBackup]:
        """``GET /v1/backups``: completed backups, newest first."""
        return await self._parsed(
            "GET", "/v1/backups", lambda data: [parse_backup(item) for item in parse_list(data, "backups")]
        )

    async def get_backup(self, backup_id: str) -> RemoteBackup:
        """``GET /v1/backups/{id}``: one backup, whatever its status."""
        return await self._parsed(
            "GET", f"/v1/backups/{_seg(backup_id)}", lambda data: parse_backup(data["backup"])
        )

    async def delete_backup(self, backup_id: str) -> None:
        """``DELETE /v1/backups/{id}``: delete the object (or abort the upload)."""
        await self._request("DELETE", f"/v1/backups/{_seg(backup_id)}", expect=204)

    async def download_url(self, backup_id: str) -> DownloadLink:
        """``POST /v1/backups/{id}/download``: a presigned GET URL of a completed backup."""
        return await self._parsed("POST", f"/v1/backups/{_seg(backup_id)}/download", parse_download_link)

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
