"""The "Back up now" button."""

from __future__ import annotations

from homeassistant.components.button import ButtonEntity, ButtonEntityDescription
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .const import DOMAIN, LOGGER, JobStatus, JobTrigger
from .entity import OffsiteBackupEntity
from .models import OffsiteBackupConfigEntry
from .outcome import failure_level
from .runner import JobError

PARALLEL_UPDATES = 0

BACKUP_NOW = ButtonEntityDescription(key="backup_now", translation_key="backup_now")


async def async_setup_entry(
    hass: HomeAssistant, entry: OffsiteBackupConfigEntry, async_add_entities: AddConfigEntryEntitiesCallback
) -> None:
    """Add the button of an entry."""
    async_add_entities([BackupNowButton(entry, BACKUP_NOW)])


class BackupNowButton(OffsiteBackupEntity, ButtonEntity):
    """Starts a backup; its progress and outcome show on the sensors."""

    needs_gateway = True

    def __init__(self, entry: OffsiteBackupConfigEntry, description: ButtonEntityDescription) -> None:
        """Set up the button."""
        super().__init__(entry, description)
        self._entry = entry

    async def async_press(self) -> None:
        """Start a backup in the background (a backup can take a long time)."""
        runner = self._data.runner
        if runner.busy:
            raise HomeAssistantError(translation_domain=DOMAIN, translation_key="already_running")

        async def run() -> None:
            try:
                await runner.async_run(JobTrigger.MANUAL)
            except JobError as err:
                # Nobody else hears of it: its one log line (outcome.py logs the nightly backup's).
                last = runner.history[0] if runner.history else None
                if last is not None and last.status is JobStatus.FAILED:
                    LOGGER.log(failure_level(last.error), "Backup started by the button failed: %s", err)
                else:  # cancelled, or suspended to resume after a restart
                    LOGGER.debug("Backup started by the button ended without a backup: %s", err)

        self._entry.async_create_background_task(self.hass, run(), f"{DOMAIN} backup now")
