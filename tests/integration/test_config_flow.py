"""Every path of the config flow, against the real gateway app."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest.mock import patch

import pytest
from homeassistant.config_entries import SOURCE_USER, ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from pytest_homeassistant_custom_component.common import MockConfigEntry

import custom_components.offsite_backup as integration
from custom_components.offsite_backup.const import (
    CONF_ALLOW_UNENCRYPTED,
    CONF_BANDWIDTH_LIMIT,
    CONF_CONTENTS,
    CONF_FAILURES_BEFORE_REPAIR,
    CONF_INCLUDE_DATABASE,
    CONF_KEEP_LOCAL,
    CONF_NIGHTLY,
    CONF_PARTS_IN_FLIGHT,
    CONF_RESTORE_DRILL,
    CONF_STALE_AFTER,
    CONF_TOKEN,
    CONF_URL,
    CONF_WINDOW_END,
    CONF_WINDOW_START,
    DOMAIN,
    DrillSchedule,
)
from tests.helpers.gateway import RunningGateway
from tests.helpers.servers import free_port


@contextmanager
def counting_setups() -> Iterator[list[str]]:
    """The entry ids Home Assistant sets up meanwhile (one per load: a reload counts once)."""
    setups: list[str] = []
    original = integration.async_setup_entry

    async def counted(hass: HomeAssistant, entry: MockConfigEntry) -> bool:
        setups.append(entry.entry_id)
        return await original(hass, entry)

    with patch.object(integration, "async_setup_entry", counted):
        yield setups


DEPRECATED_RELOAD = "has an update listener and should use it"  # 2026.11: breaks in 2026.12


async def _start(hass: HomeAssistant) -> str:
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": SOURCE_USER})
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "user"
    assert result["errors"] == {}
    return str(result["flow_id"])


async def test_user_step_creates_the_entry(
    hass: HomeAssistant, backup_manager: object, gateway: RunningGateway, instance: tuple[str, str]
) -> None:
    instance_id, token = instance
    flow_id = await _start(hass)
    result = await hass.config_entries.flow.async_configure(
        flow_id, {CONF_URL: gateway.url + "/", CONF_TOKEN: f"  {token} "}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == "home"
    assert result["data"] == {CONF_URL: gateway.url, CONF_TOKEN: token}
    assert result["result"].unique_id == instance_id
    await hass.async_block_till_done()
    assert result["result"].state is ConfigEntryState.LOADED


@pytest.mark.parametrize(
    ("url", "error_field", "error"),
    [
        ("not a url", "url", "invalid_url"),
        ("ftp://127.0.0.1/", "url", "invalid_url"),
        ("http://127.0.0.1:{closed}", "base", "cannot_connect"),
    ],
)
async def test_user_step_url_errors_then_recovers(
    hass: HomeAssistant,
    gateway: RunningGateway,
    instance: tuple[str, str],
    url: str,
    error_field: str,
    error: str,
) -> None:
    _, token = instance
    flow_id = await _start(hass)
    result = await hass.config_entries.flow.async_configure(
        flow_id, {CONF_URL: url.format(closed=free_port()), CONF_TOKEN: token}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {error_field: error}
    # The form keeps what was typed, and a correct answer then goes through.
    result = await hass.config_entries.flow.async_configure(
        flow_id, {CONF_URL: gateway.url, CONF_TOKEN: token}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY


async def test_user_step_invalid_auth(hass: HomeAssistant, gateway: RunningGateway) -> None:
    flow_id = await _start(hass)
    result = await hass.config_entries.flow.async_configure(
        flow_id, {CONF_URL: gateway.url, CONF_TOKEN: "not-a-token"}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"base": "invalid_auth"}


async def test_user_step_revoked_token_is_invalid_auth(hass: HomeAssistant, gateway: RunningGateway) -> None:
    _, token = await gateway.add_instance("gone")
    await gateway.revoke_instance("gone")
    flow_id = await _start(hass)
    result = await hass.config_entries.flow.async_configure(
        flow_id, {CONF_URL: gateway.url, CONF_TOKEN: token}
    )
    assert result["errors"] == {"base": "invalid_auth"}


async def test_user_step_unexpected_error(hass: HomeAssistant, gateway: RunningGateway) -> None:
    flow_id = await _start(hass)
    with patch(
        "custom_components.offsite_backup.config_flow.GatewayClient.get_instance",
        side_effect=RuntimeError("boom"),
    ):
        result = await hass.config_entries.flow.async_configure(
            flow_id, {CONF_URL: gateway.url, CONF_TOKEN: "whatever"}
        )
    assert result["errors"] == {"base": "unknown"}


async def test_same_instance_cannot_be_added_twice(
    hass: HomeAssistant, config_entry: MockConfigEntry, gateway: RunningGateway, instance: tuple[str, str]
) -> None:
    flow_id = await _start(hass)
    result = await hass.config_entries.flow.async_configure(
        flow_id, {CONF_URL: gateway.url, CONF_TOKEN: instance[1]}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "already_configured"


async def test_reauth_with_a_new_token(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: RunningGateway,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The operator rotates the instance's token (`offsite-gateway instance rotate home`): the old one is refused,
    # the next poll notices and starts the reauth flow.
    new_token = await gateway.rotate_token("home")
    await loaded_entry.runtime_data.coordinator.async_refresh()
    await hass.async_block_till_done()
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [flow["context"]["source"] for flow in flows] == ["reauth"]
    flow_id = flows[0]["flow_id"]
    result = await hass.config_entries.flow.async_configure(flow_id, {CONF_TOKEN: "wrong"})
    assert result["step_id"] == "reauth_confirm"
    assert result["errors"] == {"base": "invalid_auth"}
    with counting_setups() as setups:
        result = await hass.config_entries.flow.async_configure(flow_id, {CONF_TOKEN: new_token})
        assert result["type"] is FlowResultType.ABORT
        assert result["reason"] == "reauth_successful"
        assert loaded_entry.data[CONF_TOKEN] == new_token
        await hass.async_block_till_done()
    assert setups == [loaded_entry.entry_id], "reloaded once, by the update listener"
    assert loaded_entry.state is ConfigEntryState.LOADED
    assert loaded_entry.runtime_data.coordinator.last_update_success
    assert DEPRECATED_RELOAD not in caplog.text


async def test_reauth_of_an_entry_whose_setup_was_refused(
    hass: HomeAssistant,
    backup_manager: object,
    config_entry: MockConfigEntry,
    gateway: RunningGateway,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An entry the gateway refused at setup has no update listener: the flow reloads it itself, once."""
    new_token = await gateway.rotate_token("home")
    assert not await hass.config_entries.async_setup(config_entry.entry_id)
    await hass.async_block_till_done()
    assert config_entry.state is ConfigEntryState.SETUP_ERROR
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [flow["context"]["source"] for flow in flows] == ["reauth"]
    with counting_setups() as setups:
        result = await hass.config_entries.flow.async_configure(flows[0]["flow_id"], {CONF_TOKEN: new_token})
        assert result["reason"] == "reauth_successful"
        await hass.async_block_till_done()
    assert setups == [config_entry.entry_id]
    assert config_entry.state is ConfigEntryState.LOADED
    assert DEPRECATED_RELOAD not in caplog.text


async def test_reauth_with_another_instances_token_is_refused(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: RunningGateway
) -> None:
    _, other_token = await gateway.add_instance("neighbour")
    result = await loaded_entry.start_reauth_flow(hass)
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {CONF_TOKEN: other_token})
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "wrong_instance"


async def test_reconfigure(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: RunningGateway,
    instance: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    result = await loaded_entry.start_reconfigure_flow(hass)
    assert result["step_id"] == "reconfigure"
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_URL: f"http://127.0.0.1:{free_port()}", CONF_TOKEN: instance[1]}
    )
    assert result["errors"] == {"base": "cannot_connect"}
    new_token = await gateway.rotate_token("home")
    with counting_setups() as setups:
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"], {CONF_URL: gateway.url + "/", CONF_TOKEN: new_token}
        )
        assert result["type"] is FlowResultType.ABORT
        assert result["reason"] == "reconfigure_successful"
        assert loaded_entry.data == {CONF_URL: gateway.url, CONF_TOKEN: new_token}
        await hass.async_block_till_done()
    assert setups == [loaded_entry.entry_id], "reloaded once, by the update listener"
    assert loaded_entry.state is ConfigEntryState.LOADED
    assert loaded_entry.runtime_data.coordinator.last_update_success  # the old token is refused now
    assert DEPRECATED_RELOAD not in caplog.text


async def test_reconfigure_with_the_same_settings_reloads_nothing(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: RunningGateway, instance: tuple[str, str]
) -> None:
    result = await loaded_entry.start_reconfigure_flow(hass)
    runtime = loaded_entry.runtime_data
    with counting_setups() as setups:
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"], {CONF_URL: gateway.url, CONF_TOKEN: instance[1]}
        )
        assert result["reason"] == "reconfigure_successful"
        await hass.async_block_till_done()
    assert setups == []
    assert loaded_entry.runtime_data is runtime


async def test_reconfigure_to_another_instance_is_refused(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: RunningGateway
) -> None:
    _, other_token = await gateway.add_instance("neighbour")
    result = await loaded_entry.start_reconfigure_flow(hass)
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {CONF_URL: gateway.url, CONF_TOKEN: other_token}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "wrong_instance"


async def test_options_flow(hass: HomeAssistant, loaded_entry: MockConfigEntry) -> None:
    result = await hass.config_entries.options.async_init(loaded_entry.entry_id)
    assert result["type"] is FlowResultType.FORM
    answer = {
        CONF_NIGHTLY: True,
        CONF_WINDOW_START: "03:00:00",
        CONF_WINDOW_END: "03:00:00",
        CONF_PARTS_IN_FLIGHT: 4.0,
        CONF_BANDWIDTH_LIMIT: 512.0,
        CONF_INCLUDE_DATABASE: False,
        CONF_FAILURES_BEFORE_REPAIR: 3.0,
        CONF_STALE_AFTER: 48.0,
        CONF_ALLOW_UNENCRYPTED: False,
        CONF_KEEP_LOCAL: True,
        CONF_CONTENTS: "automatic",
        CONF_RESTORE_DRILL: "after_every_backup",
    }
    result = await hass.config_entries.options.async_configure(result["flow_id"], answer)
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {CONF_WINDOW_END: "empty_window"}
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], answer | {CONF_WINDOW_END: "05:00:00"}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    assert loaded_entry.options[CONF_PARTS_IN_FLIGHT] == 4
    assert loaded_entry.options[CONF_BANDWIDTH_LIMIT] == 512
    # The entry reloaded with the new options.
    settings = loaded_entry.runtime_data.settings
    assert settings.parts_in_flight == 4
    assert settings.bandwidth_limit == 512 * 1024
    assert settings.window.start.hour == 3
    assert settings.include_database is False
    assert loaded_entry.runtime_data.runner.options.upload.parallel == 4
    assert loaded_entry.runtime_data.runner.options.keep_local is True
    assert settings.contents.contents == "automatic"
    assert loaded_entry.runtime_data.drill.schedule is DrillSchedule.AFTER_EVERY_BACKUP
    next_run = loaded_entry.runtime_data.scheduler.next_run
    assert next_run is not None
    # A bandwidth limit of 0 means none.
    result = await hass.config_entries.options.async_init(loaded_entry.entry_id)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], answer | {CONF_WINDOW_END: "05:00:00", CONF_BANDWIDTH_LIMIT: 0}
    )
    assert CONF_BANDWIDTH_LIMIT not in result["data"]
