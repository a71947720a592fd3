"""Resume after a crash half-way: only what storage does not hold is sent again, and the result is identical."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from custom_components.offsite_backup.engine.api import GatewayClient
from custom_components.offsite_backup.engine.uploader import SUSPEND, UploadOptions, UploadState, upload
from tests.engine.proxy import FaultProxy, stall
from tests.engine.rig import MIB, PART, Progress, Rig, Source, make_data, make_rig
from tests.helpers.servers import S3Server

OPTIONS = UploadOptions(parallel=2, retry_base=0.01, retry_cap=0.05, timeout_base=20)
SIZE = 4 * PART + MIB  # 5 parts


async def _crash_half_way(rig: Rig, source: Source) -> list[dict[str, Any]]:
    """Upload until parts 1, 2, 3 and 5 are acknowledged while part 4 hangs, then stop dead (no abort).

    Returns every state snapshot as the integration would have persisted it (through JSON).
    """
    rig.proxy.fail(4, stall(60))
    snapshots: list[dict[str, Any]] = []
    four_acked = asyncio.Event()

    def persist(state: UploadState) -> None:
        snapshots.append(json.loads(json.dumps(state.to_dict())))
        if len(state.parts) >= 4:
            four_acked.set()

    task = asyncio.create_task(
        upload(
            client=rig.client,
            open_stream=source.open,
            size=SIZE,
            name="b",
            metadata={},
            options=OPTIONS,
            on_state=persist,
        )
    )
    await asyncio.wait_for(asyncio.gather(four_acked.wait(), rig.proxy.arrived[4].wait()), 30)
    task.cancel(SUSPEND)  # like Home Assistant dying: in-flight part 4 is cut, nothing is aborted
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(snapshots[-1]["parts"], key=lambda p: p[0]) == snapshots[-1]["parts"]
    assert [n for n, _ in snapshots[-1]["parts"]] == [1, 2, 3, 5]
    assert len(rig.multipart_uploads()) == 1  # still there, ready to be resumed
    return snapshots


async def test_resume_sends_only_what_storage_lacks_and_is_byte_identical(rig: Rig) -> None:
    data = make_data(SIZE, seed=31)
    snapshots = await _crash_half_way(rig, Source(data))
    # take an older snapshot: parts 3 and 5 reached storage after it was persisted
    saved = next(s for s in snapshots if len(s["parts"]) == 2)
    acknowledged = {n for n, _ in saved["parts"]}
    rig.proxy.reset_counts()
    rig.proxy.plan.clear()

    source = Source(data, seed=99)  # a reopened stream, chunked differently
    progress = Progress()
    backup = await upload(
        client=rig.client,
        open_stream=source.open,
        size=SIZE,
        name="b",
        metadata={},
        options=OPTIONS,
        progress=progress,
        state=UploadState.from_dict(saved),
    )

    assert backup.id == saved["backup_id"]
    assert source.opens == 1
    assert source.served == SIZE  # read past the held parts
    assert not any(rig.proxy.puts[n] for n in acknowledged)  # no acknowledged part sent again
    assert dict(rig.proxy.puts) == {4: 1}  # only the part storage lacked
    assert backup.sha256 == source.sha256
    assert await rig.downloaded_sha256(backup.id) == source.sha256
    assert progress.calls[-1] == (SIZE, SIZE)
    assert rig.multipart_uploads() == []


async def test_resume_resends_a_held_part_whose_bytes_changed(rig: Rig) -> None:
    data = make_data(SIZE, seed=32)
    snapshots = await _crash_half_way(rig, Source(data))
    rig.proxy.reset_counts()
    rig.proxy.plan.clear()
    changed = bytearray(data)
    changed[PART + 100] ^= 0x55  # part 2 differs now: its MD5 no longer matches storage's ETag
    source = Source(bytes(changed))

    backup = await upload(
        client=rig.client,
        open_stream=source.open,
        size=SIZE,
        name="b",
        metadata={},
        options=OPTIONS,
        state=UploadState.from_dict(snapshots[-1]),
    )

    assert dict(rig.proxy.puts) == {2: 1, 4: 1}
    assert await rig.downloaded_sha256(backup.id) == source.sha256


async def test_stale_state_starts_a_new_upload(rig: Rig) -> None:
    data = make_data(SIZE, seed=33)
    snapshots = await _crash_half_way(rig, Source(data))
    old = UploadState.from_dict(snapshots[-1])
    await rig.client.abort_upload(old.backup_id)  # e.g. the gateway's sweeper gave up on it
    rig.proxy.reset_counts()
    rig.proxy.plan.clear()
    source = Source(data)

    backup = await upload(
        client=rig.client,
        open_stream=source.open,
        size=SIZE,
        name="b",
        metadata={},
        options=OPTIONS,
        state=old,
    )

    assert backup.id != old.backup_id
    assert dict(rig.proxy.puts) == dict.fromkeys(range(1, 6), 1)
    assert await rig.downloaded_sha256(backup.id) == source.sha256


async def test_a_backup_completed_while_its_answer_was_lost_is_not_sent_again(rig: Rig) -> None:
    """Stopped during complete: the gateway completed it, the answer never came. The resume asks the gateway."""
    data = make_data(SIZE, seed=34)
    source = Source(data)
    snapshots: list[dict[str, Any]] = []
    async with FaultProxy(rig.gateway.url) as front:
        client = GatewayClient(rig.http, front.url, rig.token)
        task = asyncio.create_task(
            upload(
                client=client,
                open_stream=source.open,
                size=SIZE,
                name="b",
                metadata={},
                options=OPTIONS,
                on_state=lambda state: snapshots.append(state.to_dict()),
            )
        )
        async with asyncio.timeout(30):
            while not snapshots or len(snapshots[-1]["parts"]) < 5:
                await asyncio.sleep(0.01)
        complete = f"/v1/backups/{snapshots[-1]['backup_id']}/complete"
        front.answer_late("POST", complete, 30)  # the gateway completes it; its answer is held
        async with asyncio.timeout(30):
            await front.held[("POST", complete)].wait()
        task.cancel(SUSPEND)  # Home Assistant stops now
        with pytest.raises(asyncio.CancelledError):
            await task
    rig.proxy.reset_counts()
    progress = Progress()
    resumed = Source(data)

    backup = await upload(
        client=rig.client,
        open_stream=resumed.open,
        size=SIZE,
        name="b",
        metadata={},
        options=OPTIONS,
        progress=progress,
        state=UploadState.from_dict(snapshots[-1]),
    )

    assert backup.id == snapshots[-1]["backup_id"]
    assert backup.status == "completed"
    assert resumed.opens == 0, "nothing was read again"
    assert dict(rig.proxy.puts) == {}, "nothing was sent again"
    assert progress.calls[-1] == (SIZE, SIZE)
    assert [b.id for b in await rig.client.list_backups()] == [backup.id]


def test_state_round_trips_and_rejects_garbage() -> None:
    state = UploadState("id1", size=11 * MIB, part_size=5 * MIB, part_count=3, url_ttl=900, parts={2: '"e2"'})
    assert UploadState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert state.acknowledged_bytes == 5 * MIB
    with pytest.raises(ValueError, match="version"):
        UploadState.from_dict({**state.to_dict(), "version": 99})
    with pytest.raises(ValueError, match="inconsistent"):
        UploadState.from_dict({**state.to_dict(), "part_count": 7})
    with pytest.raises(ValueError, match="not an upload state"):
        UploadState.from_dict({"version": 1})


async def test_resume_against_storage_whose_etags_are_not_md5s(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SSE-KMS, SSE-C and several S3-compatible servers give ETags that are not the part's MD5.

    Storage's held parts are then trusted as they are; the SHA-256 recorded must still be the whole stream's.
    """
    async with make_rig(moto_server, moto_bucket, tmp_path, http, opaque_etags=True) as rig:
        data = make_data(SIZE, seed=34)
        snapshots = await _crash_half_way(rig, Source(data))
        assert all(etag.endswith('-kms"') for _, etag in snapshots[-1]["parts"])
        rig.proxy.reset_counts()
        rig.proxy.plan.clear()
        source = Source(data, seed=98)

        backup = await upload(
            client=rig.client,
            open_stream=source.open,
            size=SIZE,
            name="b",
            metadata={},
            options=OPTIONS,
            state=UploadState.from_dict(snapshots[-1]),
        )

        assert dict(rig.proxy.puts) == {4: 1}  # the held parts were trusted, not sent again
        assert backup.sha256 == source.sha256, "the SHA-256 covers every byte, held parts included"
        assert await rig.downloaded_sha256(backup.id) == source.sha256
        assert rig.multipart_uploads() == []
