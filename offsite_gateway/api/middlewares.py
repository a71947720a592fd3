"""The API's middlewares: JSON errors for everything and request metrics; the bearer token of every /v1 route,
and the throttling of sources that send wrong ones; the access log."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from ..auth import authenticate
from ..clients import client_address, source_of
from ..errors import ApiError
from ..logs import escape
from ..server import PROTOCOL_ERROR, SERVER_NAME
from ..storage import StorageError
from ..store import Instance, StoreUnavailable
from .answers import error_response
from .keys import AUTH_FAILURES, CLIENT, CLOCK, INSTANCE, METRICS, SETTINGS, STORE

_LOGGER = logging.getLogger(__name__)
ACCESS_LOGGER = logging.getLogger("offsite_gateway.access")


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


def refuse_throttled(request: web.Request) -> None:
    """429 for a source that sent too many requests without a valid token within the last minute."""
    retry_after = request.app[AUTH_FAILURES].retry_after(source_of(request[CLIENT]), request.app[CLOCK]())
    if retry_after is not None:
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests without a valid token from this address; retry in {retry_after} s",
            {"Retry-After": str(retry_after)},
        )


def unauthorized(request: web.Request) -> ApiError:
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
        refuse_throttled(request)
        instance = await authenticate(request.app[STORE], request.headers.get("Authorization"))
        if instance is None:
            raise unauthorized(request)
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
