"""A token the gateway refuses, met by the backup location: the error Home Assistant shows, and a reauth flow."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from homeassistant.components.backup import BackupAgentError
from homeassistant.components.backup.agent import BackupAgent
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.offsite_backup.const import DOMAIN
from tests.helpers.gateway import RunningGateway
from tests.integration.test_backup_agent import agent_of

CALLS: dict[str, tuple[str, Callable[[BackupAgent], Awaitable[Any]]]] = {
    "list": ("list backups", lambda agent: agent.async_list_backups()),
    "get": ("read the backup", lambda agent: agent.async_get_backup("abc123")),
    "download": ("download the backup", lambda agent: agent.async_download_backup("abc123")),
    "delete": ("delete the backup", lambda agent: agent.async_delete_backup("abc123")),
}


def reauth_flows(hass: HomeAssistant) -> list[str]:
    return [flow["context"]["source"] for flow in hass.config_entries.flow.async_progress_by_handler(DOMAIN)]


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_a_refused_token_starts_reauth_from_the_location(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, gateway: RunningGateway, call: str
) -> None:
    action, run = CALLS[call]
    await gateway.revoke_instance("home")
    loaded_entry.runtime_data.listing.forget()
    assert reauth_flows(hass) == []
    with pytest.raises(BackupAgentError, match=f"^Failed to {action}: ") as raised:
        await run(agent_of(hass, loaded_entry))
    assert "refused the token" in str(raised.value)
    await hass.async_block_till_done()
    assert reauth_flows(hass) == ["reauth"]
    # Once per entry: a second refusal does not start another flow.
    with pytest.raises(BackupAgentError):
        await run(agent_of(hass, loaded_entry))
    await hass.async_block_till_done()
    assert reauth_flows(hass) == ["reauth"]
