"""The copy of a backup on this machine's own backup location: what an interrupted upload resumes from.

Home Assistant deletes the archive of a backup that goes only off-site as soon as the upload ends, or when it
restarts. So the integration's own backups also go to the local location (when there is one) while they are sent,
and that copy is removed once the upload has an outcome, unless the user keeps local copies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from homeassistant.components.backup import AgentBackup, BackupNotFound
from homeassistant.core import HomeAssistant

from .compat import backup_manager
from .const import LOGGER

READ_CHUNK = 1 << 20

type OpenStream = Callable[[], Coroutine[Any, Any, AsyncIterator[bytes]]]


class LocalCopies:
    """Finds, opens and removes local copies of backups through Home Assistant's backup manager."""

    def __init__(self, hass: HomeAssistant) -> None:
        """Use ``hass``'s backup manager."""
        self._hass = hass

    def location(self) -> str | None:
        """The local backup location to write a copy to while uploading (``backup.local``), if there is one."""
        return next(iter(backup_manager(self._hass).local_backup_agents), None)

    async def find(self, backup: AgentBackup) -> Path | None:
        """The path of the same backup in a local location, if Home Assistant still has it."""
        for agent in backup_manager(self._hass).local_backup_agents.values():
            try:
                local = await agent.async_get_backup(backup.backup_id)
                path: Path = agent.get_backup_path(backup.backup_id)
            except BackupNotFound:
                continue
            if local is None or local.protected != backup.protected:
                continue
            if await self._hass.async_add_executor_job(path.is_file):
                return path
        return None

    async def remove(self, backup_id: str, location: str) -> None:
        """Remove the copy of ``backup_id`` from ``location`` (best effort: a failure is logged)."""
        errors = await backup_manager(self._hass).async_delete_backup(backup_id, agent_ids=[location])
        errors = {agent: err for agent, err in errors.items() if not isinstance(err, BackupNotFound)}
        if errors:
            LOGGER.warning("Could not remove the local copy of backup %s: %s", backup_id, errors)
        else:
            LOGGER.debug("Removed the local copy of backup %s from %s", backup_id, location)

    def opener(self, path: Path) -> OpenStream:
        """An ``open_stream`` reading a backup file in the executor, like Home Assistant's own."""
        hass = self._hass

        async def read() -> AsyncIterator[bytes]:
            handle = await hass.async_add_executor_job(path.open, "rb")
            try:
                while chunk := await hass.async_add_executor_job(handle.read, READ_CHUNK):
                    yield chunk
            finally:
                await hass.async_add_executor_job(handle.close)

        async def open_stream() -> AsyncIterator[bytes]:
            return read()

        return open_stream
