"""/healthz, /metrics and the access log."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from offsite_gateway.app import STORE
from tests.gateway.api import Api
from tests.helpers.gateway import GatewayDatabase, RunningGateway, run_gateway
from tests.helpers.servers import S3Server


async def test_healthz(gateway: RunningGateway, session: aiohttp.ClientSession) -> None:
    async with session.get(gateway.url + "/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_healthz_reports_unreachable_storage(
    moto_server: S3Server, tmp_path: Path, session: aiohttp.ClientSession, database: GatewayDatabase
) -> None:
    async with (
        run_gateway(moto_server, "no-such-bucket-here", tmp_path, database=database) as gateway,
        session.get(gateway.url + "/healthz") as resp,
    ):
        assert resp.status == 503
        body = await resp.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert "head_bucket" in body["checks"]["storage"]
    assert "testing" not in body["checks"]["storage"]  # no credential


async def test_healthz_reports_a_broken_database(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    store = gateway.app[STORE]
    await store.close()
    try:
        async with session.get(gateway.url + "/healthz") as resp:
            assert resp.status == 503
            body = await resp.json()
        assert body["checks"]["database"] != "ok"
        assert body["checks"]["storage"] == "ok"
    finally:
        await store.open()


async def test_metrics(gateway: RunningGateway, session: aiohttp.ClientSession) -> None:
    _, token = await gateway.add_instance("home")
    api = Api(session, gateway.url, token)
    await api.upload(b"x" * 1234)
    init = await api.init(10)
    await api.sign(init["id"], [1])
    await api.call("GET", "/v1/backups/whatever")
    async with session.get(gateway.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    assert (
        'offsite_gateway_requests_total{method="POST",route="/v1/backups/{id}/parts",status="200"} 2.0'
        in text
    )
    assert 'offsite_gateway_requests_total{method="GET",route="/v1/backups/{id}",status="404"} 1.0' in text
    assert "offsite_gateway_part_urls_signed_total 2.0" in text
    assert "offsite_gateway_bytes_completed_total 1234.0" in text
    assert "offsite_gateway_backups_completed_total 1.0" in text
    assert "offsite_gateway_uploads_in_progress 1.0" in text
    assert "offsite_gateway_request_duration_seconds_bucket" in text


async def test_logs_hold_no_token_and_no_signature(
    gateway: RunningGateway, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="offsite_gateway")
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    _, token = await gateway.add_instance("home")
    api = Api(session, gateway.url, token)
    backup = await api.upload(b"secret data")
    download = await api.ok("POST", f"/v1/backups/{backup['id']}/download")
    await Api(session, gateway.url, token + "x").call("GET", "/v1/instance")
    await api.call("GET", "/v1/backups/x?token=" + token)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert '"POST /v1/backups HTTP/1.1" 201' in logged
    assert '"GET /v1/backups/x HTTP/1.1" 404' in logged
    assert token not in logged
    assert "X-Amz-Signature" not in logged
    assert download["url"].split("?")[1] not in logged
