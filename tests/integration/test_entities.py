"""Entities: device, unique ids, the staleness problem sensor, the button."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.components.button import DOMAIN as BUTTON_DOMAIN
from homeassistant.components.button import SERVICE_PRESS
from homeassistant.const import ATTR_ENTITY_ID
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed

from custom_components.offsite_backup.const import CONF_NIGHTLY, CONF_STALE_AFTER, DOMAIN
from tests.integration.common import entity_id, state


async def test_one_service_device_with_every_entity(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    devices = dr.async_entries_for_config_entry(dr.async_get(hass), loaded_entry.entry_id)
    assert len(devices) == 1
    assert devices[0].entry_type is dr.DeviceEntryType.SERVICE
    assert devices[0].identifiers == {(DOMAIN, loaded_entry.unique_id)}
    entities = er.async_entries_for_config_entry(er.async_get(hass), loaded_entry.entry_id)
    assert len(entities) == 13  # each one, its registry fields and state: the snapshot in test_snapshots.py
    assert all(e.device_id == devices[0].id for e in entities)


async def test_stale_turns_on_after_the_threshold_and_off_after_a_success(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, freezer: FrozenDateTimeFactory
) -> None:
    # Nightly backups off: the 10-hour jumps below would otherwise cross tonight's window, whose backup counts.
    hass.config_entries.async_update_entry(loaded_entry, options={CONF_STALE_AFTER: 10, CONF_NIGHTLY: False})
    await hass.async_block_till_done()
    assert state(hass, loaded_entry, "stale") == "off"
    freezer.tick(timedelta(hours=9, minutes=59))
    async_fire_time_changed(hass)
    await hass.async_block_till_done()
    assert state(hass, loaded_entry, "stale") == "off"
    freezer.tick(timedelta(minutes=2))
    async_fire_time_changed(hass)
    await hass.async_block_till_done()
    assert state(hass, loaded_entry, "stale") == "on", "no success within 10 hours of setup"

    await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
    )
    await hass.async_block_till_done()
    assert state(hass, loaded_entry, "stale") == "off"
    freezer.tick(timedelta(hours=10, minutes=1))
    async_fire_time_changed(hass)
    await hass.async_block_till_done()
    assert state(hass, loaded_entry, "stale") == "on", "10 hours after the last success"


async def test_the_button_backs_up(hass: HomeAssistant, loaded_entry: MockConfigEntry) -> None:
    await hass.services.async_call(
        BUTTON_DOMAIN,
        SERVICE_PRESS,
        {ATTR_ENTITY_ID: entity_id(hass, loaded_entry, "backup_now")},
        blocking=True,
    )
    await hass.async_block_till_done(wait_background_tasks=True)
    assert state(hass, loaded_entry, "status") == "succeeded"
    assert [job.trigger.value for job in loaded_entry.runtime_data.runner.history] == ["manual"]


async def test_the_button_refuses_while_a_backup_runs(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    runner = loaded_entry.runtime_data.runner
    task = hass.async_create_task(
        hass.services.async_call(
            DOMAIN, "create_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
        )
    )
    while not runner.busy:
        await asyncio.sleep(0)
    with pytest.raises(HomeAssistantError) as err:
        await hass.services.async_call(
            BUTTON_DOMAIN,
            SERVICE_PRESS,
            {ATTR_ENTITY_ID: entity_id(hass, loaded_entry, "backup_now")},
            blocking=True,
        )
    assert err.value.translation_key == "already_running"
    await task
