"""The HTTP server around the app: what a connection may hold, and how a malformed request is answered.

Left to its defaults, aiohttp waits for a request's head for as long as the client likes, keeps an idle
connection for an hour, accepts connections until the process runs out of file descriptors, and answers a
malformed request with plain text while logging a traceback that quotes the offending header line (a token
with it). Here:

- `ConnectionGuard` closes a connection that has not sent a whole request head `header_timeout` seconds after it
  opened, or `keepalive_timeout` seconds after its last answer; and when `max_connections` are open, a new one
  closes an idle one, its own source's first, so that a crowd of idle sockets cannot keep a real client out.
  Only at twice the cap with none idle is a new connection refused, with a JSON 503.
- `GatewayRequestHandler` answers protocol errors in JSON, echoing nothing, and logs one short line for them,
  at most every few seconds.
- `GatewayRunner` is the `web.AppRunner` that serves with both.
- `AcceptErrorLog` turns asyncio's traceback for each failed `accept()` into one line now and then.
The body of a request has its own timeout in the app (`BODY_TIMEOUT`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from .clients import source_of
from .logs import ThrottledLog, escape

_LOGGER = logging.getLogger(__name__)

SERVER_NAME = "offsite-gateway"  # the Server header: no version to look vulnerabilities up by
PROTOCOL_ERROR = "offsite_gateway.protocol_error"  # request key: aiohttp could not parse the request
LINGERING_TIME = 2.0  # after an answer sent before the request's body was read, read (and drop) it this long
REFUSED_GRACE = 0.2  # a refused connection may read its 503 this long before it is closed


def _canned(status: str, body: dict[str, Any], extra: str = "") -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status}\r\nServer: {SERVER_NAME}\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(payload)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + payload


BUSY = _canned(
    "503 Service Unavailable",
    {"error": {"code": "server_busy", "message": "every connection is in use; try again shortly"}},
    "Retry-After: 1\r\n",
)


@dataclass
class _Connection:
    source: str  # the peer's address (an IPv6 one's /64)
    timer: asyncio.TimerHandle | None = None
    idle_since: float | None = None  # None while in a request


class ConnectionGuard:
    """Deadlines for connections outside a request, and a cap on connections that makes room for new ones.

    At `max_connections`, each new connection closes an idle one (outside a request): the idle-longest of its
    own source address if it has one (a source pays for its own crowd, so a flood from one address closes its
    own sockets, never another client's), else the idle-longest of all, preferring those that never sent a
    request, but none idle for less than `SETTLE_TIME` (a new client whose request is on its way is not taken
    for an idle one). If there is none, the new connection is let in over the cap, up to twice it; past that it
    is refused at once, with a JSON 503.
    """

    SETTLE_TIME = 0.25

    def __init__(
        self,
        max_connections: int,
        header_timeout: float,
        keepalive_timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self._loop = loop
        self._open: dict[web.RequestHandler, _Connection] = {}
        # Idle connections, idle-longest first: those that never sent a request, those between two requests,
        # and all of them by source.
        self._waiting: OrderedDict[web.RequestHandler, None] = OrderedDict()
        self._between: OrderedDict[web.RequestHandler, None] = OrderedDict()
        self._idle_by_source: dict[str, OrderedDict[web.RequestHandler, None]] = {}
        self._log = ThrottledLog(_LOGGER)

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, handler: web.RequestHandler, source: str) -> bool:
        """A connection was accepted; False if it must be refused."""
        if len(self._open) >= self.max_connections:
            victim = self._victim(source)
            if victim is not None:
                self._close(victim)
                self._log.log(
                    logging.WARNING, "%d connections: closing the ones idle longest", len(self._open)
                )
            elif len(self._open) >= 2 * self.max_connections:
                self._log.log(
                    logging.WARNING, "%d connections, none idle: refusing new ones", len(self._open)
                )
                return False
        self._open[handler] = _Connection(source)
        self._idle(handler, self._waiting, self.header_timeout)
        return True

    def request_started(self, handler: web.RequestHandler) -> None:
        if handler in self._open:
            self._busy(handler)

    def request_finished(self, handler: web.RequestHandler) -> None:
        if handler in self._open:
            self._busy(handler)
            self._idle(handler, self._between, self.keepalive_timeout)

    def closed(self, handler: web.RequestHandler) -> None:
        if handler in self._open:
            self._busy(handler)
            del self._open[handler]

    def close_all(self) -> None:
        """Stop every timer (the server is shutting down)."""
        for handler in list(self._open):
            self.closed(handler)

    def _idle(
        self, handler: web.RequestHandler, pool: OrderedDict[web.RequestHandler, None], timeout: float
    ) -> None:
        connection = self._open[handler]
        connection.idle_since = self._loop.time()
        connection.timer = self._loop.call_later(timeout, self._expire, handler)
        pool[handler] = None
        self._idle_by_source.setdefault(connection.source, OrderedDict())[handler] = None

    def _busy(self, handler: web.RequestHandler) -> None:
        connection = self._open[handler]
        if connection.timer is not None:
            connection.timer.cancel()
            connection.timer = None
        if connection.idle_since is not None:
            connection.idle_since = None
            self._waiting.pop(handler, None)
            self._between.pop(handler, None)
            own = self._idle_by_source[connection.source]
            del own[handler]
            if not own:
                del self._idle_by_source[connection.source]

    def _victim(self, source: str) -> web.RequestHandler | None:
        own = self._idle_by_source.get(source)
        if own:
            return next(iter(own))
        now = self._loop.time()
        for pool in (self._waiting, self._between):
            if pool:
                handler = next(iter(pool))
                since = self._open[handler].idle_since
                if since is not None and now - since >= self.SETTLE_TIME:
                    return handler
        return None

    def _expire(self, handler: web.RequestHandler) -> None:
        connection = self._open.get(handler)
        if connection is not None:
            connection.timer = None
            if connection.idle_since is not None:
                self._close(handler)

    def _close(self, handler: web.RequestHandler) -> None:
        self.closed(handler)
        handler.force_close()


class GatewayRequestHandler(web.RequestHandler):
    """aiohttp's handler of one connection, which reports to the guard and answers protocol errors in JSON."""

    def __init__(self, manager: GatewayServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager  # aiohttp forgets its manager once the connection is lost
        self._grace: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        source = source_of(str(peer[0])) if isinstance(peer, tuple) and peer else "unknown"
        if not self._server.guard.opened(self, source):
            self._refuse(transport)

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        """Answer 503 at once and close; read (and drop) what the client sends meanwhile, so it gets the 503
        rather than a reset."""
        self.close()  # nothing it sends is handled
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BUSY)
        if transport.can_write_eof():
            transport.write_eof()
        self._grace = asyncio.get_running_loop().call_later(REFUSED_GRACE, self.force_close)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._grace is not None:
            self._grace.cancel()
        self._server.guard.closed(self)
        super().connection_lost(exc)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, cast(float, start_time))
        finally:
            self._server.guard.request_finished(self)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """What aiohttp answers itself: a request it could not parse (4xx), or an exception no middleware
        caught (500). Never the request's bytes, in the answer or in the log."""
        if request.writer.output_size > 0:
            raise ConnectionError("the answer has begun already: no other can be sent")
        if status >= 500:
            _LOGGER.error("Unhandled error answering a request", exc_info=exc)
            error = {"code": "internal_error", "message": "the gateway failed unexpectedly; see its log"}
        else:
            request[PROTOCOL_ERROR] = True
            self._server.protocol_errors.log(
                logging.WARNING,
                "Malformed HTTP request from %s: %s",
                escape(request.remote or "?"),
                type(exc).__name__ if exc is not None else status,
            )
            error = {"code": "bad_request", "message": "malformed HTTP request"}
        response = web.json_response({"error": error}, status=status)
        response.headers[hdrs.SERVER] = SERVER_NAME
        response.headers[hdrs.CONNECTION] = "close"
        response.force_close()
        return response


RequestFactory = Callable[
    [RawRequestMessage, StreamReader, web.RequestHandler, AbstractStreamWriter, "asyncio.Task[None]"],
    web.BaseRequest,
]


class GatewayServer(web.Server):
    """The app's aiohttp server, making `GatewayRequestHandler`s and telling the guard when a request starts."""

    def __init__(self, made: web.Server, guard: ConnectionGuard, **handler_args: Any) -> None:
        self.guard = guard
        self.protocol_errors = ThrottledLog(_LOGGER)
        make_request: RequestFactory = made.request_factory

        def request_factory(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: web.RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> web.BaseRequest:
            guard.request_started(protocol)
            return make_request(message, payload, protocol, writer, task)

        super().__init__(
            made.request_handler,
            request_factory=request_factory,
            handler_cancellation=made.handler_cancellation,
            **handler_args,
        )
        self._handler_args = handler_args
        self._handler_loop = asyncio.get_running_loop()

    def __call__(self) -> GatewayRequestHandler:
        return GatewayRequestHandler(self, loop=self._handler_loop, **self._handler_args)

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's signature
        await super().shutdown(timeout)
        self.guard.close_all()


class GatewayRunner(web.AppRunner):
    """`web.AppRunner` serving the app through a `GatewayServer`."""

    def __init__(
        self,
        app: web.Application,
        *,
        max_connections: int,
        header_timeout: float,
        keepalive_timeout: float,
        shutdown_timeout: float,
        **handler_args: Any,
    ) -> None:
        handler_args.update(keepalive_timeout=keepalive_timeout, lingering_time=LINGERING_TIME)
        super().__init__(app, shutdown_timeout=shutdown_timeout, **handler_args)
        self._handler_args = handler_args
        self._limits = (max_connections, header_timeout, keepalive_timeout)

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts the app up
        guard = ConnectionGuard(*self._limits, loop=asyncio.get_running_loop())
        return GatewayServer(made, guard, **self._handler_args)


class AcceptErrorLog:
    """One line now and then for the `accept()` calls that fail for want of file descriptors.

    asyncio reports each one to the loop's exception handler, by default with a traceback; it then stops
    accepting for a second by itself. Other reports go on to the handler there was before.
    """

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = ThrottledLog(_LOGGER, interval, clock)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        previous = loop.get_exception_handler()

        def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if context.get("message") == self.MESSAGE:
                error = context.get("exception")
                reason = error.strerror if isinstance(error, OSError) and error.strerror else repr(error)
                self._log.log(
                    logging.WARNING, "Cannot accept connections: %s (the open-file limit is reached)", reason
                )
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handle)
