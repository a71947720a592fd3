"""Backup jobs end to end: Home Assistant's backup manager → our agent → upload engine → gateway → S3 (moto)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from homeassistant.components.backup import CreateBackupEvent, CreateBackupState, IdleEvent
from homeassistant.components.backup import manager as backup_manager_module
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import issue_registry as ir
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_capture_events

from custom_components.offsite_backup.backup import agent_id_for
from custom_components.offsite_backup.const import (
    CONF_ALLOW_UNENCRYPTED,
    CONF_BANDWIDTH_LIMIT,
    CONF_CONTENTS,
    CONF_FAILURES_BEFORE_REPAIR,
    DOMAIN,
    EVENT_FAILED,
    EVENT_SUCCEEDED,
    ISSUE_BACKUP_FAILING,
    JobTrigger,
)
from custom_components.offsite_backup.engine.uploader import UploadOptions
from custom_components.offsite_backup.own_retention import MARKER
from custom_components.offsite_backup.runner import UNENCRYPTED_REFUSED
from tests.helpers.gateway import RunningGateway, run_gateway
from tests.helpers.servers import S3Server, free_port
from tests.integration.common import (
    let_upload_progress_settle,
    multipart_uploads,
    objects,
    read_from_backup,
    set_up_entry,
    sha256,
    state,
)
from tests.integration.conftest import BACKUP_PASSWORD

FAST = UploadOptions(retry_base=0.01, retry_cap=0.02, retry_after_cap=0.05, patience=0.3)


def fast_retries(entry: MockConfigEntry) -> None:
    """Keep the retries short so a test of an unreachable gateway takes a moment, not an hour: the deadline is the
    job's start, and a transient failure is retried for 0.3 s (tests/integration/test_outage.py moves the clock
    instead, through the real deadlines)."""
    runner = entry.runtime_data.runner
    runner.options = replace(
        runner.options,
        upload=replace(FAST, parallel=runner.options.upload.parallel),
        retry_manual=timedelta(0),
        retry_grace=timedelta(0),
    )


async def create_backup(hass: HomeAssistant, entry: MockConfigEntry) -> dict[str, Any]:
    response = await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
    )
    assert isinstance(response, dict)
    return response


async def test_create_backup_action_end_to_end(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    moto_server: S3Server,
    moto_bucket: str,
    config_dir: Path,
    tmp_path: Path,
) -> None:
    marker = os.urandom(64 * 1024)
    (config_dir / "marker.bin").write_bytes(marker)
    succeeded = async_capture_events(hass, EVENT_SUCCEEDED)

    response = await create_backup(hass, loaded_entry)
    await hass.async_block_till_done()

    assert set(response) == {"backup_id", "size"}
    assert response["size"] > len(marker)
    assert state(hass, loaded_entry, "status") == "succeeded"
    assert float(state(hass, loaded_entry, "progress")) == 100
    assert state(hass, loaded_entry, "last_error") == "none"  # no error (shown as "No error")
    assert state(hass, loaded_entry, "last_success") not in ("unknown", "unavailable")
    assert int(float(state(hass, loaded_entry, "last_size")) * 1024 * 1024 + 0.5) == pytest.approx(
        response["size"], abs=1024
    )
    assert [event.data["backup_id"] for event in succeeded] == [response["backup_id"]]
    assert succeeded[0].data["size"] == response["size"]
    assert succeeded[0].data["duration"] > 0

    # The object is in the bucket, under <instance id>/<gateway backup id>.
    stored = objects(moto_server, moto_bucket)
    assert len(stored) == 1
    key, data = next(iter(stored.items()))
    assert key.startswith(f"{loaded_entry.unique_id}/")
    assert len(data) == response["size"]

    # Home Assistant's backup manager lists it on our location, and a download through the agent is byte-identical.
    manager = hass.data[DATA_MANAGER]
    agent = manager.backup_agents[f"{DOMAIN}.{loaded_entry.unique_id}"]
    listed = await agent.async_list_backups()
    assert [backup.backup_id for backup in listed] == [response["backup_id"]]
    assert listed[0].protected is True
    downloaded = b"".join([chunk async for chunk in await agent.async_download_backup(response["backup_id"])])
    assert sha256(downloaded) == sha256(data)
    remote = await loaded_entry.runtime_data.client.list_backups()
    assert remote[0].sha256 == sha256(data), "the engine hashed exactly the bytes Home Assistant streamed"

    # It left the house encrypted: readable with Home Assistant's backup key only.
    assert read_from_backup(downloaded, BACKUP_PASSWORD, "data/marker.bin", tmp_path) == marker
    assert marker not in downloaded
    with pytest.raises(Exception):  # noqa: B017 - securetar raises whatever the bad key produces
        read_from_backup(downloaded, "wrong password", "data/marker.bin", tmp_path)


async def test_upload_from_home_assistant_is_a_job_of_its_own(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, moto_server: S3Server, moto_bucket: str
) -> None:
    """A backup made from Settings > System > Backups to this location (and the local one)."""
    manager = hass.data[DATA_MANAGER]
    succeeded = async_capture_events(hass, EVENT_SUCCEEDED)
    await manager.async_create_backup(
        agent_ids=["backup.local", f"{DOMAIN}.{loaded_entry.unique_id}"],
        include_addons=None,
        include_all_addons=False,
        include_database=True,
        include_folders=None,
        include_homeassistant=True,
        name="From the UI",
        password=BACKUP_PASSWORD,
    )
    await hass.async_block_till_done()
    history = loaded_entry.runtime_data.runner.history
    assert [(job.trigger.value, job.status.value) for job in history] == [("home_assistant", "succeeded")]
    assert len(succeeded) == 1
    assert len(objects(moto_server, moto_bucket)) == 1
    backups, errors = await manager.async_get_backups()
    assert not errors
    (backup,) = backups.values()
    assert set(backup.agents) == {"backup.local", f"{DOMAIN}.{loaded_entry.unique_id}"}


async def test_action_checks_its_input(hass: HomeAssistant, loaded_entry: MockConfigEntry) -> None:
    with pytest.raises(ServiceValidationError) as err:
        await hass.services.async_call(
            DOMAIN, "create_backup", {"config_entry_id": "nope"}, blocking=True, return_response=True
        )
    assert err.value.translation_key == "entry_not_found"
    with pytest.raises(ServiceValidationError) as err:
        await hass.services.async_call(
            DOMAIN, "cancel_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
        )
    assert err.value.translation_key == "nothing_to_cancel"
    await hass.config_entries.async_unload(loaded_entry.entry_id)
    with pytest.raises(ServiceValidationError) as err:
        await hass.services.async_call(
            DOMAIN, "create_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
        )
    assert err.value.translation_key == "entry_not_loaded"
    # Without return_response the action just runs.
    await hass.config_entries.async_setup(loaded_entry.entry_id)
    await hass.async_block_till_done()
    assert (
        await hass.services.async_call(
            DOMAIN, "create_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
        )
        is None
    )


async def _failing_backup(hass: HomeAssistant, entry: MockConfigEntry) -> str:
    with pytest.raises(HomeAssistantError) as err:
        await create_backup(hass, entry)
    await hass.async_block_till_done()
    assert err.value.translation_key == "backup_failed"
    return str(err.value.translation_placeholders["error"])  # type: ignore[index]


async def test_gateway_down_then_back(
    hass: HomeAssistant,
    backup_manager: object,
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    issue_registry: ir.IssueRegistry,
) -> None:
    """Failures show their message, fire the event, raise a Repairs issue after 2 in a row; a success clears it."""
    port = free_port()
    settings = {"PART_SIZE": str(5 * 1024 * 1024), "LISTEN": f"127.0.0.1:{port}"}
    async with run_gateway(moto_server, moto_bucket, tmp_path / "gw", **settings) as gateway:
        entry = await set_up_entry(hass, gateway)
    fast_retries(entry)
    failed = async_capture_events(hass, EVENT_FAILED)

    error = await _failing_backup(hass, entry)
    assert "Cannot reach the gateway" in error or "gateway" in error.lower()
    assert state(hass, entry, "status") == "failed"
    assert state(hass, entry, "last_error") == error[:255]
    assert len(failed) == 1
    assert failed[0].data["error"] == error
    assert failed[0].data["config_entry_id"] == entry.entry_id
    issue_id = f"{ISSUE_BACKUP_FAILING}_{entry.entry_id}"
    assert issue_registry.async_get_issue(DOMAIN, issue_id) is None, "one failure is not yet an issue"

    error = await _failing_backup(hass, entry)
    issue = issue_registry.async_get_issue(DOMAIN, issue_id)
    assert issue is not None
    assert issue.translation_placeholders == {"title": "home", "failures": "2", "error": error}
    assert issue.severity is ir.IssueSeverity.ERROR
    assert multipart_uploads(moto_server, moto_bucket) == []

    async with run_gateway(moto_server, moto_bucket, tmp_path / "gw", **settings):
        await create_backup(hass, entry)
        await hass.async_block_till_done()
        assert state(hass, entry, "status") == "succeeded"
        assert state(hass, entry, "last_error") == "none"
        assert issue_registry.async_get_issue(DOMAIN, issue_id) is None
        assert len(objects(moto_server, moto_bucket)) == 1
        await hass.config_entries.async_unload(entry.entry_id)


async def test_revoked_token_fails_and_starts_reauth(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: RunningGateway
) -> None:
    failed = async_capture_events(hass, EVENT_FAILED)
    await gateway.revoke_instance("home")
    error = await _failing_backup(hass, loaded_entry)
    assert "refused the token" in error
    assert state(hass, loaded_entry, "last_error") == error
    assert len(failed) == 1
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [flow["context"]["source"] for flow in flows] == ["reauth"]
    await _failing_backup(hass, loaded_entry)
    issue = ir.async_get(hass).async_get_issue(DOMAIN, f"{ISSUE_BACKUP_FAILING}_{loaded_entry.entry_id}")
    assert issue is not None, "two failures in a row"
    assert issue.translation_placeholders["error"] == error  # type: ignore[index]


async def test_over_quota(
    hass: HomeAssistant,
    backup_manager: object,
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
) -> None:
    async with run_gateway(moto_server, moto_bucket, tmp_path / "gw", MAX_BACKUP_BYTES="2048") as gateway:
        entry = await set_up_entry(hass, gateway)
        hass.config_entries.async_update_entry(entry, options={CONF_FAILURES_BEFORE_REPAIR: 1})
        await hass.async_block_till_done()
        failed = async_capture_events(hass, EVENT_FAILED)
        error = await _failing_backup(hass, entry)
        assert "2048" in error or "quota" in error.lower() or "too large" in error.lower()
        assert state(hass, entry, "last_error") == error
        assert failed[0].data["error"] == error
        assert objects(moto_server, moto_bucket) == {}
        issue = ir.async_get(hass).async_get_issue(DOMAIN, f"{ISSUE_BACKUP_FAILING}_{entry.entry_id}")
        assert issue is not None, "the option says one failure is enough"
        assert issue.translation_placeholders["error"] == error  # type: ignore[index]
        await hass.config_entries.async_unload(entry.entry_id)


async def test_unencrypted_backup_is_refused_unless_allowed(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    backup_manager: Any,
    moto_server: S3Server,
    moto_bucket: str,
) -> None:
    backup_manager.config.data.create_backup.password = None  # no backup key: Home Assistant cannot encrypt
    with patch.object(
        backup_manager, "async_create_backup", wraps=backup_manager.async_create_backup
    ) as create:
        error = await _failing_backup(hass, loaded_entry)
    assert error == UNENCRYPTED_REFUSED
    assert objects(moto_server, moto_bucket) == {}
    # Refused before Home Assistant spent minutes building an archive it could not send.
    assert create.call_count == 0
    assert await backup_manager.backup_agents["backup.local"].async_list_backups() == []

    hass.config_entries.async_update_entry(loaded_entry, options={CONF_ALLOW_UNENCRYPTED: True})
    await hass.async_block_till_done()  # the entry reloads with the new option
    await create_backup(hass, loaded_entry)
    assert len(objects(moto_server, moto_bucket)) == 1


async def test_busy_manager_fails_a_manual_backup_at_once(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, backup_manager: Any
) -> None:
    backup_manager.async_on_backup_event(
        CreateBackupEvent(reason=None, stage=None, state=CreateBackupState.IN_PROGRESS)
    )
    try:
        error = await _failing_backup(hass, loaded_entry)
    finally:
        backup_manager.async_on_backup_event(IdleEvent())
    assert "busy" in error


# Home Assistant 2026.4 added upload progress to its backup events (the Backups page shows it); before, none exists.
UploadBackupEvent = getattr(backup_manager_module, "UploadBackupEvent", None)


@pytest.mark.skipif(
    UploadBackupEvent is None,
    reason="this Home Assistant (before 2026.4) has no upload progress in its backup events (UploadBackupEvent)",
)
async def test_home_assistant_shows_our_upload_progress(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, config_dir: Path
) -> None:
    """Settings > System > Backups shows the progress of the upload to our location, from our ``on_progress``."""
    (config_dir / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))  # three 5 MiB parts
    hass.config_entries.async_update_entry(loaded_entry, options={CONF_BANDWIDTH_LIMIT: 4096})  # about 3 s
    await hass.async_block_till_done()
    events: list[Any] = []
    unsubscribe = hass.data[DATA_MANAGER].async_subscribe_events(events.append)
    try:
        response = await create_backup(hass, loaded_entry)
    finally:
        unsubscribe()
    ours = [
        event
        for event in events
        if isinstance(event, UploadBackupEvent) and event.agent_id == agent_id_for(loaded_entry)
    ]
    uploaded = [event.uploaded_bytes for event in ours]
    assert {event.total_bytes for event in ours} == {response["size"]}
    assert uploaded == sorted(uploaded)
    assert uploaded[-1] == response["size"]
    assert any(0 < value < response["size"] for value in uploaded), f"no progress along the way: {uploaded}"
    assert {event.manager_state for event in ours} == {"create_backup"}


async def test_cancel_during_upload_leaves_nothing_behind(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    moto_server: S3Server,
    moto_bucket: str,
    config_dir: Path,
) -> None:
    (config_dir / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))  # two 5 MiB parts
    hass.config_entries.async_update_entry(loaded_entry, options={CONF_BANDWIDTH_LIMIT: 512})
    await hass.async_block_till_done()
    failed = async_capture_events(hass, EVENT_FAILED)
    task = hass.async_create_task(create_backup(hass, loaded_entry))
    runner = loaded_entry.runtime_data.runner
    async with asyncio.timeout(60):  # until the gateway has created the upload and parts are on their way
        while not ((pending := runner.pending_summary()) and pending["remote_id"]):
            await asyncio.sleep(0.05)
    assert state(hass, loaded_entry, "status") == "uploading"
    await asyncio.sleep(0.5)
    await hass.services.async_call(
        DOMAIN, "cancel_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
    )
    with pytest.raises(HomeAssistantError):
        await task
    await let_upload_progress_settle(hass)
    assert state(hass, loaded_entry, "status") == "cancelled"
    assert runner.history[0].status.value == "cancelled"
    assert failed == [], "a cancelled backup is not a failure"
    assert multipart_uploads(moto_server, moto_bucket) == []
    assert objects(moto_server, moto_bucket) == {}
    assert loaded_entry.state is ConfigEntryState.LOADED


async def test_options_changed_during_a_backup_apply_after_it(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, config_dir: Path
) -> None:
    """A reload would interrupt the upload: new options wait for the backup to end."""
    (config_dir / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    hass.config_entries.async_update_entry(loaded_entry, options={CONF_BANDWIDTH_LIMIT: 2048})
    await hass.async_block_till_done()
    runner = loaded_entry.runtime_data.runner
    task = hass.async_create_task(create_backup(hass, loaded_entry))
    async with asyncio.timeout(60):
        while not ((pending := runner.pending_summary()) and pending["remote_id"]):
            await asyncio.sleep(0.05)
    hass.config_entries.async_update_entry(loaded_entry, options={CONF_BANDWIDTH_LIMIT: 4096})
    await asyncio.sleep(0.2)
    assert loaded_entry.runtime_data.runner is runner, "not reloaded during the upload"
    response = await task
    await hass.async_block_till_done()
    assert response["size"] > 6 * 1024 * 1024
    assert runner.history[0].status.value == "succeeded"
    assert loaded_entry.runtime_data.settings.bandwidth_limit == 4096 * 1024, "applied after the backup"


async def test_cancel_while_the_gateway_creates_the_upload_leaves_nothing_behind(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, moto_server: S3Server, moto_bucket: str
) -> None:
    """A cancel that lands before the create's answer: the engine still learns the id, and aborts it."""
    task = hass.async_create_task(create_backup(hass, loaded_entry))
    async with asyncio.timeout(60):
        while state(hass, loaded_entry, "status") != "uploading":  # set just before POST /v1/backups
            await asyncio.sleep(0)
    await hass.services.async_call(
        DOMAIN, "cancel_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
    )
    with pytest.raises(HomeAssistantError):
        await task
    await let_upload_progress_settle(hass)
    assert state(hass, loaded_entry, "status") == "cancelled"
    assert multipart_uploads(moto_server, moto_bucket) == []
    # And the next backup is not refused with 409 upload_in_progress.
    await create_backup(hass, loaded_entry)
    assert len(objects(moto_server, moto_bucket)) == 1


async def test_an_upload_left_behind_on_the_gateway_is_aborted_and_the_backup_made(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, moto_server: S3Server, moto_bucket: str
) -> None:
    """The answer to a create was lost (a timeout): the gateway still holds that upload in progress."""
    client = loaded_entry.runtime_data.client
    stuck = await client.create_backup(name="lost answer", size=1234, metadata={})
    assert len(multipart_uploads(moto_server, moto_bucket)) == 1
    response = await create_backup(hass, loaded_entry)
    assert (await client.get_backup(stuck.id)).status == "failed"
    assert multipart_uploads(moto_server, moto_bucket) == []
    (stored,) = objects(moto_server, moto_bucket).values()
    assert len(stored) == response["size"]


async def test_our_backups_are_not_home_assistants_automatic_ones_and_say_whose_they_are(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, backup_manager: Any
) -> None:
    """Home Assistant's retention of automatic backups would count ours against its own (test_retention.py):
    they are made as its manual ones are, named and marked for what they are."""
    nightly = await loaded_entry.runtime_data.runner.async_run(JobTrigger.SCHEDULE)
    manual = await create_backup(hass, loaded_entry)
    backups, _ = await backup_manager.async_get_backups()
    assert backups[nightly.backup_id].with_automatic_settings is False
    assert backups[manual["backup_id"]].with_automatic_settings is False
    assert backup_manager.config.data.last_completed_automatic_backup is None
    assert backups[nightly.backup_id].name.startswith("Offsite nightly backup ")
    assert backups[manual["backup_id"]].name.startswith("Offsite backup ")
    listed = {
        b.backup_id: b
        for b in await backup_manager.backup_agents[agent_id_for(loaded_entry)].async_list_backups()
    }
    assert listed[nightly.backup_id].extra_metadata[MARKER] == "schedule"
    assert listed[manual["backup_id"]].extra_metadata[MARKER] == "manual"


async def test_backup_contents_on_core(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, backup_manager: Any
) -> None:
    """Without a Supervisor: everything is Home Assistant and its database; "automatic" follows Home Assistant's."""
    everything = await create_backup(hass, loaded_entry)
    backup_manager.config.data.create_backup.include_database = False
    hass.config_entries.async_update_entry(loaded_entry, options={CONF_CONTENTS: "automatic"})
    await hass.async_block_till_done()
    automatic = await create_backup(hass, loaded_entry)
    agent = backup_manager.backup_agents[agent_id_for(loaded_entry)]
    listed = {backup.backup_id: backup for backup in await agent.async_list_backups()}
    assert listed[everything["backup_id"]].database_included is True
    assert listed[automatic["backup_id"]].database_included is False
    for backup in listed.values():
        assert backup.homeassistant_included is True
        assert (backup.addons, backup.folders) == ([], [])
