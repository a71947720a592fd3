"""The backup location ("backup agent"): Settings > System > Backups can back up here and restore from here.

Each backup is stored by the gateway with Home Assistant's own description (``AgentBackup.as_dict()``, less what
``engine/privacy.py`` keeps in the house) as its metadata, so the list comes back whole from the gateway alone. The
list is read by ``listing.py`` (as the drill reads it), kept for a short while (Home Assistant asks for it several
times per page), and forgotten on every upload and delete.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from homeassistant.components.backup import (
    AgentBackup,
    BackupAgent,
    BackupAgentError,
    BackupNotFound,
)
from homeassistant.components.backup.agent import BackupAgentUnreachableError
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback
from homeassistant.util import slugify

from .const import DATA_BACKUP_AGENT_LISTENERS, DOMAIN
from .engine.api import (
    GatewayAuthError,
    GatewayError,
    GatewayNotFoundError,
    GatewayProtectedError,
    GatewayUnavailableError,
    RemoteBackup,
)
from .listing import Listing, read_listing
from .models import OffsiteBackupConfigEntry


async def async_get_backup_agents(hass: HomeAssistant, **kwargs: Any) -> list[BackupAgent]:
    """One backup location per loaded entry."""
    entries: list[OffsiteBackupConfigEntry] = hass.config_entries.async_loaded_entries(DOMAIN)
    return [OffsiteBackupAgent(hass, entry) for entry in entries]


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


def handle_gateway_errors[T](
    action: str,
) -> Callable[[Callable[..., Coroutine[Any, Any, T]]], Callable[..., Coroutine[Any, Any, T]]]:
    """Map the gateway client's errors to the backup manager's: not found, unreachable, or failed to ``action``.

    A token the gateway refuses also starts the entry's reauth flow, as core's backup locations do.
    """

    def decorator(func: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., Coroutine[Any, Any, T]]:
        @functools.wraps(func)
        async def wrapper(agent: OffsiteBackupAgent, *args: Any, **kwargs: Any) -> T:
            try:
                return await func(agent, *args, **kwargs)
            except GatewayNotFoundError as err:
                raise BackupNotFound(f"Backup not found: {err}") from err
            except GatewayUnavailableError as err:
                raise GatewayUnreachableError(f"Failed to {action}: {err}") from err
            except GatewayProtectedError as err:
                # The gateway's own words, which say until when (shown on the Backups page).
                raise BackupAgentError(err.gateway_message) from err
            except GatewayAuthError as err:
                agent.start_reauth()
                raise BackupAgentError(
                    f"Failed to {action}: the gateway refused the token; reauthenticate the integration ({err})"
                ) from err
            except GatewayError as err:
                raise BackupAgentError(f"Failed to {action}: {err}") from err

        return wrapper

    return decorator


class OffsiteBackupAgent(BackupAgent):
    """A backup location on an Offsite Backup gateway."""

    domain = DOMAIN

    def __init__(self, hass: HomeAssistant, entry: OffsiteBackupConfigEntry) -> None:
        """Set up the location of an entry."""
        super().__init__()
        self._hass = hass
        self._entry = entry
        self.name = entry.title
        self.unique_id = agent_unique_id(entry)
        self._data = entry.runtime_data

    def start_reauth(self) -> None:
        """The gateway refused the token: ask for a new one (Home Assistant starts one flow per entry)."""
        self._entry.async_start_reauth(self._hass)

    async def async_upload_backup(
        self,
        *,
        open_stream: Callable[[], Coroutine[Any, Any, AsyncIterator[bytes]]],
        backup: AgentBackup,
        **kwargs: Any,
    ) -> None:
        """Send a backup through the upload engine; progress goes to our sensors and to ``on_progress`` (2026.4+)."""
        try:
            await self._data.runner.async_upload(backup, open_stream, kwargs.get("on_progress"))
        finally:
            self._data.listing.forget()

    @handle_gateway_errors("list backups")
    async def async_list_backups(self, **kwargs: Any) -> list[AgentBackup]:
        """The backups the gateway holds for this instance, newest first (one per backup id)."""
        return [copies[0][1] for copies in (await self._backups()).values()]

    @handle_gateway_errors("read the backup")
    async def async_get_backup(self, backup_id: str, **kwargs: Any) -> AgentBackup:
        """One backup; ``BackupNotFound`` when the gateway does not hold it."""
        return (await self._copies(backup_id))[0][1]

    @handle_gateway_errors("download the backup")
    async def async_download_backup(self, backup_id: str, **kwargs: Any) -> AsyncIterator[bytes]:
        """Stream a backup from storage (presigned GET), never held whole in memory.

        The stream owns its connection: closed before it is read, it still releases it.
        """
        remote, _ = (await self._copies(backup_id))[0]
        return await self._data.client.download(remote.id)

    @handle_gateway_errors("delete the backup")
    async def async_delete_backup(self, backup_id: str, **kwargs: Any) -> None:
        """Delete a backup from the gateway: every copy of it, when it was sent more than once."""
        try:
            for remote, _ in await self._copies(backup_id):
                self._data.drill.forget(remote.id)
                try:
                    await self._data.client.delete_backup(remote.id)
                except GatewayNotFoundError:
                    continue  # already gone
        finally:
            self._data.listing.forget()

    async def _backups(self) -> Listing:
        """Home Assistant's backups on the gateway by backup id, each with its copies, newest first."""
        return await self._data.listing.get(lambda: read_listing(self._data.client, self._data.privacy))

    async def _copies(self, backup_id: str) -> list[tuple[RemoteBackup, AgentBackup]]:
        copies = (await self._backups()).get(backup_id)
        if not copies:
            raise BackupNotFound(f"Backup {backup_id} not found")
        return copies


def agent_id_for(entry: ConfigEntry[Any]) -> str:
    """The backup agent id of an entry: ``offsite_backup.<gateway instance id>``."""
    return f"{DOMAIN}.{agent_unique_id(entry)}"


def agent_unique_id(entry: ConfigEntry[Any]) -> str:
    """The backup agent's unique id, from the entry's unique id (the gateway's instance id)."""
    assert entry.unique_id is not None
    return slugify(entry.unique_id)
