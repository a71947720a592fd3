"""The gateway's database is lost; the operator rebuilds it from the bucket; Home Assistant lists and restores again.

On both of the gateway's stores (SQLite and PostgreSQL): back up from Home Assistant, lose the database, run
`offsite-gateway reindex` and `instance rotate`, re-authenticate the entry with the new token, then list the backups
on Home Assistant's Backups page and restore one.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from homeassistant.backup_restore import restore_backup
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_mock_service

from custom_components.offsite_backup.const import CONF_TOKEN, CONF_URL, DOMAIN
from tests.helpers.gateway import GatewayDatabase, RunningGateway, database_in, run_gateway, selected_stores
from tests.helpers.servers import S3Server
from tests.integration.common import backup_now
from tests.integration.conftest import BACKUP_PASSWORD


@pytest.fixture(params=selected_stores())
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayDatabase]:
    """A database of this test's own, in each store in turn."""
    with database_in(request.param, tmp_path, request) as database:
        yield database


@pytest.fixture
async def gateway(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, database: GatewayDatabase
) -> AsyncIterator[RunningGateway]:
    """The real gateway on the store under test (replaces the conftest's SQLite one)."""
    async with run_gateway(
        moto_server, moto_bucket, tmp_path / "gateway", database=database, PART_SIZE=str(5 * 1024 * 1024)
    ) as running:
        yield running


async def test_a_lost_gateway_database_is_rebuilt_and_home_assistant_restores_from_it(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: RunningGateway, config_dir: Path
) -> None:
    agent_id = f"{DOMAIN}.{loaded_entry.unique_id}"
    manager = hass.data[DATA_MANAGER]
    marker = os.urandom(48 * 1024)
    (config_dir / "marker.bin").write_bytes(marker)
    first = await backup_now(hass, loaded_entry)
    (config_dir / "marker.bin").write_bytes(b"changed after the first backup")
    second = await backup_now(hass, loaded_entry)
    listed, errors = await manager.async_get_backups()
    assert errors == {}
    assert {first, second} <= {backup_id for backup_id, backup in listed.items() if agent_id in backup.agents}

    # 2. The database is lost: the gateway no longer knows the instance, and the entry's token is refused.
    await gateway.lose_database()
    await loaded_entry.runtime_data.coordinator.async_refresh()
    await hass.async_block_till_done()
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [flow["context"]["source"] for flow in flows] == ["reauth"]

    # 3. The operator rebuilds it from the bucket and gives the instance a new token.
    report = await gateway.reindex()
    assert (report.backups_added, report.instances_added, report.skipped) == (2, ["home"], {})
    new_token = await gateway.rotate_token("home")

    # 4. Home Assistant, re-authenticated, is the same instance (same unique id), lists both backups, restores one.
    result = await hass.config_entries.flow.async_configure(flows[0]["flow_id"], {CONF_TOKEN: new_token})
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reauth_successful"
    await hass.async_block_till_done()
    assert loaded_entry.state is ConfigEntryState.LOADED
    assert loaded_entry.data == {CONF_URL: gateway.url, CONF_TOKEN: new_token}
    listed, errors = await manager.async_get_backups()
    assert errors == {}
    assert {first, second} <= {backup_id for backup_id, backup in listed.items() if agent_id in backup.agents}

    restarts = async_mock_service(hass, "homeassistant", "restart")
    await manager.async_restore_backup(
        first,
        agent_id=agent_id,
        password=BACKUP_PASSWORD,
        restore_addons=None,
        restore_database=True,
        restore_folders=None,
        restore_homeassistant=True,
    )
    assert len(restarts) == 1
    await hass.config_entries.async_unload(loaded_entry.entry_id)
    assert await hass.async_add_executor_job(restore_backup, str(config_dir))
    assert (config_dir / "marker.bin").read_bytes() == marker
