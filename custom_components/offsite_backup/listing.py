"""The gateway's backups read as Home Assistant's: one reader for the backup location and the restore drill.

:func:`read_listing` reads the gateway's list into Home Assistant's descriptions, by backup id; the location keeps
it a minute (:class:`BackupListing`: Home Assistant asks for the list several times per page), the drill reads it
fresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

from homeassistant.components.backup import AgentBackup

from .const import LOGGER
from .engine.api import GatewayClient, RemoteBackup
from .engine.privacy import MetadataPrivacy

LISTING_TTL = 60.0
"""Seconds a listing of the gateway's backups is reused."""

type Listing = dict[str, list[tuple[RemoteBackup, AgentBackup]]]
"""Home Assistant's backup id → its copies on the gateway, newest first."""


class BackupListing:
    """The gateway's backups as last read, for ``LISTING_TTL`` seconds; forgotten on upload and delete."""

    def __init__(self, ttl: float = LISTING_TTL) -> None:
        """Keep a listing ``ttl`` seconds."""
        self._ttl = ttl
        self._value: Listing | None = None
        self._expires = 0.0

    async def get(self, read: Callable[[], Coroutine[Any, Any, Listing]]) -> Listing:
        """The listing, read again with ``read`` once it is older than the TTL."""
        if self._value is None or time.monotonic() >= self._expires:
            self._value = await read()
            self._expires = time.monotonic() + self._ttl
        return self._value

    def forget(self) -> None:
        """Read it again next time."""
        self._value = None


async def read_listing(client: GatewayClient, privacy: MetadataPrivacy) -> Listing:
    """Home Assistant's backups on the gateway by backup id, each with its copies, newest first.

    Each description is the one Home Assistant made (``privacy.incoming``), with the size storage holds; a copy
    whose metadata is not a Home Assistant backup is skipped.
    """
    found: Listing = {}
    for remote in await client.list_backups():
        try:
            backup = AgentBackup.from_dict(privacy.incoming(remote.metadata))
        except (KeyError, TypeError, ValueError):
            LOGGER.debug("Skipping gateway backup %s: its metadata is not a Home Assistant backup", remote.id)
            continue
        found.setdefault(backup.backup_id, []).append((remote, _with_size(backup, remote.size)))
    return found


def _with_size(backup: AgentBackup, size: int) -> AgentBackup:
    """The description with the size storage actually holds."""
    if backup.size == size:
        return backup
    data = backup.as_dict()
    data["size"] = size
    return AgentBackup.from_dict(data)
