"""Base entity: one service device per entry, state pushed by the job runner."""

from __future__ import annotations

from homeassistant.core import callback
from homeassistant.helpers.device_registry import DeviceEntryType, DeviceInfo
from homeassistant.helpers.entity import Entity, EntityDescription

from .const import DOMAIN
from .models import OffsiteBackupConfigEntry


class OffsiteBackupEntity(Entity):
    """An entity of an Offsite Backup entry.

    Entities that need the gateway (``needs_gateway``) are unavailable while it is unreachable. Those that tell
    the history (status, last error, last success, staleness) stay available: they are what shows the failure.
    """

    _attr_has_entity_name = True
    _attr_should_poll = False
    needs_gateway = False

    def __init__(self, entry: OffsiteBackupConfigEntry, description: EntityDescription) -> None:
        """Set up the entity from its description."""
        self.entity_description = description
        self._data = entry.runtime_data
        assert entry.unique_id is not None
        self._attr_unique_id = f"{entry.unique_id}_{description.key}"
        self._attr_device_info = DeviceInfo(
            identifiers={(DOMAIN, entry.unique_id)},
            name=entry.title,
            manufacturer="Offsite Backup",
            model="Gateway instance",
            entry_type=DeviceEntryType.SERVICE,
            configuration_url=entry.runtime_data.client.url,
        )

    @property
    def available(self) -> bool:
        """Unavailable while the gateway is unreachable, for the entities that need it."""
        return not self.needs_gateway or self._data.coordinator.last_update_success

    async def async_added_to_hass(self) -> None:
        """Follow the runner, the schedule and the gateway's reachability."""
        await super().async_added_to_hass()
        self.async_on_remove(self._data.runner.async_add_listener(self._handle_update))
        self.async_on_remove(self._data.scheduler.async_add_listener(self._handle_update))
        self.async_on_remove(self._data.coordinator.async_add_listener(self._handle_update))
        self.async_on_remove(self._data.drill.async_add_listener(self._handle_update))

    @callback
    def _handle_update(self) -> None:
        """Something the entity shows changed: write its state."""
        self.async_write_ha_state()
