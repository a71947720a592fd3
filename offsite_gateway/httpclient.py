"""A small HTTP/1.1 client with keep-alive connections to one origin, for the gateway's S3 calls.

Why not aiohttp's client: measured on the development VM, one aiohttp request to a local server costs about 400 us
of CPU (its request and response objects, connector, tracing hooks, timers), one request written and read here
about 40 us; the gateway makes 4 S3 calls per backup (bench/night.py). It does only what those calls need:

- one origin (scheme, host, port), `http` or `https` (the default TLS context: certificates verified);
- requests with a body of known length (`Content-Length`), never `Expect: 100-continue`;
- answers with `Content-Length`, `Transfer-Encoding: chunked`, or read to the end of the connection; a `HEAD`
  answer, 1xx (skipped), 204 and 304 have no body; at most `max_answer` bytes are read;
- idle connections are kept (LIFO) and reused for at most `idle_for` seconds; an answer that says
  `Connection: close` (or HTTP/1.0 without keep-alive), any error or timeout, closes its connection;
- deadlines: connecting (`connect_timeout`) and the whole exchange (`timeout`); at most `limit` connections at
  once (more requests wait for one, within their deadline).

A request that fails is not retried here (S3Client retries); it raises `HttpError` (the origin misbehaved),
`TimeoutError`, or `OSError` (including `ConnectionError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024  # status line and headers


class HttpError(Exception):
    """The origin's answer is not HTTP this client can read."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names in lower case; repeated headers joined with ", "
    body: bytes


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class HttpClient:
    """Keep-alive HTTP/1.1 connections to the origin of `base_url`."""

    def __init__(
        self,
        base_url: str,
        *,
        limit: int = 100,
        connect_timeout: float = 5.0,
        timeout: float = 60.0,
        idle_for: float = 15.0,
        max_answer: int = 8 * 1024 * 1024,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"  # as SigV4 signs it
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.idle_for = idle_for
        self.max_answer = max_answer
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes = b""
    ) -> Response:
        """Send `method target` (a path and query, already encoded) and read the whole answer."""
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        async with asyncio.timeout(self.timeout), self._slots:
            connection = await self._checkout()
            try:
                connection.writer.write(self._head(method, target, headers, body) + body)
                await connection.writer.drain()
                response, keep = await self._read(connection.reader, method)
            except BaseException:
                connection.close()
                raise
        if keep and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
        return response

    async def _checkout(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < self.idle_for and not connection.reader.at_eof():
                return connection
            connection.close()
        async with asyncio.timeout(self.connect_timeout):
            reader, writer = await asyncio.open_connection(
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self._ssl is not None else None,
                limit=MAX_HEAD,
            )
        return _Connection(reader, writer)

    def _head(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        for name, value in headers.items():
            if name.lower() in ("host", "content-length", "connection", "transfer-encoding"):
                continue
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} holds a line break")
            lines.append(f"{name}: {value}")
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _read(self, reader: asyncio.StreamReader, method: str) -> tuple[Response, bool]:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                raise HttpError("the answer's headers are too long") from None
            except asyncio.IncompleteReadError as err:
                raise ConnectionResetError("the connection closed before an answer") from err
            status, version, headers = self._parse_head(head)
            if 100 <= status < 200:
                continue  # an interim answer: the real one follows
            break
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            keep = "keep-alive" in headers.get("connection", "").lower()
        if method == "HEAD" or status in (204, 304):
            return Response(status, headers, b""), keep
        try:
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body = await self._chunked(reader)
            elif "content-length" in headers:
                try:
                    length = int(headers["content-length"])
                except ValueError:
                    raise HttpError("the answer's Content-Length is not a number") from None
                if length < 0 or length > self.max_answer:
                    raise HttpError(f"the answer is larger than {self.max_answer} bytes")
                body = await reader.readexactly(length)
            else:
                body = await reader.read(self.max_answer + 1)
                while len(body) <= self.max_answer and (more := await reader.read(self.max_answer + 1)):
                    body += more
                if len(body) > self.max_answer:
                    raise HttpError(f"the answer is larger than {self.max_answer} bytes")
                keep = False
        except asyncio.IncompleteReadError as err:
            raise ConnectionResetError("the connection closed in the middle of an answer") from err
        return Response(status, headers, body), keep

    @staticmethod
    def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest.partition(" ")[0]
        if not version.startswith("HTTP/1.") or not code.isdigit() or len(code) != 3:
            raise HttpError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, colon, value = line.partition(":")
            if not colon:
                raise HttpError(f"not a header line: {line[:100]!r}")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return int(code), version, headers

    async def _chunked(self, reader: asyncio.StreamReader) -> bytes:
        body = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError("a chunk size is not hexadecimal") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, if any
                    pass
                return bytes(body)
            if len(body) + size > self.max_answer:
                raise HttpError(f"the answer is larger than {self.max_answer} bytes")
            body += (await reader.readexactly(size + 2))[:-2]
