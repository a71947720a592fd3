"""The copy of a backup on this machine's own backup location: what an interrupted upload resumes from.

Home Assistant deletes the archive of a backup that goes only off-site as soon as the upload ends, or when it
restarts. So the integration's own backups also go to the local location while they are sent, and that copy is
removed once the upload has an outcome, unless the user keeps local copies. The local location is Home Assistant's
own ``backup.local`` on Core and Container installs, and the Supervisor's ``hassio.local`` (its /backup folder) on
Home Assistant OS and Supervised installs, where core registers no local location.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from homeassistant.components.backup import AgentBackup, BackupAgent, BackupNotFound, LocalBackupAgent
from homeassistant.core import HomeAssistant

from .compat import backup_manager
from .const import LOGGER

READ_CHUNK = 1 << 20
SUPERVISOR_LOCAL = "hassio.local"
"""The Supervisor's own backup folder (/backup), a backup location of the hassio integration."""

type OpenStream = Callable[[], Coroutine[Any, Any, AsyncIterator[bytes]]]


class LocalCopies:
    """Finds, opens and removes local copies of backups through Home Assistant's backup manager."""

    def __init__(self, hass: HomeAssistant) -> None:
        """Use ``hass``'s backup manager."""
        self._hass = hass

    def location(self) -> str | None:
        """The local backup location to write a copy to while uploading, if there is one."""
        return next(iter(self._locations()), None)

    def _locations(self) -> list[str]:
        manager = backup_manager(self._hass)
        found = list(manager.local_backup_agents)
        if SUPERVISOR_LOCAL in manager.backup_agents:
            found.append(SUPERVISOR_LOCAL)
        return found

    async def find(self, backup: AgentBackup) -> OpenStream | None:
        """An ``open_stream`` of the same backup in a local location, if Home Assistant still has it."""
        manager = backup_manager(self._hass)
        for agent_id in self._locations():
            agent = manager.backup_agents[agent_id]
            try:
                local = await agent.async_get_backup(backup.backup_id)
            except BackupNotFound:
                continue
            if local is None or local.protected != backup.protected:
                continue
            if isinstance(agent, LocalBackupAgent):
                path: Path = agent.get_backup_path(backup.backup_id)
                if await self._hass.async_add_executor_job(path.is_file):
                    return self.opener(path)
                continue
            return _downloader(agent, backup.backup_id)
        return None

    async def remove(self, backup_id: str, location: str) -> None:
        """Remove the copy of ``backup_id`` from ``location`` (best effort: a failure is logged).

        Through the location itself, not the manager: the manager would forget what it knows of the backup (that
        it is partial, that it is an automatic one) although the off-site copy remains.
        """
        agent = backup_manager(self._hass).backup_agents.get(location)
        if agent is None:
            return
        try:
            await agent.async_delete_backup(backup_id)
        except BackupNotFound:
            return
        except Exception as err:
            LOGGER.warning("Could not remove the local copy of backup %s: %s", backup_id, err)
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


def _downloader(agent: BackupAgent, backup_id: str) -> OpenStream:
    """An ``open_stream`` reading a backup through its location (the Supervisor streams it)."""

    async def open_stream() -> AsyncIterator[bytes]:
        return await agent.async_download_backup(backup_id)

    return open_stream
