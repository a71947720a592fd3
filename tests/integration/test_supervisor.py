"""Home Assistant OS and Supervised installs: whole backups (add-ons and folders), restore, resume.

Home Assistant's own backup manager runs in Supervisor mode against a simulated Supervisor API (supervisor.py);
the gateway and storage are real.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohasupervisor.models import backups as supervisor_backups
from aiohasupervisor.models.backups import LOCATION_CLOUD_BACKUP, LOCATION_LOCAL_STORAGE
from homeassistant.components.backup import Folder
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.components.backup.manager import KnownBackup
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.exceptions import HomeAssistantError
from homeassistant.setup import async_setup_component
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_capture_events,
    async_fire_time_changed,
)

from custom_components.offsite_backup.backup import agent_id_for
from custom_components.offsite_backup.const import (
    CONF_ADDONS,
    CONF_CONTENTS,
    CONF_FOLDERS,
    DOMAIN,
    EVENT_FAILED,
    EVENT_SUCCEEDED,
    JobTrigger,
)
from custom_components.offsite_backup.runner import STOPPED_CREATING
from tests.engine.proxy import FaultProxy, gate
from tests.helpers.servers import S3Server
from tests.integration.common import (
    entry_behind_proxy,
    let_upload_progress_settle,
    objects,
    state,
)
from tests.integration.conftest import BACKUP_PASSWORD
from tests.integration.supervisor import ADDONS, FakeSupervisor, supervised

EVERY_FOLDER = {supervisor_backups.Folder(folder.value) for folder in Folder}


@pytest.fixture
def supervisor(hass: HomeAssistant) -> Iterator[FakeSupervisor]:
    with supervised(hass) as fake:
        yield fake


@pytest.fixture
async def supervised_manager(hass: HomeAssistant, supervisor: FakeSupervisor) -> Any:
    """Home Assistant's backup integration on a Supervisor install, with a backup key."""
    assert await async_setup_component(hass, "backup", {})
    await hass.async_block_till_done()
    manager = hass.data[DATA_MANAGER]
    assert "hassio.local" in manager.backup_agents
    assert "backup.local" not in manager.backup_agents, "core registers no local location under a Supervisor"
    manager.config.data.create_backup.password = BACKUP_PASSWORD
    return manager


@pytest.fixture
async def entry(
    hass: HomeAssistant, supervised_manager: Any, config_entry: MockConfigEntry
) -> MockConfigEntry:
    assert await hass.config_entries.async_setup(config_entry.entry_id)
    await hass.async_block_till_done()
    return config_entry


async def _back_up(hass: HomeAssistant, entry: MockConfigEntry) -> dict[str, Any]:
    response = await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
    )
    assert isinstance(response, dict)
    return response


async def _with_options(hass: HomeAssistant, entry: MockConfigEntry, options: dict[str, Any]) -> None:
    hass.config_entries.async_update_entry(entry, options=options)
    await hass.async_block_till_done()


async def test_a_backup_holds_every_add_on_and_folder_by_default(
    hass: HomeAssistant,
    entry: MockConfigEntry,
    supervisor: FakeSupervisor,
    moto_server: S3Server,
    moto_bucket: str,
) -> None:
    response = await _back_up(hass, entry)

    (options,) = supervisor.created
    assert options.addons == supervisor_backups.AddonSet.ALL
    assert set(options.folders) == EVERY_FOLDER
    assert options.homeassistant is True
    assert options.homeassistant_exclude_database is False
    assert options.password == BACKUP_PASSWORD
    # Written to the Supervisor's own folder while it is sent (what a restart resumes from)...
    assert options.location == [LOCATION_LOCAL_STORAGE]
    slug = response["backup_id"]
    # ...the archive reaches our location byte for byte...
    (stored,) = objects(moto_server, moto_bucket).values()
    assert stored == supervisor.made[slug]
    # ...and the local copy is removed once it is off-site.
    assert supervisor.removed == [(slug, {LOCATION_LOCAL_STORAGE})]
    assert slug not in supervisor.backups
    listed = await hass.data[DATA_MANAGER].backup_agents[agent_id_for(entry)].async_list_backups()
    assert {addon.slug for addon in listed[0].addons} == set(ADDONS)
    assert {folder.value for folder in listed[0].folders} == {folder.value for folder in Folder}


async def test_chosen_add_ons_and_folders(
    hass: HomeAssistant, entry: MockConfigEntry, supervisor: FakeSupervisor
) -> None:
    await _with_options(
        hass, entry, {CONF_CONTENTS: "custom", CONF_ADDONS: ["core_mosquitto"], CONF_FOLDERS: ["share"]}
    )
    await _back_up(hass, entry)
    (options,) = supervisor.created
    assert options.addons == {"core_mosquitto"}
    # Home Assistant always adds its SSL folder to a backup that holds Home Assistant.
    assert set(options.folders) == {supervisor_backups.Folder.SHARE, supervisor_backups.Folder.SSL}


async def test_the_same_contents_as_home_assistants_automatic_backups(
    hass: HomeAssistant, entry: MockConfigEntry, supervisor: FakeSupervisor, supervised_manager: Any
) -> None:
    automatic = supervised_manager.config.data.create_backup
    automatic.include_all_addons = False
    automatic.include_addons = ["core_esphome"]
    automatic.include_folders = [Folder.MEDIA]
    automatic.include_database = False
    await _with_options(hass, entry, {CONF_CONTENTS: "automatic"})
    await _back_up(hass, entry)
    (options,) = supervisor.created
    assert options.addons == {"core_esphome"}
    assert set(options.folders) == {supervisor_backups.Folder.MEDIA, supervisor_backups.Folder.SSL}
    assert options.homeassistant_exclude_database is True


@pytest.mark.skipif(
    "failed_addons" not in getattr(KnownBackup, "__dataclass_fields__", {}),
    reason="this Home Assistant (2025.4) does not record the add-ons a backup could not hold",
)
async def test_an_add_on_that_fails_is_named_and_the_backup_still_lands(
    hass: HomeAssistant,
    entry: MockConfigEntry,
    supervisor: FakeSupervisor,
    moto_server: S3Server,
    moto_bucket: str,
) -> None:
    supervisor.failing_addons = {"a0d7b954_zigbee2mqtt"}
    succeeded = async_capture_events(hass, EVENT_SUCCEEDED)
    response = await _back_up(hass, entry)
    assert len(objects(moto_server, moto_bucket)) == 1, "the backup landed"
    job = entry.runtime_data.runner.history[0]
    assert job.status.value == "succeeded"
    assert job.error == "Partial backup: Home Assistant could not back up add-on Zigbee2MQTT"
    assert state(hass, entry, "last_error") == job.error
    (event,) = succeeded
    assert event.data["backup_id"] == response["backup_id"]
    assert event.data["partial"] is True
    assert event.data["error"] == job.error
    # Home Assistant marks it partial itself, as it does for its own backups.
    known = hass.data[DATA_MANAGER].known_backups.get(response["backup_id"])
    assert [addon.slug for addon in known.failed_addons] == ["a0d7b954_zigbee2mqtt"]
    # The next whole backup clears the last error.
    supervisor.failing_addons = set()
    await _back_up(hass, entry)
    assert state(hass, entry, "last_error") == "none"


async def test_a_restore_from_our_location_restores_add_ons_and_folders(
    hass: HomeAssistant, entry: MockConfigEntry, supervisor: FakeSupervisor, supervised_manager: Any
) -> None:
    response = await _back_up(hass, entry)
    slug = response["backup_id"]
    await supervised_manager.async_restore_backup(
        slug,
        agent_id=agent_id_for(entry),
        password=BACKUP_PASSWORD,
        restore_addons=["core_mosquitto", "a0d7b954_zigbee2mqtt"],
        restore_database=True,
        restore_folders=[Folder.SHARE, Folder.MEDIA],
        restore_homeassistant=True,
    )
    # Home Assistant streamed the backup from our location to the Supervisor, byte for byte...
    assert supervisor.received == [supervisor.made[slug]]
    # ...and asked it to restore it with those add-ons and folders.
    ((restored, options),) = supervisor.restored
    assert restored == slug
    assert options.addons == {"core_mosquitto", "a0d7b954_zigbee2mqtt"}
    assert options.folders == {supervisor_backups.Folder.SHARE, supervisor_backups.Folder.MEDIA}
    assert options.homeassistant is True
    assert options.password == BACKUP_PASSWORD
    assert options.location == LOCATION_CLOUD_BACKUP


@pytest.fixture
async def proxied_entry(
    hass: HomeAssistant, supervised_manager: Any, moto_server: S3Server, moto_bucket: str, tmp_path: Path
) -> AsyncIterator[tuple[MockConfigEntry, FaultProxy]]:
    async with entry_behind_proxy(hass, moto_server, moto_bucket, tmp_path / "gw") as proxied_entry:
        yield proxied_entry


async def test_an_upload_interrupted_by_a_restart_resumes(
    hass: HomeAssistant,
    proxied_entry: tuple[MockConfigEntry, FaultProxy],
    supervisor: FakeSupervisor,
    moto_server: S3Server,
    moto_bucket: str,
) -> None:
    entry, proxy = proxied_entry
    proxy.fail(2, gate())  # part 2 waits: Home Assistant restarts meanwhile
    action = hass.async_create_task(_back_up(hass, entry))
    async with asyncio.timeout(60):
        while not (proxy.stored[1] == 1 and proxy.arrived[2].is_set()):
            await asyncio.sleep(0.05)
    assert await hass.config_entries.async_unload(entry.entry_id)  # what a restart does first
    with pytest.raises(HomeAssistantError, match="suspended"):
        await action
    await let_upload_progress_settle(hass)
    (slug,) = supervisor.backups  # the Supervisor still holds it, in its own folder
    proxy.open_gate()
    proxy.reset_counts()

    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)

    runner = entry.runtime_data.runner
    assert [(job.trigger.value, job.status.value) for job in runner.history] == [("manual", "succeeded")]
    assert proxy.stored[1] == 0, "part 1 was not sent again"
    (stored,) = objects(moto_server, moto_bucket).values()
    assert stored == supervisor.made[slug], "resumed from the Supervisor's copy, byte for byte"
    assert supervisor.removed == [(slug, {LOCATION_LOCAL_STORAGE})], "then that copy was removed"


async def test_the_options_offer_add_ons_and_folders_on_a_supervisor(
    hass: HomeAssistant, entry: MockConfigEntry
) -> None:
    result = await hass.config_entries.options.async_init(entry.entry_id)
    schema = result["data_schema"].schema
    contents = next(value for key, value in schema.items() if key == CONF_CONTENTS)
    assert contents.config["options"] == ["full", "automatic", "custom"]
    # The form as shown (its suggested values), with "chosen add-ons and folders".
    answer = {
        key.schema: key.description["suggested_value"]
        for key in schema
        if key.description and key.description.get("suggested_value") is not None
    }
    answer |= {CONF_CONTENTS: "custom"}
    result = await hass.config_entries.options.async_configure(result["flow_id"], answer)
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "contents"
    addons = next(value for key, value in result["data_schema"].schema.items() if key == CONF_ADDONS)
    assert [option["value"] for option in addons.config["options"]] == [
        "core_esphome",
        "core_mosquitto",
        "a0d7b954_zigbee2mqtt",
    ]
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], {CONF_ADDONS: ["core_mosquitto"], CONF_FOLDERS: ["share", "addons"]}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    contents_choice = entry.runtime_data.settings.contents
    assert (contents_choice.contents, contents_choice.addons, contents_choice.folders) == (
        "custom",
        ("core_mosquitto",),
        ("share", "addons"),
    )


async def test_the_options_offer_no_add_ons_without_a_supervisor(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    result = await hass.config_entries.options.async_init(loaded_entry.entry_id)
    contents = next(value for key, value in result["data_schema"].schema.items() if key == CONF_CONTENTS)
    assert contents.config["options"] == ["full", "automatic"]


def test_the_fake_supervisor_archive_is_a_tar(tmp_path: Path) -> None:
    """The archives the simulated Supervisor makes are real tars (so restores and resumes move real bytes)."""
    import tarfile  # noqa: PLC0415

    fake = FakeSupervisor()
    fake.content_size = 10
    options = supervisor_backups.PartialBackupOptions(
        addons={"core_mosquitto"}, folders={supervisor_backups.Folder.SHARE}, homeassistant=True, name="n"
    )
    data = fake._archive("abc", options, ["core_mosquitto"], ["share"])
    path = tmp_path / "b.tar"
    path.write_bytes(data)
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == [
            "./backup.json",
            "./core_mosquitto.tar.gz",
            "./homeassistant.tar.gz",
            "./share.tar.gz",
        ]
    assert os.path.getsize(path) == len(data)


async def _stop_while_the_supervisor_writes(
    hass: HomeAssistant, entry: MockConfigEntry, supervisor: FakeSupervisor
) -> str:
    """Tonight's backup starts; Home Assistant stops while the Supervisor is still writing it. Its slug."""
    supervisor.hold_writing = True
    runner = entry.runtime_data.runner
    entry.async_create_background_task(
        hass,
        runner.async_run(JobTrigger.SCHEDULE, retry_until=dt_util.utcnow() + timedelta(hours=1)),
        "tonight's backup",
    )
    async with asyncio.timeout(30):
        while not supervisor.writing:
            await asyncio.sleep(0.02)
    (slug,) = supervisor.writing
    # Home Assistant stops: the stop listener, then every task ends, the entry's and the backup manager's wait
    # for the Supervisor (which goes on writing: it is another process).
    assert await hass.config_entries.async_unload(entry.entry_id)
    for task in asyncio.all_tasks():
        if task.get_name() == "backup_manager_create_backup":
            task.cancel()
    await hass.async_block_till_done()
    assert runner.history == [], "not recorded as cancelled: the next start counts it"
    return slug


@pytest.mark.parametrize("written", ["before the restart", "after the restart"])
async def test_a_stop_while_the_supervisor_writes_the_nightly_counts_the_night_and_removes_the_leftover(
    hass: HomeAssistant,
    entry: MockConfigEntry,
    supervisor: FakeSupervisor,
    supervised_manager: Any,
    written: str,
) -> None:
    failed = async_capture_events(hass, EVENT_FAILED)
    slug = await _stop_while_the_supervisor_writes(hass, entry, supervisor)
    if written == "before the restart":
        supervisor.finish_writing()

    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)

    runner = entry.runtime_data.runner
    assert [(job.trigger.value, job.status.value) for job in runner.history] == [("schedule", "failed")]
    assert runner.history[0].error == STOPPED_CREATING
    assert runner.failures_in_row == 1, "the night counts as failed"
    assert [event.data["error"] for event in failed] == [STOPPED_CREATING]
    if written == "after the restart":
        assert slug not in supervisor.backups, "still being written"
        supervisor.finish_writing()
        assert slug in supervisor.backups
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(minutes=11))
        await hass.async_block_till_done(wait_background_tasks=True)
    assert supervisor.removed == [(slug, {LOCATION_LOCAL_STORAGE})], "the leftover was removed"
    assert slug not in supervisor.backups
    assert not runner.leftovers, "nothing more to look for"

    supervisor.hold_writing = False
    await _back_up(hass, entry)
    assert runner.history[0].status.value == "succeeded"
    assert runner.failures_in_row == 0
