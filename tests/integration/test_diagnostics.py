"""Diagnostics: what a bug report needs, and no secret."""

from __future__ import annotations

import json

from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.components.diagnostics import get_diagnostics_for_config_entry
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.offsite_backup.const import CONF_TOKEN, DOMAIN


async def test_diagnostics_redact_the_token(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, hass_client: ClientSessionGenerator
) -> None:
    await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
    )
    assert await async_setup_component(hass, "diagnostics", {})
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, loaded_entry)
    text = json.dumps(diagnostics)
    assert loaded_entry.data[CONF_TOKEN] not in text
    assert "X-Amz-Signature" not in text
    assert diagnostics["entry"]["data"][CONF_TOKEN] == "**REDACTED**"
    # The rest of what the diagnostics hold: the snapshot in test_snapshots.py.
