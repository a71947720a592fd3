"""However a job ends, the runner is idle afterwards, the outcome is recorded with its message, and the next
backup succeeds: the paths a review found left the integration "busy" for good."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_capture_events

from custom_components.offsite_backup.backup import agent_id_for
from custom_components.offsite_backup.const import CONF_BANDWIDTH_LIMIT, DOMAIN, EVENT_FAILED, JobStatus
from custom_components.offsite_backup.runner import CALLER_STOPPED
from tests.helpers.servers import S3Server
from tests.integration.common import let_upload_progress_settle, multipart_uploads, state


async def _back_up(hass: HomeAssistant, entry: MockConfigEntry) -> dict[str, Any]:
    response = await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
    )
    assert isinstance(response, dict)
    return response


async def _the_next_backup_succeeds(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    """An options change reloads the entry once the runner is idle (it waited for ever before), then a backup."""
    hass.config_entries.async_update_entry(entry, options={})
    async with asyncio.timeout(60):
        await hass.async_block_till_done()
    runner = entry.runtime_data.runner
    assert not runner.busy
    response = await _back_up(hass, entry)
    assert response["size"] > 0
    assert runner.history[0].status is JobStatus.SUCCEEDED
    assert state(hass, entry, "status") == "succeeded"


async def test_a_stopped_script_calling_create_automatic_leaves_the_runner_idle(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    config_dir: Path,
    moto_server: S3Server,
    moto_bucket: str,
) -> None:
    """A script calling ``backup.create_automatic`` is stopped (or times out) while our upload runs."""
    manager: Any = hass.data[DATA_MANAGER]
    manager.config.data.create_backup.agent_ids = [agent_id_for(loaded_entry)]
    (config_dir / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    hass.config_entries.async_update_entry(loaded_entry, options={CONF_BANDWIDTH_LIMIT: 1024})
    await hass.async_block_till_done()
    runner = loaded_entry.runtime_data.runner
    script = hass.async_create_task(hass.services.async_call("backup", "create_automatic", blocking=True))
    async with asyncio.timeout(60):
        while not ((pending := runner.pending_summary()) and pending["remote_id"]):
            await asyncio.sleep(0.05)

    script.cancel()
    with contextlib.suppress(asyncio.CancelledError, HomeAssistantError):
        await script
    await let_upload_progress_settle(hass)

    assert not runner.busy
    assert runner.history[0].status is JobStatus.CANCELLED
    assert runner.history[0].error == CALLER_STOPPED
    assert state(hass, loaded_entry, "status") == "cancelled"
    assert multipart_uploads(moto_server, moto_bucket) == [], "the upload was aborted"
    await _the_next_backup_succeeds(hass, loaded_entry)


async def test_an_unexpected_error_from_the_backup_manager_is_recorded(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    """Home Assistant's backup manager raises something nobody expected (a bug of its own, say)."""
    runner = loaded_entry.runtime_data.runner
    failed = async_capture_events(hass, EVENT_FAILED)
    manager: Any = hass.data[DATA_MANAGER]
    with (
        patch.object(manager, "async_create_backup", side_effect=RuntimeError("a bug in the backup manager")),
        pytest.raises(HomeAssistantError, match="a bug in the backup manager"),
    ):
        await _back_up(hass, loaded_entry)
    await hass.async_block_till_done()

    assert not runner.busy
    assert runner.history[0].status is JobStatus.FAILED
    assert runner.history[0].error == "Unexpected error: RuntimeError: a bug in the backup manager"
    assert state(hass, loaded_entry, "last_error") == runner.history[0].error
    assert [event.data["error"] for event in failed] == [runner.history[0].error]
    await _the_next_backup_succeeds(hass, loaded_entry)


async def test_an_unexpected_error_in_the_upload_is_recorded(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    """The upload itself fails in a way nobody expected: the job fails with that message, nothing stays busy."""
    runner = loaded_entry.runtime_data.runner
    with (
        patch("custom_components.offsite_backup.job_sender.upload", side_effect=KeyError("surprise")),
        pytest.raises(HomeAssistantError, match="surprise"),
    ):
        await _back_up(hass, loaded_entry)
    await let_upload_progress_settle(hass)

    assert not runner.busy
    assert runner.history[0].status is JobStatus.FAILED
    assert runner.history[0].error == "Unexpected error: KeyError: 'surprise'"
    await _the_next_backup_succeeds(hass, loaded_entry)
