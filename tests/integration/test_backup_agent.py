"""The backup location: list, get, download, upload, delete through the gateway, and a real restore from it."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.backup_restore import restore_backup
from homeassistant.components.backup import AgentBackup, BackupAgentError, BackupNotFound
from homeassistant.components.backup.agent import BackupAgent, BackupAgentUnreachableError
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.core import HomeAssistant
from homeassistant.helpers import instance_id
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_mock_service

from custom_components.offsite_backup.backup import async_register_backup_agents_listener
from custom_components.offsite_backup.const import CONF_ALLOW_UNENCRYPTED, DOMAIN
from custom_components.offsite_backup.engine.uploader import upload
from custom_components.offsite_backup.runner import UNENCRYPTED_REFUSED
from tests.helpers.gateway import RunningGateway, run_gateway
from tests.helpers.servers import S3Server
from tests.integration.common import backup_now, objects, set_up_entry, sha256
from tests.integration.conftest import BACKUP_PASSWORD


def agent_of(hass: HomeAssistant, entry: MockConfigEntry) -> BackupAgent:
    agent: BackupAgent = hass.data[DATA_MANAGER].backup_agents[f"{DOMAIN}.{entry.unique_id}"]
    return agent


def agent_backup(data: bytes, *, protected: bool, backup_id: str = "abc123") -> AgentBackup:
    return AgentBackup(
        addons=[],
        backup_id=backup_id,
        date="2026-11-26T23:00:00+01:00",
        database_included=True,
        extra_metadata={},
        folders=[],
        homeassistant_included=True,
        homeassistant_version="2025.4.4",
        name="Hand made",
        protected=protected,
        size=len(data),
    )


def opener(data: bytes, chunk: int = 100_000) -> Any:
    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(data), chunk):
            yield data[start : start + chunk]

    async def open_stream() -> AsyncIterator[bytes]:
        return stream()

    return open_stream


async def test_list_get_download_delete(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, moto_server: S3Server, moto_bucket: str
) -> None:
    agent = agent_of(hass, loaded_entry)
    assert agent.name == "home"
    assert await agent.async_list_backups() == []
    backup_id = await backup_now(hass, loaded_entry)

    (listed,) = await agent.async_list_backups()
    got = await agent.async_get_backup(backup_id)
    assert got == listed
    assert got.backup_id == backup_id
    assert got.protected is True
    assert got.name.startswith("Offsite backup ")
    (stored,) = objects(moto_server, moto_bucket).values()
    assert got.size == len(stored)
    downloaded = b"".join([chunk async for chunk in await agent.async_download_backup(backup_id)])
    assert sha256(downloaded) == sha256(stored)

    for call in (agent.async_get_backup, agent.async_download_backup, agent.async_delete_backup):
        with pytest.raises(BackupNotFound):
            await call("no-such-backup")

    await agent.async_delete_backup(backup_id)
    assert await agent.async_list_backups() == []
    assert objects(moto_server, moto_bucket) == {}
    with pytest.raises(BackupNotFound):
        await agent.async_delete_backup(backup_id)


async def test_backups_without_home_assistant_metadata_are_not_listed(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    client = loaded_entry.runtime_data.client
    await upload(client=client, open_stream=opener(b"x" * 1000), size=1000, name="foreign", metadata={"a": 1})
    assert len(await client.list_backups()) == 1
    assert await agent_of(hass, loaded_entry).async_list_backups() == []


async def test_upload_through_the_agent_reports_progress_to_home_assistant(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    """Home Assistant 2026.4+ passes on_progress; bytes go up, the last call is the whole size."""
    data = os.urandom(6 * 1024 * 1024)  # two parts
    seen: list[int] = []
    await agent_of(hass, loaded_entry).async_upload_backup(
        open_stream=opener(data),
        backup=agent_backup(data, protected=True),
        on_progress=lambda *, bytes_uploaded, **_: seen.append(bytes_uploaded),
    )
    assert seen
    assert seen == sorted(seen)
    assert seen[-1] == len(data)
    downloaded = b"".join(
        [c async for c in await agent_of(hass, loaded_entry).async_download_backup("abc123")]
    )
    assert downloaded == data


async def test_the_agent_refuses_an_unencrypted_backup_unless_allowed(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    data = b"plain tar" * 100
    with pytest.raises(BackupAgentError, match="Refusing to send an unencrypted backup") as err:
        await agent_of(hass, loaded_entry).async_upload_backup(
            open_stream=opener(data), backup=agent_backup(data, protected=False)
        )
    assert str(err.value) == UNENCRYPTED_REFUSED
    assert await agent_of(hass, loaded_entry).async_list_backups() == []

    hass.config_entries.async_update_entry(loaded_entry, options={CONF_ALLOW_UNENCRYPTED: True})
    await hass.async_block_till_done()
    await agent_of(hass, loaded_entry).async_upload_backup(
        open_stream=opener(data), backup=agent_backup(data, protected=False)
    )
    assert [b.protected for b in await agent_of(hass, loaded_entry).async_list_backups()] == [False]


async def test_unreachable_gateway(
    hass: HomeAssistant, backup_manager: object, moto_server: S3Server, moto_bucket: str, tmp_path: Path
) -> None:
    async with run_gateway(moto_server, moto_bucket, tmp_path / "gw") as gateway:
        entry = await set_up_entry(hass, gateway)
    agent = agent_of(hass, entry)  # the gateway is gone now
    with pytest.raises(BackupAgentUnreachableError, match="Failed to list backups: Cannot reach the gateway"):
        await agent.async_list_backups()
    with pytest.raises(BackupAgentUnreachableError):
        await agent.async_get_backup("x")
    await hass.config_entries.async_unload(entry.entry_id)


async def test_listeners_hear_when_the_location_comes_and_goes(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    calls: list[None] = []
    remove = async_register_backup_agents_listener(hass, listener=lambda: calls.append(None))
    await hass.config_entries.async_unload(loaded_entry.entry_id)
    await hass.async_block_till_done()
    assert len(calls) >= 1
    assert f"{DOMAIN}.{loaded_entry.unique_id}" not in hass.data[DATA_MANAGER].backup_agents
    await hass.config_entries.async_setup(loaded_entry.entry_id)
    await hass.async_block_till_done()
    assert len(calls) >= 2
    assert f"{DOMAIN}.{loaded_entry.unique_id}" in hass.data[DATA_MANAGER].backup_agents
    remove()
    count = len(calls)
    await hass.config_entries.async_reload(loaded_entry.entry_id)
    assert len(calls) == count


async def test_restore_from_the_offsite_location(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, config_dir: Path
) -> None:
    """Settings > System > Backups > restore: Home Assistant downloads it from us, checks the key, restores."""
    marker = os.urandom(32 * 1024)
    (config_dir / "marker.bin").write_bytes(marker)
    backup_id = await backup_now(hass, loaded_entry)
    (config_dir / "marker.bin").unlink()
    (config_dir / "after.txt").write_text("written after the backup")

    restarts = async_mock_service(hass, "homeassistant", "restart")  # the one thing a test cannot do
    await hass.data[DATA_MANAGER].async_restore_backup(
        backup_id,
        agent_id=f"{DOMAIN}.{loaded_entry.unique_id}",
        password=BACKUP_PASSWORD,
        restore_addons=None,
        restore_database=True,
        restore_folders=None,
        restore_homeassistant=True,
    )
    assert len(restarts) == 1
    await hass.config_entries.async_unload(loaded_entry.entry_id)
    # What Home Assistant runs at the next start, before anything else.
    assert await hass.async_add_executor_job(restore_backup, str(config_dir))
    assert (config_dir / "marker.bin").read_bytes() == marker
    assert not (config_dir / "after.txt").exists()


async def test_a_backup_sent_twice_is_listed_once_and_deleted_whole(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: RunningGateway,
    moto_server: S3Server,
    moto_bucket: str,
) -> None:
    data = os.urandom(10_000)
    agent = agent_of(hass, loaded_entry)
    for _ in range(2):  # e.g. the same backup sent again from Settings > System > Backups
        await agent.async_upload_backup(open_stream=opener(data), backup=agent_backup(data, protected=True))
    client = loaded_entry.runtime_data.client
    # The gateway keeps both copies: the Home Assistant id in a description is the client's word, and no upload
    # deletes another on its say-so (a token could otherwise delete a protected backup by naming it).
    await gateway.purged()
    assert len(await client.list_backups()) == 2
    assert len(objects(moto_server, moto_bucket)) == 2
    # Home Assistant lists it once, and deletes it whole.
    assert [backup.backup_id for backup in await agent.async_list_backups()] == ["abc123"]
    await agent.async_delete_backup("abc123")
    assert await client.list_backups() == [], "both copies deleted"
    with pytest.raises(BackupNotFound):
        await agent.async_get_backup("abc123")


async def test_the_listing_is_read_once_a_minute_and_again_after_a_change(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, freezer: FrozenDateTimeFactory
) -> None:
    """Home Assistant asks for the list several times per page: one gateway call serves them for a minute."""
    client = loaded_entry.runtime_data.client
    agent = agent_of(hass, loaded_entry)
    with patch.object(client, "list_backups", wraps=client.list_backups) as listing:
        await agent.async_list_backups()
        await agent.async_list_backups()
        assert listing.call_count == 1
        data = b"x" * 1000
        await agent.async_upload_backup(open_stream=opener(data), backup=agent_backup(data, protected=True))
        assert [backup.backup_id for backup in await agent.async_list_backups()] == ["abc123"]
        assert listing.call_count == 2, "an upload makes the list read again"
        await agent.async_delete_backup("abc123")
        assert await agent.async_list_backups() == []
        assert listing.call_count == 3, "so does a delete"
        freezer.tick(timedelta(seconds=61))
        await agent.async_list_backups()
        assert listing.call_count == 4, "and its age"


async def test_the_gateway_never_sees_the_installation_uuid(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    """Home Assistant writes its installation's UUID into each backup's description; it stays in the house."""
    uuid = await instance_id.async_get(hass)
    backup_id = await backup_now(hass, loaded_entry)
    (remote,) = await loaded_entry.runtime_data.client.list_backups()
    assert uuid not in json.dumps(remote.metadata)
    assert remote.metadata["extra_metadata"]["instance_id"].startswith("offsite-backup:")
    # Read back by this installation, the description is Home Assistant's own again...
    (listed,) = await agent_of(hass, loaded_entry).async_list_backups()
    assert listed.extra_metadata["instance_id"] == uuid
    # ...so Home Assistant knows the backup for one of its own (None would mean "another installation's").
    backups, _ = await hass.data[DATA_MANAGER].async_get_backups()
    assert backups[backup_id].with_automatic_settings is False
