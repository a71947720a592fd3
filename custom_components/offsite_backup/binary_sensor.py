"""A problem sensor that turns on when no backup has succeeded for too long, whatever stopped it (it needs no failure
to be noticed: it counts from the last success, or from the first setup)."""

from __future__ import annotations

from datetime import datetime

from homeassistant.components.binary_sensor import (
    BinarySensorDeviceClass,
    BinarySensorEntity,
    BinarySensorEntityDescription,
)
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.helpers.event import async_track_point_in_utc_time
from homeassistant.util import dt as dt_util

from .entity import OffsiteBackupEntity
from .models import OffsiteBackupConfigEntry

PARALLEL_UPDATES = 0

STALE = BinarySensorEntityDescription(
    key="stale",
    translation_key="stale",
    device_class=BinarySensorDeviceClass.PROBLEM,
)


async def async_setup_entry(
    hass: HomeAssistant, entry: OffsiteBackupConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    """Add the staleness sensor of an entry."""
    async_add_entities([BackupStaleSensor(entry, STALE)])


class BackupStaleSensor(OffsiteBackupEntity, BinarySensorEntity):
    """On when the last successful backup (or, before any, the setup) is older than the threshold option."""

    _unsub_timer: CALLBACK_TYPE | None = None

    @property
    def _stale_from(self) -> datetime:
        runner = self._data.runner
        return (runner.last_success or runner.since) + self._data.settings.stale_after

    @property
    def is_on(self) -> bool:
        """Whether the newest backup off-site is too old."""
        return dt_util.utcnow() >= self._stale_from

    @property
    def extra_state_attributes(self) -> dict[str, str]:
        """When it turns (or turned) on."""
        return {"stale_from": self._stale_from.isoformat()}

    async def async_added_to_hass(self) -> None:
        """Re-evaluate at the instant the sensor would turn on."""
        await super().async_added_to_hass()
        self.async_on_remove(self._cancel_timer)
        self._arm()

    @callback
    def _cancel_timer(self) -> None:
        if self._unsub_timer is not None:
            self._unsub_timer()
            self._unsub_timer = None

    @callback
    def _arm(self) -> None:
        self._cancel_timer()
        if not self.is_on:
            self._unsub_timer = async_track_point_in_utc_time(self.hass, self._on_timer, self._stale_from)

    @callback
    def _on_timer(self, _now: datetime) -> None:
        self._unsub_timer = None
        self.async_write_ha_state()

    @callback
    def _handle_update(self) -> None:
        """Write the state and arm the timer again: the instant it turns on may have moved (a success, a last
        success set aside because the clock had been ahead)."""
        super()._handle_update()
        self._arm()
