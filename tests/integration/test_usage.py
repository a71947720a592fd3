"""What a homeowner sees of the gateway's side: storage used, backups stored, the quota, a Repairs issue when the
quota refuses a backup, and delete protection on Home Assistant's Backups page."""

from __future__ import annotations

from typing import Any

import pytest
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.const import PERCENTAGE
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import issue_registry as ir
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import WebSocketGenerator

from custom_components.offsite_backup.backup import agent_id_for
from custom_components.offsite_backup.const import DOMAIN
from offsite_gateway.app import STORE
from tests.helpers.gateway import RunningGateway
from tests.integration.common import entity_id, let_upload_progress_settle

MIB = 1024**2


async def _create_backup(hass: HomeAssistant, entry: MockConfigEntry) -> dict[str, Any]:
    response = await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
    )
    await hass.async_block_till_done(wait_background_tasks=True)
    assert isinstance(response, dict)
    return response


def _sensor(hass: HomeAssistant, entry: MockConfigEntry, key: str) -> Any:
    current = hass.states.get(entity_id(hass, entry, key))
    assert current is not None
    return current


async def test_storage_used_and_backups_stored(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: RunningGateway
) -> None:
    """The sensors show what the gateway reports, again after each backup (not only every 5 minutes)."""
    used = _sensor(hass, loaded_entry, "storage_used")
    assert used.attributes["unit_of_measurement"] == "MiB"  # as the last backup's size
    assert used.attributes["device_class"] == "data_size"
    assert float(used.state) == 0
    assert _sensor(hass, loaded_entry, "backups_stored").state == "0"
    quota = _sensor(hass, loaded_entry, "quota_used")
    assert quota.state == "unknown"  # no quota on this gateway
    assert quota.attributes["unit_of_measurement"] == PERCENTAGE
    assert used.attributes["friendly_name"] == "home Storage used"
    assert _sensor(hass, loaded_entry, "backups_stored").attributes["friendly_name"] == "home Backups stored"

    response = await _create_backup(hass, loaded_entry)
    stored = float(_sensor(hass, loaded_entry, "storage_used").state) * MIB
    assert stored == pytest.approx(response["size"], abs=1024)  # the state is rounded to the KiB
    assert _sensor(hass, loaded_entry, "backups_stored").state == "1"

    # The operator sets a quota: the next poll (here, the next backup) shows the share of it in use.
    await gateway.app[STORE].set_policy("home", {"quota_bytes": 4 * response["size"]})
    second = await _create_backup(hass, loaded_entry)
    assert _sensor(hass, loaded_entry, "backups_stored").state == "2"
    percent = float(_sensor(hass, loaded_entry, "quota_used").state)
    assert percent == pytest.approx(
        100 * (response["size"] + second["size"]) / (4 * response["size"]), abs=0.01
    )


async def test_a_backup_refused_for_the_quota_raises_a_repair(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: RunningGateway
) -> None:
    """The Repairs issue says how much is used and how much the backup needed; the next success clears it."""
    first = await _create_backup(hass, loaded_entry)
    await gateway.app[STORE].set_policy("home", {"quota_bytes": first["size"] + 100})
    with pytest.raises(HomeAssistantError) as refused:
        await _create_backup(hass, loaded_entry)
    await let_upload_progress_settle(hass)
    assert "quota" in str(refused.value.translation_placeholders)
    issue_id = f"quota_exceeded_{loaded_entry.entry_id}"
    issue = ir.async_get(hass).async_get_issue(DOMAIN, issue_id)
    assert issue is not None
    assert issue.translation_key == "quota_exceeded"
    placeholders = issue.translation_placeholders or {}
    assert placeholders["title"] == "home"
    assert placeholders["used"].endswith("KiB") or placeholders["used"].endswith("MiB")
    assert placeholders["needed"] not in ("", "?")
    assert placeholders["quota"] not in ("", "?")
    # Only one failure so far: the "failing" issue waits for more, the quota one is there at once.
    assert ir.async_get(hass).async_get_issue(DOMAIN, f"backup_failing_{loaded_entry.entry_id}") is None

    await gateway.app[STORE].set_policy("home", {"quota_bytes": None})
    await _create_backup(hass, loaded_entry)
    assert ir.async_get(hass).async_get_issue(DOMAIN, issue_id) is None


async def test_a_protected_backup_cannot_be_deleted_from_the_backups_page(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: RunningGateway,
    hass_ws_client: WebSocketGenerator,
) -> None:
    """Home Assistant's own delete path (the Backups page's `backup/delete`, and the manager) gets the gateway's
    message, with the date from which the backup can be deleted."""
    await gateway.app[STORE].set_policy("home", {"protect_days": 3})
    backup_id = (await _create_backup(hass, loaded_entry))["backup_id"]
    agent_id = agent_id_for(loaded_entry)

    client = await hass_ws_client(hass)
    await client.send_json_auto_id({"type": "backup/delete", "backup_id": backup_id})
    answer = await client.receive_json()
    assert answer["success"] is True
    message = answer["result"]["agent_errors"][agent_id]
    assert "protected" in message
    assert "can be deleted from 20" in message

    errors = await hass.data[DATA_MANAGER].async_delete_backup(backup_id, agent_ids=[agent_id])
    assert "protected" in str(errors[agent_id])
    backups = await gateway.app[STORE].list_backups(loaded_entry.unique_id or "", "completed")
    assert len(backups) == 1  # still there

    # Without protection it goes, as before.
    await gateway.app[STORE].set_policy("home", {"protect_days": 0})
    assert await hass.data[DATA_MANAGER].async_delete_backup(backup_id, agent_ids=[agent_id]) == {}
    assert await gateway.app[STORE].list_backups(loaded_entry.unique_id or "", "completed") == []
