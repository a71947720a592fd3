"""What the gateway's notifications reach in tests: a webhook receiver and an SMTP server, both on 127.0.0.1.

    async with WebhookReceiver() as hooks:          # an aiohttp app in the test's own event loop
        url = hooks.url("/ntfy/topic-secret")
        hooks.answer = 500                          # or a delay: hooks.delay = 3.0
        ...
        [request] = await hooks.wait_for(1)         # method, path, query, headers, body (as received)

    with smtp_server(tmp_path) as smtp:             # aiosmtpd as a subprocess, writing a Maildir
        ...  # OFFSITE_GATEWAY_SMTP_HOST=127.0.0.1, _SMTP_PORT=smtp.port, _SMTP_SECURITY=none
        [message] = smtp.wait_for(1)                # email.message.Message

The receiver is a server of the test's loop (no thread); the SMTP server is a process of its own, stopped by its
pid.
"""

from __future__ import annotations

import asyncio
import email
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from multidict import CIMultiDict

from tests.helpers.servers import free_port

MAILBOX = ("-c", "aiosmtpd.handlers.Mailbox")  # aiosmtpd's handler that writes a Maildir


@dataclass
class Received:
    """One request the webhook receiver got, as it got it."""

    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes
    at: float = field(default_factory=time.monotonic)
    answered: int = 200


class WebhookReceiver:
    """Records every request; answers `answer` (a status) after `delay` seconds, or redirects with `redirect`."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.answer = 200
        self.delay = 0.0
        self.redirect: str | None = None
        self.answer_body = b"ok"
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        got = Received(request.method, request.path, request.query_string, CIMultiDict(request.headers), body)
        self.received.append(got)
        self._arrived.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.redirect is not None:
            got.answered = 302
            return web.Response(status=302, headers={"Location": self.redirect})
        got.answered = self.answer
        return web.Response(status=self.answer, body=self.answer_body)

    async def __aenter__(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A client that hangs up (a timeout) ends its request's handler: nothing is left sleeping.
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, within: float = 10.0) -> list[Received]:
        """Until `count` requests arrived (then all of them); TimeoutError after `within` seconds."""
        async with asyncio.timeout(within):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return list(self.received)


@dataclass
class SmtpServer:
    """aiosmtpd, as a subprocess on 127.0.0.1:`port`, storing what it receives in the Maildir `maildir`."""

    port: int
    maildir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def messages(self) -> list[Message]:
        new = self.maildir / "new"
        if not new.is_dir():
            return []
        return [email.message_from_bytes(path.read_bytes()) for path in sorted(new.iterdir())]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Message]:
        deadline = time.monotonic() + timeout
        while len(found := self.messages()) < count:
            assert time.monotonic() < deadline, (
                f"{len(found)} of {count} messages; log: {self.log.read_text()}"
            )
            time.sleep(0.05)
        return found


@contextmanager
def smtp_server(tmp_path: Path) -> Iterator[SmtpServer]:
    """aiosmtpd's `Mailbox` handler on a free port, until the block ends (SIGTERM, then SIGKILL)."""
    port = free_port()
    maildir = tmp_path / "maildir"  # aiosmtpd creates it
    log = tmp_path / "smtp.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", *MAILBOX, str(maildir)],
            stdout=out,
            stderr=out,
        )
    server = SmtpServer(port, maildir, process, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"220"):
                        break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- what ntfy and Gotify accept ------------------------------------------------------------------------------
# As their documentation describes their publishing APIs (docs.ntfy.sh/publish, gotify.net/api-docs): the checks a
# real server would make of the requests the gateway sends.

NTFY_TOPIC = re.compile(r"^/(?:[^/]+/)*[-_A-Za-z0-9]{1,64}$")
NTFY_PRIORITIES = {"1", "2", "3", "4", "5", "min", "low", "default", "high", "max", "urgent"}


def ntfy_message(request: Received) -> dict[str, str]:
    """What ntfy would publish from a request to a topic URL (a plain body, Title/Priority/Tags headers):
    {"topic", "title", "message", "priority", "tags"}; AssertionError where ntfy would refuse or garble it."""
    assert request.method in ("POST", "PUT")
    assert NTFY_TOPIC.match(request.path), request.path
    assert request.headers["Content-Type"].startswith("text/plain")
    message = request.body.decode("utf-8")
    assert 0 < len(request.body) <= 4096  # ntfy's message limit; longer ones become attachments
    priority = request.headers.get("Priority", "3")
    assert priority in NTFY_PRIORITIES
    title = str(make_header(decode_header(request.headers.get("Title", ""))))  # RFC 2047 words decoded
    tags = request.headers.get("Tags", "")
    assert all(re.fullmatch(r"[a-z0-9_+\-]+", tag) for tag in tags.split(",") if tag)
    return {
        "topic": request.path.rsplit("/", 1)[1],
        "title": title,
        "message": message,
        "priority": priority,
        "tags": tags,
    }


def gotify_message(request: Received) -> dict[str, Any]:
    """What Gotify would store from `POST /message?token=…` (its JSON `{title, message, priority, extras?}`):
    the body, with the token; AssertionError where Gotify would refuse it."""
    assert request.method == "POST"
    assert request.path.endswith("/message")
    token = parse_qs(request.query).get("token", [request.headers.get("X-Gotify-Key", "")])[0]
    assert token
    assert request.headers["Content-Type"].startswith("application/json")
    document = json.loads(request.body)
    assert isinstance(document, dict)
    assert set(document) <= {"title", "message", "priority", "extras"}
    assert isinstance(document["message"], str)
    assert document["message"]  # Gotify requires a message
    assert isinstance(document.get("title", ""), str)
    priority = document.get("priority", 0)
    assert isinstance(priority, int)
    assert not isinstance(priority, bool)
    assert 0 <= priority <= 10
    return {**document, "token": token}
