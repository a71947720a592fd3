"""What differs between the Home Assistant versions we support (2025.4.4 to the current release), in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from homeassistant.components import backup
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.core import HomeAssistant

if TYPE_CHECKING:
    import probatio as vol
    from homeassistant.components.backup.manager import BackupManager
    from homeassistant.components.backup.util import DecryptedBackupStreamer
    from homeassistant.util.async_iterator import AsyncIteratorReader
else:
    try:  # Home Assistant's schema library in 2026.x: voluptuous's API, maintained under a new name
        import probatio as vol
    except ImportError:  # earlier versions: voluptuous itself
        import voluptuous as vol
    try:  # 2025.10 and later: a helper of its own, built with the event loop
        from homeassistant.util.async_iterator import AsyncIteratorReader
    except ImportError:  # earlier versions: in the backup integration, built with hass
        from homeassistant.components.backup.util import AsyncIteratorReader

__all__ = ["IteratorReader", "backup_manager", "failed_parts", "finish_streamer", "iterator_reader", "vol"]


def backup_manager(hass: HomeAssistant) -> BackupManager:
    """Home Assistant's backup manager: from its public accessor where it exists (not in 2025.4), else hass.data."""
    get_manager = getattr(backup, "async_get_manager", None)
    if get_manager is not None:
        manager: BackupManager = get_manager(hass)
        return manager
    return hass.data[DATA_MANAGER]


def failed_parts(manager: BackupManager, backup_id: str) -> tuple[list[str], list[str]]:
    """The add-ons (names) and folders Home Assistant could not put in a backup it made (2025.5+ records them)."""
    known = manager.known_backups.get(backup_id)
    addons = getattr(known, "failed_addons", None) or []
    folders = getattr(known, "failed_folders", None) or []
    return [addon.name or addon.slug for addon in addons], [str(folder) for folder in folders]


class IteratorReader(Protocol):
    """Home Assistant's blocking reader of an async byte stream (for a worker thread)."""

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end."""

    def abort(self) -> None:
        """Make a blocked or later ``read`` raise (Home Assistant's abort exception) in the reading thread."""

    def close(self) -> None:
        """Nothing: the stream is not closed."""


def iterator_reader(hass: HomeAssistant, stream: AsyncIterator[bytes]) -> IteratorReader:
    """Home Assistant's ``AsyncIteratorReader`` over ``stream``, as the version at hand builds it."""
    if AsyncIteratorReader.__module__ == "homeassistant.components.backup.util":
        return AsyncIteratorReader(hass, _EndStaysEnd(stream))  # type: ignore[arg-type,unused-ignore]
    return AsyncIteratorReader(hass.loop, stream)


class _EndStaysEnd:
    """Up to 2025.9 the reader asks its stream for more after the end, and the output of Home Assistant's
    decryption then waits for ever: here the end, once reached, is the answer to every later ask (as the reader
    of later versions does itself)."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream
        self._ended = False

    def __aiter__(self) -> _EndStaysEnd:
        return self

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        try:
            return await anext(self._stream)
        except StopAsyncIteration:
            self._ended = True
            raise


async def finish_streamer(hass: HomeAssistant, streamer: DecryptedBackupStreamer) -> Exception | None:
    """Stop a decrypting streamer's worker threads, wait until they have ended, and return the first one's error.

    ``DecryptedBackupStreamer.wait()`` aborts and waits for its workers, and is the same in every version; the
    error a worker met (it logs it and ends its output early) and its thread are kept in private fields, read here
    with care: without them the drill still fails on the truncated output, with a vaguer message.
    """
    await streamer.wait()
    error: Exception | None = None
    for worker in getattr(streamer, "_workers", ()):
        thread = getattr(worker, "thread", None)
        if thread is not None:
            await hass.async_add_executor_job(thread.join)
        worker_error = getattr(worker, "error", None)
        if error is None and isinstance(worker_error, Exception):
            error = worker_error
    return error
