"""Uploads left behind on the gateway (engine/left_behind.py), against the real gateway and moto."""

from __future__ import annotations

import logging

import pytest

from custom_components.offsite_backup.engine.api import GatewayConflictError, RemoteBackup
from custom_components.offsite_backup.engine.left_behind import abort_left_behind, in_upload_slot
from custom_components.offsite_backup.engine.uploader import upload
from tests.engine.rig import PART, Rig, Source, make_data


async def test_an_upload_held_in_progress_is_aborted_and_the_upload_tried_again(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer to a create was lost: the gateway holds that upload, and refuses the next with 409."""
    stuck = await rig.client.create_backup(name="lost answer", size=1234, metadata={})
    data = make_data(PART + 1000)
    tries = 0

    async def attempt() -> RemoteBackup:
        nonlocal tries
        tries += 1
        return await upload(
            client=rig.client, open_stream=Source(data).open, size=len(data), name="x", metadata={}
        )

    with caplog.at_level(logging.WARNING):
        result = await in_upload_slot(rig.client, attempt)
    assert tries == 2
    assert (await rig.client.get_backup(stuck.id)).status == "failed"
    assert f"Aborting upload {stuck.id} left behind on the gateway" in caplog.text
    assert await rig.downloaded_sha256(result.id) == Source(data).sha256


async def test_another_conflict_is_raised_as_it_is(rig: Rig) -> None:
    """A 409 that names no upload in progress (here: completing an upload that is not in progress)."""
    created = await rig.client.create_backup(name="x", size=1234, metadata={})
    await rig.client.abort_upload(created.id)
    tries = 0

    async def attempt() -> None:
        nonlocal tries
        tries += 1
        await rig.client.complete_backup(created.id, [], sha256="0" * 64)

    with pytest.raises(GatewayConflictError):
        await in_upload_slot(rig.client, attempt)
    assert tries == 1


async def test_abort_left_behind_is_best_effort(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    created = await rig.client.create_backup(name="x", size=1234, metadata={})
    await abort_left_behind(rig.client, created.id)
    assert (await rig.client.get_backup(created.id)).status == "failed"
    assert rig.multipart_uploads() == []
    with caplog.at_level(logging.WARNING):
        await abort_left_behind(rig.client, "does-not-exist")  # 404: already gone, nothing said
        assert "Could not abort" not in caplog.text
        await abort_left_behind(rig.client, created.id)  # 409 upload not in progress: logged, not raised
    assert "Could not abort the interrupted upload" in caplog.text
