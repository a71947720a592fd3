"""Whole uploads through the real gateway to moto, verified by downloading them again."""

from __future__ import annotations

import asyncio
import json
import math
import time
import tracemalloc
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from custom_components.offsite_backup.engine.api import BackupInit, GatewayClient
from custom_components.offsite_backup.engine.uploader import (
    UploadError,
    UploadOptions,
    UploadState,
    UploadStreamError,
    upload,
)
from tests.engine.rig import MIB, PART, Progress, Rig, Source, make_data, make_rig
from tests.helpers.gateway import run_gateway
from tests.helpers.servers import S3Server

FAST = UploadOptions(retry_base=0.01, retry_cap=0.05, timeout_base=20)
METADATA = {"backup_id": "abc123", "name": "Nightly", "protected": True, "addons": [{"slug": "x"}]}


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(123_457, id="one-part"),
        pytest.param(3 * PART, id="exact-multiple"),
        pytest.param(2 * PART + 12_345, id="smaller-last-part"),
        pytest.param(PART, id="floor-exactly-5MiB"),
        pytest.param(PART + 1, id="floor-5MiB-then-1-byte"),
    ],
)
async def test_whole_upload_is_byte_identical(rig: Rig, size: int) -> None:
    source = Source(make_data(size, seed=size))
    progress = Progress()
    states: list[dict[str, Any]] = []

    backup = await upload(
        client=rig.client,
        open_stream=source.open,
        size=size,
        name="Nightly",
        metadata=METADATA,
        options=FAST,
        progress=progress,
        on_state=lambda state: states.append(state.to_dict()),
    )

    part_count = math.ceil(size / PART)
    assert backup.status == "completed"
    assert backup.size == size
    assert backup.part_count == part_count
    assert backup.sha256 == source.sha256  # the engine's SHA-256 of the stream reached the gateway
    assert backup.metadata == METADATA
    assert await rig.downloaded_sha256(backup.id) == source.sha256
    assert source.opens == 1
    # each part sent exactly once, the upload completed, nothing left in storage
    assert dict(rig.proxy.puts) == dict.fromkeys(range(1, part_count + 1), 1)
    assert rig.multipart_uploads() == []
    # progress: starts at 0, never goes back, ends at the total
    assert progress.calls[0] == (0, size)
    assert progress.calls[-1] == (size, size)
    assert [done for done, _ in progress.calls] == sorted(done for done, _ in progress.calls)
    # the persisted state is small JSON and lists every acknowledged part at the end
    final = UploadState.from_dict(json.loads(json.dumps(states[-1])))
    assert sorted(final.parts) == list(range(1, part_count + 1))
    assert final.backup_id == backup.id


async def test_urls_are_signed_in_small_batches_just_ahead_of_use(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """9 parts of 5 MiB... would be heavy for moto: 1 MiB parts are not allowed, so use a one-byte last part and a
    narrow batch to see several sign calls, none of them for all parts."""
    async with make_rig(moto_server, moto_bucket, tmp_path, http) as rig:
        size = 4 * PART + 1
        source = Source(make_data(size, seed=3))
        options = UploadOptions(parallel=1, url_batch=2, retry_base=0.01)
        backup = await upload(
            client=rig.client, open_stream=source.open, size=size, name="b", metadata={}, options=options
        )
        assert await rig.downloaded_sha256(backup.id) == source.sha256
        assert rig.client.sign_calls == 3  # [1, 2], [3, 4], [5]
        assert dict(rig.client.signed) == dict.fromkeys(range(1, 6), 1)


@pytest.mark.parametrize(("announced_delta", "words"), [(+1000, "ended after"), (-1000, "more than")])
async def test_stream_ending_early_or_running_long_fails_clearly_and_aborts(
    rig: Rig, announced_delta: int, words: str
) -> None:
    data = make_data(2 * PART + 5000, seed=11)
    source = Source(data)
    size = len(data) + announced_delta

    with pytest.raises(UploadStreamError) as caught:
        await upload(
            client=rig.client, open_stream=source.open, size=size, name="b", metadata={}, options=FAST
        )

    assert words in caught.value.message
    assert str(size) in caught.value.message
    assert caught.value.backup_id is not None
    assert rig.multipart_uploads() == []
    assert (await rig.client.get_backup(caught.value.backup_id)).status == "failed"
    assert await rig.client.list_backups() == []


async def test_stream_raising_fails_clearly_and_aborts(rig: Rig) -> None:
    async def broken() -> Any:
        async def gen() -> Any:
            yield make_data(PART + 10, seed=5)
            raise OSError("disk on fire")

        return gen()

    with pytest.raises(UploadStreamError, match="disk on fire") as caught:
        await upload(
            client=rig.client, open_stream=broken, size=3 * PART, name="b", metadata={}, options=FAST
        )
    assert "Reading the backup failed" in caught.value.message
    assert rig.multipart_uploads() == []


async def test_stream_that_cannot_be_opened_fails_clearly_and_aborts(rig: Rig) -> None:
    async def unopenable() -> Any:
        raise FileNotFoundError("backup.tar is gone")

    with pytest.raises(UploadStreamError, match=r"Opening the backup failed.*backup\.tar is gone") as caught:
        await upload(
            client=rig.client, open_stream=unopenable, size=PART, name="b", metadata={}, options=FAST
        )
    assert caught.value.backup_id is not None
    assert (await rig.client.get_backup(caught.value.backup_id)).status == "failed"
    assert rig.multipart_uploads() == []


class _BadLayoutClient(GatewayClient):
    async def create_backup(self, **kwargs: Any) -> BackupInit:
        init = await super().create_backup(**kwargs)
        return BackupInit(id=init.id, part_size=MIB, part_count=math.ceil(kwargs["size"] / MIB), url_ttl=60)


async def test_layout_below_the_5mib_floor_is_refused_and_aborted(rig: Rig) -> None:
    client = _BadLayoutClient(rig.http, rig.gateway.url, rig.token)
    source = Source(make_data(3 * MIB, seed=2))
    with pytest.raises(UploadError, match="PART_SIZE"):
        await upload(
            client=client, open_stream=source.open, size=3 * MIB, name="b", metadata={}, options=FAST
        )
    assert source.opens == 0
    assert rig.multipart_uploads() == []


async def test_bandwidth_limit_paces_the_upload(rig: Rig) -> None:
    size = PART + MIB
    source = Source(make_data(size, seed=4))
    limit = 8 * MIB
    started = time.monotonic()
    backup = await upload(
        client=rig.client,
        open_stream=source.open,
        size=size,
        name="b",
        metadata={},
        options=UploadOptions(bandwidth_limit=limit, retry_base=0.01),
    )
    elapsed = time.monotonic() - started
    assert elapsed >= 0.9 * size / limit  # 0.75 s at 8 MiB/s
    assert await rig.downloaded_sha256(backup.id) == source.sha256


async def test_progress_is_throttled(rig: Rig) -> None:
    size = 3 * PART
    progress = Progress()
    options = UploadOptions(parallel=1, progress_interval=3600, progress_step=0.5, retry_base=0.01)
    await upload(
        client=rig.client,
        open_stream=Source(make_data(size)).open,
        size=size,
        name="b",
        metadata={},
        options=options,
        progress=progress,
    )
    # parts are 1/3 each: a report needs half the total since the last one, or the end
    assert progress.calls == [(0, size), (2 * PART, size), (size, size)]


async def test_memory_stays_near_parallel_plus_one_parts(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Python allocations while uploading 6 parts with 2 in flight stay under 3 parts (+ 3 MiB slack)."""
    size = 6 * PART
    data = make_data(size, seed=9)

    async def open_stream() -> Any:
        async def gen() -> Any:
            view = memoryview(data)
            for offset in range(0, size, 64 * 1024):
                yield view[offset : offset + 64 * 1024]  # no copies of the source

        return gen()

    # no proxy here: it would buffer bodies in this process too
    async with run_gateway(moto_server, moto_bucket, tmp_path, PART_SIZE=str(PART)) as gateway:
        _, token = await gateway.add_instance("home")
        client = GatewayClient(http, gateway.url, token)
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            backup = await upload(
                client=client,
                open_stream=open_stream,
                size=size,
                name="b",
                metadata={},
                options=UploadOptions(parallel=2, retry_base=0.01),
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert backup.size == size
        assert peak - base < 3 * PART + 3 * MIB, f"{(peak - base) / MIB:.1f} MiB"


async def test_cancel_stops_promptly_and_aborts(rig: Rig) -> None:
    from tests.engine.proxy import stall  # noqa: PLC0415

    rig.proxy.fail(2, stall(60))
    source = Source(make_data(3 * PART, seed=8))
    task = asyncio.create_task(
        upload(client=rig.client, open_stream=source.open, size=3 * PART, name="b", metadata={}, options=FAST)
    )
    await asyncio.wait_for(rig.proxy.arrived[2].wait(), 20)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 2.0
    assert rig.multipart_uploads() == []


def _parts(numbers: Iterable[int]) -> dict[int, int]:
    return dict.fromkeys(numbers, 1)
