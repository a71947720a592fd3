"""What the sensors read as in Home Assistant: sizes in one unit with rounded states, and "No error" for no error."""

from __future__ import annotations

from typing import Any

import pytest
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers.translation import async_get_translations
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.offsite_backup.const import DOMAIN
from custom_components.offsite_backup.runner import UNENCRYPTED_REFUSED
from offsite_gateway.app import STORE
from tests.helpers.gateway import RunningGateway
from tests.integration.common import entity_id, state

MIB = 1024 * 1024


async def _create_backup(hass: HomeAssistant, entry: MockConfigEntry) -> dict[str, Any]:
    response = await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
    )
    await hass.async_block_till_done(wait_background_tasks=True)
    assert isinstance(response, dict)
    return response


def _decimals(value: str) -> int:
    return len(value.partition(".")[2])


async def test_sizes_share_one_unit_and_their_states_are_rounded(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: RunningGateway
) -> None:
    """ "Last backup size" and "Storage used" read in MiB side by side; no state carries float noise."""
    first = await _create_backup(hass, loaded_entry)
    await gateway.app[STORE].set_policy("home", {"quota_bytes": 3 * first["size"]})
    await _create_backup(hass, loaded_entry)  # the quota shows at the next poll (after each backup)

    registry = er.async_get(hass)
    sizes = {}
    for key in ("last_size", "storage_used"):
        current = hass.states.get(entity_id(hass, loaded_entry, key))
        assert current is not None
        assert current.attributes["unit_of_measurement"] == "MiB", key
        assert current.attributes["device_class"] == "data_size", key
        assert _decimals(current.state) <= 3, f"{key}: {current.state}"
        entry = registry.async_get(current.entity_id)
        assert entry is not None
        assert entry.options["sensor"]["suggested_display_precision"] == 1, key
        sizes[key] = float(current.state)
    # The same data in the same unit: two backups of the same size are twice the last one.
    assert sizes["storage_used"] == pytest.approx(2 * sizes["last_size"], abs=0.01)
    assert sizes["last_size"] * MIB == pytest.approx(first["size"], abs=1024)

    quota = state(hass, loaded_entry, "quota_used")
    assert _decimals(quota) <= 2, quota
    assert float(quota) == pytest.approx(200 / 3, abs=0.5)


async def test_last_error_reads_no_error_when_there_is_none(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, backup_manager: Any
) -> None:
    """ "none" (translated "No error", "Aucune erreur") before any failure and after a success; the message after a
    failure."""
    assert state(hass, loaded_entry, "last_error") == "none"
    for language, text in (("en", "No error"), ("fr", "Aucune erreur")):
        translations = await async_get_translations(hass, language, "entity", {DOMAIN})
        assert translations[f"component.{DOMAIN}.entity.sensor.last_error.state.none"] == text

    password = backup_manager.config.data.create_backup.password
    backup_manager.config.data.create_backup.password = None  # refused: a failure with a message
    with pytest.raises(HomeAssistantError):
        await _create_backup(hass, loaded_entry)
    assert state(hass, loaded_entry, "last_error") == UNENCRYPTED_REFUSED[:255]

    backup_manager.config.data.create_backup.password = password
    await _create_backup(hass, loaded_entry)
    assert state(hass, loaded_entry, "last_error") == "none"
