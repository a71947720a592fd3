"""URL expiry for real: SeaweedFS, a real S3 server, checks presigned signatures and expiry; the gateway signs for 3 s."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from custom_components.offsite_backup.engine.uploader import UploadOptions, upload
from tests.engine.proxy import delay
from tests.engine.rig import MIB, PART, Rig, Source, make_data, make_rig
from tests.helpers.servers import S3Server

OPTIONS = UploadOptions(parallel=1, retry_base=0.01, retry_cap=0.05, timeout_base=30)
SIZE = 2 * PART + MIB  # 3 parts


@pytest.fixture
async def sw_rig(
    seaweedfs_server: S3Server, seaweedfs_bucket: str, tmp_path: Path, http: aiohttp.ClientSession
) -> AsyncIterator[Rig]:
    async with make_rig(seaweedfs_server, seaweedfs_bucket, tmp_path, http, URL_TTL="3") as made:
        yield made


async def test_part_reaching_storage_after_its_url_expired_is_signed_again(sw_rig: Rig) -> None:
    rig = sw_rig
    rig.proxy.fail(2, delay(4.5))  # part 2's first PUT reaches storage 4.5 s after it was sent
    source = Source(make_data(SIZE, seed=41))

    backup = await upload(
        client=rig.client, open_stream=source.open, size=SIZE, name="b", metadata={}, options=OPTIONS
    )

    assert rig.proxy.upstream_status[2] == [403, 200]  # storage itself refused the expired URL
    assert rig.client.signed[2] == 2  # signed again after the 403
    assert rig.client.signed[1] == rig.client.signed[3] == 1
    assert await rig.downloaded_sha256(backup.id) == source.sha256
    assert rig.multipart_uploads() == []


async def test_urls_grown_old_while_the_stream_is_slow_are_signed_again_before_use(sw_rig: Rig) -> None:
    rig = sw_rig
    # the stream pauses 4 s after part 1: part 2's URL (fetched with part 1's batch) is past its lifetime by then
    source = Source(make_data(SIZE, seed=42), pause_after={PART: 4.0})

    backup = await upload(
        client=rig.client, open_stream=source.open, size=SIZE, name="b", metadata={}, options=OPTIONS
    )

    assert all(statuses == [200] for statuses in rig.proxy.upstream_status.values())  # no 403 at all
    assert rig.client.signed[2] == 2
    assert await rig.downloaded_sha256(backup.id) == source.sha256


async def test_seaweedfs_refuses_a_tampered_url(sw_rig: Rig, http: aiohttp.ClientSession) -> None:
    """The expiry test above is meaningful only if this storage really checks the URLs."""
    rig = sw_rig
    init = await rig.client.create_backup(name="b", size=10)
    (part,) = await rig.client.sign_parts(init.id, [1])
    tampered = part.url.replace("partNumber=1", "partNumber=2")
    async with http.put(tampered, data=b"0123456789") as resp:
        assert resp.status == 403
        assert b"SignatureDoesNotMatch" in await resp.read()
    async with http.put(part.url, data=b"0123456789") as resp:
        assert resp.status == 200
    await rig.client.abort_upload(init.id)
