"""An unencrypted backup refused by the owner's policy is logged once, whoever started it; at WARNING where the
integration is the one that logs it (the nightly backup, the button)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.components.button import DOMAIN as BUTTON_DOMAIN
from homeassistant.components.button import SERVICE_PRESS
from homeassistant.const import ATTR_ENTITY_ID
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import WebSocketGenerator

from custom_components.offsite_backup.const import DOMAIN, UNENCRYPTED_REFUSED, JobTrigger
from custom_components.offsite_backup.runner import JobError
from tests.integration.common import entity_id


def _refusals(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    """(logger, level) of each record that tells of the refusal (in its message or its traceback), at INFO or above."""
    return [
        (record.name, record.levelno)
        for record in caplog.records
        if record.levelno >= logging.INFO and UNENCRYPTED_REFUSED in caplog.handler.format(record)
    ]


@pytest.fixture
def no_backup_key(backup_manager: Any) -> None:
    """Home Assistant has no backup encryption key: what it makes is unencrypted, and the policy refuses it."""
    backup_manager.config.data.create_backup.password = None


@pytest.mark.usefixtures("no_backup_key")
async def test_the_nightly_refusal_is_one_warning(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(JobError):
        await loaded_entry.runtime_data.runner.async_run(JobTrigger.SCHEDULE)  # what the scheduler calls
    await hass.async_block_till_done()
    assert _refusals(caplog) == [("custom_components.offsite_backup", logging.WARNING)]


@pytest.mark.usefixtures("no_backup_key")
async def test_the_buttons_refusal_is_one_warning(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, caplog: pytest.LogCaptureFixture
) -> None:
    await hass.services.async_call(
        BUTTON_DOMAIN,
        SERVICE_PRESS,
        {ATTR_ENTITY_ID: entity_id(hass, loaded_entry, "backup_now")},
        blocking=True,
    )
    await hass.async_block_till_done(wait_background_tasks=True)
    assert loaded_entry.runtime_data.runner.history[0].error == UNENCRYPTED_REFUSED
    assert _refusals(caplog) == [("custom_components.offsite_backup", logging.WARNING)]


@pytest.mark.usefixtures("no_backup_key")
async def test_the_actions_refusal_is_logged_once_by_home_assistant(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    hass_ws_client: WebSocketGenerator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The action's caller gets the reason, and Home Assistant logs the failed action (2025.4 with its traceback):
    nothing more from us."""
    client = await hass_ws_client(hass)
    await client.send_json_auto_id(
        {
            "type": "call_service",
            "domain": DOMAIN,
            "service": "create_backup",
            "service_data": {"config_entry_id": loaded_entry.entry_id},
        }
    )
    answer = await client.receive_json()
    assert answer["success"] is False
    assert UNENCRYPTED_REFUSED in answer["error"]["message"]
    await hass.async_block_till_done()
    assert [name for name, _ in _refusals(caplog)] == [
        "homeassistant.components.websocket_api.http.connection"
    ]


async def test_a_refused_upload_from_home_assistant_is_logged_once_by_its_backup_manager(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, backup_manager: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Settings > System > Backups, unencrypted, to this location: Home Assistant logs the failed upload itself."""
    await hass.data[DATA_MANAGER].async_create_backup(
        agent_ids=["backup.local", f"{DOMAIN}.{loaded_entry.unique_id}"],
        include_addons=None,
        include_all_addons=False,
        include_database=True,
        include_folders=None,
        include_homeassistant=True,
        name="In the clear",
        password=None,
    )
    await hass.async_block_till_done()
    assert loaded_entry.runtime_data.runner.history[0].error == UNENCRYPTED_REFUSED
    assert [name for name, _ in _refusals(caplog)] == ["homeassistant.components.backup"]
