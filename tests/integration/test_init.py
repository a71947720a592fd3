"""Setup, unload, removal; the gateway refusing or unreachable at setup and while running."""

from __future__ import annotations

from pathlib import Path

import pytest
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.offsite_backup.const import CONF_TOKEN, CONF_URL, DOMAIN, GATEWAY_POLL_INTERVAL
from tests.helpers.gateway import RunningGateway, run_gateway
from tests.helpers.servers import S3Server, free_port
from tests.integration.common import set_up_entry, state


async def test_setup_and_unload(hass: HomeAssistant, loaded_entry: MockConfigEntry) -> None:
    assert loaded_entry.state is ConfigEntryState.LOADED
    assert state(hass, loaded_entry, "status") == "idle"
    assert state(hass, loaded_entry, "progress") == "0.0"
    assert state(hass, loaded_entry, "stale") == "off"
    assert state(hass, loaded_entry, "next_run") not in ("unknown", STATE_UNAVAILABLE)
    assert await hass.config_entries.async_unload(loaded_entry.entry_id)
    await hass.async_block_till_done()
    assert loaded_entry.state is ConfigEntryState.NOT_LOADED


async def test_gateway_unreachable_at_setup_is_retried(
    hass: HomeAssistant, backup_manager: object, instance: tuple[str, str]
) -> None:
    entry = MockConfigEntry(
        domain=DOMAIN,
        unique_id=instance[0],
        data={CONF_URL: f"http://127.0.0.1:{free_port()}", CONF_TOKEN: instance[1]},
    )
    entry.add_to_hass(hass)
    await hass.config_entries.async_setup(entry.entry_id)
    assert entry.state is ConfigEntryState.SETUP_RETRY


async def test_refused_token_at_setup_starts_reauth(
    hass: HomeAssistant, backup_manager: object, config_entry: MockConfigEntry, gateway: RunningGateway
) -> None:
    await gateway.revoke_instance("home")
    await hass.config_entries.async_setup(config_entry.entry_id)
    await hass.async_block_till_done()
    assert config_entry.state is ConfigEntryState.SETUP_ERROR
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [flow["context"]["source"] for flow in flows] == ["reauth"]


async def test_entities_that_need_the_gateway_follow_it_and_it_is_logged_once(
    hass: HomeAssistant,
    backup_manager: object,
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = {"LISTEN": f"127.0.0.1:{free_port()}"}
    async with run_gateway(moto_server, moto_bucket, tmp_path / "gw", **settings) as gateway:
        entry = await set_up_entry(hass, gateway)
    coordinator = entry.runtime_data.coordinator
    assert coordinator.update_interval == GATEWAY_POLL_INTERVAL
    caplog.clear()
    for _ in range(3):  # three polls while the gateway is down
        await coordinator.async_refresh()
        await hass.async_block_till_done()
    assert state(hass, entry, "backup_now") == STATE_UNAVAILABLE
    assert state(hass, entry, "progress") == STATE_UNAVAILABLE
    # The history stays readable: it is what shows the problem.
    assert state(hass, entry, "status") == "idle"
    assert state(hass, entry, "stale") == "off"
    down = [r for r in caplog.records if "Error fetching" in r.getMessage() and DOMAIN in r.getMessage()]
    assert len(down) == 1, [r.getMessage() for r in down]
    assert "Cannot reach" in down[0].getMessage()

    async with run_gateway(moto_server, moto_bucket, tmp_path / "gw", **settings):
        caplog.clear()
        for _ in range(2):
            await coordinator.async_refresh()
            await hass.async_block_till_done()
        assert state(hass, entry, "backup_now") != STATE_UNAVAILABLE
        assert state(hass, entry, "progress") == "0.0"
        back = [r for r in caplog.records if "recovered" in r.getMessage()]
        assert len(back) == 1
        await hass.config_entries.async_unload(entry.entry_id)


async def test_removing_the_entry_forgets_its_stores(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, hass_storage: dict[str, object]
) -> None:
    await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
    )
    await hass.async_block_till_done()
    freezer_keys = [key for key in hass_storage if key.startswith(f"{DOMAIN}.{loaded_entry.entry_id}")]
    await hass.config_entries.async_remove(loaded_entry.entry_id)
    await hass.async_block_till_done()
    assert not [key for key in hass_storage if key.startswith(f"{DOMAIN}.{loaded_entry.entry_id}")], (
        freezer_keys
    )
