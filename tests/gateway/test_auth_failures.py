"""Wrong tokens are counted per source, warned about, and answered 429 past a threshold (issue 14, item 7)."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from offsite_gateway.app import METRICS
from tests.gateway.api import Api
from tests.helpers.gateway import GatewayDatabase, run_gateway
from tests.helpers.servers import S3Server


def failures_metric(text: str) -> dict[str, float]:
    counts = {}
    for line in text.splitlines():
        if line.startswith("offsite_gateway_auth_failures_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('source="')[1].split('"')[0]] = float(value)
    return counts


async def test_wrong_tokens_are_counted_warned_about_and_then_refused(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    database: GatewayDatabase,
) -> None:
    caplog.set_level(logging.INFO)
    now = [1_800_000_000.0]
    async with run_gateway(
        moto_server,
        moto_bucket,
        tmp_path,
        database=database,
        clock=lambda: now[0],
        AUTH_FAILURES_PER_MINUTE="10",
    ) as gateway:
        _, token = await gateway.add_instance("home")
        good = Api(session, gateway.url, token)
        wrong = Api(session, gateway.url, "w" * 43)
        await good.ok("GET", "/v1/instance")
        statuses = [(await wrong.call("GET", "/v1/backups"))[0] for _ in range(10)]
        statuses.append((await Api(session, gateway.url, None).call("GET", "/v1/instance"))[0])  # none at all
        assert statuses == [401] * 10 + [429]
        # Past the threshold the address gets 429, before any token is looked at: the right one too.
        status, body = await good.call("GET", "/v1/instance")
        assert (status, body["error"]["code"]) == (429, "rate_limited"), body
        async with session.get(gateway.url + "/v1/instance", headers=good._headers()) as resp:
            assert resp.status == 429
            assert 1 <= int(resp.headers["Retry-After"]) <= 60
        # Public routes stay open.
        async with session.get(gateway.url + "/healthz") as resp:
            assert resp.status == 200
        metrics = gateway.app[METRICS].render().decode()
        assert failures_metric(metrics) == {"127.0.0.1": 10.0}
        assert 'offsite_gateway_requests_total{method="GET",route="/v1/instance",status="429"} 3.0' in metrics

        # A minute later, the address is welcome again.
        now[0] += 61
        await good.ok("GET", "/v1/instance")

    warnings = [
        record
        for record in caplog.records
        if record.levelno == logging.WARNING and record.name.startswith("offsite_gateway")
    ]
    assert 1 <= len(warnings) <= 2, [record.getMessage() for record in warnings]
    assert "127.0.0.1" in warnings[0].getMessage()
    assert "w" * 43 not in caplog.text
    assert token not in caplog.text


async def test_a_scan_is_throttled_quickly(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """With the default threshold, a burst of wrong tokens is cut short; every existing test stays below it."""
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database) as gateway:
        wrong = Api(session, gateway.url, "x" * 43)
        statuses = [(await wrong.call("GET", "/v1/instance"))[0] for _ in range(150)]
        assert statuses == [401] * 100 + [429] * 50


@pytest.mark.parametrize(
    ("forwarded", "trusted", "source"),
    [
        ("203.0.113.7", "", "127.0.0.1"),  # not trusted: the header is ignored
        ("203.0.113.7", "127.0.0.1", "203.0.113.7"),
        ("198.51.100.1, 203.0.113.7", "127.0.0.0/8", "203.0.113.7"),  # the proxy's own entry is the last one
        ("203.0.113.7, 10.0.0.2", "127.0.0.1, 10.0.0.0/8", "203.0.113.7"),  # two proxies
        ("not an address", "127.0.0.1", "127.0.0.1"),
        ("2001:db8:1:2:aaaa::1", "127.0.0.1", "2001:db8:1:2::/64"),  # IPv6: its /64
    ],
)
async def test_the_source_behind_a_trusted_proxy(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    forwarded: str,
    trusted: str,
    source: str,
    database: GatewayDatabase,
) -> None:
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, TRUSTED_PROXIES=trusted
    ) as gateway:
        headers = {"Authorization": "Bearer nope", "X-Forwarded-For": forwarded}
        async with session.get(gateway.url + "/v1/instance", headers=headers) as resp:
            assert resp.status == 401
        assert failures_metric(gateway.app[METRICS].render().decode()) == {source: 1.0}
