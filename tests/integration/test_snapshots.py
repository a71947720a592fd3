"""Snapshots (syrupy, as Home Assistant's core tests use it) of every entity and of the diagnostics.

The snapshot file (snapshots/test_snapshots.ambr) is shared by both Home Assistant versions, so what is
snapshotted is what this integration decides: each entity's registry fields that we set and its state with its
attributes, and the diagnostics. Values that change from run to run (ports, the gateway's ids, times, sizes of a
generated backup) are checked for their shape here, then shown as ``<name>`` in the snapshot.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import Enum
from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.components.diagnostics import get_diagnostics_for_config_entry
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator
from syrupy.assertion import SnapshotAssertion

from custom_components.offsite_backup.const import DOMAIN

HEX = re.compile(r"^[0-9a-f]+$")


def _instant(value: Any) -> str:
    assert isinstance(value, str)
    datetime.fromisoformat(value)
    return "<instant>"


def _hex(value: Any) -> str:
    assert isinstance(value, str)
    assert HEX.match(value), value
    return "<id>"


def _count(value: Any) -> str:
    assert isinstance(value, int)
    assert value >= 0
    return "<count>"


def _url(value: Any) -> str:
    assert isinstance(value, str)
    assert re.match(r"^http://127\.0\.0\.1:\d+$", value), value
    return "<gateway url>"


def _name(value: Any) -> str:
    assert isinstance(value, str)
    assert value
    return "<backup name>"


VOLATILE = {
    # diagnostics
    "url": _url,
    "instance_id": _hex,
    "id": _hex,
    "backup_id": _hex,
    "remote_id": _hex,
    "name": _name,
    "size": _count,
    "started": _instant,
    "ended": _instant,
    "last_success": _instant,
    "last_success_at": _instant,
    "due_at": _instant,
    "run_at": _instant,
    "day": _instant,
    "sha256": _hex,
}


INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}")


def stable(value: Any, key: str | None = None) -> Any:
    """``value`` with what changes from run to run checked and replaced by a placeholder, as plain data.

    Enums are shown by their value, so that the snapshot is the same on both Home Assistant versions (the newer
    one names state attributes with enums); dates and times (ISO 8601) are checked and shown as ``<instant>``.
    """
    if key in VOLATILE and value is not None:
        return VOLATILE[key](value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, str) and INSTANT.match(value):
        return _instant(value)
    if isinstance(value, float) and key == "duration":
        assert value >= 0
        return "<seconds>"
    if isinstance(value, dict):
        return {str(k): stable(v, str(k)) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


USAGE = ("backups_stored", "storage_used", "quota_used", "last_size")
"""Sensors of the gateway's usage report and of the generated backup's size: refreshed in the background after a
job, and sized by what the test's Home Assistant writes into its backup."""


def entity_view(hass: HomeAssistant, entry: MockConfigEntry) -> dict[str, Any]:
    """Each entity of the entry: what we set in the registry, and its state with its attributes."""
    view: dict[str, Any] = {}
    registry = er.async_get(hass)
    for item in sorted(
        er.async_entries_for_config_entry(registry, entry.entry_id), key=lambda e: e.entity_id
    ):
        current = hass.states.get(item.entity_id)
        assert current is not None
        key = item.unique_id.removeprefix(f"{entry.unique_id}_")
        shown: Any = current.state
        if key in USAGE and shown != "unknown":
            assert float(shown) >= 0
            shown = "<number>"
        view[item.entity_id] = {
            "unique_id": key,
            "translation_key": item.translation_key,
            "entity_category": item.entity_category,
            "device_class": item.original_device_class,
            "unit": item.unit_of_measurement,
            "disabled_by": item.disabled_by,
            "state": shown,
            "attributes": dict(current.attributes),
        }
    return stable(view)


async def test_entities_after_setup(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, snapshot: SnapshotAssertion
) -> None:
    assert entity_view(hass, loaded_entry) == snapshot


async def test_entities_and_diagnostics_after_a_backup(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    hass_client: ClientSessionGenerator,
    snapshot: SnapshotAssertion,
) -> None:
    await hass.services.async_call(
        DOMAIN, "create_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
    )
    await hass.async_block_till_done()
    assert entity_view(hass, loaded_entry) == snapshot(name="entities")
    assert await async_setup_component(hass, "diagnostics", {})
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, loaded_entry)
    assert stable(diagnostics) == snapshot(name="diagnostics")
