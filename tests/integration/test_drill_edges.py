"""The restore drill's edges: unencrypted and hand-made archives, damage made before the upload, a missing key, a
gateway or storage that cannot answer, the action's refusals, a drill stopped halfway, what is kept across a
restart, and backups deleted on purpose."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from homeassistant.components.backup import AgentBackup, BackupAgent
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.setup import async_setup_component
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.components.diagnostics import get_diagnostics_for_config_entry
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.offsite_backup.const import CONF_ALLOW_UNENCRYPTED, DOMAIN, STORE_DRILL, store_key
from custom_components.offsite_backup.engine.api import GatewayUnavailableError
from custom_components.offsite_backup.engine.uploader import upload
from tests.engine.proxy import gate
from tests.helpers.gateway import run_gateway
from tests.helpers.servers import S3Server
from tests.integration.common import entity_id, entry_behind_proxy, set_up_entry, state
from tests.integration.conftest import BACKUP_PASSWORD
from tests.integration.drill_helpers import (
    Held,
    backup_now,
    drill_events,
    held_downloads,
    issue,
    name_of,
    the_object,
    verify,
    with_data,
)


def agent_of(hass: HomeAssistant, entry: MockConfigEntry) -> BackupAgent:
    agent: BackupAgent = hass.data[DATA_MANAGER].backup_agents[f"{DOMAIN}.{entry.unique_id}"]
    return agent


def description(data: bytes, *, protected: bool, backup_id: str = "handmade1") -> AgentBackup:
    return AgentBackup(
        addons=[],
        backup_id=backup_id,
        date="2026-11-26T23:00:00+01:00",
        database_included=True,
        extra_metadata={},
        folders=[],
        homeassistant_included=True,
        homeassistant_version="2026.10.4",
        name="Hand made",
        protected=protected,
        size=len(data),
    )


def opener(data: bytes) -> Any:
    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 65536):
            yield data[start : start + 65536]

    async def open_stream() -> AsyncIterator[bytes]:
        return stream()

    return open_stream


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


async def send(hass: HomeAssistant, entry: MockConfigEntry, data: bytes, backup: AgentBackup) -> None:
    """A backup handed to the location as Home Assistant hands one (the gateway records its SHA-256)."""
    await agent_of(hass, entry).async_upload_backup(open_stream=opener(data), backup=backup)
    await hass.async_block_till_done()


async def download(hass: HomeAssistant, entry: MockConfigEntry, backup_id: str) -> bytes:
    return b"".join([chunk async for chunk in await agent_of(hass, entry).async_download_backup(backup_id)])


async def wait_for(condition: Any) -> None:
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------------- archives


async def test_an_unencrypted_backup_is_checked_without_the_key(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, config_dir: Path
) -> None:
    with_data(config_dir)
    hass.config_entries.async_update_entry(loaded_entry, options={CONF_ALLOW_UNENCRYPTED: True})
    await hass.async_block_till_done()
    await hass.data[DATA_MANAGER].async_create_backup(
        agent_ids=[f"{DOMAIN}.{loaded_entry.unique_id}"],
        include_addons=None,
        include_all_addons=False,
        include_database=True,
        include_folders=None,
        include_homeassistant=True,
        name="In the clear",
        password=None,
    )
    await hass.async_block_till_done()
    (backup,) = await agent_of(hass, loaded_entry).async_list_backups()
    assert backup.protected is False
    hass.data[DATA_MANAGER].config.data.create_backup.password = None  # no key needed

    assert await verify(hass, loaded_entry) == {"backup_id": backup.backup_id, "ok": True, "error": None}


async def test_an_archive_that_is_not_a_whole_backup_fails_though_its_sha256_matches(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    """What Home Assistant handed over was already incomplete: the gateway's SHA-256 is of the same bytes."""
    failed = drill_events(hass)[1]
    hass.config_entries.async_update_entry(loaded_entry, options={CONF_ALLOW_UNENCRYPTED: True})
    await hass.async_block_till_done()
    slug = json.dumps({"slug": "handmade1", "name": "Hand made"}).encode()
    data = tar_of([("./backup.json", slug), ("./notes.txt", b"no inner archive")])
    await send(hass, loaded_entry, data, description(data, protected=False))

    response = await verify(hass, loaded_entry, backup_id="handmade1")

    assert response["ok"] is False
    assert response["error"] == (
        "Backup Hand made (handmade1) is not a whole Home Assistant backup: inner archive missing: homeassistant"
    )
    assert failed[-1].data["error"] == response["error"]
    assert issue(hass, loaded_entry) is not None


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ([("./backup.json", b"{}")], "Backup Hand made (handmade1) holds no inner archive to restore"),
        (None, "Backup Hand made (handmade1) cannot be opened: "),
    ],
)
async def test_an_encrypted_backup_that_cannot_be_opened(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, members: list[tuple[str, bytes]] | None, says: str
) -> None:
    data = tar_of(members) if members else b"not a tar archive at all" * 1000
    await send(hass, loaded_entry, data, description(data, protected=True))
    response = await verify(hass, loaded_entry, backup_id="handmade1")
    assert response["ok"] is False
    assert response["error"].startswith(says), response["error"]


async def test_damage_made_before_the_upload_is_found_by_home_assistants_validation(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, config_dir: Path
) -> None:
    """Bytes changed inside the encrypted inner archive before they were sent: the SHA-256 matches, the archive
    does not decrypt and decompress whole."""
    with_data(config_dir)
    backup_id = await backup_now(hass, loaded_entry)
    backup = await agent_of(hass, loaded_entry).async_get_backup(backup_id)
    data = bytearray(await download(hass, loaded_entry, backup_id))
    await agent_of(hass, loaded_entry).async_delete_backup(backup_id)
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(byte ^ 0x5A for byte in data[middle : middle + 16])
    await send(hass, loaded_entry, bytes(data), backup)

    response = await verify(hass, loaded_entry)

    assert response["backup_id"] == backup_id, "the last backup sent, though one of its copies was deleted"
    assert response["ok"] is False
    name = backup.name
    assert response["error"].startswith(
        (
            f"Home Assistant could not decrypt backup {name} ({backup_id}) to its end: the archive was damaged "
            "before it was uploaded (",
            f"Backup {name} ({backup_id}) is not a whole Home Assistant backup: homeassistant.tar.gz is damaged",
        )
    ), response["error"]


async def test_without_the_backup_key_an_encrypted_backup_cannot_be_checked(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    backup_id = await backup_now(hass, loaded_entry)
    hass.data[DATA_MANAGER].config.data.create_backup.password = None
    response = await verify(hass, loaded_entry)
    name = await name_of(hass, loaded_entry, backup_id)
    assert response["error"] == (
        f"Backup {name} ({backup_id}) is encrypted, and Home Assistant has no backup key to open it "
        "(Settings > System > Backups)"
    )
    hass.data[DATA_MANAGER].config.data.create_backup.password = BACKUP_PASSWORD


# ------------------------------------------------------------------------------------------- gateway and storage


async def test_an_object_gone_from_storage(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, moto_server: S3Server, moto_bucket: str
) -> None:
    backup_id = await backup_now(hass, loaded_entry)
    key, _ = the_object(moto_server, moto_bucket)
    moto_server.client().delete_object(Bucket=moto_bucket, Key=key)
    response = await verify(hass, loaded_entry)
    name = await name_of(hass, loaded_entry, backup_id)
    assert response["ok"] is False
    assert response["error"].startswith(f"Could not download backup {name} ({backup_id}): "), response[
        "error"
    ]
    assert "no longer holds" in response["error"]


async def test_an_unreachable_gateway(
    hass: HomeAssistant, backup_manager: object, moto_server: S3Server, moto_bucket: str, tmp_path: Path
) -> None:
    async with run_gateway(moto_server, moto_bucket, tmp_path / "gw") as gateway:
        entry = await set_up_entry(hass, gateway)
    failed = drill_events(hass)[1]
    response = await verify(hass, entry)
    assert response["ok"] is False
    assert response["backup_id"] is None
    assert response["error"].startswith(
        "Could not read the list of backups on the gateway: Cannot reach the gateway"
    )
    assert failed[-1].data["backup_id"] is None
    found = issue(hass, entry)
    assert found is not None
    assert found.translation_placeholders["backup_name"] == "?"  # type: ignore[index]
    await hass.config_entries.async_unload(entry.entry_id)


@pytest.mark.parametrize("at_once", [True, False], ids=["before-any-byte", "after-the-first-chunk"])
async def test_a_download_that_breaks_off(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, config_dir: Path, at_once: bool
) -> None:
    with_data(config_dir)
    backup_id = await backup_now(hass, loaded_entry)
    name = await name_of(hass, loaded_entry, backup_id)
    broken = GatewayUnavailableError("Download of backup x broke off: Connection reset by peer")
    if at_once:
        with held_downloads(error=broken):
            response = await verify(hass, loaded_entry)
    else:

        async def break_off(self: Held) -> bytes:
            if not self._first:
                raise broken
            self._first = False
            chunk: bytes = await anext(self._stream)
            return chunk

        with held_downloads(), patch.object(Held, "__anext__", break_off):
            response = await verify(hass, loaded_entry)
    assert response["ok"] is False
    assert response["error"].startswith(f"The download of backup {name} ({backup_id}) broke off after "), (
        response["error"]
    )
    assert response["error"].endswith(": Download of backup x broke off: Connection reset by peer")


async def test_an_unexpected_error_is_still_an_outcome(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    await backup_now(hass, loaded_entry)
    with patch(
        "custom_components.offsite_backup.drill_checks.ExpectedContents.of", side_effect=RuntimeError("bug")
    ):
        response = await verify(hass, loaded_entry)
    assert response["ok"] is False
    assert response["error"] == "Unexpected error: bug"
    assert loaded_entry.runtime_data.drill.running is False


# ------------------------------------------------------------------------------------------- the action


async def test_the_action_refuses_what_it_cannot_do(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    with pytest.raises(ServiceValidationError) as err:
        await verify(hass, loaded_entry)
    assert err.value.translation_key == "nothing_to_verify"
    with pytest.raises(ServiceValidationError) as err:
        await verify(hass, loaded_entry, backup_id="nope")
    assert err.value.translation_key == "unknown_backup"
    assert err.value.translation_placeholders == {"backup_id": "nope"}
    with pytest.raises(ServiceValidationError) as err:
        await hass.services.async_call(
            DOMAIN, "verify_backup", {"config_entry_id": "nope"}, blocking=True, return_response=True
        )
    assert err.value.translation_key == "entry_not_found"
    assert loaded_entry.runtime_data.drill.last is None, "a refusal is not a drill"

    await backup_now(hass, loaded_entry)
    assert (
        await hass.services.async_call(
            DOMAIN, "verify_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
        )
        is None
    ), "without a response asked for, it just runs"
    assert loaded_entry.runtime_data.drill.last is not None


async def test_one_drill_at_a_time_never_during_a_backup_and_a_backup_may_start_during_one(
    hass: HomeAssistant,
    backup_manager: object,
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    config_dir: Path,
) -> None:
    with_data(config_dir)
    async with entry_behind_proxy(hass, moto_server, moto_bucket, tmp_path / "gw") as (entry, proxy):
        backup_id = await backup_now(hass, entry)
        drill = entry.runtime_data.drill
        runner = entry.runtime_data.runner
        with held_downloads() as release:
            # Not verify(): it waits for every task to end, the backup's below too.
            first = hass.async_create_task(
                hass.services.async_call(
                    DOMAIN,
                    "verify_backup",
                    {"config_entry_id": entry.entry_id},
                    blocking=True,
                    return_response=True,
                )
            )
            await wait_for(lambda: drill.current is not None)
            assert state(hass, entry, "status") == "verifying"
            assert drill.current == (backup_id, await name_of(hass, entry, backup_id))
            with pytest.raises(ServiceValidationError) as err:
                await verify(hass, entry)
            assert err.value.translation_key == "drill_running"
            # Tonight's backup ended during a drill started by hand: no second drill.
            window_end = dt_util.utcnow() + timedelta(hours=1)
            assert await drill.async_after_nightly_backup(window_end) is None

            # A backup may start while a drill runs; the status shows the backup while it runs. Its first part
            # waits at the proxy until the drill has ended, so that the backup ends last.
            proxy.fail(1, gate())
            second = hass.async_create_task(backup_now(hass, entry))
            await wait_for(lambda: runner.busy)
            assert state(hass, entry, "status") in ("creating", "uploading")
            release.set()
            response = await first
            assert isinstance(response, dict)
            assert response["ok"] is True
            assert state(hass, entry, "status") in ("creating", "uploading"), "the backup still runs"
            proxy.open_gate()
            await second
        assert state(hass, entry, "status") == "succeeded", "the backup ended last"

        third = hass.async_create_task(backup_now(hass, entry))
        await wait_for(lambda: runner.busy)
        with pytest.raises(ServiceValidationError) as err:
            await verify(hass, entry)
        assert err.value.translation_key == "drill_backup_running"
        await third


async def test_the_progress_sensor_follows_a_running_drill(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, config_dir: Path
) -> None:
    with_data(config_dir)
    await backup_now(hass, loaded_entry)
    assert float(state(hass, loaded_entry, "progress")) == 100
    drill = loaded_entry.runtime_data.drill
    seen: list[float] = []
    remove = drill.async_add_listener(lambda: seen.append(float(state(hass, loaded_entry, "progress"))))
    assert (await verify(hass, loaded_entry))["ok"] is True
    remove()
    assert seen[0] == 0
    assert max(seen) == 100
    assert any(0 < value < 100 for value in seen), seen
    assert float(state(hass, loaded_entry, "progress")) == 100, "back to the last backup's"


async def test_a_drill_stopped_halfway_leaves_no_outcome_and_nothing_running(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, config_dir: Path
) -> None:
    with_data(config_dir)
    await backup_now(hass, loaded_entry)
    drill = loaded_entry.runtime_data.drill
    succeeded, failed = drill_events(hass)
    with held_downloads():
        # The caller goes away (a script stopped): the drill stops with it.
        call = hass.async_create_task(verify(hass, loaded_entry))
        await wait_for(lambda: drill.current is not None)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert drill.running is False
        # Home Assistant stops (the entry unloads): the action says so.
        call = hass.async_create_task(verify(hass, loaded_entry))
        await wait_for(lambda: drill.current is not None)
        assert await hass.config_entries.async_unload(loaded_entry.entry_id)
        with pytest.raises(HomeAssistantError) as err:
            await call
        assert err.value.translation_key == "drill_stopped"
    assert drill.last is None
    assert succeeded == failed == []


# ------------------------------------------------------------------------------------------- kept and forgotten


async def test_what_is_kept_across_a_restart(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    hass_client: ClientSessionGenerator,
) -> None:
    backup_id = await backup_now(hass, loaded_entry)
    assert (await verify(hass, loaded_entry))["ok"] is True
    verified = state(hass, loaded_entry, "last_verified")
    assert await hass.config_entries.async_reload(loaded_entry.entry_id)
    await hass.async_block_till_done()
    assert state(hass, loaded_entry, "last_verified") == verified
    assert state(hass, loaded_entry, "status") == "verified"
    attributes = hass.states.get(entity_id(hass, loaded_entry, "last_verified")).attributes  # type: ignore[union-attr]
    assert attributes["backup_id"] == backup_id
    assert await async_setup_component(hass, "diagnostics", {})
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, loaded_entry)
    assert diagnostics["restore_drill"]["schedule"] == "weekly"
    assert diagnostics["restore_drill"]["running"] is False
    assert diagnostics["restore_drill"]["last_verified"]["backup_id"] == backup_id
    assert diagnostics["restore_drill"]["last"]["ok"] is True


async def test_odd_stored_results_are_ignored(
    hass: HomeAssistant, backup_manager: object, config_entry: MockConfigEntry, hass_storage: dict[str, Any]
) -> None:
    key = store_key(config_entry.entry_id, STORE_DRILL)
    hass_storage[key] = {
        "version": 1,
        "key": key,
        "data": {"last": {"ok": True, "started": "yesterday"}, "last_verified": "junk", "deleted": ["a", 3]},
    }
    assert await hass.config_entries.async_setup(config_entry.entry_id)
    await hass.async_block_till_done()
    drill = config_entry.runtime_data.drill
    assert drill.last is None
    assert drill.last_verified is None
    assert state(hass, config_entry, "last_verified") == "unknown"


async def test_a_backup_deleted_on_purpose_is_not_a_lost_record(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    """Deleted from Settings > System > Backups: the drill tests what is left, and never says the record is lost."""
    client = loaded_entry.runtime_data.client
    await upload(client=client, open_stream=opener(b"x" * 1000), size=1000, name="foreign", metadata={"a": 1})
    older = await backup_now(hass, loaded_entry)
    newest = await backup_now(hass, loaded_entry)
    await hass.data[DATA_MANAGER].async_delete_backup(
        newest, agent_ids=[f"{DOMAIN}.{loaded_entry.unique_id}"]
    )
    assert await verify(hass, loaded_entry) == {"backup_id": older, "ok": True, "error": None}
    await hass.data[DATA_MANAGER].async_delete_backup(older, agent_ids=[f"{DOMAIN}.{loaded_entry.unique_id}"])
    with pytest.raises(ServiceValidationError) as err:
        await verify(hass, loaded_entry)
    assert err.value.translation_key == "nothing_to_verify"
