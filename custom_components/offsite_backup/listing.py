"""The gateway's backups as last read: Home Assistant asks for the list several times per page."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

from homeassistant.components.backup import AgentBackup

from .engine.api import RemoteBackup

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
