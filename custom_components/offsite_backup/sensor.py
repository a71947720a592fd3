"""Sensors: progress, status, last error, last success, next run, last backup size, last verified restore."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from homeassistant.components.sensor import (
    SensorDeviceClass,
    SensorEntity,
    SensorEntityDescription,
    SensorStateClass,
)
from homeassistant.const import PERCENTAGE, EntityCategory, UnitOfInformation
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .api import Usage
from .const import DrillStatus, JobStatus
from .drill_runner import shown_status
from .entity import OffsiteBackupEntity
from .models import OffsiteBackupConfigEntry, OffsiteBackupData

PARALLEL_UPDATES = 0


@dataclass(frozen=True, kw_only=True)
class OffsiteBackupSensorDescription(SensorEntityDescription):
    """A sensor and how to read its value."""

    value_fn: Callable[[OffsiteBackupData], str | int | float | datetime | None]
    attributes_fn: Callable[[OffsiteBackupData], dict[str, str | None]] | None = None
    needs_gateway: bool = False


SENSORS: tuple[OffsiteBackupSensorDescription, ...] = (
    OffsiteBackupSensorDescription(
        key="progress",
        translation_key="progress",
        native_unit_of_measurement=PERCENTAGE,
        suggested_display_precision=0,
        # A running backup's upload, else a running restore drill's download.
        value_fn=lambda data: (
            data.drill.progress if data.drill.running and not data.runner.busy else data.runner.progress
        ),
        needs_gateway=True,
    ),
    OffsiteBackupSensorDescription(
        key="status",
        translation_key="status",
        device_class=SensorDeviceClass.ENUM,
        options=[*(status.value for status in JobStatus), *(status.value for status in DrillStatus)],
        value_fn=lambda data: shown_status(data.runner, data.drill),
        # While it waits for a failure to pass: what failed, the next try, until when at the latest.
        attributes_fn=lambda data: dict(data.runner.waiting.as_dict()) if data.runner.waiting else {},
    ),
    OffsiteBackupSensorDescription(
        key="last_error",
        translation_key="last_error",
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda data: _truncate(data.runner.last_error),
    ),
    OffsiteBackupSensorDescription(
        key="last_success",
        translation_key="last_success",
        device_class=SensorDeviceClass.TIMESTAMP,
        value_fn=lambda data: data.runner.last_success,
    ),
    OffsiteBackupSensorDescription(
        key="next_run",
        translation_key="next_run",
        device_class=SensorDeviceClass.TIMESTAMP,
        value_fn=lambda data: data.scheduler.next_run,
    ),
    OffsiteBackupSensorDescription(
        key="last_size",
        translation_key="last_size",
        device_class=SensorDeviceClass.DATA_SIZE,
        native_unit_of_measurement=UnitOfInformation.BYTES,
        suggested_unit_of_measurement=UnitOfInformation.MEBIBYTES,
        suggested_display_precision=1,
        value_fn=lambda data: data.runner.last_size,
    ),
    OffsiteBackupSensorDescription(
        key="last_verified",
        translation_key="last_verified",
        device_class=SensorDeviceClass.TIMESTAMP,
        value_fn=lambda data: data.drill.last_verified.ended if data.drill.last_verified else None,
        attributes_fn=lambda data: {
            "backup_name": data.drill.last_verified.backup_name if data.drill.last_verified else None,
            "backup_id": data.drill.last_verified.backup_id if data.drill.last_verified else None,
        },
    ),
    # What the gateway reports for this instance (GET /v1/instance, polled every 5 minutes and after each job).
    OffsiteBackupSensorDescription(
        key="storage_used",
        translation_key="storage_used",
        device_class=SensorDeviceClass.DATA_SIZE,
        state_class=SensorStateClass.MEASUREMENT,
        native_unit_of_measurement=UnitOfInformation.BYTES,
        suggested_unit_of_measurement=UnitOfInformation.GIBIBYTES,
        suggested_display_precision=2,
        value_fn=lambda data: _usage(data, lambda usage: usage.bytes),
        needs_gateway=True,
    ),
    OffsiteBackupSensorDescription(
        key="backups_stored",
        translation_key="backups_stored",
        state_class=SensorStateClass.MEASUREMENT,
        value_fn=lambda data: _usage(data, lambda usage: usage.backups),
        # What keeps them: the gateway's policy, or Home Assistant's retention set for this location as well.
        attributes_fn=lambda data: {
            "retention": data.runner.retention.summary(
                data.coordinator.data.policy if data.coordinator.data is not None else None
            )
        },
        needs_gateway=True,
    ),
    OffsiteBackupSensorDescription(
        key="quota_used",
        translation_key="quota_used",
        native_unit_of_measurement=PERCENTAGE,
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=1,
        value_fn=lambda data: _usage(data, lambda usage: usage.percent),
        needs_gateway=True,
    ),
)


def _usage(data: OffsiteBackupData, read: Callable[[Usage], float | None]) -> float | None:
    """A figure of the gateway's usage report; None (unknown) from a gateway that does not report it."""
    info = data.coordinator.data
    usage = info.usage if info is not None else None
    return None if usage is None else read(usage)


def _truncate(text: str | None) -> str | None:
    """A state holds at most 255 characters; the whole message is in the history and diagnostics."""
    if text is None or len(text) <= 255:
        return text
    return text[:254] + "…"


async def async_setup_entry(
    hass: HomeAssistant, entry: OffsiteBackupConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    """Add the sensors of an entry."""
    async_add_entities(OffsiteBackupSensor(entry, description) for description in SENSORS)


class OffsiteBackupSensor(OffsiteBackupEntity, SensorEntity):
    """A sensor of an Offsite Backup entry."""

    entity_description: OffsiteBackupSensorDescription

    def __init__(self, entry: OffsiteBackupConfigEntry, description: OffsiteBackupSensorDescription) -> None:
        """Set up the sensor."""
        super().__init__(entry, description)
        self.needs_gateway = description.needs_gateway

    @property
    def native_value(self) -> str | int | float | datetime | None:
        """The value, read from the runner or the schedule."""
        return self.entity_description.value_fn(self._data)

    @property
    def extra_state_attributes(self) -> dict[str, str | None] | None:
        """Attributes, for the sensors that have some."""
        attributes_fn = self.entity_description.attributes_fn
        return attributes_fn(self._data) if attributes_fn is not None else None
