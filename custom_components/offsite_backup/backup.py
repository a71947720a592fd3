"""The backup location ("backup agent"): Settings > System > Backups can back up here and restore from here.

Each backup is stored by the gateway with Home Assistant's own description (``AgentBackup.as_dict()``) as its
metadata, so the list comes back whole from the gateway alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from homeassistant.components.backup import (
    AgentBackup,
    BackupAgent,
    BackupAgentError,
    BackupNotFound,
)
from homeassistant.components.backup.agent import BackupAgentUnreachableError
from homeassistant.core import HomeAssistant, callback

from . import DATA_BACKUP_AGENT_LISTENERS
from .api import GatewayError, GatewayNotFoundError, GatewayUnavailableError, RemoteBackup
from .const import DOMAIN, LOGGER
from .models import OffsiteBackupConfigEntry, agent_unique_id


async def async_get_backup_agents(hass: HomeAssistant, **kwargs: Any) -> list[BackupAgent]:
    """One backup location per loaded entry."""
    entries: list[OffsiteBackupConfigEntry] = hass.config_entries.async_loaded_entries(DOMAIN)
    return [OffsiteBackupAgent(entry) for entry in entries]


@callback
def async_register_backup_agents_listener(
    hass: HomeAssistant, *, listener: Callable[[], None], **kwargs: Any
) -> Callable[[], None]:
    """Let the backup manager know when locations come and go (entries load and unload)."""
    hass.data.setdefault(DATA_BACKUP_AGENT_LISTENERS, []).append(listener)

    @callback
    def remove_listener() -> None:
        hass.data[DATA_BACKUP_AGENT_LISTENERS].remove(listener)
        if not hass.data[DATA_BACKUP_AGENT_LISTENERS]:
            del hass.data[DATA_BACKUP_AGENT_LISTENERS]

    return remove_listener


class GatewayUnreachableError(BackupAgentUnreachableError):
    """The gateway or storage cannot be reached; unlike its base class, it keeps the real reason as its message."""

    def __str__(self) -> str:
        """The reason given, not the base class's generic sentence."""
        return str(self.args[0]) if self.args else super().__str__()


def _agent_error(action: str, err: GatewayError) -> BackupAgentError:
    if isinstance(err, GatewayUnavailableError):
        return GatewayUnreachableError(f"Failed to {action}: {err}")
    return BackupAgentError(f"Failed to {action}: {err}")


class OffsiteBackupAgent(BackupAgent):
    """A backup location on an Offsite Backup gateway."""

    domain = DOMAIN

    def __init__(self, entry: OffsiteBackupConfigEntry) -> None:
        """Set up the location of an entry."""
        super().__init__()
        self.name = entry.title
        self.unique_id = agent_unique_id(entry)
        self._data = entry.runtime_data

    async def async_upload_backup(
        self,
        *,
        open_stream: Callable[[], Coroutine[Any, Any, AsyncIterator[bytes]]],
        backup: AgentBackup,
        **kwargs: Any,
    ) -> None:
        """Send a backup through the upload engine; progress goes to our sensors and to ``on_progress`` (2026.4+)."""
        await self._data.runner.async_upload(backup, open_stream, kwargs.get("on_progress"))

    async def async_list_backups(self, **kwargs: Any) -> list[AgentBackup]:
        """The backups the gateway holds for this instance, newest first."""
        return [backup for _, backup in await self._backups()]

    async def async_get_backup(self, backup_id: str, **kwargs: Any) -> AgentBackup:
        """One backup; ``BackupNotFound`` when the gateway does not hold it."""
        return (await self._find(backup_id))[1]

    async def async_download_backup(self, backup_id: str, **kwargs: Any) -> AsyncIterator[bytes]:
        """Stream a backup from storage (presigned GET), never held whole in memory."""
        remote, _ = await self._find(backup_id)
        try:
            return await self._data.client.download(remote.id)
        except GatewayNotFoundError as err:
            raise BackupNotFound(f"Backup {backup_id} not found") from err
        except GatewayError as err:
            raise _agent_error("download the backup", err) from err

    async def async_delete_backup(self, backup_id: str, **kwargs: Any) -> None:
        """Delete a backup from the gateway."""
        remote, _ = await self._find(backup_id)
        try:
            await self._data.client.delete_backup(remote.id)
        except GatewayNotFoundError as err:
            raise BackupNotFound(f"Backup {backup_id} not found") from err
        except GatewayError as err:
            raise _agent_error("delete the backup", err) from err

    async def _backups(self) -> list[tuple[RemoteBackup, AgentBackup]]:
        try:
            remote_backups = await self._data.client.list_backups()
        except GatewayError as err:
            raise _agent_error("list backups", err) from err
        found = []
        for remote in remote_backups:
            try:
                backup = AgentBackup.from_dict(remote.metadata)
            except (KeyError, TypeError, ValueError):
                LOGGER.debug(
                    "Skipping gateway backup %s: its metadata is not a Home Assistant backup", remote.id
                )
                continue
            found.append((remote, _with_size(backup, remote.size)))
        return found

    async def _find(self, backup_id: str) -> tuple[RemoteBackup, AgentBackup]:
        for remote, backup in await self._backups():
            if backup.backup_id == backup_id:
                return remote, backup
        raise BackupNotFound(f"Backup {backup_id} not found")


def _with_size(backup: AgentBackup, size: int) -> AgentBackup:
    """The description with the size storage actually holds."""
    if backup.size == size:
        return backup
    data = backup.as_dict()
    data["size"] = size
    return AgentBackup.from_dict(data)
