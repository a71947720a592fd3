"""The gateway's small HTTP/1.1 client (offsite_gateway/httpclient.py) against a raw server that answers from a
script: lengths, chunks, interim answers, keep-alive and its end, bounds, junk, deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from offsite_gateway.httpclient import HttpClient, HttpError


class Script:
    """A TCP server on 127.0.0.1: each request gets the next scripted answer (raw bytes), on any connection."""

    def __init__(self) -> None:
        self.answers: list[bytes | None] = []  # None: never answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                answer = (
                    self.answers.pop(0) if self.answers else b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                )
                if answer is None:  # never answer: wait until the client gives up and closes
                    await reader.read()
                    return
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer or b"HTTP/1.0" in answer.split(b"\r\n")[0]:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def script() -> AsyncIterator[tuple[Script, str]]:
    scripted = Script()
    server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield scripted, f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_answers_and_keep_alive(script: tuple[Script, str]) -> None:
    scripted, url = script
    client = HttpClient(url, timeout=5)
    try:
        scripted.answers[:] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",  # HEAD: no body read, though announced
        ]
        first = await client.request("PUT", "/b/k?x=1", {"Authorization": "sig"}, b"body")
        assert (first.status, first.body, first.headers["x-a"]) == (200, b"hello", "1, 2")
        assert scripted.requests[0].startswith(b"PUT /b/k?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"Authorization: sig\r\n" in scripted.requests[0]
        assert scripted.requests[0].endswith(b"Content-Length: 4\r\n\r\nbody")
        second = await client.request("POST", "/b/k?uploads=", {})
        assert (second.status, second.body) == (201, b"abcde")
        assert (await client.request("DELETE", "/b/k", {})).status == 204
        assert b"Content-Length" not in scripted.requests[2]  # a DELETE without a body says nothing of one
        head = await client.request("HEAD", "/b", {})
        assert (head.status, head.body) == (200, b"")
        assert scripted.connections == 1  # all on one kept-alive connection
        # An answer that closes: the next request opens a new connection.
        scripted.answers[:] = [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"]
        await client.request("GET", "/", {})
        await client.request("GET", "/", {})
        assert scripted.connections == 2
        # Read to the end of the connection when the answer has no length.
        scripted.answers[:] = [b"HTTP/1.0 200 OK\r\n\r\nuntil the end"]
        assert (await client.request("GET", "/", {})).body == b"until the end"
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", HttpError, "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", HttpError, "not a header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", HttpError, "not a number"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n", HttpError, "larger than"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", HttpError, "not hexadecimal"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nshort",
            ConnectionResetError,
            "middle",
        ),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", HttpError, "too long"),
    ],
)
async def test_junk_is_refused(
    script: tuple[Script, str], answer: bytes, error: type[Exception], message: str
) -> None:
    scripted, url = script
    client = HttpClient(url, timeout=5, max_answer=1000)
    try:
        scripted.answers[:] = [answer]
        with pytest.raises(error, match=message):
            await client.request("GET", "/", {})
        # The connection it came on is not reused: the next request works on a new one.
        assert (await client.request("GET", "/", {})).body == b"ok"
    finally:
        await client.close()


async def test_deadlines_and_limits(script: tuple[Script, str]) -> None:
    scripted, url = script
    client = HttpClient(url, timeout=0.5, limit=1)
    try:
        scripted.answers[:] = [None]
        with pytest.raises(TimeoutError):
            await client.request("GET", "/", {})
        with pytest.raises(ValueError, match="line break"):
            await client.request("GET", "/", {"X-Evil": "a\r\nInjected: yes"})
    finally:
        await client.close()
    unreachable = HttpClient("http://127.0.0.1:1", connect_timeout=1)
    with pytest.raises(OSError):
        await unreachable.request("GET", "/", {})
    with pytest.raises(RuntimeError, match="closed"):
        await client.request("GET", "/", {})
    with pytest.raises(ValueError, match="http"):
        HttpClient("ftp://example.org")
    assert HttpClient("https://s3.example.org").host_header == "s3.example.org"
    assert HttpClient("http://[::1]:9000").host_header == "[::1]:9000"
