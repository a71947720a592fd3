"""An upload interrupted by a restart of Home Assistant resumes when the same backup is still on disk."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from homeassistant.components.backup.config import AgentConfig
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import issue_registry as ir
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_capture_events

from custom_components.offsite_backup.const import (
    CONF_ALLOW_UNENCRYPTED,
    CONF_KEEP_LOCAL,
    CONF_TOKEN,
    CONF_URL,
    DOMAIN,
    EVENT_FAILED,
    ISSUE_BACKUP_FAILING,
    ISSUE_QUOTA_EXCEEDED,
    JobTrigger,
)
from custom_components.offsite_backup.runner import JobError
from offsite_gateway.app import STORE
from tests.engine.proxy import FaultProxy, delay, gate, status
from tests.helpers.gateway import run_gateway
from tests.helpers.servers import S3Server
from tests.integration.common import (
    backup_now,
    entry_behind_proxy,
    let_upload_progress_settle,
    multipart_uploads,
    objects,
    read_from_backup,
    sha256,
)
from tests.integration.conftest import BACKUP_PASSWORD


@pytest.fixture
async def proxied(
    hass: HomeAssistant, backup_manager: object, moto_server: S3Server, moto_bucket: str, tmp_path: Path
) -> AsyncIterator[tuple[MockConfigEntry, FaultProxy]]:
    """An entry on a gateway whose part URLs go through a counting proxy in front of moto."""
    async with entry_behind_proxy(hass, moto_server, moto_bucket, tmp_path / "gw") as proxied_entry:
        yield proxied_entry


async def _interrupt_after_two_parts(
    hass: HomeAssistant, entry: MockConfigEntry, proxy: FaultProxy, agent_ids: list[str]
) -> str:
    """Start a 3-part backup, stop Home Assistant's side once storage holds parts 1 and 2; return the remote id."""
    proxy.fail(3, delay(60))  # part 3 hangs: the restart happens while it is in flight
    manager: Any = hass.data[DATA_MANAGER]
    creation = hass.async_create_task(
        manager.async_create_backup(
            agent_ids=agent_ids,
            include_addons=None,
            include_all_addons=False,
            include_database=True,
            include_folders=None,
            include_homeassistant=True,
            name="Interrupted",
            password=BACKUP_PASSWORD,
        )
    )
    runner = entry.runtime_data.runner
    async with asyncio.timeout(60):
        while not (
            proxy.stored[1] == 1
            and proxy.stored[2] == 1
            and (pending := runner.pending_summary())
            and pending["parts_acknowledged"] == 2
        ):
            await asyncio.sleep(0.05)
    remote_id = str(pending["remote_id"])
    # "Restart": the entry unloads (Home Assistant stopping does the same through EVENT_HOMEASSISTANT_STOP).
    assert await hass.config_entries.async_unload(entry.entry_id)
    await creation
    await hass.async_block_till_done()
    return remote_id


async def test_resume_sends_only_what_storage_lacks(
    hass: HomeAssistant,
    proxied: tuple[MockConfigEntry, FaultProxy],
    config_dir: Path,
    moto_server: S3Server,
    moto_bucket: str,
) -> None:
    entry, proxy = proxied
    (config_dir / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))  # three 5 MiB parts
    remote_id = await _interrupt_after_two_parts(
        hass, entry, proxy, ["backup.local", f"{DOMAIN}.{entry.unique_id}"]
    )
    assert objects(moto_server, moto_bucket) == {}
    assert len(multipart_uploads(moto_server, moto_bucket)) == 1, "suspended, not aborted"

    proxy.plan.clear()
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)

    runner = entry.runtime_data.runner
    assert [(job.trigger.value, job.status.value) for job in runner.history] == [
        ("home_assistant", "succeeded")
    ]
    assert runner.history[0].remote_id == remote_id, "the same upload was carried on"
    assert proxy.stored[1] == 1, "part 1 was not sent again"
    assert proxy.stored[2] == 1, "part 2 was not sent again"
    assert proxy.stored[3] == 1
    assert runner.pending_summary() is None

    manager: Any = hass.data[DATA_MANAGER]
    (backup_id,) = [b.backup_id for b in await manager.backup_agents["backup.local"].async_list_backups()]
    local = manager.local_backup_agents["backup.local"].get_backup_path(backup_id).read_bytes()
    (stored,) = objects(moto_server, moto_bucket).values()
    assert sha256(stored) == sha256(local), "byte-identical to the backup on disk"


async def test_nothing_to_resume_from_is_a_clear_failure(
    hass: HomeAssistant,
    proxied: tuple[MockConfigEntry, FaultProxy],
    config_dir: Path,
    moto_server: S3Server,
    moto_bucket: str,
) -> None:
    entry, proxy = proxied
    (config_dir / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    # Only to this location: Home Assistant deletes its temporary copy once the upload stops.
    await _interrupt_after_two_parts(hass, entry, proxy, [f"{DOMAIN}.{entry.unique_id}"])
    failed = async_capture_events(hass, EVENT_FAILED)
    proxy.plan.clear()
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)

    runner = entry.runtime_data.runner
    assert [job.status.value for job in runner.history] == ["failed"]
    assert "no longer on disk" in (runner.history[0].error or "")
    assert len(failed) == 1
    assert multipart_uploads(moto_server, moto_bucket) == [], "the interrupted upload was aborted"
    assert runner.pending_summary() is None


async def test_storage_failing_a_download_is_reported_as_unreachable(
    hass: HomeAssistant, proxied: tuple[MockConfigEntry, FaultProxy]
) -> None:
    from homeassistant.components.backup.agent import BackupAgentUnreachableError  # noqa: PLC0415

    entry, proxy = proxied
    await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": entry.entry_id}, blocking=True
    )
    agent = hass.data[DATA_MANAGER].backup_agents[f"{DOMAIN}.{entry.unique_id}"]
    (backup,) = await agent.async_list_backups()
    proxy.fail_other("GET", 500)
    with pytest.raises(BackupAgentUnreachableError, match="500"):
        await agent.async_download_backup(backup.backup_id)


async def test_our_own_backup_resumes_after_a_restart_from_its_local_copy(
    hass: HomeAssistant,
    proxied: tuple[MockConfigEntry, FaultProxy],
    config_dir: Path,
    moto_server: S3Server,
    moto_bucket: str,
) -> None:
    """The integration's own backups go to the local location too while they are sent, so a restart resumes them.

    Once the upload has its outcome, that copy is removed: nothing stays on disk that the user did not ask for.
    """
    entry, proxy = proxied
    (config_dir / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    proxy.fail(3, delay(60))
    runner = entry.runtime_data.runner
    job = hass.async_create_task(runner.async_run(JobTrigger.MANUAL))
    async with asyncio.timeout(60):
        while not ((pending := runner.pending_summary()) and pending["parts_acknowledged"] == 2):
            await asyncio.sleep(0.05)
    assert await hass.config_entries.async_unload(
        entry.entry_id
    )  # a restart of Home Assistant does this first
    with pytest.raises(JobError, match="suspended"):
        await job
    assert runner.history == [], "not recorded yet: the next start resumes it or says why not"
    assert not runner.busy
    manager: Any = hass.data[DATA_MANAGER]
    (on_disk,) = await manager.backup_agents["backup.local"].async_list_backups()
    archive = manager.local_backup_agents["backup.local"].get_backup_path(on_disk.backup_id).read_bytes()

    proxy.plan.clear()
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)

    history = entry.runtime_data.runner.history
    assert [(j.trigger.value, j.status.value) for j in history] == [("manual", "succeeded")]
    assert proxy.stored[1] == 1, "part 1 was not sent again"
    assert proxy.stored[2] == 1, "part 2 was not sent again"
    (stored,) = objects(moto_server, moto_bucket).values()
    assert sha256(stored) == sha256(archive), "byte-identical to the copy the upload resumed from"
    assert await manager.backup_agents["backup.local"].async_list_backups() == [], "the local copy is gone"


async def test_one_job_at_a_time(hass: HomeAssistant, proxied: tuple[MockConfigEntry, FaultProxy]) -> None:
    entry, proxy = proxied
    proxy.fail(1, delay(2))
    runner = entry.runtime_data.runner
    first = hass.async_create_task(runner.async_run(JobTrigger.MANUAL))
    async with asyncio.timeout(30):
        while not runner.busy:
            await asyncio.sleep(0.01)
    with pytest.raises(JobError) as err:
        await runner.async_run(JobTrigger.SCHEDULE)
    assert err.value.translation_key == "already_running"
    await first


async def test_the_local_copy_of_our_backups_is_removed_once_sent_unless_kept(
    hass: HomeAssistant, proxied: tuple[MockConfigEntry, FaultProxy], backup_manager: Any
) -> None:
    entry, _ = proxied
    local = backup_manager.backup_agents["backup.local"]
    sent = await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
    )
    assert isinstance(sent, dict)
    assert await local.async_list_backups() == [], "removed once off-site"

    hass.config_entries.async_update_entry(entry, options={CONF_KEEP_LOCAL: True})
    await hass.async_block_till_done()
    kept = await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
    )
    assert isinstance(kept, dict)
    assert [backup.backup_id for backup in await local.async_list_backups()] == [kept["backup_id"]]


async def test_the_local_copy_of_a_failed_backup_is_removed_too(
    hass: HomeAssistant, proxied: tuple[MockConfigEntry, FaultProxy], backup_manager: Any
) -> None:
    entry, proxy = proxied
    proxy.fail(1, *[status(400, "InvalidArgument", "refused for the test")])
    with pytest.raises(HomeAssistantError, match="refused for the test"):
        await hass.services.async_call(
            DOMAIN, "create_backup", {"config_entry_id": entry.entry_id}, blocking=True
        )
    await let_upload_progress_settle(hass)
    assert await backup_manager.backup_agents["backup.local"].async_list_backups() == []


async def test_a_stop_during_complete_is_not_sent_again_under_a_tight_quota(
    hass: HomeAssistant,
    backup_manager: object,
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    config_dir: Path,
    issue_registry: ir.IssueRegistry,
) -> None:
    """Home Assistant stops while the gateway completes the backup: the answer is lost, the backup is complete.

    The resume asks the gateway instead of sending it all again, which a quota with room for one copy would
    refuse (a false failure and a false quota issue).
    """
    (config_dir / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))  # three 5 MiB parts
    async with (
        FaultProxy(moto_server.endpoint) as storage,
        run_gateway(
            moto_server,
            moto_bucket,
            tmp_path / "gw",
            PART_SIZE=str(5 * 1024 * 1024),
            S3_PUBLIC_ENDPOINT=storage.url,
        ) as gateway,
        FaultProxy(gateway.url) as front,  # the gateway as Home Assistant reaches it
    ):
        instance_id, token = await gateway.add_instance("home")
        await gateway.app[STORE].set_policy(
            "home", {"quota_bytes": 20 * 1024 * 1024}
        )  # one copy fits, not two
        entry = MockConfigEntry(
            domain=DOMAIN, title="home", unique_id=instance_id, data={CONF_URL: front.url, CONF_TOKEN: token}
        )
        entry.add_to_hass(hass)
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
        failed = async_capture_events(hass, EVENT_FAILED)
        runner = entry.runtime_data.runner
        storage.fail(3, gate())  # the last part waits, so that the complete can be caught
        action = hass.async_create_task(backup_now(hass, entry))
        async with asyncio.timeout(60):
            while not ((pending := runner.pending_summary()) and storage.arrived[3].is_set()):
                await asyncio.sleep(0.02)
        complete = ("POST", f"/v1/backups/{pending['remote_id']}/complete")
        front.answer_late(*complete, 3600)  # the gateway completes it; the answer never comes back
        storage.open_gate()
        async with asyncio.timeout(60):
            await front.held[complete].wait()

        assert await hass.config_entries.async_unload(entry.entry_id)  # Home Assistant stops now
        with pytest.raises(HomeAssistantError, match="suspended"):
            await action
        await let_upload_progress_settle(hass)
        assert len(objects(moto_server, moto_bucket)) == 1, "the gateway completed it"
        storage.reset_counts()

        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done(wait_background_tasks=True)

        runner = entry.runtime_data.runner
        assert [(job.trigger.value, job.status.value) for job in runner.history] == [("manual", "succeeded")]
        assert runner.history[0].remote_id == pending["remote_id"], "the completed backup, not a new one"
        assert dict(storage.puts) == {}, "nothing was sent again"
        assert failed == []
        assert issue_registry.async_get_issue(DOMAIN, f"{ISSUE_QUOTA_EXCEEDED}_{entry.entry_id}") is None
        assert issue_registry.async_get_issue(DOMAIN, f"{ISSUE_BACKUP_FAILING}_{entry.entry_id}") is None
        assert len(objects(moto_server, moto_bucket)) == 1
        local = hass.data[DATA_MANAGER].backup_agents["backup.local"]
        assert await local.async_list_backups() == [], "the local copy went with the outcome"
        assert await hass.config_entries.async_unload(entry.entry_id)


async def test_resume_from_an_unencrypted_local_copy_starts_the_upload_over(
    hass: HomeAssistant,
    proxied: tuple[MockConfigEntry, FaultProxy],
    backup_manager: Any,
    config_dir: Path,
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
) -> None:
    """ "This system" set to unencrypted: the copy on disk is unencrypted, the upload was Home Assistant's
    encryption of it, which draws new nonces each time. The resume reads the copy through that encryption again
    and starts the upload over (the parts storage holds are of another encryption); nothing is deleted early."""
    entry, proxy = proxied
    backup_manager.config.data.agents["backup.local"] = AgentConfig(protected=False)
    marker = os.urandom(12 * 1024 * 1024)
    (config_dir / "big.bin").write_bytes(marker)
    old_remote = await _interrupt_after_two_parts(
        hass, entry, proxy, ["backup.local", f"{DOMAIN}.{entry.unique_id}"]
    )
    local = backup_manager.backup_agents["backup.local"]
    (on_disk,) = await local.async_list_backups()
    assert on_disk.protected is False, "kept unencrypted on disk"
    proxy.plan.clear()
    proxy.reset_counts()

    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)

    runner = entry.runtime_data.runner
    assert [(job.trigger.value, job.status.value) for job in runner.history] == [
        ("home_assistant", "succeeded")
    ], runner.history[0].error
    assert runner.history[0].remote_id != old_remote, "a new upload"
    assert dict(proxy.stored) == dict.fromkeys(range(1, 4), 1), "every part of the new encryption, once"
    assert multipart_uploads(moto_server, moto_bucket) == [], "the old upload was aborted"
    (stored,) = objects(moto_server, moto_bucket).values()
    assert marker not in stored
    assert read_from_backup(stored, BACKUP_PASSWORD, "data/big.bin", tmp_path) == marker, "whole, encrypted"
    remote = await entry.runtime_data.client.get_backup(runner.history[0].remote_id or "")
    assert remote.sha256 == sha256(stored)
    assert [b.backup_id for b in await local.async_list_backups()] == [on_disk.backup_id], (
        "a backup made from Settings > System > Backups keeps its local copy"
    )


async def test_resume_to_an_unencrypted_location_from_an_encrypted_copy_sends_the_same_bytes(
    hass: HomeAssistant,
    proxied: tuple[MockConfigEntry, FaultProxy],
    backup_manager: Any,
    config_dir: Path,
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
) -> None:
    """The other way round: this location set to unencrypted (and allowed), the copy on disk encrypted. Home
    Assistant's decryption gives the same bytes again: the resume carries the same upload on."""
    entry, proxy = proxied
    agent_id = f"{DOMAIN}.{entry.unique_id}"
    backup_manager.config.data.agents[agent_id] = AgentConfig(protected=False)
    hass.config_entries.async_update_entry(entry, options={CONF_ALLOW_UNENCRYPTED: True})
    await hass.async_block_till_done()
    marker = os.urandom(12 * 1024 * 1024)
    (config_dir / "big.bin").write_bytes(marker)
    remote_id = await _interrupt_after_two_parts(hass, entry, proxy, ["backup.local", agent_id])
    local = backup_manager.backup_agents["backup.local"]
    (on_disk,) = await local.async_list_backups()
    assert on_disk.protected is True, "kept encrypted on disk"
    proxy.plan.clear()
    proxy.reset_counts()

    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)

    runner = entry.runtime_data.runner
    assert [(job.trigger.value, job.status.value) for job in runner.history] == [
        ("home_assistant", "succeeded")
    ], runner.history[0].error
    assert runner.history[0].remote_id == remote_id, "the same upload was carried on"
    assert dict(proxy.stored) == {3: 1}, "parts 1 and 2 matched what storage holds: not sent again"
    (stored,) = objects(moto_server, moto_bucket).values()
    assert read_from_backup(stored, None, "data/big.bin", tmp_path) == marker, "whole, and unencrypted"
    remote = await entry.runtime_data.client.get_backup(remote_id)
    assert remote.sha256 == sha256(stored)


async def test_our_own_backup_with_an_unencrypted_local_copy_resumes_and_its_copy_goes_after(
    hass: HomeAssistant,
    proxied: tuple[MockConfigEntry, FaultProxy],
    backup_manager: Any,
    config_dir: Path,
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
) -> None:
    """The integration's own backup, its resume copy kept unencrypted: not taken for gone (and deleted) any more;
    it is read through the encryption again, sent, and only then removed."""
    entry, proxy = proxied
    backup_manager.config.data.agents["backup.local"] = AgentConfig(protected=False)
    marker = os.urandom(12 * 1024 * 1024)
    (config_dir / "big.bin").write_bytes(marker)
    proxy.fail(3, delay(60))
    runner = entry.runtime_data.runner
    job = hass.async_create_task(runner.async_run(JobTrigger.MANUAL))
    async with asyncio.timeout(60):
        while not ((pending := runner.pending_summary()) and pending["parts_acknowledged"] == 2):
            await asyncio.sleep(0.05)
    assert await hass.config_entries.async_unload(entry.entry_id)
    with pytest.raises(JobError, match="suspended"):
        await job
    local = backup_manager.backup_agents["backup.local"]
    (on_disk,) = await local.async_list_backups()
    assert on_disk.protected is False
    proxy.plan.clear()

    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)

    history = entry.runtime_data.runner.history
    assert [(j.trigger.value, j.status.value) for j in history] == [("manual", "succeeded")], history[0].error
    (stored,) = objects(moto_server, moto_bucket).values()
    assert read_from_backup(stored, BACKUP_PASSWORD, "data/big.bin", tmp_path) == marker
    assert multipart_uploads(moto_server, moto_bucket) == []
    assert await local.async_list_backups() == [], "the resume copy went once the job had its outcome"
