"""Wrong tokens are counted per source, warned about, and answered 429 past a threshold (issue 14, item 7)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import aiohttp
import pytest

from offsite_gateway.app import AUTH_FAILURES, METRICS
from tests.gateway.api import Api
from tests.helpers.gateway import GatewayDatabase, run_gateway
from tests.helpers.servers import S3Server


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
        assert "offsite_gateway_auth_failures_total 10.0" in metrics  # one series: no label per source
        assert gateway.app[AUTH_FAILURES].recent(now[0]) == {"127.0.0.1": 10}
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
        ("2001:db8:1:2:aaaa::1", "127.0.0.1", "2001:db8:1:2::/64"),  # IPv6: its /64
        # The forms proxies write besides a bare address (issue 24, A8): never the proxy's own address.
        ("203.0.113.7:51234", "127.0.0.1", "203.0.113.7"),
        ("[2001:db8:1:2:aaaa::1]", "127.0.0.1", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2:aaaa::1]:51234", "127.0.0.1", "2001:db8:1:2::/64"),
        ("[::ffff:203.0.113.7]:443", "127.0.0.1", "203.0.113.7"),
        ("203.0.113.7:51234, 10.0.0.2:8080", "127.0.0.1, 10.0.0.0/8", "203.0.113.7"),
        ("203.0.113.7, ", "127.0.0.1", "203.0.113.7"),  # an empty entry is none (HTTP's list syntax)
        # What is not an address is the client as the proxy named it: a source of its own.
        ("not an address", "127.0.0.1", "forwarded:not an address"),
        ("unknown", "127.0.0.1", "forwarded:unknown"),
        ("203.0.113.7:port", "127.0.0.1", "forwarded:203.0.113.7:port"),
        ("[2001:db8::1", "127.0.0.1", "forwarded:[2001:db8::1"),
        ("x" * 500, "127.0.0.1", "forwarded:" + "x" * 64),
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
        assert gateway.app[AUTH_FAILURES].recent(time.time()) == {source: 1}


async def test_one_clients_garbage_never_throttles_the_proxys_other_clients(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """Behind a trusted proxy, a burst of wrong tokens from a client the proxy names by `IP:port`, `[IPv6]:port`
    or junk gets that client 429, and the proxy's other clients (and the proxy itself) go on."""
    async with run_gateway(
        moto_server,
        moto_bucket,
        tmp_path,
        database=database,
        TRUSTED_PROXIES="127.0.0.1",
        AUTH_FAILURES_PER_MINUTE="5",
    ) as gateway:
        _, token = await gateway.add_instance("home")
        for attacker in ("198.51.100.9:40000", "[2001:db8:9::9]:40000", "garbage"):
            wrong = {"Authorization": "Bearer nope", "X-Forwarded-For": attacker}
            statuses = []
            for _ in range(6):
                async with session.get(gateway.url + "/v1/instance", headers=wrong) as resp:
                    statuses.append(resp.status)
            assert statuses == [401] * 5 + [429], attacker
        for client in ("198.51.100.10:40000", "[2001:db8:10::1]:1", "203.0.113.1", None):
            headers = {"Authorization": f"Bearer {token}"}
            if client is not None:
                headers["X-Forwarded-For"] = client
            async with session.get(gateway.url + "/v1/instance", headers=headers) as resp:
                assert resp.status == 200, client
