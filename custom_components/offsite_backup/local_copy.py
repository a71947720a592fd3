"""The copy of a backup on this machine's own backup location: what an interrupted upload resumes from.

Home Assistant deletes the archive of a backup that goes only off-site as soon as the upload ends, or when it
restarts. So the integration's own backups also go to the local location while they are sent, and that copy is
removed once the upload has an outcome, unless the user keeps local copies. The local location is Home Assistant's
own ``backup.local`` on Core and Container installs, and the Supervisor's ``hassio.local`` (its /backup folder) on
Home Assistant OS and Supervised installs, where core registers no local location.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homeassistant.components.backup import AgentBackup, BackupAgent, BackupNotFound, LocalBackupAgent
from homeassistant.components.backup.util import DecryptedBackupStreamer, EncryptedBackupStreamer
from homeassistant.core import HomeAssistant

from .compat import backup_manager
from .const import LOGGER

READ_CHUNK = 1 << 20
SUPERVISOR_LOCAL = "hassio.local"
"""The Supervisor's own backup folder (/backup), a backup location of the hassio integration."""

type OpenStream = Callable[[], Coroutine[Any, Any, AsyncIterator[bytes]]]


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class FoundCopy:
    """A local copy of the backup being sent, opened the way it was sent.

    The local location may keep it otherwise than this location receives it: "This system" set to unencrypted
    keeps it unencrypted, and Home Assistant encrypted it on the way to this location (or the reverse). It is then
    read through the same transformation. Decrypting gives the same bytes again; encrypting does not (Home
    Assistant draws new nonces each time), so ``same_bytes`` is false and the upload must start over.
    """

    open_stream: OpenStream
    same_bytes: bool
    finish: Callable[[], Awaitable[None]] = _nothing
    """Stop the transformation's worker threads once the upload is done with the stream."""


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

    async def find(self, backup: AgentBackup, password: str | None) -> FoundCopy | None:
        """The same backup in a local location, opened as ``backup`` describes it, if Home Assistant still has it.

        ``password`` is Home Assistant's backup key, which reads a copy kept unencrypted through Home Assistant's
        encryption (or one kept encrypted through its decryption) when this location received it so.
        """
        manager = backup_manager(self._hass)
        for agent_id in self._locations():
            agent = manager.backup_agents[agent_id]
            try:
                local = await agent.async_get_backup(backup.backup_id)
            except BackupNotFound:
                continue
            # 2025.4's locations answer None for a backup they do not hold; later ones raise BackupNotFound.
            plain = None if local is None else await self._plain(agent, local)
            if plain is None:
                continue
            if local.protected == backup.protected:
                return FoundCopy(plain, same_bytes=True)
            if password is None:
                LOGGER.warning(
                    "The copy of backup %s in %s is %s, and there is no backup key to read it as it was sent",
                    backup.backup_id,
                    agent_id,
                    "encrypted" if local.protected else "unencrypted",
                )
                continue
            streamer: EncryptedBackupStreamer | DecryptedBackupStreamer
            if backup.protected:
                streamer = EncryptedBackupStreamer(self._hass, local, plain, password)
            else:
                streamer = DecryptedBackupStreamer(self._hass, local, plain, password)
            if streamer.size() != backup.size:
                LOGGER.warning(
                    "The copy of backup %s in %s does not make the %d bytes that were being sent",
                    backup.backup_id,
                    agent_id,
                    backup.size,
                )
                continue
            return FoundCopy(streamer.open_stream, same_bytes=not backup.protected, finish=streamer.wait)
        return None

    async def _plain(self, agent: BackupAgent, local: AgentBackup) -> OpenStream | None:
        """An ``open_stream`` of the copy as the location keeps it."""
        if isinstance(agent, LocalBackupAgent):
            path: Path = agent.get_backup_path(local.backup_id)
            if await self._hass.async_add_executor_job(path.is_file):
                return self.opener(path)
            return None
        return _downloader(agent, local.backup_id)

    async def remove_left_by(self, job_ids: set[str], marker: str) -> set[str]:
        """Remove the backups whose ``extra_metadata[marker]`` is one of ``job_ids`` from the local locations
        (what Home Assistant left when it stopped while they were written); the job ids whose backup was removed."""
        manager = backup_manager(self._hass)
        removed: set[str] = set()
        for agent_id in self._locations():
            agent = manager.backup_agents[agent_id]
            try:
                listed = await agent.async_list_backups()
            except Exception as err:  # the location's failure: logged, looked for again later
                LOGGER.warning("Could not list the backups of %s: %s", agent_id, err)
                continue
            for backup in listed:
                job_id = backup.extra_metadata.get(marker)
                if isinstance(job_id, str) and job_id in job_ids:
                    LOGGER.warning(
                        "Removing backup %s (%s) from %s: Home Assistant stopped while it was being written for "
                        "Offsite Backup, which never sent it",
                        backup.name,
                        backup.backup_id,
                        agent_id,
                    )
                    await self.remove(backup.backup_id, agent_id)
                    removed.add(job_id)
        return removed

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
