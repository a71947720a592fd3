"""/healthz, /readyz, /metrics, the access log, and the SQLite file's mode (migrations: test_store.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import re
import stat
from pathlib import Path

import aiohttp
import pytest

from offsite_gateway.app import STORAGE, STORE
from offsite_gateway.storage import StorageError
from offsite_gateway.store import SQLiteStore
from tests.gateway.api import Api
from tests.helpers.gateway import GatewayDatabase, RunningGateway, run_gateway
from tests.helpers.servers import S3Server, free_port


async def test_healthz(gateway: RunningGateway, session: aiohttp.ClientSession) -> None:
    async with session.get(gateway.url + "/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_healthz_is_liveness_and_reveals_nothing(
    moto_server: S3Server,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """Storage down: the process still lives; nobody is told where storage is."""
    async with (
        run_gateway(moto_server, "no-such-bucket-here", tmp_path, database=database) as gateway,
        session.get(gateway.url + "/healthz") as resp,
    ):
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_readyz_reports_unreachable_storage_without_internals(
    moto_server: S3Server,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    database: GatewayDatabase,
) -> None:
    async with (
        run_gateway(moto_server, "no-such-bucket-here", tmp_path, database=database) as gateway,
        session.get(gateway.url + "/readyz") as resp,
    ):
        assert resp.status == 503
        text = await resp.text()
    assert json.loads(text) == {
        "status": "unavailable",
        "checks": {"database": "ok", "storage": "unavailable"},
    }
    for internal in (
        "no-such-bucket-here",
        moto_server.endpoint,
        "127.0.0.1",
        "head_bucket",
        "404",
        "testing",
    ):
        assert internal not in text
    # The operator finds the details in the log.
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("offsite_gateway"))
    assert "head_bucket" in logged
    assert "testing" not in logged  # no credential


async def test_readyz_reports_a_broken_database(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    store = gateway.app[STORE]
    await store.close()
    try:
        async with session.get(gateway.url + "/readyz") as resp:
            assert resp.status == 503
            body = await resp.json()
        assert body == {"status": "unavailable", "checks": {"database": "unavailable", "storage": "ok"}}
    finally:
        await store.open()


async def test_readyz_probes_storage_once_per_few_seconds(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    database: GatewayDatabase,
) -> None:
    now = [1_800_000_000.0]
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, clock=lambda: now[0]
    ) as gateway:
        storage = gateway.app[STORAGE]
        real_head_bucket = storage.head_bucket
        calls: list[float] = []

        broken: list[bool] = []

        async def counted() -> None:  # the real call, counted (or, once `broken`, storage refusing)
            calls.append(now[0])
            await asyncio.sleep(0.05)  # concurrent probes share the one in flight
            if broken:
                raise StorageError("head_bucket", "NoSuchBucket (HTTP 404): gone", "NoSuchBucket")
            await real_head_bucket()

        monkeypatch.setattr(storage, "head_bucket", counted)

        async def ready() -> int:
            async with session.get(gateway.url + "/readyz") as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(ready() for _ in range(300)))
        statuses += [await ready() for _ in range(200)]
        assert set(statuses) == {200}
        assert len(calls) == 1
        now[0] += 4
        assert await ready() == 200
        assert len(calls) == 1
        now[0] += 2
        assert await ready() == 200
        assert len(calls) == 2
        # A failure is cached the same way: a probe each few seconds, not one per caller.
        broken.append(True)
        now[0] += 6
        assert [await ready() for _ in range(50)] == [503] * 50
        assert len(calls) == 3


async def test_authenticated_502s_do_not_echo_storage_internals(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/under/a/path"  # nothing listens there
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, S3_ENDPOINT=endpoint
    ) as gateway:
        instance_id, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        status, body = await api.call("POST", "/v1/backups", {"name": "n", "size": 10})
    assert (status, body["error"]["code"]) == (502, "storage_error"), body
    text = json.dumps(body)
    for internal in (endpoint, "127.0.0.1", "/under/a/path", moto_bucket, instance_id, "Cannot connect"):
        assert internal not in text, internal


METRICS_TOKEN = "m" * 16 + "-scraper-secret"


async def test_metrics(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, METRICS_TOKEN=METRICS_TOKEN
    ) as gateway:
        await _metrics_counted(gateway, session)


async def _metrics_counted(gateway: RunningGateway, session: aiohttp.ClientSession) -> None:
    _, token = await gateway.add_instance("home")
    api = Api(session, gateway.url, token)
    await api.upload(b"x" * 1234)
    init = await api.init(10)
    await api.sign(init["id"], [1])
    await api.call("GET", "/v1/backups/whatever")
    headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    async with session.get(gateway.url + "/metrics", headers=headers) as resp:
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


async def test_the_database_is_private_to_its_owner(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # the usual one: files world-readable unless the program says otherwise
    try:
        path = tmp_path / "new" / "gateway.sqlite3"
        store = SQLiteStore(path)
        await store.open()
        await store.ping()
        store.conn.execute("CREATE TABLE scratch (x)")  # a write: the WAL and its index exist now
        files = sorted(path.parent.glob("gateway.sqlite3*"))
        assert [file.name for file in files] == [
            "gateway.sqlite3",
            "gateway.sqlite3-shm",
            "gateway.sqlite3-wal",
        ]
        for file in files:
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        await store.close()
    finally:
        os.umask(old_umask)


async def test_the_root_is_a_small_page_that_reveals_nothing(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    """Home Assistant's device page links the gateway's address ("Visit"): a page naming the service and linking
    its documentation, not a 404; no version of anything, no setting, no state (issue 24, B2)."""
    async with session.get(gateway.url + "/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
        headers = resp.headers
    assert "Offsite Backup gateway" in page
    assert 'href="https://github.com/offsite-backup/offsite-backup"' in page
    manifest = json.loads(
        (Path(__file__).parents[2] / "custom_components/offsite_backup/manifest.json").read_text()
    )
    versions = {manifest["version"], aiohttp.__version__, platform.python_version(), "0.1.0"}
    for text in (page, str(dict(headers))):
        assert not any(version in text for version in versions), text
        assert not re.search(r"\d+\.\d+", text.replace("width=device-width, initial-scale=1", "")), text
    settings = gateway.settings
    for internal in (settings.s3_bucket, str(settings.s3_endpoint), "sqlite", "postgres", "moto"):
        assert internal not in page.lower()
    assert headers["Server"] == "offsite-gateway"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "<script" not in page.lower()
