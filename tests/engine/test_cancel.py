"""Cancelling an upload leaves nothing behind on the gateway or in storage, whenever the cancel lands."""

from __future__ import annotations

import asyncio

import pytest

from custom_components.offsite_backup.engine.api import GatewayClient
from custom_components.offsite_backup.engine.uploader import upload
from tests.engine.proxy import FaultProxy
from tests.engine.rig import PART, Rig, Source, make_data


async def test_cancel_while_the_gateway_creates_the_upload(rig: Rig) -> None:
    """The gateway created the upload but its answer has not arrived when the cancel lands."""
    data = make_data(PART + 1000)
    async with FaultProxy(rig.gateway.url) as slow_gateway:
        slow_gateway.answer_late("POST", "/v1/backups", 2)
        client = GatewayClient(rig.http, slow_gateway.url, rig.token)
        task = asyncio.create_task(
            upload(client=client, open_stream=Source(data).open, size=len(data), name="x", metadata={})
        )
        async with asyncio.timeout(30):
            await slow_gateway.held[
                ("POST", "/v1/backups")
            ].wait()  # the gateway has answered; we have not heard
        assert len(rig.multipart_uploads()) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert rig.multipart_uploads() == [], "the engine waited for the id and aborted the upload"
    # The instance is free to upload at once (no 409 upload_in_progress).
    result = await upload(
        client=rig.client, open_stream=Source(data).open, size=len(data), name="y", metadata={}
    )
    assert result.status == "completed"
