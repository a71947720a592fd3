"""The Repairs issues survive a restart of Home Assistant: failing backups, the quota, a failed restore drill.

A restart here is what Home Assistant does: the final write saves the registries and stores, the entry unloads,
the issue registry is loaded again from its store (HA's own code: issues not marked persistent come back
inactive, that is, not shown), and the entry sets up again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from homeassistant.const import EVENT_HOMEASSISTANT_FINAL_WRITE
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import issue_registry as ir
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.offsite_backup.const import (
    DOMAIN,
    ISSUE_BACKUP_FAILING,
    ISSUE_DRILL_FAILED,
    ISSUE_QUOTA_EXCEEDED,
)
from offsite_gateway.app import STORE
from tests.helpers.gateway import RunningGateway
from tests.helpers.servers import S3Server
from tests.integration.common import backup_now, let_upload_progress_settle
from tests.integration.drill_helpers import put_object, the_object, verify, with_data

KINDS = (ISSUE_BACKUP_FAILING, ISSUE_QUOTA_EXCEEDED, ISSUE_DRILL_FAILED)


def _issues(hass: HomeAssistant, entry: MockConfigEntry) -> dict[str, ir.IssueEntry]:
    """The entry's issues that are shown (active), by kind."""
    registry = ir.async_get(hass)
    found = {kind: registry.async_get_issue(DOMAIN, f"{kind}_{entry.entry_id}") for kind in KINDS}
    return {kind: issue for kind, issue in found.items() if issue is not None and issue.active}


async def _restart(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    hass.bus.async_fire(EVENT_HOMEASSISTANT_FINAL_WRITE)  # what Home Assistant does last when it stops
    await hass.async_block_till_done()
    assert await hass.config_entries.async_unload(entry.entry_id)
    hass.data.pop(ir.DATA_REGISTRY)
    await ir.async_load(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()


async def _three_issues(
    hass: HomeAssistant,
    entry: MockConfigEntry,
    gateway: RunningGateway,
    moto_server: S3Server,
    moto_bucket: str,
    config_dir: Path,
) -> dict[str, ir.IssueEntry]:
    """A drill that fails (the object changed in storage), then two backups the quota refuses."""
    with_data(config_dir)
    backup_id = await backup_now(hass, entry)
    key, data = the_object(moto_server, moto_bucket)
    put_object(moto_server, moto_bucket, key, data[:-10] + b"x" * 10)
    assert (await verify(hass, entry, backup_id=backup_id))["ok"] is False
    await gateway.app[STORE].set_policy("home", {"quota_bytes": len(data) + 100})
    for _ in range(2):
        with pytest.raises(HomeAssistantError, match="quota"):
            await backup_now(hass, entry)
        await let_upload_progress_settle(hass)
    shown = _issues(hass, entry)
    assert set(shown) == set(KINDS)
    return shown


async def test_the_issues_survive_a_restart(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: RunningGateway,
    moto_server: S3Server,
    moto_bucket: str,
    config_dir: Path,
) -> None:
    before = await _three_issues(hass, loaded_entry, gateway, moto_server, moto_bucket, config_dir)

    await _restart(hass, loaded_entry)

    after = _issues(hass, loaded_entry)
    assert set(after) == set(KINDS), "all three are still shown"
    for kind in KINDS:
        assert after[kind].translation_placeholders == before[kind].translation_placeholders, kind
        assert after[kind].is_persistent

    # They still clear as before: the next success clears the failing-backups and quota issues, the next good drill
    # the drill's.
    await gateway.app[STORE].set_policy("home", {"quota_bytes": None})
    await backup_now(hass, loaded_entry)
    assert set(_issues(hass, loaded_entry)) == {ISSUE_DRILL_FAILED}
    assert (await verify(hass, loaded_entry))["ok"] is True
    assert _issues(hass, loaded_entry) == {}


async def test_issues_lost_with_the_registry_are_raised_again_from_the_history(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: RunningGateway,
    moto_server: S3Server,
    moto_bucket: str,
    config_dir: Path,
    hass_storage: dict[str, object],
) -> None:
    """Issues an earlier version did not keep (or a registry lost): what the stored history says comes back."""
    before = await _three_issues(hass, loaded_entry, gateway, moto_server, moto_bucket, config_dir)
    hass.bus.async_fire(EVENT_HOMEASSISTANT_FINAL_WRITE)
    await hass.async_block_till_done()
    assert await hass.config_entries.async_unload(loaded_entry.entry_id)
    hass.data.pop(ir.DATA_REGISTRY)
    del hass_storage["repairs.issue_registry"]
    await ir.async_load(hass)
    assert _issues(hass, loaded_entry) == {}

    assert await hass.config_entries.async_setup(loaded_entry.entry_id)
    await hass.async_block_till_done()

    after = _issues(hass, loaded_entry)
    assert set(after) == {ISSUE_BACKUP_FAILING, ISSUE_DRILL_FAILED}, (
        "the quota's figures are not in the history"
    )
    for kind in after:
        assert after[kind].translation_placeholders == before[kind].translation_placeholders, kind


async def test_a_raised_threshold_clears_the_issue_at_setup_and_removal_clears_them_all(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: RunningGateway,
    moto_server: S3Server,
    moto_bucket: str,
    config_dir: Path,
) -> None:
    await _three_issues(hass, loaded_entry, gateway, moto_server, moto_bucket, config_dir)
    hass.config_entries.async_update_entry(loaded_entry, options={"failures_before_repair": 5})
    await hass.async_block_till_done()  # the entry reloads with the option
    assert set(_issues(hass, loaded_entry)) == {ISSUE_QUOTA_EXCEEDED, ISSUE_DRILL_FAILED}
    await hass.config_entries.async_remove(loaded_entry.entry_id)
    await hass.async_block_till_done()
    assert _issues(hass, loaded_entry) == {}
