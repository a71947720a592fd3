"""Small pieces of the integration on their own: option parsing, state truncation, URL checks, listeners."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, time, timedelta

import pytest
from homeassistant.components.backup import AgentBackup
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ServiceValidationError
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.offsite_backup.backup import async_register_backup_agents_listener
from custom_components.offsite_backup.config_flow import _normalise_url
from custom_components.offsite_backup.const import DOMAIN
from custom_components.offsite_backup.own_retention import Rule, expired
from custom_components.offsite_backup.sensor import _truncate
from custom_components.offsite_backup.settings import Settings


def test_settings_defaults_and_bad_stored_values() -> None:
    default = Settings.from_options({})
    assert default.window.start == time(0, 0)
    assert default.window.end == time(2, 0)
    assert default.parts_in_flight == 2
    assert default.bandwidth_limit is None
    assert default.stale_after == timedelta(hours=36)
    assert default.allow_unencrypted is False
    # Stored data the options flow would never write falls back to the defaults instead of breaking setup.
    odd = Settings.from_options({"window_start": "25:99", "window_end": "nonsense"})
    assert odd.window == default.window
    same = Settings.from_options({"window_start": "03:00:00", "window_end": "03:00:00"})
    assert same.window == default.window
    given = Settings.from_options(
        {"window_start": time(23, 0), "window_end": "01:00:00", "bandwidth_limit": 64}
    )
    assert given.window.crosses_midnight
    assert given.bandwidth_limit == 64 * 1024
    # Numbers out of range are clamped, junk takes the default: none of them may break setup.
    numbers = Settings.from_options(
        {"parts_in_flight": 0, "failures_before_repair": "x", "stale_after": -5, "bandwidth_limit": "junk"}
    )
    assert numbers.parts_in_flight == 1
    assert numbers.failures_before_repair == default.failures_before_repair
    assert numbers.stale_after == timedelta(hours=1)
    assert numbers.bandwidth_limit is None
    assert Settings.from_options({"parts_in_flight": 99.0}).parts_in_flight == 8
    assert Settings.from_options({"parts_in_flight": float("nan")}).parts_in_flight == 2
    assert Settings.from_options({"parts_in_flight": True}).parts_in_flight == 2


async def test_odd_stored_options_do_not_break_setup(
    hass: HomeAssistant, backup_manager: object, config_entry: MockConfigEntry
) -> None:
    """Options edited by hand in .storage, or written by a future version, still let the entry load."""
    hass.config_entries.async_update_entry(
        config_entry, options={"parts_in_flight": 0, "bandwidth_limit": -3, "stale_after": "soon"}
    )
    assert await hass.config_entries.async_setup(config_entry.entry_id)
    await hass.async_block_till_done()
    assert config_entry.runtime_data.runner.options.upload.parallel == 1
    assert config_entry.runtime_data.settings.bandwidth_limit is None


def test_state_text_is_cut_to_what_a_state_holds() -> None:
    assert _truncate(None) is None
    assert _truncate("short") == "short"
    long = "x" * 300
    cut = _truncate(long)
    assert cut is not None
    assert len(cut) == 255
    assert cut.endswith("…")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https://backup.example.com/", "https://backup.example.com"),
        ("  http://127.0.0.1:8780  ", "http://127.0.0.1:8780"),
        ("http://gw.local/prefix/", "http://gw.local/prefix"),
        ("http://[::1", None),
        ("backup.example.com", None),
        ("https://x.example?token=1", None),
        ("https://x.example#frag", None),
    ],
)
def test_gateway_urls(given: str, expected: str | None) -> None:
    assert _normalise_url(given) == expected


async def test_the_last_listener_removed_leaves_nothing_behind(hass: HomeAssistant) -> None:
    remove = async_register_backup_agents_listener(hass, listener=lambda: None)
    assert f"{DOMAIN}.backup_agent_listeners" in hass.data
    remove()
    assert f"{DOMAIN}.backup_agent_listeners" not in hass.data


async def test_the_action_refuses_a_second_backup_while_one_runs(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    runner = loaded_entry.runtime_data.runner
    first = hass.async_create_task(
        hass.services.async_call(
            DOMAIN, "create_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
        )
    )
    async with asyncio.timeout(30):
        while not runner.busy:
            await asyncio.sleep(0)
    with pytest.raises(ServiceValidationError) as err:
        await hass.services.async_call(
            DOMAIN, "create_backup", {"config_entry_id": loaded_entry.entry_id}, blocking=True
        )
    assert err.value.translation_key == "already_running"
    await first


def test_which_backups_a_retention_expires() -> None:
    """The newest N, and none older than D days, by each backup's date (as Home Assistant applies its own)."""
    now = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)

    def backup(day: int) -> AgentBackup:
        return AgentBackup(
            addons=[],
            backup_id=f"b{day}",
            database_included=True,
            date=datetime(2026, 6, day, 1, 0, tzinfo=UTC).isoformat(),
            extra_metadata={},
            folders=[],
            homeassistant_included=True,
            homeassistant_version="2026.10.4",
            name=f"b{day}",
            protected=True,
            size=1,
        )

    backups = [backup(day) for day in (3, 9, 1, 7, 5)]

    def ids(found: list[AgentBackup]) -> list[str]:
        return sorted(b.backup_id for b in found)

    assert ids(expired(backups, Rule(copies=3, days=None), now)) == ["b1", "b3"]
    assert ids(expired(backups, Rule(copies=None, days=4), now)) == ["b1", "b3", "b5"]
    assert ids(expired(backups, Rule(copies=4, days=8), now)) == ["b1"]
    assert expired(backups, Rule(copies=None, days=None), now) == []
    assert Rule(copies=2, days=30).describe() == "2 backups, 30 days"
    assert Rule(copies=1, days=None).describe() == "1 backup"
