"""Home Assistant's own test harness, with the real gateway app and a real moto S3 server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.offsite_backup.const import CONF_TOKEN, CONF_URL, DOMAIN
from tests.helpers.gateway import RunningGateway, run_gateway
from tests.helpers.servers import S3Server

BACKUP_PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(enable_custom_integrations: None) -> None:
    """Load custom_components/offsite_backup."""


@pytest.fixture(autouse=True)
def backup_helper(hass: HomeAssistant) -> None:
    """What Home Assistant's bootstrap does before any integration loads, where it does it.

    Up to 2026.2 the bootstrap calls ``homeassistant.helpers.backup.async_initialize_backup``; 2026.3 removed that
    helper (the backup manager keeps its own subscriptions), so there is nothing to do there.
    """
    try:
        from homeassistant.helpers.backup import async_initialize_backup  # noqa: PLC0415
    except ImportError:
        return
    async_initialize_backup(hass)


@pytest.fixture(autouse=True)
def config_dir(hass: HomeAssistant, tmp_path: Path) -> Path:
    """Each test gets its own configuration directory (backups are written under it)."""
    path = tmp_path / "config"
    path.mkdir()
    hass.config.config_dir = str(path)
    return path


@pytest.fixture
async def gateway(moto_server: S3Server, moto_bucket: str, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """The real gateway app on 127.0.0.1, storing into a fresh moto bucket (5 MiB parts)."""
    async with run_gateway(
        moto_server, moto_bucket, tmp_path / "gateway", PART_SIZE=str(5 * 1024 * 1024)
    ) as gw:
        yield gw


@pytest.fixture
async def instance(gateway: RunningGateway) -> tuple[str, str]:
    """An instance of the gateway: (instance id, token)."""
    return await gateway.add_instance("home")


@pytest.fixture
def config_entry(hass: HomeAssistant, gateway: RunningGateway, instance: tuple[str, str]) -> MockConfigEntry:
    """A config entry for the instance, added to Home Assistant (not set up)."""
    instance_id, token = instance
    entry = MockConfigEntry(
        domain=DOMAIN,
        title="home",
        unique_id=instance_id,
        data={CONF_URL: gateway.url, CONF_TOKEN: token},
    )
    entry.add_to_hass(hass)
    return entry


@pytest.fixture
async def backup_manager(hass: HomeAssistant) -> object:
    """Home Assistant's backup integration, with a backup encryption key as the UI sets one."""
    assert await async_setup_component(hass, "backup", {})
    await hass.async_block_till_done()
    manager = hass.data[DATA_MANAGER]
    manager.config.data.create_backup.password = BACKUP_PASSWORD
    return manager


@pytest.fixture
async def loaded_entry(
    hass: HomeAssistant, backup_manager: object, config_entry: MockConfigEntry
) -> MockConfigEntry:
    """The entry, set up, with Home Assistant's backup integration."""
    assert await hass.config_entries.async_setup(config_entry.entry_id)
    await hass.async_block_till_done()
    return config_entry
