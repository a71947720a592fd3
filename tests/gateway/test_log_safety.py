"""Logs written on an attacker's behalf: short, rate-limited, escaped, and never a secret (issue 14, item 2)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.gateway.raw import exchange, request_bytes
from tests.helpers.gateway import RunningGateway

FORMATTER = logging.Formatter("%(levelname)s %(name)s: %(message)s")


def everything_logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record as a handler would write it, tracebacks included."""
    return "\n".join(FORMATTER.format(record) for record in caplog.records)


def server_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the gateway and its HTTP server logged (not the test's client, nor asyncio's debug mode)."""
    return [record for record in caplog.records if record.name.startswith(("offsite_gateway", "aiohttp"))]


@pytest.fixture(autouse=True)
def _capture_everything(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


def nasty_requests(token: str) -> list[bytes]:
    """Requests that carry the token in ways a parser may choke on (and then quote)."""
    secret = token.encode()
    header = b"Authorization: Bearer " + secret
    return [
        request_bytes("GET", "/v1/instance", raw_headers=header + b"\x01\r\n"),
        request_bytes("GET", "/v1/instance", raw_headers=header + b"\x00\r\n"),
        request_bytes("GET", "/v1/instance", raw_headers=header + b"\x7f\r\n"),
        request_bytes("GET", "/v1/instance", raw_headers=header + b"\x1b[2J\r\n"),
        request_bytes("GET", "/v1/instance", raw_headers=header + b"\rX: y\r\n"),
        request_bytes("GET", "/v1/instance", raw_headers=header + b"\xff\r\n"),
        request_bytes("GET", "/v1/instance", raw_headers=b"Authorization: Bearer\r\n " + secret + b"\r\n"),
        request_bytes("GET", "/v1/instance", raw_headers=header + b" " + b"x" * 9000 + b"\r\n"),
        request_bytes("GET", "/v1/instance", raw_headers=b"X-" + secret + b"\x01: 1\r\n"),
        request_bytes("GET", "/v1/instance", raw_headers=b"Bad Header " + secret + b"\r\n"),
        b"GET /v1/" + secret + b"\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/instance?token=" + secret + b" HTTP/1.1\r\n" + header + b"\x01\r\n\r\n",
        b"GET /v1/instance HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
        + header
        + b"\r\n\r\n"
        + secret
        + b"\r\n",
    ]


async def test_a_token_never_reaches_the_log(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    _, token = await gateway.add_instance("home")
    for data in nasty_requests(token):
        answer = await exchange(gateway.url, data)
        assert 400 <= answer.status < 500, (data[:80], answer)
    logged = everything_logged(caplog)
    assert logged  # the requests were logged (access log, protocol errors): just not the token
    assert token not in logged
    assert token[:20] not in logged


async def test_protocol_errors_are_one_short_rate_limited_line(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    junk = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"\x01" * 2000 + b"\r\n\r\n"
    sent = 0
    for _ in range(10):
        answers = await asyncio.gather(*(exchange(gateway.url, junk) for _ in range(20)))
        assert {answer.status for answer in answers} == {400}
        sent += 20 * len(junk)
    records = server_records(caplog)
    assert records, "a protocol error is worth one line"
    assert len(records) <= 3, [record.getMessage() for record in records]
    for record in records:
        assert record.exc_info is None
        assert record.levelno <= logging.WARNING
        assert len(record.getMessage()) < 200
        assert "\x01" not in record.getMessage()
    assert sum(len(FORMATTER.format(record)) for record in records) < sent / 1000


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        # %0A would end the line: a forged DELETE of another instance's backup on a line of its own.
        (
            "/v1/backups/x%0A127.0.0.1%20%22DELETE%20/v1/backups/0f0f%20HTTP/1.1%22%20204",
            "/v1/backups/x%0A127.0.0.1%20%22DELETE%20/v1/backups/0f0f%20HTTP/1.1%22%20204",
        ),
        ("/v1/x%1B%5B2J%1B%5B31mred", "/v1/x%1B%5B2J%1B%5B31mred"),  # terminal escape sequences
        ("/v1/x%0D%00%7F%C2%85%E2%80%A8", "/v1/x%0D%00%7F%C2%85%E2%80%A8"),
        ('/v1/a"b\\c', '/v1/a\\"b\\\\c'),
    ],
)
async def test_the_access_log_shows_the_raw_path_escaped(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture, path: str, shown: str
) -> None:
    data = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    answer = await exchange(gateway.url, data)
    assert answer.status in (400, 401, 404), answer
    lines = [record.getMessage() for record in caplog.records if record.name == "offsite_gateway.access"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.isprintable(), repr(line)
    assert line.isascii(), repr(line)
    assert f'"GET {shown} HTTP/1.1"' in line, line


async def test_a_request_line_the_server_cannot_parse_is_not_written_at_all(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    data = "GET /v1/caf\u00e9\u2028\u0085\x1b[2J HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    answer = await exchange(gateway.url, data)
    assert answer.status == 400
    records = server_records(caplog)
    assert [record.name for record in records] == ["offsite_gateway.server"]  # no access line: one warning
    message = records[0].getMessage()
    assert message.isprintable()
    assert message.isascii()
    assert "caf" not in message
