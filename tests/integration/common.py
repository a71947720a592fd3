"""Helpers shared by the integration tests."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed

from custom_components.offsite_backup.const import CONF_TOKEN, CONF_URL, DOMAIN
from tests.engine.proxy import FaultProxy
from tests.helpers.gateway import RunningGateway, run_gateway
from tests.helpers.servers import S3Server


async def set_up_entry(hass: HomeAssistant, gateway: RunningGateway, name: str = "home") -> MockConfigEntry:
    """A new gateway instance, and a config entry for it, set up."""
    instance_id, token = await gateway.add_instance(name)
    entry = MockConfigEntry(
        domain=DOMAIN, title=name, unique_id=instance_id, data={CONF_URL: gateway.url, CONF_TOKEN: token}
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    return entry


async def backup_now(hass: HomeAssistant, entry: MockConfigEntry) -> str:
    """Run the ``offsite_backup.create_backup`` action for the entry; the new backup's id."""
    response = await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
    )
    assert isinstance(response, dict)
    return str(response["backup_id"])


@asynccontextmanager
async def entry_behind_proxy(
    hass: HomeAssistant, s3: S3Server, bucket: str, path: Path
) -> AsyncIterator[tuple[MockConfigEntry, FaultProxy]]:
    """An entry set up on a gateway whose part URLs go through a fault proxy in front of ``s3``; unloaded after."""
    async with (
        FaultProxy(s3.endpoint) as proxy,
        run_gateway(
            s3, bucket, path, PART_SIZE=str(5 * 1024 * 1024), S3_PUBLIC_ENDPOINT=proxy.url
        ) as gateway,
    ):
        entry = await set_up_entry(hass, gateway)
        yield entry, proxy
        await hass.config_entries.async_unload(entry.entry_id)


PLATFORM_OF = {
    "stale": "binary_sensor",
    "backup_now": "button",
}


async def let_upload_progress_settle(hass: HomeAssistant) -> None:
    """Let the timer of Home Assistant's upload progress run out, as it does in a running Home Assistant.

    From 2026.4 the backup manager debounces a location's ``on_progress`` calls (1 s) and does not cancel that timer
    when the upload fails or is cancelled; the harness would count it as left behind. A call held back by the timer
    runs when it fires and arms it once more: hence two cooldowns.
    """
    for seconds in (2, 4):
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=seconds))
        await hass.async_block_till_done()


def entity_id(hass: HomeAssistant, entry: MockConfigEntry, key: str) -> str:
    """The entity id of one of the entry's entities, by its description key."""
    platform = PLATFORM_OF.get(key, "sensor")
    found = er.async_get(hass).async_get_entity_id(platform, "offsite_backup", f"{entry.unique_id}_{key}")
    assert found is not None, f"no {platform} entity with key {key}"
    return found


def state(hass: HomeAssistant, entry: MockConfigEntry, key: str) -> str:
    """The state of one of the entry's entities."""
    current = hass.states.get(entity_id(hass, entry, key))
    assert current is not None
    return current.state


def objects(s3: S3Server, bucket: str) -> dict[str, bytes]:
    """Every backup archive in the bucket, read whole (test objects are small); not the manifests beside them."""
    client = s3.client()
    keys = [
        item["Key"]
        for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])
        if not item["Key"].endswith(".manifest.json")
    ]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def multipart_uploads(s3: S3Server, bucket: str) -> list[dict[str, Any]]:
    """Multipart uploads in progress in the bucket."""
    uploads: list[dict[str, Any]] = s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads


def sha256(data: bytes) -> str:
    """Hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def read_from_backup(archive: bytes, password: str | None, member: str, workdir: Path) -> bytes:
    """Open a Home Assistant backup as a restore does: the inner archive decrypted with ``password``."""
    path = workdir / "downloaded.tar"
    path.write_bytes(archive)
    with tarfile.open(path, "r:") as outer:
        inner = outer.extractfile("homeassistant.tar.gz")
        assert inner is not None
        inner_path = workdir / "homeassistant.tar.gz"
        inner_path.write_bytes(inner.read())
    with _secure_tar(inner_path, password) as decrypted:
        for info in decrypted:  # a stream: members are read in order
            if info.name == member:
                extracted = decrypted.extractfile(info)
                assert extracted is not None
                return extracted.read()
    raise KeyError(member)


def _secure_tar(path: Path, password: str | None) -> Any:
    """SecureTar's reader of an inner archive, as the Home Assistant version under test opens one."""
    from securetar import SecureTarFile  # noqa: PLC0415

    try:  # up to 2026.2, Home Assistant derived the key itself
        from homeassistant.components.backup.util import password_to_key  # noqa: PLC0415
    except ImportError:  # later versions hand SecureTar the password
        return SecureTarFile(path, gzip=True, password=password)  # reads unless told otherwise
    return SecureTarFile(
        path, gzip=True, key=password_to_key(password) if password is not None else None, mode="r"
    )
