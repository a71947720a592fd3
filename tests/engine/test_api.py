"""The gateway client (api.py) against the real gateway: every v1 route, and errors as typed exceptions."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from custom_components.offsite_backup.engine.api import (
    BackupInit,
    GatewayAuthError,
    GatewayClient,
    GatewayConflictError,
    GatewayError,
    GatewayNotFoundError,
    GatewayQuotaError,
    GatewayRateLimitedError,
    GatewayUnavailableError,
)
from custom_components.offsite_backup.engine.uploader import UploadOptions, upload
from tests.engine.rig import MIB, PART, Rig, Source, make_data, make_rig
from tests.helpers.servers import S3Server, free_port

FAST = UploadOptions(retry_base=0.01, retry_cap=0.05)


async def _upload(rig: Rig, size: int, seed: int = 1, name: str = "Nightly") -> tuple[str, Source]:
    source = Source(make_data(size, seed=seed))
    backup = await upload(
        client=rig.client,
        open_stream=source.open,
        size=size,
        name=name,
        metadata={"k": seed},
        options=FAST,
    )
    return backup.id, source


async def test_every_route(rig: Rig) -> None:
    client = rig.client
    instance = await client.get_instance()
    assert instance.name == "home"
    assert instance.limits.part_size == PART
    assert instance.limits.url_ttl == 900
    assert instance.limits.max_backup_bytes > 0

    init = await client.create_backup(name="manual", size=PART + 3, metadata={"a": 1})
    assert init == BackupInit(id=init.id, part_size=PART, part_count=2, url_ttl=900)
    urls = await client.sign_parts(init.id, [2, 1])
    assert sorted(u.part_number for u in urls) == [1, 2]
    assert all(u.expires_at > datetime.now(UTC) for u in urls)
    assert "X-Amz-Signature" not in repr(urls[0])  # URLs are secrets for their lifetime: not in reprs
    assert await client.list_parts(init.id) == []
    pending = await client.get_backup(init.id)
    assert (pending.status, pending.metadata, pending.completed_at) == ("uploading", {"a": 1}, None)
    await client.abort_upload(init.id)
    assert (await client.get_backup(init.id)).status == "failed"

    first, _ = await _upload(rig, 1000, seed=1, name="first")
    second, source = await _upload(rig, 2000, seed=2, name="second")
    listed = await client.list_backups()
    assert [b.id for b in listed] == [second, first]  # completed only, newest first
    assert listed[0].metadata == {"k": 2}
    assert listed[0].sha256 == source.sha256
    link = await client.download_url(second)
    assert link.expires_at > datetime.now(UTC)
    assert await rig.downloaded_sha256(second) == source.sha256
    await client.delete_backup(first)
    with pytest.raises(GatewayNotFoundError):
        await client.get_backup(first)
    assert [b.id for b in await client.list_backups()] == [second]


async def test_a_download_closed_before_its_first_read_frees_its_connection(rig: Rig) -> None:
    """Home Assistant may give up on a download before reading it: the storage connection must come back."""
    backup_id, source = await _upload(rig, PART + 123, seed=4)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one_connection:
        client = GatewayClient(one_connection, rig.gateway.url, rig.token)
        stream = await client.download(backup_id)
        await stream.aclose()  # never read
        assert stream.closed
        async with asyncio.timeout(10):  # with the connection still held, this would wait for ever
            again = b"".join([chunk async for chunk in await client.download(backup_id)])
    assert hashlib.sha256(again).hexdigest() == source.sha256


async def test_download_streams_in_chunks(rig: Rig) -> None:
    backup_id, source = await _upload(rig, PART + 123, seed=3)
    chunks = [chunk async for chunk in await rig.client.download(backup_id, chunk_size=64 * 1024)]
    assert len(chunks) > 10
    assert max(map(len, chunks)) <= 64 * 1024
    assert b"".join(chunks) == source.data


async def test_download_errors_surface_before_streaming(rig: Rig) -> None:
    with pytest.raises(GatewayNotFoundError):
        await rig.client.download("0" * 32)
    init = await rig.client.create_backup(name="x", size=10)
    with pytest.raises(GatewayConflictError) as caught:
        await rig.client.download(init.id)
    assert caught.value.code == "not_completed"
    await rig.client.abort_upload(init.id)
    # storage lost the object: 404 from storage is "not found" too
    backup_id, _ = await _upload(rig, 1000, seed=4)
    for item in rig.s3.client().list_objects_v2(Bucket=rig.bucket).get("Contents", []):
        rig.s3.client().delete_object(Bucket=rig.bucket, Key=item["Key"])
    with pytest.raises(GatewayNotFoundError):
        await rig.client.download(backup_id)


async def test_errors_are_typed_and_carry_the_gateways_code(rig: Rig) -> None:
    client = rig.client
    with pytest.raises(GatewayNotFoundError) as not_found:
        await client.get_backup("f" * 32)
    assert (not_found.value.status, not_found.value.code) == (404, "not_found")

    with pytest.raises(GatewayQuotaError) as quota:
        await client.create_backup(name="huge", size=1 << 50)
    assert (quota.value.status, quota.value.code) == (413, "quota_exceeded")
    assert "limit" in quota.value.message

    with pytest.raises(GatewayError) as invalid:
        await client.create_backup(name="", size=10)
    assert type(invalid.value) is GatewayError
    assert (invalid.value.status, invalid.value.code) == (400, "invalid_request")

    init = await client.create_backup(name="one", size=10)
    with pytest.raises(GatewayConflictError) as conflict:
        await client.create_backup(name="two", size=10)
    assert conflict.value.code == "upload_in_progress"
    assert conflict.value.details == {"backup_id": init.id}  # so a client that lost it can abort it
    await client.abort_upload(init.id)
    with pytest.raises(GatewayConflictError) as not_uploading:
        await client.sign_parts(init.id, [1])
    assert not_uploading.value.code == "not_uploading"


async def test_revoked_token_is_an_auth_error_that_never_shows_the_token(rig: Rig) -> None:
    await rig.gateway.revoke_instance("home")
    with pytest.raises(GatewayAuthError) as caught:
        await rig.client.get_instance()
    err = caught.value
    assert (err.status, err.code) == (401, "unauthorized")
    for text in (str(err), repr(err), repr(rig.client), err.message):
        assert rig.token not in text

    # the uploader lets it through as is, so the integration can start a reauth
    with pytest.raises(GatewayAuthError):
        await upload(
            client=rig.client,
            open_stream=Source(b"x" * 100).open,
            size=100,
            name="b",
            metadata={},
            options=FAST,
        )


async def test_rate_limit_is_unavailable_with_retry_after(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with make_rig(moto_server, moto_bucket, tmp_path, http, INIT_RATE="1") as rig:
        init = await rig.client.create_backup(name="one", size=10)
        await rig.client.abort_upload(init.id)
        with pytest.raises(GatewayRateLimitedError) as caught:
            await rig.client.create_backup(name="two", size=10)
        assert isinstance(caught.value, GatewayUnavailableError)
        assert caught.value.code == "rate_limited"
        assert caught.value.retry_after is not None
        assert caught.value.retry_after > 0


async def test_unreachable_gateway(http: aiohttp.ClientSession) -> None:
    client = GatewayClient(http, f"http://127.0.0.1:{free_port()}/", "secret-token")
    with pytest.raises(GatewayUnavailableError) as caught:
        await client.get_instance()
    assert "Cannot reach the gateway" in caught.value.message
    assert "secret-token" not in repr(caught.value)


async def test_not_a_gateway(http: aiohttp.ClientSession, moto_server: S3Server) -> None:
    client = GatewayClient(http, moto_server.endpoint, "secret-token")  # answers, but not our JSON
    with pytest.raises(GatewayUnavailableError):
        await client.get_instance()


@asynccontextmanager
async def _fake(handler: web.RequestHandler) -> AsyncIterator[str]:  # type: ignore[type-arg]
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_5xx_non_json_and_timeouts_are_unavailable(http: aiohttp.ClientSession) -> None:
    async def broken(request: web.Request) -> web.Response:
        if request.path == "/v1/instance":
            return web.json_response(
                {"error": {"code": "storage_error", "message": "S3 said no"}}, status=502
            )
        if request.path == "/v1/backups":
            return web.Response(status=503, text="<html>Bad Gateway</html>", content_type="text/html")
        if request.path == "/v1/backups/x":
            return web.Response(status=200, text="<html>a login page</html>", content_type="text/html")
        await asyncio.sleep(10)
        return web.Response()

    async with _fake(broken) as url:
        client = GatewayClient(http, url, "tok", timeout=0.5)
        with pytest.raises(GatewayUnavailableError) as storage:
            await client.get_instance()
        assert (storage.value.status, storage.value.code) == (502, "storage_error")
        assert "S3 said no" in storage.value.message
        with pytest.raises(GatewayUnavailableError) as html:
            await client.list_backups()
        assert html.value.status == 503
        with pytest.raises(GatewayUnavailableError, match="not JSON"):
            await client.get_backup("x")
        with pytest.raises(GatewayUnavailableError, match="did not answer"):
            await client.get_backup("slow")


async def test_uploader_rides_out_a_lost_complete_answer(rig: Rig) -> None:
    """The gateway completed, but its answer never came back: the retry's 409 is checked, not failed on."""

    class LosingClient(GatewayClient):
        lost = 0

        async def complete_backup(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            result = await super().complete_backup(*args, **kwargs)  # type: ignore[arg-type]
            if not self.lost:
                self.lost += 1
                raise GatewayUnavailableError("connection reset while reading the answer")
            return result

    client = LosingClient(rig.http, rig.gateway.url, rig.token)
    source = Source(make_data(MIB, seed=5))
    backup = await upload(
        client=client, open_stream=source.open, size=MIB, name="b", metadata={}, options=FAST
    )
    assert client.lost == 1
    assert backup.status == "completed"
    assert backup.sha256 == source.sha256
