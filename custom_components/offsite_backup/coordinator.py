"""Polls the gateway: is it reachable, does it still accept the token, what are this instance's limits."""

from __future__ import annotations

from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryAuthFailed
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator, UpdateFailed

from .const import DOMAIN, GATEWAY_POLL_INTERVAL, LOGGER
from .engine.api import GatewayAuthError, GatewayClient, GatewayError, InstanceInfo


class GatewayCoordinator(DataUpdateCoordinator[InstanceInfo]):
    """``GET /v1/instance`` every few minutes; entities that need the gateway follow its availability.

    The coordinator logs once when the gateway becomes unreachable and once when it is back.
    """

    config_entry: ConfigEntry[Any]  # its runtime data (models.py) holds this coordinator

    def __init__(self, hass: HomeAssistant, entry: ConfigEntry[Any], client: GatewayClient) -> None:
        """Set up the coordinator."""
        super().__init__(
            hass,
            LOGGER,
            config_entry=entry,
            name=f"{DOMAIN} gateway",
            update_interval=GATEWAY_POLL_INTERVAL,
        )
        self.client = client

    async def async_first_contact(self) -> None:
        """At setup: one poll that does not hold the entry back when the gateway cannot be reached.

        The entry sets up either way (the schedule, the history's sensors, the backup location all work without
        the gateway; the night's backup waits for it, then fails visibly); only a gateway refusing the token stops
        it (``ConfigEntryAuthFailed``: reauth).
        """
        try:
            info = await self._async_update_data()
        except UpdateFailed as err:
            LOGGER.warning(
                "The gateway cannot be reached at setup (%s); backups wait for it, and fail with the reason if it "
                "stays away",
                err,
            )
            # What async_set_update_error does, without its second log line (no listener is there yet).
            self.last_exception = err
            self.last_update_success = False
        else:
            self.async_set_updated_data(info)

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
