"""The gateway client against answers a real gateway never gives (a proxy, a wrong URL, a broken deployment).

A misbehaving server is the one thing that cannot be had from the real gateway, so a small aiohttp app on
127.0.0.1 plays it: every route answers what the test asks for.
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from custom_components.offsite_backup.engine.api import (
    CompletedPart,
    GatewayClient,
    GatewayError,
    GatewayUnavailableError,
    parse_retry_after,
)

CALLS: list[tuple[str, Callable[[GatewayClient], Awaitable[Any]]]] = [
    ("instance", lambda c: c.get_instance()),
    ("create", lambda c: c.create_backup(name="n", size=1, sha256="0" * 64)),
    ("sign", lambda c: c.sign_parts("b", [1])),
    ("list_parts", lambda c: c.list_parts("b")),
    ("complete", lambda c: c.complete_backup("b", [CompletedPart(1, '"e"')], sha256="0" * 64)),
    ("list", lambda c: c.list_backups()),
    ("get", lambda c: c.get_backup("b")),
    ("download_url", lambda c: c.download_url("b")),
]

SHAPES: dict[str, Any] = {  # well-formed JSON of the wrong shape for each route
    "instance": {"id": "i", "name": "n", "limits": {"part_size": "big"}},
    "create": {"id": "b", "part_size": 5, "part_count": "one"},
    "sign": {"parts": [{"part_number": 1}]},
    "list_parts": {"parts": "none"},
    "complete": {"backup": {"id": 3}},
    "list": {"backups": [{"id": "b"}]},
    "get": {"backup": []},
    "download_url": {"url": "http://x", "expires_at": "yesterday"},
}


class Misbehaving:
    """Answers every request with ``status`` and ``body`` (bytes, or JSON-encoded otherwise)."""

    def __init__(self) -> None:
        self.status = 200
        self.body: Any = b""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        body = self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()
        return web.Response(status=self.status, body=body, content_type="application/json")


@pytest.fixture
async def server() -> AsyncIterator[tuple[Misbehaving, str]]:
    fake = Misbehaving()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield fake, f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[name for name, _ in CALLS])
async def test_wrong_shapes_are_unavailable_not_crashes(
    server: tuple[Misbehaving, str], http: aiohttp.ClientSession, name: str, call: Any
) -> None:
    fake, url = server
    fake.status = 201 if name == "create" else 200
    fake.body = SHAPES[name]
    with pytest.raises(GatewayUnavailableError, match="unexpected body"):
        await call(GatewayClient(http, url, "secret-token"))


@pytest.mark.parametrize(("name", "call"), CALLS, ids=[name for name, _ in CALLS])
async def test_not_json_is_unavailable(
    server: tuple[Misbehaving, str], http: aiohttp.ClientSession, name: str, call: Any
) -> None:
    fake, url = server
    fake.status = 201 if name == "create" else 200
    fake.body = b"<html>a captive portal</html>"
    with pytest.raises(GatewayUnavailableError, match="not JSON"):
        await call(GatewayClient(http, url, "secret-token"))


async def test_an_unexpected_success_status(
    server: tuple[Misbehaving, str], http: aiohttp.ClientSession
) -> None:
    fake, url = server
    fake.status = 202
    fake.body = {}
    with pytest.raises(GatewayError, match="unexpected HTTP 202"):
        await GatewayClient(http, url, "t").get_instance()


async def test_download_from_storage_that_fails(
    server: tuple[Misbehaving, str], http: aiohttp.ClientSession
) -> None:
    """The gateway signs a GET to a storage that answers 500, or is not there at all."""
    from tests.helpers.servers import free_port  # noqa: PLC0415

    fake, url = server
    fake.body = {"url": f"{url}/bucket/object?X-Amz-Signature=s", "expires_at": "2030-01-01T00:00:00Z"}
    client = GatewayClient(http, url, "t")
    fake.status = 200
    # The same fake answers the GET with JSON: a 200 from "storage" streams whatever it holds.
    stream = await client.download("b")
    assert b"".join([chunk async for chunk in stream]).startswith(b"{")
    fake.body = {
        "url": f"http://127.0.0.1:{free_port()}/o?X-Amz-Signature=secret",
        "expires_at": "2030-01-01T00:00:00Z",
    }
    with pytest.raises(GatewayUnavailableError, match="Cannot reach storage") as err:
        await client.download("b")
    assert "secret" not in str(err.value)


def test_one_retry_after_parser_for_the_gateway_and_storage() -> None:
    """Delay-seconds or an HTTP date (RFC 9110); junk, negatives and infinities are no delay to honour."""
    in_a_minute = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert 55 <= (parse_retry_after(in_a_minute) or 0) <= 60
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: at once
    for junk in (None, "", "soon", "inf", "nan", "Wed, 21 Oct 2015 07:28:00"):
        assert parse_retry_after(junk) is None, junk
