"""The restore drill through Home Assistant's harness: real backups, the real gateway app, moto's S3."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.helpers import issue_registry as ir
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_capture_events

from custom_components.offsite_backup.const import (
    DOMAIN,
    EVENT_DRILL_FAILED,
    EVENT_DRILL_SUCCEEDED,
    ISSUE_DRILL_FAILED,
)
from tests.integration.common import state


async def backup_now(hass: HomeAssistant, entry: MockConfigEntry) -> str:
    response = await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
    )
    assert isinstance(response, dict)
    return str(response["backup_id"])


async def verify(hass: HomeAssistant, entry: MockConfigEntry, **data: Any) -> dict[str, Any]:
    response = await hass.services.async_call(
        DOMAIN,
        "verify_backup",
        {"config_entry_id": entry.entry_id, **data},
        blocking=True,
        return_response=True,
    )
    await hass.async_block_till_done()
    assert isinstance(response, dict)
    return response


async def test_a_good_backup_passes(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, config_dir: Path, issue_registry: ir.IssueRegistry
) -> None:
    (config_dir / "marker.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    succeeded = async_capture_events(hass, EVENT_DRILL_SUCCEEDED)
    failed = async_capture_events(hass, EVENT_DRILL_FAILED)
    backup_id = await backup_now(hass, loaded_entry)

    response = await verify(hass, loaded_entry)

    assert response == {"backup_id": backup_id, "ok": True, "error": None}
    assert [event.data["backup_id"] for event in succeeded] == [backup_id]
    assert failed == []
    assert state(hass, loaded_entry, "status") == "verified"
    assert issue_registry.async_get_issue(DOMAIN, f"{ISSUE_DRILL_FAILED}_{loaded_entry.entry_id}") is None
