"""Setup, unload, removal; the gateway refusing or unreachable at setup and while running."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from homeassistant.helpers import issue_registry as ir
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_capture_events

from custom_components.offsite_backup.backup import agent_id_for
from custom_components.offsite_backup.const import (
    CONF_TOKEN,
    CONF_URL,
    DOMAIN,
    EVENT_FAILED,
    GATEWAY_POLL_INTERVAL,
    ISSUE_BACKUP_FAILING,
    JobStatus,
)
from tests.helpers.gateway import RunningGateway, run_gateway
from tests.helpers.servers import S3Server, free_port
from tests.integration.clock import move_to, ride_out, tonight, until
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


async def test_three_days_with_the_gateway_unreachable_from_start_up(
    hass: HomeAssistant,
    backup_manager: Any,
    instance: tuple[str, str],
    issue_registry: ir.IssueRegistry,
    freezer: FrozenDateTimeFactory,
) -> None:
    """A power cut took the router down too: Home Assistant starts, the gateway stays away for three days.

    The entry sets up anyway; the schedule and the history's sensors work, each night's backup waits for the
    gateway until the end of the window plus an hour, then fails saying why; "Backup stale" turns on, the second
    failed night raises the Repairs issue. Only what needs the gateway is unavailable.
    """
    freezer.move_to(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    entry = MockConfigEntry(
        domain=DOMAIN,
        title="home",
        unique_id=instance[0],
        data={CONF_URL: f"http://127.0.0.1:{free_port()}", CONF_TOKEN: instance[1]},
    )
    entry.add_to_hass(hass)
    failed = async_capture_events(hass, EVENT_FAILED)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()

    assert entry.state is ConfigEntryState.LOADED, "no setup-retry loop"
    assert state(hass, entry, "status") == "idle"
    assert state(hass, entry, "stale") == "off"
    assert state(hass, entry, "last_success") == "unknown"
    assert state(hass, entry, "last_error") == "none"
    assert state(hass, entry, "next_run") not in ("unknown", STATE_UNAVAILABLE)
    assert state(hass, entry, "progress") == STATE_UNAVAILABLE
    assert state(hass, entry, "backup_now") == STATE_UNAVAILABLE
    assert state(hass, entry, "storage_used") == STATE_UNAVAILABLE
    assert agent_id_for(entry) in backup_manager.backup_agents, "the location is there (its listing fails)"

    runner = entry.runtime_data.runner
    issue_id = f"{ISSUE_BACKUP_FAILING}_{entry.entry_id}"
    stale_seen_at: datetime | None = None
    for night in (1, 2, 3):
        await tonight(hass, entry, freezer)
        assert state(hass, entry, "last_success") == "unknown"
        await until(hass, lambda: runner.waiting is not None)
        assert state(hass, entry, "status") == "waiting"
        await ride_out(hass, freezer, runner, lambda: not runner.busy, real_seconds=300)
        job = runner.history[0]
        assert job.status is JobStatus.FAILED
        assert "Cannot reach the gateway" in (job.error or "")
        assert "times in" in (job.error or ""), job.error
        assert len(failed) == night, "each failed night fires the event"
        assert failed[-1].data["error"] == job.error
        assert (issue_registry.async_get_issue(DOMAIN, issue_id) is not None) is (night >= 2)
        assert await backup_manager.backup_agents["backup.local"].async_list_backups() == []
        # To noon, as the hours pass: the stale sensor turns on by itself 36 hours after the start.
        noon = datetime(2026, 6, 1 + night, 12, 0, tzinfo=UTC)
        for hour in range(13):
            await move_to(hass, freezer, noon - timedelta(hours=12 - hour))
            if stale_seen_at is None and state(hass, entry, "stale") == "on":
                stale_seen_at = dt_util.utcnow()
    assert stale_seen_at is not None
    assert stale_seen_at - datetime(2026, 6, 1, 12, 0, tzinfo=UTC) <= timedelta(hours=37)
    assert state(hass, entry, "stale") == "on"
    assert state(hass, entry, "status") == "failed"
    assert state(hass, entry, "backup_now") == STATE_UNAVAILABLE
    assert entry.state is ConfigEntryState.LOADED
    assert await hass.config_entries.async_unload(entry.entry_id)


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
