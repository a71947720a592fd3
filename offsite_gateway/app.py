"""The gateway's HTTP API v1 (docs/api-v1.md, offsite_gateway/openapi.yaml) as an aiohttp application."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import re
import secrets
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, NoReturn

import voluptuous as vol
from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from . import backups, bodies, manifest
from .auth import authenticate
from .clients import client_address, source_of
from .config import MIB, S3_MAX_PARTS, Settings
from .errors import ApiError, error_response
from .health import Readiness
from .logs import escape
from .messages import FORMATS, JSON, check_notify_url, iso, redact_url
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .notify import DeliveryError
from .outbox import Outbox
from .parts import TooLarge, plan_parts
from .policy import Policy, policy_for
from .purger import Purger
from .retention import delete_backups, protected
from .server import PROTOCOL_ERROR, SERVER_NAME, GatewayRunner
from .storage import Storage, StorageError
from .store import (
    COMPLETED,
    DELETING,
    UPLOADING,
    Backup,
    Instance,
    NotifyTarget,
    QuotaExceeded,
    RateLimited,
    Store,
    StoreUnavailable,
    UploadInProgress,
    create_store,
)
from .store.locks import KeyedLocks
from .sweeper import Sweeper
from .throttle import AuthFailures
from .watchdog import Watchdog, expectation, watch_json

_LOGGER = logging.getLogger(__name__)
ACCESS_LOGGER = logging.getLogger("offsite_gateway.access")

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
STORAGE = web.AppKey("storage", Storage)
METRICS = web.AppKey("metrics", Metrics)
SWEEPER = web.AppKey("sweeper", Sweeper)
PURGER = web.AppKey("purger", Purger)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
READINESS = web.AppKey("readiness", Readiness)
AUTH_FAILURES = web.AppKey("auth_failures", AuthFailures)
WATCHDOG = web.AppKey("watchdog", Watchdog)
OUTBOX = web.AppKey("outbox", Outbox)
BODY_READS = web.AppKey("body_reads", KeyedLocks)  # one complete body of an upload read at a time, per node

INSTANCE = "offsite_gateway.instance"  # request key: the authenticated instance
CLIENT = "offsite_gateway.client"  # request key: the client's address (behind a trusted proxy, the real one)

MAX_BODY = 128 * 1024
MAX_COMPLETE_BODY = 2 * MIB  # complete lists up to 10,000 parts, about 70 bytes each
MAX_METADATA = 64 * 1024
MAX_PARTS_PER_SIGNING = 100
SHA256_RE = re.compile(r"[0-9a-f]{64}")
BACKUP_ID_RE = re.compile(r"[0-9a-f]{32}")  # uuid4().hex
ETAG_MAX = 256
PART_ENTRY_MAX = (
    64 + ETAG_MAX
)  # bytes a part of a complete body may take: {"part_number": 10000, "etag": "…"},


def _not_found() -> NoReturn:
    raise ApiError(404, "not_found", "no such backup")


def backup_json(backup: Backup) -> dict[str, Any]:
    return {
        "id": backup.id,
        "name": backup.name,
        "size": backup.size,
        "sha256": backup.sha256,
        "status": backup.status,
        "created_at": iso(backup.created_at),
        "completed_at": iso(backup.completed_at),
        "part_size": backup.part_size,
        "part_count": backup.part_count,
        "metadata": backup.metadata,
    }


# --- request bodies ---------------------------------------------------------------------------------------


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise vol.Invalid("expected an integer")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise vol.Invalid("expected a string")
    return value


def _name(value: Any) -> str:
    """A backup's name: text without control characters (PostgreSQL's text cannot even hold a NUL)."""
    text = _text(value)
    if any(unicodedata.category(char) == "Cc" for char in text):
        raise vol.Invalid("control characters are not allowed")
    return text


def _sha256(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not SHA256_RE.fullmatch(value):
        raise vol.Invalid("expected 64 lower-case hexadecimal characters")
    return value


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise vol.Invalid("expected a JSON object")
    if len(json.dumps(value, separators=(",", ":")).encode()) > MAX_METADATA:
        raise vol.Invalid(f"larger than {MAX_METADATA // 1024} KiB once encoded")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise vol.Invalid("expected a list")
    return value


INIT_SCHEMA = vol.Schema(
    {
        vol.Required("name"): vol.All(_name, vol.Length(min=1, max=200)),
        vol.Required("size"): vol.All(_integer, vol.Range(min=1)),
        vol.Optional("sha256"): _sha256,
        vol.Optional("metadata"): _metadata,
        vol.Optional("part_urls"): vol.All(_integer, vol.Range(min=0, max=MAX_PARTS_PER_SIGNING)),
    },
    extra=vol.REMOVE_EXTRA,
)


def _notify_url(value: Any) -> str:
    try:
        return check_notify_url(value)
    except ValueError as err:
        raise vol.Invalid(str(err)) from None


NOTIFY_SCHEMA = vol.Schema(
    {
        vol.Required("url"): _notify_url,
        vol.Optional("format", default=JSON): vol.All(
            _text, vol.In(FORMATS, msg=f"expected one of {FORMATS}")
        ),
    },
    extra=vol.REMOVE_EXTRA,
)
SIGN_SCHEMA = vol.Schema(
    {
        vol.Required("part_numbers"): vol.All(
            _list, vol.Length(min=1, max=MAX_PARTS_PER_SIGNING), [vol.All(_integer, vol.Range(min=1))]
        )
    },
    extra=vol.REMOVE_EXTRA,
)


def _field_path(path: list[Any]) -> str:
    text = ""
    for item in path:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else str(item))
    return text or "body"


DRAIN_LIMIT = 16 * MIB


async def _drain(request: web.Request) -> None:
    """Read and drop the rest of an oversized body (up to a bound), so the connection ends cleanly."""
    drained = 0
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            while drained < DRAIN_LIMIT and (chunk := await request.content.readany()):
                drained += len(chunk)


async def read_raw(request: web.Request, limit: int = MAX_BODY) -> bytes:
    """The request's body, at most `limit` bytes (413 beyond), within BODY_TIMEOUT seconds (408 beyond)."""
    too_large = ApiError(413, "body_too_large", f"the body is larger than {limit // 1024} KiB")
    if request.content_length is not None and request.content_length > limit:
        if request.content_length <= DRAIN_LIMIT:
            await _drain(request)
        raise too_large
    timeout = request.app[SETTINGS].body_timeout
    buffer = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                buffer += chunk
                if len(buffer) > limit:
                    break
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the body did not arrive within {timeout} s") from None
    if len(buffer) > limit:
        await _drain(request)
        raise too_large
    return bytes(buffer)


def parse_json(raw: bytes) -> dict[str, Any]:
    """A body read with `read_raw` as a JSON object (strict JSON: see `bodies`)."""
    try:
        data = bodies.loads(raw)
    except bodies.NotJson as err:
        detail = f" ({err})" if str(err) else ""
        raise ApiError(400, "invalid_json", f"the body is not valid JSON{detail}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    return data


def _invalid(problems: list[str]) -> ApiError:
    return ApiError(400, "invalid_request", "; ".join(problems[:5]))


async def read_body(request: web.Request, schema: vol.Schema, limit: int = MAX_BODY) -> dict[str, Any]:
    """The request's JSON body, size-limited and checked against `schema`."""
    data = parse_json(await read_raw(request, limit))
    problem = bodies.first_problem(data)
    if problem is not None:
        path, what = problem
        raise _invalid([f"{_field_path(path)}: {what}"])
    try:
        checked: dict[str, Any] = schema(data)
    except vol.MultipleInvalid as err:
        raise _invalid(
            sorted({f"{_field_path(error.path)}: {error.error_message}" for error in err.errors})
        ) from None
    return checked


# --- middlewares --------------------------------------------------------------------------------------------


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    if route.resource is None or isinstance(request.match_info.http_exception, web.HTTPException):
        return "unmatched"
    return route.resource.canonical


METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


def _method_name(request: web.Request, route: str) -> str:
    """The method as a metric label: any other is "other" (a client may invent as many as it likes), and so is
    any method of a request that matched no route (each would be a series of its own)."""
    return request.method if request.method in METHODS and route != "unmatched" else "other"


@web.middleware
async def errors_and_metrics(
    request: web.Request, handler: Callable[[web.Request], Awaitable[StreamResponse]]
) -> StreamResponse:
    """JSON errors for everything, never a stack trace; request metrics by route pattern."""
    metrics = request.app[METRICS]
    started = time.perf_counter()
    request[CLIENT] = client_address(request, request.app[SETTINGS].trusted_proxies)
    response: StreamResponse
    try:
        response = await handler(request)
    except ApiError as err:
        response = error_response(err.status, err.code, err.message, err.headers, err.details)
        if err.code in ("body_too_large", "request_timeout"):
            response.force_close()  # rather than reading (lingering on) the rest of the body
    except StoreUnavailable as err:
        _LOGGER.warning(
            "Database unavailable on %s %s: %s", request.method, _route_name(request), escape(str(err))
        )
        response = error_response(
            503,
            "unavailable",
            "the gateway's database is unavailable; try again shortly",
            {"Retry-After": "5"},
        )
    except StorageError as err:
        metrics.storage_errors.labels(err.operation).inc()
        _LOGGER.warning("Storage error on %s %s: %s", request.method, _route_name(request), err)
        response = error_response(502, "storage_error", _storage_failed(err))
    except web.HTTPException as err:
        if err.status == 404:
            response = error_response(404, "not_found", "no such route")
        elif err.status == 405:
            response = error_response(405, "method_not_allowed", f"{request.method} is not allowed here")
        else:
            response = error_response(err.status, "http_error", err.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        _LOGGER.exception("Unexpected error on %s %s", request.method, _route_name(request))
        response = error_response(500, "internal_error", "the gateway failed unexpectedly; see its log")
    response.headers[hdrs.SERVER] = SERVER_NAME  # not aiohttp's, which names its version and Python's
    route = _route_name(request)
    method = _method_name(request, route)
    metrics.requests.labels(method, route, str(response.status)).inc()
    metrics.request_seconds.labels(method, route).observe(time.perf_counter() - started)
    return response


_S3_CODE_RE = re.compile(r"[A-Za-z0-9.\-]{1,64}")


def _storage_failed(err: StorageError) -> str:
    """What a client is told of a storage failure: the operation and S3's error code, never storage's message
    (which may name the endpoint, the bucket or a key); the log has it."""
    code = f", {err.code}" if err.code and _S3_CODE_RE.fullmatch(err.code) else ""
    return f"storage failed ({err.operation}{code}); try again later"


def _refuse_throttled(request: web.Request) -> None:
    """429 for a source that sent too many requests without a valid token within the last minute."""
    retry_after = request.app[AUTH_FAILURES].retry_after(source_of(request[CLIENT]), request.app[CLOCK]())
    if retry_after is not None:
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests without a valid token from this address; retry in {retry_after} s",
            {"Retry-After": str(retry_after)},
        )


def _unauthorized(request: web.Request) -> ApiError:
    """A request without a valid token: counted for its source; the 401 to answer."""
    request.app[AUTH_FAILURES].failed(source_of(request[CLIENT]), request.app[CLOCK]())
    return ApiError(
        401,
        "unauthorized",
        "a valid token is required: Authorization: Bearer <token>",
        {"WWW-Authenticate": 'Bearer realm="offsite-gateway"'},
    )


@web.middleware
async def bearer_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[StreamResponse]]
) -> StreamResponse:
    """Every /v1 route needs an active instance's token; a source sending wrong ones is throttled."""
    if request.path == "/v1" or request.path.startswith("/v1/"):
        _refuse_throttled(request)
        instance = await authenticate(request.app[STORE], request.headers.get("Authorization"))
        if instance is None:
            raise _unauthorized(request)
        request[INSTANCE] = instance
    return await handler(request)


class AccessLogger(AbstractAccessLogger):
    """One line per request: never a header (so never a token) and never a query string (so never a signature).
    A request aiohttp could not parse gets none: `offsite_gateway.server` writes a throttled warning instead.

    The path is logged as it was sent (still percent-encoded), anything unprintable escaped: a request cannot
    write a line break (a forged line) or a terminal escape sequence into the log.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if request.get(PROTOCOL_ERROR):
            return  # not understood: one throttled warning for all of them (offsite_gateway.server)
        instance: Instance | None = request.get(INSTANCE)
        path = request.raw_path.partition("?")[0]
        version = f"HTTP/{request.version.major}.{request.version.minor}"
        line = f"{escape(request.method, 20)} {escape(path)} {version}"
        self.logger.info(
            '%s "%s" %d %d %.1fms instance=%s',
            escape(request.get(CLIENT) or request.remote or "-"),
            line,
            response.status,
            response.body_length,
            time * 1000,
            instance.id if instance else "-",
        )


# --- handlers -----------------------------------------------------------------------------------------------


def _instance(request: web.Request) -> Instance:
    instance: Instance = request[INSTANCE]
    return instance


def _backup_id(request: web.Request) -> str:
    """The `{id}` of the route; 404 if it is not an id the gateway makes (nothing to ask the database)."""
    backup_id = request.match_info["id"]
    if not BACKUP_ID_RE.fullmatch(backup_id):
        _not_found()
    return backup_id


async def _owned(request: web.Request, *, deleting: bool = False) -> Backup:
    """The backup `{id}` if it belongs to the caller; 404 otherwise (whether it exists or not)."""
    backup = await request.app[STORE].get_backup(_backup_id(request))
    if backup is None or backup.instance_id != _instance(request).id:
        _not_found()
    if backup.status == DELETING and not deleting:
        _not_found()
    return backup


@contextlib.asynccontextmanager
async def _backup_lock(
    request: web.Request, backup_id: str, *, completing: bool = False
) -> AsyncIterator[None]:
    """Serialise complete/abort/delete of one backup across every node (the database's lock)."""
    async with request.app[STORE].lock_backup(backup_id, completing=completing):
        yield


def _require_uploading(backup: Backup) -> str:
    if backup.status != UPLOADING:
        raise ApiError(409, "not_uploading", f"backup {backup.id} is {backup.status}, not uploading")
    if backup.upload_id is None:
        raise ApiError(
            409,
            "not_uploading",
            f"the upload of backup {backup.id} is still being created; try again shortly",
        )
    return backup.upload_id


TOUCH_EVERY = (
    60.0  # an upload's last activity is recorded to the minute: a sign or a listing writes at most once
)


async def _touch(request: web.Request, backup: Backup) -> None:
    """The upload shows a sign of life: the sweeper counts its staleness from now."""
    now = request.app[CLOCK]()
    if now - (backup.last_activity or backup.created_at) >= TOUCH_EVERY:
        await request.app[STORE].touch_backup(backup.id, now)


async def stored_bytes(app: web.Application, instance: Instance) -> tuple[int, int]:
    """(bytes, backups): what storage holds for the instance, its completed backups (each one's size read back
    from storage at complete) and the parts of its upload in progress as ListParts reports them."""
    store, storage = app[STORE], app[STORAGE]
    stored, count = await store.usage(instance.id)
    for backup in await store.list_backups(instance.id, UPLOADING):
        if backup.upload_id is None:
            continue
        try:
            stored += sum(part.size for part in await storage.list_parts(backup.object_key, backup.upload_id))
        except StorageError as err:
            if err.code != "NoSuchUpload":
                raise
    return stored, count


def policy_json(policy: Policy, settings: Settings) -> dict[str, Any]:
    return {**policy.as_json(), "object_lock": settings.object_lock and policy.protect_days > 0}


async def get_instance(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    instance = _instance(request)
    policy = policy_for(instance, settings)
    stored, count = await stored_bytes(app, instance)
    return web.json_response(
        {
            "id": instance.id,
            "name": instance.name,
            "limits": {
                "max_backup_bytes": settings.max_backup_bytes,
                "part_size": settings.part_size,
                "retention": policy.keep_last,
                "url_ttl": settings.url_ttl,
            },
            "usage": {"bytes": stored, "backups": count, "quota_bytes": policy.quota_bytes},
            "policy": policy_json(policy, settings),
            "watch": watch_json(
                instance,
                expectation(instance, await app[STORE].last_success(instance.id), settings, app[CLOCK]()),
                settings,
            ),
        }
    )


async def set_notify(request: web.Request) -> web.Response:
    """The house's notify URL: where the watchdog tells it that its backups stopped (and are back)."""
    instance = _instance(request)
    body = await read_body(request, NOTIFY_SCHEMA)
    url, fmt = body["url"], body["format"]
    try:
        await request.app[OUTBOX].webhooks.check(url)  # told now, rather than found out when it is late
    except DeliveryError as err:
        code = "forbidden_address" if err.reason == "forbidden_address" else "invalid_request"
        raise ApiError(400, code, f"url: {err}") from None
    secret = secrets.token_urlsafe(32)
    if not await request.app[STORE].set_notify(instance.id, NotifyTarget(url, fmt, secret)):
        raise ApiError(401, "unauthorized", "this instance was revoked")
    _LOGGER.info("Instance %s set its notify URL: %s (%s)", instance.id, redact_url(url), fmt)
    return web.json_response({"notify": {"url": redact_url(url), "format": fmt, "secret": secret}})


async def clear_notify(request: web.Request) -> web.Response:
    instance = _instance(request)
    await request.app[STORE].set_notify(instance.id, None)
    _LOGGER.info("Instance %s cleared its notify URL", instance.id)
    return web.Response(status=204)


async def create_backup(request: web.Request) -> web.Response:
    app = request.app
    settings, store, storage = app[SETTINGS], app[STORE], app[STORAGE]
    instance = _instance(request)
    body = await read_body(request, INIT_SCHEMA)
    size: int = body["size"]
    if size > settings.max_backup_bytes:
        raise ApiError(
            413,
            "quota_exceeded",
            f"size {size} is over this gateway's limit of {settings.max_backup_bytes} bytes",
            details={"needed_bytes": size, "max_backup_bytes": settings.max_backup_bytes},
        )
    # Checked by the database with the create, atomically: an upload that is completing counts (see begin_backup).
    quota = policy_for(instance, settings).quota_bytes
    try:
        part_size, part_count = plan_parts(size, settings.part_size, settings.max_parts)
    except TooLarge as err:  # not past the size check above: MAX_BACKUP_BYTES fits in MAX_PARTS parts
        raise ApiError(413, "quota_exceeded", f"size {size}: {err}", details={"needed_bytes": size}) from None
    backup_id = uuid.uuid4().hex
    now = app[CLOCK]()
    backup = Backup(
        id=backup_id,
        instance_id=instance.id,
        name=body["name"],
        size=size,
        sha256=body.get("sha256"),
        status=UPLOADING,
        created_at=now,
        completed_at=None,
        part_size=part_size,
        part_count=part_count,
        object_key=f"{settings.s3_prefix}{instance.id}/{backup_id}",
        metadata=body.get("metadata") or {},
        last_activity=now,
    )
    # The row goes in before the upload exists in storage: the sweeper never takes it for an orphan.
    try:
        await store.begin_backup(backup, now, settings.init_rate, quota)
    except QuotaExceeded as err:
        assert quota is not None
        raise ApiError(
            413,
            "quota_exceeded",
            f"this backup needs {size} bytes; {err.used} of this instance's quota of {quota} bytes are "
            f"used, {max(0, quota - err.used)} free",
            details={"used_bytes": err.used, "needed_bytes": size, "quota_bytes": quota},
        ) from None
    except UploadInProgress as err:
        # Its id, so a client that lost the answer to its create can abort its own stale upload at once.
        raise ApiError(
            409,
            "upload_in_progress",
            f"this instance already has an upload in progress: backup {err.backup_id} "
            f"(DELETE /v1/backups/{err.backup_id}/upload aborts it)",
            details={"backup_id": err.backup_id},
        ) from None
    except RateLimited as err:
        raise ApiError(
            429,
            "rate_limited",
            f"more than {settings.init_rate} uploads started within an hour; retry in {err.retry_after} s",
            {"Retry-After": str(err.retry_after)},
        ) from None
    try:
        upload_id = await storage.create_multipart_upload(backup.object_key)
    except BaseException:
        await store.delete_backup(backup_id)
        raise
    if not await store.set_upload_id(backup_id, upload_id):
        # Aborted (or deleted) meanwhile by its owner, who learned its id from a 409 after losing our answer.
        await _abort_unrecorded(request, backup.object_key, upload_id)
        raise ApiError(
            409, "not_uploading", f"backup {backup_id} was aborted while its upload was being created"
        )
    _LOGGER.info(
        "Instance %s started backup %s: %d bytes in %d parts", instance.id, backup_id, size, part_count
    )
    answer: dict[str, Any] = {
        "id": backup_id,
        "part_size": part_size,
        "part_count": part_count,
        "url_ttl": settings.url_ttl,
    }
    first = min(body.get("part_urls", 0), part_count)
    if first:
        # The URLs of the first parts, asked for with the create: a backup of that many parts needs no signing call.
        answer["parts"] = _part_urls(app, backup, upload_id, range(1, first + 1))
    return web.json_response(answer, status=201)


async def _abort_unrecorded(request: web.Request, key: str, upload_id: str) -> None:
    """Abort a storage upload the database does not hold as in progress (else the sweeper does, as an orphan)."""
    try:
        await request.app[STORAGE].abort_multipart_upload(key, upload_id)
    except StorageError as err:
        request.app[METRICS].storage_errors.labels(err.operation).inc()
        _LOGGER.warning("Could not abort the upload of %s now; the sweeper will: %s", key, err)


async def sign_parts(request: web.Request) -> web.Response:
    app = request.app
    backup = await _owned(request)
    upload_id = _require_uploading(backup)  # before reading the body: the cheap refusal first
    body = await read_body(request, SIGN_SCHEMA)
    numbers: list[int] = body["part_numbers"]
    if len(set(numbers)) != len(numbers):
        raise ApiError(400, "invalid_request", "part_numbers: duplicates are not allowed")
    for number in numbers:
        if number > backup.part_count:
            raise ApiError(400, "invalid_request", f"part_numbers: {number} is out of 1..{backup.part_count}")
    await _touch(request, backup)
    return web.json_response({"parts": _part_urls(app, backup, upload_id, numbers)})


def _part_urls(
    app: web.Application, backup: Backup, upload_id: str, numbers: Iterable[int]
) -> list[dict[str, Any]]:
    """Presigned UploadPart URLs of these parts, each for its exact length, valid `URL_TTL` seconds."""
    ttl = app[SETTINGS].url_ttl
    expires_at = iso(app[CLOCK]() + ttl)
    presigner = app[STORAGE].presigner
    parts = [
        {
            "part_number": number,
            "url": presigner.upload_part(
                backup.object_key, upload_id, number, ttl, backups.part_length(backup, number)
            ),
            "expires_at": expires_at,
        }
        for number in numbers
    ]
    app[METRICS].part_urls_signed.inc(len(parts))
    return parts


async def list_parts(request: web.Request) -> web.Response:
    backup = await _owned(request)
    upload_id = _require_uploading(backup)
    await _touch(request, backup)
    stored = await request.app[STORAGE].list_parts(backup.object_key, upload_id)
    return web.json_response(
        {"parts": [{"part_number": p.part_number, "etag": p.etag, "size": p.size} for p in stored]}
    )


COMPLETE_YIELD_EVERY = 500  # parts checked between two turns given back to the event loop


def _complete_body_limit(part_count: int) -> int:
    """The largest complete body an upload of `part_count` parts can need (each with the longest ETag)."""
    return min(MAX_COMPLETE_BODY, 1024 + part_count * PART_ENTRY_MAX)


async def _declared_parts(body: dict[str, Any]) -> tuple[dict[int, str], str | None]:
    """A complete body's parts (number → ETag) and SHA-256.

    Checked by hand rather than by a voluptuous schema (a tenth of the time for 10,000 parts), giving the event
    loop a turn every few hundred parts: a huge body delays other requests by a fraction of a millisecond at a
    time, never by its whole cost.
    """
    if "parts" not in body:
        raise _invalid(["parts: required key not provided"])
    parts = body["parts"]
    if not isinstance(parts, list):
        raise _invalid(["parts: expected a list"])
    if not 1 <= len(parts) <= S3_MAX_PARTS:
        raise _invalid([f"parts: expected 1 to {S3_MAX_PARTS} parts"])
    declared: dict[int, str] = {}
    for index, part in enumerate(parts):
        if index % COMPLETE_YIELD_EVERY == COMPLETE_YIELD_EVERY - 1:
            await asyncio.sleep(0)
        where = f"parts[{index}]"
        if not isinstance(part, dict):
            raise _invalid([f"{where}: expected a JSON object"])
        number, etag = part.get("part_number"), part.get("etag")
        if isinstance(number, bool) or not isinstance(number, int):
            raise _invalid([f"{where}.part_number: expected an integer"])
        if not 1 <= number <= S3_MAX_PARTS:
            raise _invalid([f"{where}.part_number: expected 1 to {S3_MAX_PARTS}"])
        if (
            not isinstance(etag, str)
            or not 1 <= len(etag) <= ETAG_MAX
            or not (etag.isascii() and etag.isprintable())
        ):
            raise _invalid([f"{where}.etag: expected 1 to {ETAG_MAX} printable ASCII characters"])
        if number in declared:
            raise _invalid([f"parts: part {number} is listed twice"])
        declared[number] = etag
    try:
        sha256 = _sha256(body.get("sha256"))
    except vol.Invalid as err:
        raise _invalid([f"sha256: {err.msg}"]) from None
    return declared, sha256


async def _complete_body(request: web.Request, backup_id: str) -> bytes:
    """The complete's body, read whole before any lock or database connection is held: a client trickling its
    body holds neither (its checks come once the lock is held).

    A body that is all here already (sent with its head, as clients do) is taken as it is (up to the largest a
    complete may send; its upload's own limit is checked under the lock). One still arriving is read only for an
    upload of the caller's in progress (the cheap refusal first), one such body of an upload at a time on this
    node, and no longer than its part count needs.
    """
    if request.content.is_eof():
        return await read_raw(request, MAX_COMPLETE_BODY)
    backup = await _owned(request)
    _require_uploading(backup)
    async with request.app[BODY_READS].hold(backup_id):
        return await read_raw(request, _complete_body_limit(backup.part_count))


async def complete_backup(request: web.Request) -> web.Response:
    app = request.app
    settings, store, storage, metrics = app[SETTINGS], app[STORE], app[STORAGE], app[METRICS]
    policy = policy_for(_instance(request), settings)
    backup_id = _backup_id(request)
    raw = await _complete_body(request, backup_id)
    # One complete, abort or delete of a backup at a time, on every node (its parsing included); on PostgreSQL
    # the lock's round trip also reads the backup, which `_owned` then takes, and its instance's completed
    # backups, which retention then takes.
    async with _backup_lock(request, backup_id, completing=True):
        backup = await _owned(request)
        upload_id = _require_uploading(backup)  # the cheap refusal first: before the body is parsed
        limit = _complete_body_limit(backup.part_count)
        if len(raw) > limit:
            raise ApiError(413, "body_too_large", f"the body is larger than {limit // 1024} KiB")
        declared, sha256 = await _declared_parts(parse_json(raw))
        expected = set(range(1, backup.part_count + 1))
        if set(declared) != expected:
            missing = sorted(expected - set(declared))
            extra = sorted(set(declared) - expected)
            detail = f"missing {missing[:10]}" if missing else f"out of 1..{backup.part_count}: {extra[:10]}"
            raise ApiError(400, "invalid_request", f"parts: every part 1..{backup.part_count} once; {detail}")
        if sha256 and backup.sha256 and sha256 != backup.sha256:
            raise ApiError(
                400, "invalid_request", "sha256: differs from the one declared when the upload began"
            )
        stored = await backups.complete_in_storage(storage, backup, upload_id, declared)
        now = app[CLOCK]()
        if stored != backup.size:
            raise await backups.refuse_stored_size(store, storage, metrics, backup, stored=stored, now=now)
        # The manifest goes in before the database records the backup: no completed row lacks its manifest.
        recorded = dataclasses.replace(
            backup, status=COMPLETED, completed_at=now, sha256=sha256 or backup.sha256
        )
        key = manifest.manifest_key(backup.object_key)
        await storage.put_object(key, manifest.build(recorded, _instance(request)))
        if settings.object_lock and policy.protect_days > 0:
            # Under Object Lock until the token may delete it: not even storage's keys delete it earlier
            # (without governance bypass). Again on a retried complete: the date only moves later.
            until = policy.deletable_at(now)
            await storage.lock_object(backup.object_key, until)
            await storage.lock_object(key, until)
        # Retention's choice among the instance's completed backups and this one, recorded with the complete.
        completed = await store.list_backups(backup.instance_id, COMPLETED)
        expired = backups.retention_choice(recorded, completed, policy, now)
        if not await store.complete_backup(backup.id, sha256, now, [old.id for old in expired]):
            current = await store.get_backup(backup.id)
            if current is not None and current.status == COMPLETED:
                raise ApiError(409, "not_uploading", f"backup {backup.id} is completed already")
            # Aborted or swept while we completed: do not leave an object nobody knows.
            await delete_backups(store, storage, [backup], metrics)
            raise ApiError(409, "not_uploading", f"backup {backup.id} was aborted while completing")
        metrics.bytes_completed.inc(backup.size)
        metrics.backups_completed.inc()
        _LOGGER.info(
            "Backup %s of instance %s completed: %d bytes", backup.id, backup.instance_id, backup.size
        )
        if expired:
            # Marked `deleting` with the complete; their objects and rows go in batches (`Purger`), within about
            # a second (or with the sweeper, should this node stop first).
            _LOGGER.info("Retention: deleting %d backup(s) of instance %s", len(expired), backup.instance_id)
            metrics.retention_deleted.inc(len(expired))
            app[PURGER].add(expired)
    return web.json_response({"backup": backup_json(recorded)})


async def _abort(request: web.Request, backup: Backup) -> None:
    """Mark failed (so the instance may start again at once), then abort in storage.

    If storage refuses the abort, the upload is no longer one the database knows as in progress: the sweeper
    aborts it on its next run.
    """
    store, storage = request.app[STORE], request.app[STORAGE]
    # The upload id as the database holds it when the backup fails: a create on another node may have recorded
    # it since `backup` was read (if not, that create sees the backup failed and aborts what it made).
    failed = await store.fail_backup(backup.id, request.app[CLOCK]())
    if failed is None:
        raise ApiError(409, "not_uploading", f"backup {backup.id} is not uploading any more")
    backup = failed
    if backup.upload_id is not None:
        try:
            await storage.abort_multipart_upload(backup.object_key, backup.upload_id)
        except StorageError as err:
            request.app[METRICS].storage_errors.labels(err.operation).inc()
            _LOGGER.warning("Could not abort upload of %s now; the sweeper will: %s", backup.id, err)
    _LOGGER.info("Upload of backup %s aborted", backup.id)


async def abort_upload(request: web.Request) -> web.Response:
    async with _backup_lock(request, _backup_id(request)):
        backup = await _owned(request)
        if backup.status != UPLOADING:
            raise ApiError(409, "not_uploading", f"backup {backup.id} is {backup.status}, not uploading")
        # Also while its storage upload is still being created (no upload id yet): the create then sees the
        # backup failed, and aborts the upload it made.
        await _abort(request, backup)
    return web.Response(status=204)


async def list_backups(request: web.Request) -> web.Response:
    backups = await request.app[STORE].list_backups(_instance(request).id, COMPLETED)
    return web.json_response({"backups": [backup_json(backup) for backup in backups]})


async def get_backup(request: web.Request) -> web.Response:
    return web.json_response({"backup": backup_json(await _owned(request))})


async def delete_backup(request: web.Request) -> web.Response:
    store, storage = request.app[STORE], request.app[STORAGE]
    async with _backup_lock(request, _backup_id(request)):
        backup = await _owned(request, deleting=True)
        if backup.status == UPLOADING:
            await _abort(request, backup)
            await store.delete_backup(backup.id)
        elif backup.status in (COMPLETED, DELETING):
            if backup.status == COMPLETED:
                _refuse_if_protected(request, backup)
            failed = await delete_backups(store, storage, [backup], request.app[METRICS])
            if failed:
                raise ApiError(
                    502, "storage_error", "storage did not delete the object; the gateway will retry it"
                )
        else:
            await store.delete_backup(backup.id)
    _LOGGER.info("Backup %s deleted by instance %s", backup.id, backup.instance_id)
    return web.Response(status=204)


def _refuse_if_protected(request: web.Request, backup: Backup) -> None:
    """403 `protected` for a completed backup younger than the instance's protect-days (retention does not delete
    it either; the operator's `backup delete` can)."""
    policy = policy_for(_instance(request), request.app[SETTINGS])
    deletable_at = policy.deletable_at(backup.completed_at or backup.created_at)
    if protected(backup, policy, request.app[CLOCK]()):
        # Rounded up to the second: never announced earlier than it is.
        when = iso(math.ceil(deletable_at))
        raise ApiError(
            403,
            "protected",
            f"this backup is protected against deletion for {policy.protect_days} days after it was made: "
            f"it can be deleted from {when} on",
            details={"deletable_at": when},
        )


async def download_backup(request: web.Request) -> web.Response:
    app = request.app
    backup = await _owned(request)
    if backup.status != COMPLETED:
        raise ApiError(409, "not_completed", f"backup {backup.id} is {backup.status}, not completed")
    ttl = app[SETTINGS].url_ttl
    expires_at = iso(app[CLOCK]() + ttl)
    url = app[STORAGE].presigner.get_object(backup.object_key, ttl)
    return web.json_response({"url": url, "expires_at": expires_at})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers. It touches nothing and reveals nothing."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database and storage answer (probed at most every few seconds; details in the log)."""
    checks = await request.app[READINESS].check()
    answer = {name: "ok" if ok else "unavailable" for name, ok in checks.items()}
    if all(checks.values()):
        return web.json_response({"status": "ok", "checks": answer})
    return web.json_response({"status": "unavailable", "checks": answer}, status=503)


METRICS_ONLY = web.AppKey("metrics_only", bool)  # the app of the metrics listener (`create_metrics_app`)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text: on the metrics listener (`METRICS_LISTEN`) if there is one, else on the API's listener
    behind `METRICS_TOKEN`; with neither, not served (404, as for any route that is not there). Wherever it is
    served, `METRICS_TOKEN` (if set) is required, and wrong ones count as wrong tokens (throttled)."""
    app = request.app
    settings = app[SETTINGS]
    here = app.get(METRICS_ONLY, False) or (settings.metrics_listen is None and settings.metrics_token)
    if not here:
        raise web.HTTPNotFound()
    if settings.metrics_token is not None:
        _refuse_throttled(request)
        sent = request.headers.get("Authorization", "")
        scheme, _, given = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), settings.metrics_token.encode()
        ):
            raise _unauthorized(request)
    app_metrics = app[METRICS]
    app_metrics.uploads_in_progress.set(await app[STORE].count_uploading())
    for check, ok in (await app[READINESS].check()).items():
        app_metrics.check_up.labels(check).set(1 if ok else 0)
    response = web.Response(body=app_metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


DOCS_URL = "https://github.com/offsite-backup/offsite-backup"
ROOT_PAGE = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Offsite Backup gateway</title></head>
<body>
<h1>Offsite Backup gateway</h1>
<p>This server sends Home Assistant's backups off-site: Home Assistant talks to it with the token its operator
gave it. There is nothing else to see here.</p>
<p><a href="{DOCS_URL}">Offsite Backup's documentation</a></p>
</body>
</html>
""".encode()
ROOT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


async def root(request: web.Request) -> web.Response:
    """A page for people who open the gateway's address (Home Assistant's device page links it): what it is and
    where its documentation is; no version, nothing of its configuration or state."""
    return web.Response(body=ROOT_PAGE, content_type="text/html", charset="utf-8", headers=ROOT_HEADERS)


# (method, path, handler): the whole API; tests check it against openapi.yaml.
ROUTES: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("GET", "/v1/instance", get_instance),
    ("PUT", "/v1/instance/notify", set_notify),
    ("DELETE", "/v1/instance/notify", clear_notify),
    ("POST", "/v1/backups", create_backup),
    ("GET", "/v1/backups", list_backups),
    ("GET", "/v1/backups/{id}", get_backup),
    ("DELETE", "/v1/backups/{id}", delete_backup),
    ("POST", "/v1/backups/{id}/parts", sign_parts),
    ("GET", "/v1/backups/{id}/parts", list_parts),
    ("POST", "/v1/backups/{id}/complete", complete_backup),
    ("DELETE", "/v1/backups/{id}/upload", abort_upload),
    ("POST", "/v1/backups/{id}/download", download_backup),
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
    ("GET", "/metrics", metrics),
    ("GET", "/", root),
)


def make_runner(
    app: web.Application, shutdown_timeout: float = 10.0, *, max_connections: int | None = None
) -> web.AppRunner:
    """The runner to serve `app` with: our access log (no headers, no query strings), and the connection limits
    of its settings (`max_connections` lower still, to fit the open-file limit: see `limits`)."""
    settings = app[SETTINGS]
    return GatewayRunner(
        app,
        max_connections=min(settings.max_connections, max_connections or settings.max_connections),
        header_timeout=settings.header_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        write_timeout=settings.write_timeout,
        shutdown_timeout=shutdown_timeout,
        access_log_class=AccessLogger,
        access_log=ACCESS_LOGGER,
    )


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The gateway application; its store, storage client and sweeper open on startup and close on cleanup."""
    app = web.Application(middlewares=[errors_and_metrics, bearer_auth], client_max_size=MAX_COMPLETE_BODY)
    app[SETTINGS] = settings
    app[STORE] = store if store is not None else create_store(settings)
    app[STORAGE] = Storage(settings)
    app[METRICS] = Metrics()
    app[CLOCK] = clock
    app[SWEEPER] = Sweeper(settings, app[STORE], app[STORAGE], app[METRICS], clock)
    app[PURGER] = Purger(app[STORE], app[STORAGE], app[METRICS])
    app[READINESS] = Readiness(app[STORE], app[STORAGE], clock)
    app[AUTH_FAILURES] = AuthFailures(settings.auth_failures_per_minute, app[METRICS])
    app[OUTBOX] = Outbox(settings, app[STORE], app[METRICS], clock)
    app[WATCHDOG] = Watchdog(settings, app[STORE], app[METRICS], clock, on_queued=app[OUTBOX].wake)
    app[BODY_READS] = KeyedLocks()
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    store, storage, sweeper, purger = app[STORE], app[STORAGE], app[SWEEPER], app[PURGER]
    watchdog, outbox = app[WATCHDOG], app[OUTBOX]
    await store.open()
    try:
        await storage.open()
        try:
            sweeper.start()
            purger.start()
            watchdog.start()
            outbox.start()
            try:
                yield
            finally:
                await outbox.stop()
                await watchdog.stop()
                await purger.stop()
                await sweeper.stop()
        finally:
            await storage.close()
    finally:
        await store.close()


METRICS_CONNECTIONS = 64  # what the metrics listener holds at most: a few scrapers


def create_metrics_app(app: web.Application) -> web.Application:
    """The application of the metrics listener (`METRICS_LISTEN`): `/metrics` (and `/healthz`) of `app`, whose
    store and metrics it uses; `app` opens and closes them. Serve it with `make_runner(..., max_connections=
    METRICS_CONNECTIONS)`, set up after `app`'s runner and cleaned up before it."""
    metrics_app = web.Application(middlewares=[errors_and_metrics], client_max_size=MAX_BODY)
    metrics_app[SETTINGS] = app[SETTINGS]
    metrics_app[STORE] = app[STORE]
    metrics_app[METRICS] = app[METRICS]
    metrics_app[CLOCK] = app[CLOCK]
    metrics_app[AUTH_FAILURES] = app[AUTH_FAILURES]
    metrics_app[READINESS] = app[READINESS]  # the check_up gauges
    metrics_app[METRICS_ONLY] = True
    metrics_app.router.add_route("GET", "/metrics", metrics)
    metrics_app.router.add_route("GET", "/healthz", healthz)
    return metrics_app
