""" "Alert me from outside if backups stop" (issue 22, item 4): the option sets and clears the house's notify URL
through the gateway, a diagnostic sensor shows when the gateway expects the next backup and whether outside alerts
are set, the URL's secret parts never reach a log or the diagnostics, and the gateway's watchdog does tell that URL
(in ntfy's format) when the house goes quiet and when it is back. The real gateway app, its clock moved by the
test; a webhook receiver in the test's loop."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.components.diagnostics import get_diagnostics_for_config_entry
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.offsite_backup.const import (
    CONF_NOTIFY_FORMAT,
    CONF_NOTIFY_URL,
    CONF_OUTSIDE_ALERTS,
    CONF_TOKEN,
    CONF_URL,
    DOMAIN,
)
from offsite_gateway.app import OUTBOX, STORE, WATCHDOG
from tests.gateway.watching import HOUR, Clock
from tests.helpers.gateway import RunningGateway, run_gateway
from tests.helpers.receivers import WebhookReceiver, ntfy_message
from tests.helpers.servers import S3Server
from tests.integration.common import backup_now, entity_id, let_upload_progress_settle
from tests.integration.gateway_process import Gateway, add_instance

SECRET_PATH = "/ntfy/grandmas-backups-9fQ2x"
SECRET_QUERY = "auth=tk_Zq81secret"
CLOCK = Clock()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as hooks:
        yield hooks


@pytest.fixture
async def gateway(moto_server: S3Server, moto_bucket: str, tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """The real gateway app, its watchdog driven by the test on a clock it moves, allowed to alert 127.0.0.1."""
    CLOCK.now = datetime.now().timestamp()
    async with run_gateway(
        moto_server,
        moto_bucket,
        tmp_path / "gateway",
        clock=CLOCK,
        PART_SIZE=str(5 * 1024 * 1024),
        WATCH_INTERVAL="0",
        NOTIFY_ALLOWED_NETWORKS="127.0.0.0/8",
    ) as running:
        yield running


async def _options(hass: HomeAssistant, entry: MockConfigEntry, **changes: Any) -> dict[str, Any]:
    """Save the options form with `changes` (the rest as shown); the flow's result."""
    result = await hass.config_entries.options.async_init(entry.entry_id)
    assert result["type"] is FlowResultType.FORM
    shown = {
        key.schema: key.description["suggested_value"]
        for key in result["data_schema"].schema
        if key.description and "suggested_value" in key.description
    }
    result = await hass.config_entries.options.async_configure(result["flow_id"], shown | changes)
    await hass.async_block_till_done()
    return dict(result)


def _sensor(hass: HomeAssistant, entry: MockConfigEntry) -> Any:
    current = hass.states.get(entity_id(hass, entry, "gateway_expects"))
    assert current is not None
    return current


async def test_the_option_sets_and_clears_the_url_through_the_gateway(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: RunningGateway,
    receiver: WebhookReceiver,
    hass_client: ClientSessionGenerator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    store = gateway.app[STORE]
    assert loaded_entry.unique_id is not None
    expects = _sensor(hass, loaded_entry)
    assert expects.attributes["outside_alerts"] is False
    assert expects.attributes["state"] == "ok"
    assert expects.attributes["expect_every_hours"] == 36
    assert expects.attributes["device_class"] == "timestamp"
    assert expects.attributes["friendly_name"] == "home Gateway expects a backup by"

    url = receiver.url(f"{SECRET_PATH}?{SECRET_QUERY}")
    for changes, error in (
        ({CONF_OUTSIDE_ALERTS: True}, {CONF_NOTIFY_URL: "notify_url_required"}),
        (
            {CONF_OUTSIDE_ALERTS: True, CONF_NOTIFY_URL: "ftp://example.com/x"},
            {CONF_NOTIFY_URL: "invalid_notify_url"},
        ),
        (  # a private network the gateway's operator did not allow
            {CONF_OUTSIDE_ALERTS: True, CONF_NOTIFY_URL: "http://10.0.0.5/ntfy/topic"},
            {CONF_NOTIFY_URL: "notify_url_forbidden"},
        ),
    ):
        result = await _options(hass, loaded_entry, **changes)
        assert result["type"] is FlowResultType.FORM
        assert result["errors"] == error
    assert (await store.instance_by_id(loaded_entry.unique_id)).notify is None

    result = await _options(
        hass, loaded_entry, **{CONF_OUTSIDE_ALERTS: True, CONF_NOTIFY_URL: url, CONF_NOTIFY_FORMAT: "ntfy"}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    held = (await store.instance_by_id(loaded_entry.unique_id)).notify
    assert held is not None
    assert (held.url, held.format) == (url, "ntfy")
    expects = _sensor(hass, loaded_entry)  # the entry reloaded: the gateway's view again
    assert expects.attributes["outside_alerts"] is True
    assert expects.attributes["operator_alerts"] is False
    last = (
        datetime.fromisoformat(expects.attributes["last_success"])
        if expects.attributes["last_success"]
        else None
    )
    assert last is None
    due = datetime.fromisoformat(expects.state)
    assert abs(due.timestamp() - (CLOCK.now + 36 * HOUR)) < 60  # created now: a first backup within 36 h

    # The diagnostics and every log line: the URL without its path and query.
    assert await async_setup_component(hass, "diagnostics", {})
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, loaded_entry)
    text = json.dumps(diagnostics)
    assert diagnostics["entry"]["options"][CONF_NOTIFY_URL] == f"http://127.0.0.1:{receiver.port}/…"
    assert diagnostics["gateway"]["watch"]["notify"] == {
        "url": f"http://127.0.0.1:{receiver.port}/…",
        "format": "ntfy",
    }
    assert diagnostics["gateway"]["watch"]["state"] == "ok"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in ("grandmas-backups", "tk_Zq81secret", "10.0.0.5/ntfy"):
        assert secret not in text
        assert secret not in logged
    assert held.secret not in logged

    result = await _options(hass, loaded_entry, **{CONF_OUTSIDE_ALERTS: False})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert (await store.instance_by_id(loaded_entry.unique_id)).notify is None
    assert _sensor(hass, loaded_entry).attributes["outside_alerts"] is False


async def test_the_gateway_tells_the_house_when_it_goes_quiet_and_when_it_is_back(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: RunningGateway,
    receiver: WebhookReceiver,
) -> None:
    url = receiver.url(f"{SECRET_PATH}?{SECRET_QUERY}")
    result = await _options(
        hass, loaded_entry, **{CONF_OUTSIDE_ALERTS: True, CONF_NOTIFY_URL: url, CONF_NOTIFY_FORMAT: "ntfy"}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await backup_now(hass, loaded_entry)
    await let_upload_progress_settle(hass)
    await loaded_entry.runtime_data.coordinator.async_refresh()
    await hass.async_block_till_done()
    expects = _sensor(hass, loaded_entry)
    landed = datetime.fromisoformat(expects.attributes["last_success"])
    assert datetime.fromisoformat(expects.state) - landed == timedelta(hours=36)

    async def look() -> None:
        await gateway.app[WATCHDOG].run_once(CLOCK())
        await gateway.app[OUTBOX].run_once(CLOCK())

    CLOCK.advance(35 * HOUR)
    await look()
    assert receiver.received == []  # ok: nobody told
    CLOCK.advance(2 * HOUR)  # Home Assistant went quiet: no backup for 37 h
    await look()
    [alert] = await receiver.wait_for(1)
    message = ntfy_message(alert)
    assert message["title"] == "Backups of home are late"
    assert (message["priority"], message["topic"]) == ("4", "grandmas-backups-9fQ2x")
    assert alert.query == SECRET_QUERY
    await loaded_entry.runtime_data.coordinator.async_refresh()
    assert _sensor(hass, loaded_entry).attributes["state"] == "late"

    await backup_now(hass, loaded_entry)  # it is back
    await let_upload_progress_settle(hass)
    await look()
    await look()
    [_, back] = receiver.received
    assert ntfy_message(back)["title"] == "Backups of home are back"
    await loaded_entry.runtime_data.coordinator.async_refresh()
    assert _sensor(hass, loaded_entry).attributes["state"] == "ok"


async def test_setup_gives_a_gateway_that_lost_it_the_url_again(
    hass: HomeAssistant,
    loaded_entry: MockConfigEntry,
    gateway: RunningGateway,
    receiver: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The gateway's database rebuilt from the bucket holds no notify URL: the next setup sets it again. With the
    option off, a URL the gateway holds is left alone (only the options flow clears one)."""
    store = gateway.app[STORE]
    assert loaded_entry.unique_id is not None
    url = receiver.url(f"{SECRET_PATH}?{SECRET_QUERY}")
    await _options(hass, loaded_entry, **{CONF_OUTSIDE_ALERTS: True, CONF_NOTIFY_URL: url})
    assert await store.set_notify(loaded_entry.unique_id, None)  # lost
    assert await hass.config_entries.async_reload(loaded_entry.entry_id)
    await hass.async_block_till_done()
    held = (await store.instance_by_id(loaded_entry.unique_id)).notify
    assert held is not None
    assert (held.url, held.format) == (url, "ntfy")
    assert "had lost the outside alerts' URL" in caplog.text
    assert _sensor(hass, loaded_entry).attributes["outside_alerts"] is True

    hass.config_entries.async_update_entry(
        loaded_entry, options={**loaded_entry.options, CONF_OUTSIDE_ALERTS: False}
    )
    await hass.async_block_till_done()
    assert (await store.instance_by_id(loaded_entry.unique_id)).notify is not None
    assert "grandmas-backups" not in caplog.text


async def test_a_gateway_away_at_setup_gets_the_url_at_its_first_answer(
    hass: HomeAssistant,
    backup_manager: object,
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Home Assistant starts while the gateway (its database rebuilt meanwhile: no notify URL) is away: the entry
    sets up all the same, and the URL the options name reaches the gateway at its first answer, once."""
    gateway = Gateway(moto_server, moto_bucket, tmp_path / "gateway", NOTIFY_ALLOWED_NETWORKS="127.0.0.0/8")
    try:
        gateway.start()
        instance_id, token = await add_instance(gateway)
        gateway.kill()
        url = f"http://127.0.0.1:9{SECRET_PATH}?{SECRET_QUERY}"
        entry = MockConfigEntry(
            domain=DOMAIN,
            title="home",
            unique_id=instance_id,
            data={CONF_URL: gateway.url, CONF_TOKEN: token},
            options={CONF_OUTSIDE_ALERTS: True, CONF_NOTIFY_URL: url, CONF_NOTIFY_FORMAT: "ntfy"},
        )
        entry.add_to_hass(hass)
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()
        assert entry.state is ConfigEntryState.LOADED
        assert "cannot be reached at setup" in caplog.text

        gateway.start()
        await entry.runtime_data.coordinator.async_refresh()  # the next poll
        await hass.async_block_till_done()
        watch = entry.runtime_data.coordinator.data.watch
        assert watch is not None
        assert watch.notify is not None
        assert (watch.notify.url, watch.notify.format) == ("http://127.0.0.1:9/…", "ntfy")
        assert "had lost the outside alerts' URL" in caplog.text
        assert "grandmas-backups" not in caplog.text
        assert await hass.config_entries.async_unload(entry.entry_id)
    finally:
        gateway.stop()
