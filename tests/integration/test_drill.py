"""The restore drill through Home Assistant's harness: real backups, the real gateway app, moto's S3.

Each failure is made the way it happens: storage's object changed or cut short behind the gateway's back, a backup
encrypted with another key (made by Home Assistant's own manager), a gateway that lost its database row while the
object stays in the bucket. Each shows on the status sensor, in an event and in Repairs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ServiceValidationError
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.offsite_backup.const import DOMAIN
from offsite_gateway.app import STORE
from tests.helpers.gateway import RunningGateway
from tests.helpers.servers import S3Server
from tests.integration.common import entity_id, state
from tests.integration.drill_helpers import (
    ANOTHER_KEY,
    assert_failed,
    backup_now,
    drill_events,
    issue,
    name_of,
    put_object,
    the_object,
    verify,
    with_data,
)


async def test_a_good_backup_passes(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    config_dir: Path,
) -> None:
    succeeded, failed = drill_events(hass)
    with_data(config_dir)
    backup_id = await backup_now(hass, loaded_entry)
    assert state(hass, loaded_entry, "last_verified") == "unknown"
    before = dt_util.utcnow()

    response = await verify(hass, loaded_entry)

    assert response == {"backup_id": backup_id, "ok": True, "error": None}
    name = await name_of(hass, loaded_entry, backup_id)
    assert [(event.data["backup_id"], event.data["backup_name"]) for event in succeeded] == [
        (backup_id, name)
    ]
    assert succeeded[0].data["error"] is None
    assert failed == []
    assert state(hass, loaded_entry, "status") == "verified"
    verified = hass.states.get(entity_id(hass, loaded_entry, "last_verified"))
    assert verified is not None
    assert dt_util.parse_datetime(verified.state) is not None
    assert dt_util.parse_datetime(verified.state) >= before.replace(microsecond=0)  # type: ignore[operator]
    assert verified.attributes["backup_id"] == backup_id
    assert verified.attributes["backup_name"] == name
    assert issue(hass, loaded_entry) is None
    # The drill wrote nothing: no backup was restored or added anywhere.
    backups, _ = await hass.data[DATA_MANAGER].async_get_backups()
    assert list(backups) == [backup_id]


async def test_bytes_changed_in_storage_after_upload_fail_and_the_next_good_drill_clears_it(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    config_dir: Path,
    moto_server: S3Server,
    moto_bucket: str,
) -> None:
    _, failed = drill_events(hass)
    with_data(config_dir)
    backup_id = await backup_now(hass, loaded_entry)
    name = await name_of(hass, loaded_entry, backup_id)
    assert (await verify(hass, loaded_entry))["ok"] is True
    verified_at = state(hass, loaded_entry, "last_verified")
    key, original = the_object(moto_server, moto_bucket)
    changed = bytearray(original)
    middle = len(changed) // 2
    changed[middle : middle + 16] = bytes(byte ^ 0xFF for byte in changed[middle : middle + 16])
    put_object(moto_server, moto_bucket, key, bytes(changed))

    response = await verify(hass, loaded_entry, backup_id=backup_id)

    error = assert_failed(
        hass,
        loaded_entry,
        response,
        failed,
        backup_id=backup_id,
        name=name,
        says="was changed after it was uploaded",
    )
    assert "SHA-256" in error
    assert state(hass, loaded_entry, "last_verified") == verified_at, (
        "the last verified restore stays the last good one"
    )

    put_object(moto_server, moto_bucket, key, original)
    assert (await verify(hass, loaded_entry))["ok"] is True
    assert issue(hass, loaded_entry) is None, "the next good drill clears the issue"
    assert state(hass, loaded_entry, "status") == "verified"


async def test_a_truncated_object_fails(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    config_dir: Path,
    moto_server: S3Server,
    moto_bucket: str,
) -> None:
    _, failed = drill_events(hass)
    with_data(config_dir)
    backup_id = await backup_now(hass, loaded_entry)
    name = await name_of(hass, loaded_entry, backup_id)
    key, original = the_object(moto_server, moto_bucket)
    put_object(moto_server, moto_bucket, key, original[: len(original) // 2])

    response = await verify(hass, loaded_entry)

    error = assert_failed(
        hass, loaded_entry, response, failed, backup_id=backup_id, name=name, says="is truncated"
    )
    assert f"{len(original) // 2} bytes of the {len(original)}" in error, "both sizes"


async def test_a_backup_encrypted_with_another_key_fails_saying_so(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    config_dir: Path,
) -> None:
    """A backup made by Home Assistant's manager to our location with another password than the backup key."""
    _, failed = drill_events(hass)
    with_data(config_dir)
    manager = hass.data[DATA_MANAGER]
    await manager.async_create_backup(
        agent_ids=[f"{DOMAIN}.{loaded_entry.unique_id}"],
        include_addons=None,
        include_all_addons=False,
        include_database=True,
        include_folders=None,
        include_homeassistant=True,
        name="Encrypted elsewhere",
        password=ANOTHER_KEY,
    )
    await hass.async_block_till_done()
    (job,) = loaded_entry.runtime_data.runner.history
    assert job.status.value == "succeeded"
    assert job.backup_id is not None

    response = await verify(hass, loaded_entry, backup_id=job.backup_id)

    assert_failed(
        hass,
        loaded_entry,
        response,
        failed,
        backup_id=job.backup_id,
        name="Encrypted elsewhere",
        says="The backup key does not open backup Encrypted elsewhere",
    )
    assert "encrypted with another key" in response["error"]


async def test_a_gateway_that_lost_the_record_fails_saying_so(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: RunningGateway,
    moto_server: S3Server,
    moto_bucket: str,
) -> None:
    """The gateway's database lost the backup's row (restored from an old copy, say); the object is still there."""
    _, failed = drill_events(hass)
    backup_id = await backup_now(hass, loaded_entry)
    name = await name_of(hass, loaded_entry, backup_id)
    (remote,) = await loaded_entry.runtime_data.client.list_backups()
    await gateway.app[STORE].delete_backup(remote.id)
    assert the_object(moto_server, moto_bucket)[0].endswith(remote.id), "the object stays in the bucket"

    response = await verify(hass, loaded_entry)  # the newest: the last backup this installation sent

    assert_failed(
        hass,
        loaded_entry,
        response,
        failed,
        backup_id=backup_id,
        name=name,
        says="The gateway has no record of backup",
    )
    # Named explicitly, a backup the gateway does not list is the caller's mistake, not a drill.
    with pytest.raises(ServiceValidationError) as err:
        await verify(hass, loaded_entry, backup_id=backup_id)
    assert err.value.translation_key == "unknown_backup"
    assert len(failed) == 1


async def test_a_record_without_sha256_fails(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: RunningGateway,
) -> None:
    _, failed = drill_events(hass)
    backup_id = await backup_now(hass, loaded_entry)
    name = await name_of(hass, loaded_entry, backup_id)
    with sqlite3.connect(gateway.settings.db) as db:
        db.execute("UPDATE backups SET sha256 = NULL")
    db.close()

    response = await verify(hass, loaded_entry)

    assert_failed(
        hass, loaded_entry, response, failed, backup_id=backup_id, name=name, says="recorded no SHA-256"
    )
