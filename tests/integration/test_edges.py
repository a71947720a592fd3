"""The less travelled paths: cancels at every stage, stops, busy locations, odd stored data, time zone changes."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.components.backup import (
    AgentBackup,
    BackupAgentError,
    BackupNotFound,
    CreateBackupEvent,
    CreateBackupState,
    IdleEvent,
)
from homeassistant.components.backup.config import AgentConfig
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.components.button import DOMAIN as BUTTON
from homeassistant.components.button import SERVICE_PRESS
from homeassistant.const import EVENT_HOMEASSISTANT_STOP
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_capture_events,
    async_fire_time_changed,
)

from custom_components.offsite_backup.const import (
    CONF_BANDWIDTH_LIMIT,
    CONF_NIGHTLY,
    DOMAIN,
    EVENT_FAILED,
    JobTrigger,
)
from custom_components.offsite_backup.engine.schedule import Plan
from custom_components.offsite_backup.engine.uploader import upload
from custom_components.offsite_backup.runner import CALLER_STOPPED, STOPPED_CREATING, UNENCRYPTED_REFUSED
from tests.helpers.gateway import RunningGateway
from tests.helpers.servers import S3Server
from tests.integration.common import entity_id, multipart_uploads, objects, state
from tests.integration.test_backup_agent import agent_backup, agent_of, opener


async def _until(predicate: Any, seconds: float = 60) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.02)


async def _slow_upload_under_way(hass: HomeAssistant, entry: MockConfigEntry) -> asyncio.Task[None]:
    """An upload through the agent at 1 MiB/s, once the gateway has created it (parts on their way)."""
    data = os.urandom(6 * 1024 * 1024)
    hass.config_entries.async_update_entry(entry, options={CONF_BANDWIDTH_LIMIT: 1024})
    await hass.async_block_till_done()
    runner = entry.runtime_data.runner
    task = hass.async_create_task(
        agent_of(hass, entry).async_upload_backup(
            open_stream=opener(data), backup=agent_backup(data, protected=True)
        )
    )
    await _until(
        lambda: (pending := runner.pending_summary()) is not None and pending["remote_id"] is not None
    )
    return task


async def _slow(hass: HomeAssistant, entry: MockConfigEntry, config_dir: Path, kib_s: int = 1024) -> None:
    """Make the next backup take a few seconds to upload."""
    (config_dir / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    hass.config_entries.async_update_entry(entry, options={CONF_BANDWIDTH_LIMIT: kib_s})
    await hass.async_block_till_done()


async def test_nightly_off(
    hass: HomeAssistant, backup_manager: object, config_entry: MockConfigEntry
) -> None:
    hass.config_entries.async_update_entry(config_entry, options={CONF_NIGHTLY: False})
    assert await hass.config_entries.async_setup(config_entry.entry_id)
    await hass.async_block_till_done()
    assert config_entry.runtime_data.scheduler.next_run is None
    assert state(hass, config_entry, "next_run") == "unknown"


async def test_an_unreadable_stored_plan_is_drawn_again(
    hass: HomeAssistant, backup_manager: object, config_entry: MockConfigEntry, hass_storage: dict[str, Any]
) -> None:
    hass_storage[f"{DOMAIN}.{config_entry.entry_id}.schedule"] = {
        "version": 1,
        "key": f"{DOMAIN}.{config_entry.entry_id}.schedule",
        "data": {"plan": {"day": "not a day"}},
    }
    assert await hass.config_entries.async_setup(config_entry.entry_id)
    await hass.async_block_till_done()
    assert config_entry.runtime_data.scheduler.next_run is not None


async def test_a_time_zone_change_draws_the_night_again_in_the_new_zone(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    await hass.config.async_update(time_zone="Asia/Tokyo")
    await hass.async_block_till_done()
    next_run = loaded_entry.runtime_data.scheduler.next_run
    assert next_run is not None
    local = next_run.astimezone(dt_util.get_time_zone("Asia/Tokyo"))
    assert 0 <= local.hour < 2
    await hass.config.async_update(time_zone="UTC")


async def test_the_nightly_run_is_not_doubled_by_a_backup_already_running(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, config_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await _slow(hass, loaded_entry, config_dir)
    runner = loaded_entry.runtime_data.runner
    manual = hass.async_create_task(
        hass.services.async_call(
            DOMAIN, "create_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
        )
    )
    await _until(lambda: runner.busy)
    scheduler = loaded_entry.runtime_data.scheduler
    plan = scheduler.plan
    assert plan is not None
    # Tonight's instant comes while the manual backup runs.
    start, _ = scheduler.window.bounds(plan.day, dt_util.get_default_time_zone())
    scheduler.plan = Plan(day=plan.day, run_at=start)
    scheduler._unsub_timer()  # type: ignore[misc]
    scheduler._fire(start)
    assert "already running" in caplog.text
    await manual
    assert len(runner.history) == 1
    assert scheduler.plan.day > plan.day, "tonight counts as done"


async def test_cancel_while_home_assistant_creates_the_backup(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, moto_server: S3Server, moto_bucket: str
) -> None:
    runner = loaded_entry.runtime_data.runner
    task = hass.async_create_task(
        hass.services.async_call(
            DOMAIN, "create_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
        )
    )
    await _until(lambda: runner.busy)
    assert state(hass, loaded_entry, "status") == "creating"
    assert await runner.async_cancel()
    with pytest.raises(HomeAssistantError):
        await task
    await hass.async_block_till_done()
    assert runner.history[0].status.value == "cancelled"
    assert objects(moto_server, moto_bucket) == {}
    assert multipart_uploads(moto_server, moto_bucket) == []


async def test_cancel_while_waiting_for_a_busy_manager(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, backup_manager: Any
) -> None:
    runner = loaded_entry.runtime_data.runner
    backup_manager.async_on_backup_event(
        CreateBackupEvent(reason=None, stage=None, state=CreateBackupState.IN_PROGRESS)
    )
    try:
        task = hass.async_create_task(
            runner.async_run(JobTrigger.SCHEDULE, retry_until=dt_util.utcnow() + timedelta(hours=1))
        )
        await _until(lambda: runner.busy)
        await asyncio.sleep(0.05)
        assert await runner.async_cancel()
        with pytest.raises(HomeAssistantError):
            await task
    finally:
        backup_manager.async_on_backup_event(IdleEvent())
    assert runner.history[0].status.value == "cancelled"


async def test_a_location_set_to_unencrypted_in_home_assistant_is_refused(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, backup_manager: Any
) -> None:
    backup_manager.config.data.agents[f"{DOMAIN}.{loaded_entry.unique_id}"] = AgentConfig(protected=False)
    with pytest.raises(HomeAssistantError) as err:
        await hass.services.async_call(
            DOMAIN, "create_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
        )
    assert err.value.translation_placeholders == {"error": UNENCRYPTED_REFUSED}


async def test_one_upload_at_a_time_through_the_agent(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, config_dir: Path
) -> None:
    data = os.urandom(6 * 1024 * 1024)
    hass.config_entries.async_update_entry(loaded_entry, options={CONF_BANDWIDTH_LIMIT: 2048})
    await hass.async_block_till_done()
    agent = agent_of(hass, loaded_entry)
    first = hass.async_create_task(
        agent.async_upload_backup(open_stream=opener(data), backup=agent_backup(data, protected=True))
    )
    await _until(lambda: loaded_entry.runtime_data.runner.busy)
    with pytest.raises(BackupAgentError, match="Another upload"):
        await agent.async_upload_backup(
            open_stream=opener(data), backup=agent_backup(data, protected=True, backup_id="second")
        )
    await first


async def test_a_cancelled_caller_aborts_the_upload_and_leaves_the_runner_idle(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, moto_server: S3Server, moto_bucket: str
) -> None:
    """Cancelled while Home Assistant is not stopping: Home Assistant drops its archive, nothing can resume it.

    (Stopping, Home Assistant fires its stop event first, which suspends the upload instead: the next test.)
    """
    task = await _slow_upload_under_way(hass, loaded_entry)  # reloads the entry: a new runner
    runner = loaded_entry.runtime_data.runner
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not runner.busy
    assert runner.pending_summary() is None
    assert [(job.trigger.value, job.status.value) for job in runner.history] == [
        ("home_assistant", "cancelled")
    ]
    assert runner.history[0].error == CALLER_STOPPED
    assert multipart_uploads(moto_server, moto_bucket) == [], "aborted"


async def test_home_assistant_stopping_suspends_the_upload(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, moto_server: S3Server, moto_bucket: str
) -> None:
    task = await _slow_upload_under_way(hass, loaded_entry)  # reloads the entry: a new runner
    runner = loaded_entry.runtime_data.runner
    hass.bus.async_fire(EVENT_HOMEASSISTANT_STOP)
    with pytest.raises(BackupAgentError, match="suspended"):
        await task
    assert runner.pending_summary() is not None
    assert len(multipart_uploads(moto_server, moto_bucket)) == 1


async def test_the_button_reports_a_failure_through_the_sensors(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: RunningGateway
) -> None:
    failed = async_capture_events(hass, EVENT_FAILED)
    await gateway.revoke_instance("home")
    await hass.services.async_call(
        BUTTON, SERVICE_PRESS, {"entity_id": entity_id(hass, loaded_entry, "backup_now")}, blocking=True
    )
    await hass.async_block_till_done(wait_background_tasks=True)
    assert state(hass, loaded_entry, "status") == "failed"
    assert len(failed) == 1


async def test_a_backup_gone_from_storage_is_not_found(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, moto_server: S3Server, moto_bucket: str
) -> None:
    data = b"x" * 5000
    agent = agent_of(hass, loaded_entry)
    await agent.async_upload_backup(open_stream=opener(data), backup=agent_backup(data, protected=True))
    (key,) = objects(moto_server, moto_bucket)
    moto_server.client().delete_object(Bucket=moto_bucket, Key=key)
    with pytest.raises(BackupNotFound):
        await agent.async_download_backup("abc123")


async def test_the_listed_size_is_what_storage_holds(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    data = b"y" * 3000
    described = replace(agent_backup(data, protected=True), size=1)  # a description that got the size wrong
    await upload(
        client=loaded_entry.runtime_data.client,
        open_stream=opener(data),
        size=len(data),
        name="n",
        metadata=described.as_dict(),
    )
    (listed,) = await agent_of(hass, loaded_entry).async_list_backups()
    assert isinstance(listed, AgentBackup)
    assert listed.size == len(data)


async def test_resume_when_the_gateway_forgot_the_upload(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, moto_server: S3Server, moto_bucket: str
) -> None:
    """Interrupted, the backup gone from disk, and the gateway no longer knows the upload: a clear failure."""
    task = await _slow_upload_under_way(hass, loaded_entry)  # reloads the entry: a new runner
    runner = loaded_entry.runtime_data.runner
    remote_id = runner.pending_summary()["remote_id"]  # type: ignore[index]
    client = loaded_entry.runtime_data.client
    assert await hass.config_entries.async_unload(loaded_entry.entry_id)
    with pytest.raises(BackupAgentError):
        await task
    await client.delete_backup(remote_id)
    assert await hass.config_entries.async_setup(loaded_entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)
    history = loaded_entry.runtime_data.runner.history
    assert [job.status.value for job in history] == ["failed"]
    assert "no longer on disk" in (history[0].error or "")
    assert multipart_uploads(moto_server, moto_bucket) == []


async def test_the_stale_sensor_after_time_passes_with_the_entry_unloaded(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, freezer: FrozenDateTimeFactory
) -> None:
    """The staleness is measured from the last success, also across a long stop."""
    # Nightly backups off: the 40 hours below would otherwise cross a backup window, whose backup counts.
    hass.config_entries.async_update_entry(loaded_entry, options={CONF_NIGHTLY: False})
    await hass.async_block_till_done()
    await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
    )
    await hass.async_block_till_done()
    assert await hass.config_entries.async_unload(loaded_entry.entry_id)
    freezer.tick(timedelta(hours=40))
    assert await hass.config_entries.async_setup(loaded_entry.entry_id)
    async_fire_time_changed(hass, datetime.now(dt_util.UTC))
    await hass.async_block_till_done()
    assert state(hass, loaded_entry, "stale") == "on"


async def test_unloaded_while_home_assistant_creates_the_nightly_backup(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    """The nightly job is an entry task: unloading the entry (what a stop does first) stops it. The night is lost:
    the next start records it failed, and removes the backup Home Assistant went on writing meanwhile."""
    runner = loaded_entry.runtime_data.runner
    scheduler = loaded_entry.runtime_data.scheduler
    scheduler._start_job(dt_util.utcnow() + timedelta(hours=1))
    await _until(lambda: runner.busy)
    assert runner.current is not None
    assert runner.current.status.value == "creating"
    assert await hass.config_entries.async_unload(loaded_entry.entry_id)
    await hass.async_block_till_done()
    assert runner.history == []
    assert await hass.config_entries.async_setup(loaded_entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)
    runner = loaded_entry.runtime_data.runner
    assert [job.status.value for job in runner.history] == ["failed"]
    assert runner.history[0].error == STOPPED_CREATING
    local = hass.data[DATA_MANAGER].backup_agents["backup.local"]
    assert await local.async_list_backups() == [], "what Home Assistant wrote for it is removed"
