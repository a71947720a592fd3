"""Sensors: progress, status, last error, last success, next run, last backup size, last verified restore, the
gateway's usage report, and when the gateway expects the next backup."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from homeassistant.components.sensor import (
    SensorDeviceClass,
    SensorEntity,
    SensorEntityDescription,
    SensorStateClass,
)
from homeassistant.const import PERCENTAGE, EntityCategory, UnitOfInformation
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .const import DrillStatus, JobStatus
from .drill_runner import RestoreDrill
from .engine.api import Usage, Watch
from .entity import OffsiteBackupEntity
from .models import OffsiteBackupConfigEntry, OffsiteBackupData
from .runner import BackupRunner

PARALLEL_UPDATES = 0

MIB = 1024 * 1024
# A state with no error: the frontend shows "No error" (its translation), automations compare it with "none".
NO_ERROR = "none"


def shown_status(runner: BackupRunner, drill: RestoreDrill) -> str:
    """What the status sensor shows: a running backup job, else a running drill, else whichever ended last."""
    if runner.busy or not (drill.running or drill.last):
        return runner.status.value
    if drill.running:
        return DrillStatus.VERIFYING.value
    assert drill.last is not None
    job = runner.history[0] if runner.history else None
    if job is not None and job.ended is not None and job.ended > drill.last.ended:
        return runner.status.value
    return (DrillStatus.VERIFIED if drill.last.ok else DrillStatus.VERIFY_FAILED).value


@dataclass(frozen=True, kw_only=True)
class OffsiteBackupSensorDescription(SensorEntityDescription):
    """A sensor and how to read its value."""

    value_fn: Callable[[OffsiteBackupData], str | int | float | datetime | None]
    attributes_fn: Callable[[OffsiteBackupData], Mapping[str, Any]] | None = None
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
        # The last failure's message until a backup succeeds; "none" (shown as "No error") when there is none.
        value_fn=lambda data: _truncate(data.runner.last_error) or NO_ERROR,
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
        native_unit_of_measurement=UnitOfInformation.MEBIBYTES,
        suggested_display_precision=1,
        value_fn=lambda data: _mebibytes(data.runner.last_size),
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
        # The same unit as the last backup's size, so that the two compare at a glance.
        native_unit_of_measurement=UnitOfInformation.MEBIBYTES,
        suggested_display_precision=1,
        value_fn=lambda data: _mebibytes(_usage(data, lambda usage: usage.bytes)),
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
        value_fn=lambda data: _rounded(_usage(data, lambda usage: usage.percent), 2),
        needs_gateway=True,
    ),
    # The gateway's watchdog: when it expects the next backup, and whether anyone is told if none comes (the
    # house, by "Alert me from outside if backups stop"; the gateway's operator).
    OffsiteBackupSensorDescription(
        key="gateway_expects",
        translation_key="gateway_expects",
        device_class=SensorDeviceClass.TIMESTAMP,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda data: _due(_watch(data)),
        attributes_fn=lambda data: _watch_attributes(_watch(data)),
        needs_gateway=True,
    ),
)


def _watch(data: OffsiteBackupData) -> Watch | None:
    """The gateway's view of the instance; None from a gateway without a watchdog."""
    info = data.coordinator.data
    return info.watch if info is not None else None


def _due(watch: Watch | None) -> datetime | None:
    return watch.due_at if watch is not None else None


def _watch_attributes(watch: Watch | None) -> dict[str, Any]:
    if watch is None:
        return {}
    return {
        "state": watch.state,
        "expect_every_hours": round(watch.expect_every / 3600, 2) if watch.expect_every else None,
        "last_success": watch.last_success_at.isoformat() if watch.last_success_at else None,
        "outside_alerts": watch.notify is not None,
        "operator_alerts": watch.operator_alerts,
    }


def _usage(data: OffsiteBackupData, read: Callable[[Usage], float | None]) -> float | None:
    """A figure of the gateway's usage report; None (unknown) from a gateway that does not report it."""
    info = data.coordinator.data
    usage = info.usage if info is not None else None
    return None if usage is None else read(usage)


def _rounded(value: float | None, digits: int) -> float | None:
    """A state rounded to what it can mean (the display precision rounds further, for the eye)."""
    return None if value is None else round(value, digits)


def _mebibytes(size: float | None) -> float | None:
    """A byte count in MiB, to the KiB (three decimals): the state a person or an automation reads."""
    return None if size is None else _rounded(size / MIB, 3)


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
    def extra_state_attributes(self) -> Mapping[str, Any] | None:
        """Attributes, for the sensors that have some."""
        attributes_fn = self.entity_description.attributes_fn
        return attributes_fn(self._data) if attributes_fn is not None else None
