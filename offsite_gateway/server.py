"""The HTTP server around the app: what a connection may hold, and how a malformed request is answered.

Left to its defaults, aiohttp waits for a request's head for as long as the client likes, keeps an idle
connection for an hour, accepts connections until the process runs out of file descriptors, and answers a
malformed request with plain text while logging a traceback that quotes the offending header line (a token
with it). Here:

- `ConnectionGuard` closes a connection that has not sent a whole request head `header_timeout` seconds after it
  opened, or `keepalive_timeout` seconds after its last answer, or whose answer has waited `write_timeout`
  seconds for the client to read it; and when `max_connections` are open, a new one closes an idle one, its own
  source's first, else one that does not read its answers, so that a crowd of idle sockets or of slow readers
  cannot keep a real client out. Only at twice the cap with none of those is a new connection refused, with a
  JSON 503.
- Request heads are counted as they arrive (`HeadCounter`): one larger than `MAX_HEAD_BYTES` is answered 431 and
  its connection closed, and the heads not finished yet may hold `MAX_PENDING_HEAD_BYTES` in all, beyond which the
  connections holding the most are closed (503). A connection with more than `MAX_PIPELINED` requests queued
  behind the one being answered is closed.
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
from collections.abc import Callable, Sized
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
MAX_HEAD_BYTES = 32 * 1024  # a request's line and headers: this API's need a few hundred bytes
MAX_PENDING_HEAD_BYTES = 8 * 1024 * 1024  # what every head not finished yet may hold in all
MAX_PIPELINED = 16  # requests a connection may have queued behind the one being answered
# aiohttp's own parser limits, a second line behind `HeadCounter` (which counts only heads that start while no
# request of the connection is being read): fields of at most 8 KiB, and at most this many.
MAX_HEADERS = 64


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
HEAD_TOO_LARGE = _canned(
    "431 Request Header Fields Too Large",
    {
        "error": {
            "code": "headers_too_large",
            "message": f"the request's line and headers are larger than {MAX_HEAD_BYTES // 1024} KiB",
        }
    },
)


def _end_of_head(window: bytes) -> int | None:
    """Where the head in `window` ends (after its blank line), or None if it does not end in it."""
    ends = [at + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (at := window.find(mark)) >= 0]
    return min(ends) if ends else None


class HeadCounter:
    """The bytes of one request head as they arrive, up to its blank line (blank lines before it count too)."""

    def __init__(self) -> None:
        self.size = 0
        self.done = False
        self._started = False
        self._tail = b""  # the last bytes seen, in case the blank line spans two reads

    def feed(self, data: bytes) -> None:
        if not self._started:
            rest = data.lstrip(b"\r\n")
            self.size += len(data) - len(rest)
            if not rest:
                return
            self._started, data = True, rest
        window = self._tail + data
        end = _end_of_head(window)
        if end is None:
            self.size += len(data)
            self._tail = window[-3:]
        else:
            self.size += end - len(self._tail)
            self.done = True


@dataclass
class _Connection:
    source: str  # the peer's address (an IPv6 one's /64)
    timer: asyncio.TimerHandle | None = None
    idle_since: float | None = None  # None while in a request
    stalled_since: float | None = (
        None  # since when its answer waits for the client to read (None: it does not)
    )
    write_timer: asyncio.TimerHandle | None = None


class ConnectionGuard:
    """Deadlines for connections outside a request, and a cap on connections that makes room for new ones.

    At `max_connections`, each new connection closes an idle one (outside a request): the idle-longest of its
    own source address if it has one (a source pays for its own crowd, so a flood from one address closes its
    own sockets, never another client's), else the idle-longest of all, preferring those that never sent a
    request, but none idle for less than `SETTLE_TIME` (a new client whose request is on its way is not taken
    for an idle one); failing those, the one whose answer has waited longest (at least `STALL_GRACE`) for its
    client to read it. If there is none, the new connection is let in over the cap, up to twice it; there, one
    whose answer waits for its client is closed however short the wait, and only with none of those is the new
    connection refused, at once, with a JSON 503.

    It also keeps the heads not finished yet within `MAX_PENDING_HEAD_BYTES` (`head_pending`), and closes a
    connection whose answer waits `write_timeout` seconds for the client to read it.
    """

    SETTLE_TIME = 0.25
    STALL_GRACE = 0.25

    def __init__(
        self,
        max_connections: int,
        header_timeout: float,
        keepalive_timeout: float,
        *,
        loop: asyncio.AbstractEventLoop,
        write_timeout: float = 30.0,
        max_pending_heads: int = MAX_PENDING_HEAD_BYTES,
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.write_timeout = write_timeout
        self.max_pending_heads = max_pending_heads
        self._loop = loop
        self._open: dict[web.RequestHandler, _Connection] = {}
        # Idle connections, idle-longest first: those that never sent a request, those between two requests,
        # and all of them by source.
        self._waiting: OrderedDict[web.RequestHandler, None] = OrderedDict()
        self._between: OrderedDict[web.RequestHandler, None] = OrderedDict()
        self._idle_by_source: dict[str, OrderedDict[web.RequestHandler, None]] = {}
        # Connections whose answer waits for their client to read it, longest first.
        self._stalled: OrderedDict[web.RequestHandler, None] = OrderedDict()
        # Bytes of the head each connection has sent without finishing it, and their sum.
        self._heads: dict[GatewayRequestHandler, int] = {}
        self._head_total = 0
        self._log = ThrottledLog(_LOGGER)

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, handler: web.RequestHandler, source: str) -> bool:
        """A connection was accepted; False if it must be refused."""
        if len(self._open) >= self.max_connections:
            victim = self._victim(source)
            if victim is None and len(self._open) >= 2 * self.max_connections and self._stalled:
                victim = next(iter(self._stalled))  # rather than refuse: one that does not read its answers
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
            self.writing_resumed(handler)
            del self._open[handler]
        if isinstance(handler, GatewayRequestHandler):
            self._head_total -= self._heads.pop(handler, 0)

    def head_pending(self, handler: GatewayRequestHandler, size: int) -> bool:
        """`handler` holds `size` bytes of a head it has not finished (0: none). Over `max_pending_heads` in all,
        the connections holding the most are closed (503) until the rest fits; False if `handler` was one."""
        self._head_total -= self._heads.pop(handler, 0)
        if size:
            self._heads[handler] = size
            self._head_total += size
        spared = True
        while self._head_total > self.max_pending_heads and self._heads:
            victim = max(self._heads, key=self._heads.__getitem__)
            self._head_total -= self._heads.pop(victim)
            self._log.log(
                logging.WARNING,
                "Unfinished request heads hold over %d KiB: closing the connections holding the most",
                self.max_pending_heads // 1024,
            )
            victim.refuse(BUSY)
            spared = spared and victim is not handler
        return spared

    def writing_paused(self, handler: web.RequestHandler) -> None:
        """The connection's answer waits for its client to read (its transport's buffer is full)."""
        connection = self._open.get(handler)
        if connection is None or connection.stalled_since is not None:
            return
        connection.stalled_since = self._loop.time()
        connection.write_timer = self._loop.call_later(self.write_timeout, self._write_expired, handler)
        self._stalled[handler] = None

    def writing_resumed(self, handler: web.RequestHandler) -> None:
        connection = self._open.get(handler)
        if connection is None:
            return
        if connection.write_timer is not None:
            connection.write_timer.cancel()
            connection.write_timer = None
        connection.stalled_since = None
        self._stalled.pop(handler, None)

    def _write_expired(self, handler: web.RequestHandler) -> None:
        connection = self._open.get(handler)
        if connection is not None and connection.stalled_since is not None:
            connection.write_timer = None
            self._log.log(
                logging.WARNING,
                "Closing connections whose clients did not read their answers for %.0f s",
                self.write_timeout,
            )
            self._abort(handler)

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
        if self._stalled:
            handler = next(iter(self._stalled))
            stalled = self._open[handler].stalled_since
            if stalled is not None and now - stalled >= self.STALL_GRACE:
                return handler
        return None

    def _expire(self, handler: web.RequestHandler) -> None:
        connection = self._open.get(handler)
        if connection is not None:
            connection.timer = None
            if connection.idle_since is not None:
                self._close(handler)

    def _close(self, handler: web.RequestHandler) -> None:
        if handler in self._stalled:
            self._abort(handler)
            return
        self.closed(handler)
        handler.force_close()

    def _abort(self, handler: web.RequestHandler) -> None:
        """Close at once, dropping what the client did not read (a plain close would wait for it)."""
        self.closed(handler)
        if isinstance(handler, GatewayRequestHandler):
            handler.drop()
            return
        transport = handler.transport
        handler.force_close()
        if transport is not None:
            transport.abort()


class GatewayRequestHandler(web.RequestHandler):
    """aiohttp's handler of one connection, which reports to the guard and answers protocol errors in JSON."""

    def __init__(self, manager: GatewayServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager  # aiohttp forgets its manager once the connection is lost
        self._grace: asyncio.TimerHandle | None = None
        # The head being received; None from a head's end until its request's body is in.
        self._head: HeadCounter | None = HeadCounter()
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        source = source_of(str(peer[0])) if isinstance(peer, tuple) and peer else "unknown"
        if not self._server.guard.opened(self, source):
            self.refuse(BUSY)

    def refuse(self, answer: bytes) -> None:
        """Answer `answer` at once and close; read (and drop) what the client sends meanwhile, so it gets the
        answer rather than a reset. For a connection that is not in a request (nothing else is being written)."""
        transport = self.transport
        self._refused = True
        self._server.guard.closed(self)
        self.close()  # nothing it sends is handled
        if transport is None or transport.is_closing():
            return
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._grace = asyncio.get_running_loop().call_later(REFUSED_GRACE, self.force_close)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        head = self._head
        if head is not None and data:
            head.feed(data)
            if head.size > MAX_HEAD_BYTES:
                self._server.head_errors.log(
                    logging.WARNING, "Request heads over %d KiB refused", MAX_HEAD_BYTES // 1024
                )
                self.refuse(HEAD_TOO_LARGE)
                return
            if not self._server.guard.head_pending(self, 0 if head.done else head.size):
                return
            if head.done:
                self._head = None
        # aiohttp's queue of requests parsed and not handled yet (nothing takes from it during this call).
        queue: Sized = getattr(self, "_messages", ())
        before = len(queue)
        super().data_received(data)
        queued = len(queue)
        if queued > before and self._head is not None:
            # A head ended in this read (after a body that ended in it too): its body comes next, not a head.
            self._server.guard.head_pending(self, 0)
            self._head = None
        if queued > MAX_PIPELINED:
            self._server.head_errors.log(
                logging.WARNING, "Closing connections with over %d requests pipelined", MAX_PIPELINED
            )
            self._server.guard.closed(self)
            self.drop()

    def drop(self) -> None:
        """Close at once: the requests queued are not handled, and what the client did not read is dropped (a
        plain close would wait for the client to read it)."""
        self._refused = True
        # aiohttp's loop over the connection's requests (`start`), and what wakes it: done once requests are
        # queued, until it takes one. Woken, it would take one without looking whether the connection is closed
        # (older versions then fail on it): stopped where it waits, no request of it is being handled.
        waiter, task = getattr(self, "_waiter", None), getattr(self, "_task_handler", None)
        if isinstance(waiter, asyncio.Future) and waiter.done() and isinstance(task, asyncio.Task):
            task.cancel()
        queue = getattr(self, "_messages", None)  # aiohttp's; older versions go on with it after a close
        if queue is not None:
            queue.clear()
        transport = self.transport
        self.force_close()
        if transport is not None:
            transport.abort()

    def request_body_read(self) -> None:
        """The body of the request being read has arrived whole: what comes next is a head again."""
        if not self._refused and self._head is None:
            self._head = HeadCounter()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._server.guard.writing_paused(self)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._server.guard.writing_resumed(self)

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
        self.head_errors = ThrottledLog(_LOGGER)
        make_request: RequestFactory = made.request_factory

        def request_factory(
            message: RawRequestMessage,
            payload: StreamReader,
            protocol: web.RequestHandler,
            writer: AbstractStreamWriter,
            task: asyncio.Task[None],
        ) -> web.BaseRequest:
            guard.request_started(protocol)
            if isinstance(protocol, GatewayRequestHandler):
                payload.on_eof(protocol.request_body_read)  # at once if it has no body, or it is all in
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
        write_timeout: float = 30.0,
        **handler_args: Any,
    ) -> None:
        handler_args.update(
            keepalive_timeout=keepalive_timeout, lingering_time=LINGERING_TIME, max_headers=MAX_HEADERS
        )
        super().__init__(app, shutdown_timeout=shutdown_timeout, **handler_args)
        self._handler_args = handler_args
        self._limits = (max_connections, header_timeout, keepalive_timeout)
        self._write_timeout = write_timeout

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts the app up
        guard = ConnectionGuard(
            *self._limits, loop=asyncio.get_running_loop(), write_timeout=self._write_timeout
        )
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
