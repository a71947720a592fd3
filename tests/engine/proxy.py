"""A fault-injecting HTTP proxy between the uploader and an S3 server, on 127.0.0.1.

The gateway is told (S3_PUBLIC_ENDPOINT) to put this proxy's address in the presigned URLs; the proxy forwards every
request to the real S3 server unchanged, Host header included, so signatures still match. For part PUTs
(``?partNumber=N&uploadId=…``) a plan of faults per part number is applied to its successive PUTs, and every PUT is
counted and time-stamped per part number. An ``outage`` applies to every request it names, part PUTs or others:
put in front of the gateway, the proxy is a gateway that goes away for a while.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import aiohttp
from aiohttp import hdrs, web
from yarl import URL

# A plain MD5 ETag (quoted, or quoted as XML does) and its opaque form: the same with "-kms" appended.
_MD5_ETAG = re.compile(rb'("|&quot;|&#34;)([0-9a-f]{32})("|&quot;|&#34;)')
_OPAQUE_ETAG = re.compile(rb'("|&quot;|&#34;)([0-9a-f]{32})-kms("|&quot;|&#34;)')

_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}


@dataclass(frozen=True)
class Fault:
    """What to do with one PUT of a part."""

    kind: str  # reset | status | stall | delay | gate | corrupt
    status: int = 500
    code: str = "InternalError"
    message: str = "We encountered an internal error. Please try again."
    retry_after: str | None = None
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.status}" if self.kind == "status" else self.kind


def reset() -> Fault:
    """Read a little of the body, then reset the connection."""
    return Fault("reset")


def status(code: int, s3_code: str, message: str = "fault", retry_after: str | None = None) -> Fault:
    """Read the body, then answer an S3 XML error."""
    return Fault("status", status=code, code=s3_code, message=message, retry_after=retry_after)


def expired() -> Fault:
    """Answer 403 as S3 does for an expired presigned URL."""
    return status(403, "AccessDenied", "Request has expired")


def stall(seconds: float = 30.0) -> Fault:
    """Read the body, then say nothing for ``seconds`` (the client's timeout should fire first)."""
    return Fault("stall", seconds=seconds)


def delay(seconds: float) -> Fault:
    """Hold the request ``seconds`` before forwarding it (the URL may expire on the way)."""
    return Fault("delay", seconds=seconds)


def gate() -> Fault:
    """Hold the request until the test calls ``proxy.open_gate()`` (then forward it, unless the client left)."""
    return Fault("gate")


def corrupt() -> Fault:
    """Flip one byte of the body before forwarding it (storage's ETag will not match the part's MD5)."""
    return Fault("corrupt")


class Outage:
    """A proxy's ``outage``: ``fault`` for every request ``covers`` (its part number, or ``None``), from the first
    such request for ``seconds`` of the clock ``now`` (simulated in tests that move time)."""

    def __init__(
        self,
        now: Callable[[], float],
        seconds: float,
        fault: Fault,
        *,
        covers: Callable[[int | None], bool],
    ) -> None:
        self.now = now
        self.seconds = seconds
        self.fault = fault
        self.covers = covers
        self.began: float | None = None
        self.refused = 0

    def __call__(self, part: int | None) -> Fault | None:
        if not self.covers(part):
            return None
        now = self.now()
        if self.began is None:
            self.began = now
        if now >= self.began + self.seconds:
            return None
        self.refused += 1
        return self.fault


class FaultProxy:
    """Forward to ``upstream``, applying ``plan`` to part PUTs; see the module docstring."""

    def __init__(self, upstream: str, *, opaque_etags: bool = False) -> None:
        """``opaque_etags``: storage appears to give ETags that are not MD5s (as with SSE-KMS), both to the
        uploader and to a gateway whose S3 endpoint is this proxy; they are mapped back on the way in."""
        self.upstream = upstream.rstrip("/")
        self.opaque_etags = opaque_etags
        self.plan: dict[int, list[Fault]] = defaultdict(list)
        self.puts: Counter[int] = Counter()  # PUTs received per part number
        self.stored: Counter[int] = Counter()  # PUTs storage acknowledged (2xx) per part number
        self.upstream_status: dict[int, list[int]] = defaultdict(list)  # storage's answers per part number
        self.put_times: dict[int, list[float]] = defaultdict(list)
        self.faults_met: Counter[str] = Counter()
        self.arrived: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.other_faults: dict[str, list[int]] = {}  # method → statuses for requests other than part PUTs
        self.late_answers: dict[tuple[str, str], float] = {}  # (method, path) → seconds to hold the answer
        self.held: dict[tuple[str, str], asyncio.Event] = defaultdict(
            asyncio.Event
        )  # set once upstream answered
        self.outage: Callable[[int | None], Fault | None] | None = None
        """Asked for every request (its part number, ``None`` for a request that is not a part PUT): a fault to
        apply, before the per-part plan. An outage of storage or of the gateway, lasting as long as it says."""
        self.in_flight = 0  # requests being handled now
        self.url = ""
        self._gate = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def fail(self, part_number: int, *faults: Fault) -> None:
        """Apply ``faults`` to the next PUTs of ``part_number``, one each."""
        self.plan[part_number].extend(faults)

    def fail_other(self, method: str, status_code: int) -> None:
        """Answer the next ``method`` request that is not a part PUT with an S3 error of ``status_code``."""
        self.other_faults.setdefault(method, []).append(status_code)

    def answer_late(self, method: str, path: str, seconds: float) -> None:
        """Forward ``method path`` at once but hold upstream's answer ``seconds`` (a slow or lost answer)."""
        self.late_answers[(method, path)] = seconds

    def open_gate(self) -> None:
        """Let the requests held by ``gate()`` faults go on (and the next ones through at once)."""
        self._gate.set()

    def close_gate(self) -> None:
        """Hold the requests of the next ``gate()`` faults again."""
        self._gate.clear()

    def reset_counts(self) -> None:
        self.puts.clear()
        self.stored.clear()
        self.upstream_status.clear()
        self.put_times.clear()
        self.faults_met.clear()
        self.arrived.clear()

    async def __aenter__(self) -> FaultProxy:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        try:
            return await self._handle_one(request)
        finally:
            self.in_flight -= 1

    async def _handle_one(self, request: web.Request) -> web.StreamResponse:
        part: int | None = None
        if request.method == "PUT" and "partNumber" in request.query and "uploadId" in request.query:
            part = int(request.query["partNumber"])
            self.puts[part] += 1
            self.put_times[part].append(time.monotonic())
            self.arrived[part].set()
        fault = self.outage(part) if self.outage is not None else None
        if fault is None and part is None and self.other_faults.get(request.method):
            code = self.other_faults[request.method].pop(0)
            await request.read()
            xml = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code></Error>'
            return web.Response(status=code, text=xml, content_type="application/xml")
        if fault is None and part is not None and self.plan.get(part):
            fault = self.plan[part].pop(0)
        if fault is not None:
            self.faults_met[fault.label] += 1
            if fault.kind == "reset":
                await request.content.read(65536)
                transport = request.transport
                assert transport is not None
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
                return web.Response(status=500)  # never delivered: the connection is gone
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            if fault.kind == "gate":
                await self._gate.wait()
        body = await request.read()
        if fault is not None:
            if fault.kind == "status":
                headers = {"Content-Type": "application/xml"}
                if fault.retry_after is not None:
                    headers["Retry-After"] = fault.retry_after
                xml = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
                    f"{fault.code}</Code><Message>{fault.message}</Message></Error>"
                )
                return web.Response(status=fault.status, text=xml, headers=headers)
            if fault.kind == "stall":
                await asyncio.sleep(fault.seconds)
                return web.Response(status=503, text="stalled")
            if fault.kind == "corrupt" and body:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
        answer = await self._forward(request, body, part)
        late = self.late_answers.get((request.method, request.path))
        if late is not None:
            self.held[(request.method, request.path)].set()
            await asyncio.sleep(late)
        return answer

    async def _forward(self, request: web.Request, body: bytes, part: int | None) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        if self.opaque_etags and body:
            body = _OPAQUE_ETAG.sub(rb"\1\2\3", body)
        async with self._session.request(
            request.method,
            URL(self.upstream + request.raw_path, encoded=True),
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        ) as resp:
            payload = await resp.read()
            answer_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
            if request.method == "HEAD" and hdrs.CONTENT_LENGTH in resp.headers:
                answer_headers[hdrs.CONTENT_LENGTH] = resp.headers[hdrs.CONTENT_LENGTH]  # the object's size
            if self.opaque_etags:
                payload = _MD5_ETAG.sub(rb"\1\2-kms\3", payload)
                for name in [name for name in answer_headers if name.lower() == "etag"]:
                    answer_headers[name] = _MD5_ETAG.sub(
                        rb"\1\2-kms\3", answer_headers[name].encode()
                    ).decode()
            if part is not None:
                self.upstream_status[part].append(resp.status)
                if 200 <= resp.status < 300:
                    self.stored[part] += 1
            return web.Response(status=resp.status, body=payload, headers=answer_headers)
