"""/metrics is not for anyone: served on a listener of its own or behind a token the operator sets, never open on
the API's listener; and nothing a request sends adds a series to it (issue 24, A9)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp

from offsite_gateway.app import METRICS
from tests.gateway.api import Api
from tests.helpers.gateway import GatewayDatabase, run_gateway, serve_process
from tests.helpers.servers import S3Server, free_port

TOKEN = "0123456789abcdef-metrics"


async def _get(session: aiohttp.ClientSession, url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with session.get(url, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_metrics_are_off_unless_the_operator_says_where(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """Without METRICS_LISTEN or METRICS_TOKEN: 404, as for any route that is not there; with a token, only the
    token gets them, and wrong tokens count as wrong tokens (throttled like the API's)."""
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database) as gateway:
        status, text = await _get(session, gateway.url + "/metrics")
        assert status == 404
        assert "offsite_gateway" not in text
    async with run_gateway(
        moto_server,
        moto_bucket,
        tmp_path,
        database=database,
        METRICS_TOKEN=TOKEN,
        AUTH_FAILURES_PER_MINUTE="3",
    ) as gateway:
        assert (await _get(session, gateway.url + "/metrics", TOKEN))[0] == 200
        statuses = [
            (await _get(session, gateway.url + "/metrics", token))[0] for token in (None, "x", TOKEN + "x")
        ]
        assert statuses == [401, 401, 401]
        status, text = await _get(session, gateway.url + "/metrics", TOKEN)  # this address is throttled now
        assert status == 429
        assert "offsite_gateway_auth_failures_total" not in text


def test_metrics_on_a_listener_of_their_own(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, database: GatewayDatabase
) -> None:
    """METRICS_LISTEN: /metrics there (with the token if one is set), and no longer on the API's listener; the
    metrics listener serves nothing else of the API."""
    metrics_port = free_port()
    with serve_process(
        moto_server,
        moto_bucket,
        tmp_path,
        database=database,
        METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
        METRICS_TOKEN=TOKEN,
    ) as gateway:
        metrics_url = f"http://127.0.0.1:{metrics_port}"

        async def check() -> None:
            async with aiohttp.ClientSession() as session:
                status, text = await _get(session, metrics_url + "/metrics", TOKEN)
                assert status == 200
                assert "offsite_gateway_requests_total" in text
                assert (await _get(session, metrics_url + "/metrics"))[0] == 401
                assert (await _get(session, metrics_url + "/v1/instance", "any"))[0] == 404
                assert (await _get(session, metrics_url + "/healthz"))[0] == 200
                assert (await _get(session, gateway.url + "/metrics", TOKEN))[0] == 404

        asyncio.run(check())
        assert f"Serving /metrics on http://127.0.0.1:{metrics_port}" in gateway.log()


def _series(text: str) -> set[str]:
    """The series of an exposition: every sample line's name and labels."""
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


async def test_nothing_a_request_sends_adds_a_series(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """Methods of every kind on paths of every kind, wrong tokens from many forwarded addresses: once each kind of
    answer has been seen, the exposition has the same series, however many more such requests come."""
    async with run_gateway(
        moto_server,
        moto_bucket,
        tmp_path,
        database=database,
        TRUSTED_PROXIES="127.0.0.1",
        AUTH_FAILURES_PER_MINUTE="0",
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        await api.upload(b"x")

        async def junk(seed: int) -> None:
            for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND", f"X{seed}"):
                for path in (f"/nowhere/{seed}", "/v1/backups", f"/v1/backups/{seed:032x}/x", "/healthz"):
                    async with session.request(method, gateway.url + path) as resp:
                        await resp.read()
            wrong = {"Authorization": "Bearer nope", "X-Forwarded-For": f"198.51.{seed % 256}.{seed // 256}"}
            async with session.get(gateway.url + "/v1/instance", headers=wrong) as resp:
                assert resp.status == 401

        await junk(0)
        before = _series(gateway.app[METRICS].render().decode())
        for seed in range(1, 61):
            await junk(seed)
        after = _series(gateway.app[METRICS].render().decode())
        assert after == before, sorted(after - before)[:20]
        assert not any(re.search(r"198\.51\.", series) for series in after)
