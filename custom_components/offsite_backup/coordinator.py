"""Polls the gateway: is it reachable, does it still accept the token, what are this instance's limits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryAuthFailed
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator, UpdateFailed

from .api import GatewayAuthError, GatewayClient, GatewayError, InstanceInfo
from .const import DOMAIN, GATEWAY_POLL_INTERVAL, LOGGER

if TYPE_CHECKING:
    from .models import OffsiteBackupConfigEntry


class GatewayCoordinator(DataUpdateCoordinator[InstanceInfo]):
    """``GET /v1/instance`` every few minutes; entities that need the gateway follow its availability.

    The coordinator logs once when the gateway becomes unreachable and once when it is back.
    """

    config_entry: OffsiteBackupConfigEntry

    def __init__(self, hass: HomeAssistant, entry: OffsiteBackupConfigEntry, client: GatewayClient) -> None:
        """Set up the coordinator."""
        super().__init__(
            hass,
            LOGGER,
            config_entry=entry,
            name=f"{DOMAIN} gateway",
            update_interval=GATEWAY_POLL_INTERVAL,
        )
        self.client = client

    async def _async_update_data(self) -> InstanceInfo:
        try:
            return await self.client.get_instance()
        except GatewayAuthError as err:
            raise ConfigEntryAuthFailed(
                translation_domain=DOMAIN,
                translation_key="invalid_auth",
                translation_placeholders={"error": err.message},
            ) from err
        except GatewayError as err:
            raise UpdateFailed(
                translation_domain=DOMAIN,
                translation_key="gateway_unreachable",
                translation_placeholders={"error": err.message},
            ) from err
