"""The restore drill's checks of one backup, downloaded through the backup location as Home Assistant downloads it.

``DrillChecks.run`` (fed by ``drill_runner.RestoreDrill``, with the plain checks of ``engine/drill.py``):

1. the gateway's record of the backup, with its SHA-256;
2. Home Assistant's ``validate_password_stream``: the backup key opens it, on a short download that stops after the
   first inner archive (skipped for an unencrypted backup);
3. one more pass, whole: hashed and counted on the way (``CheckedStream``), decrypted by Home Assistant's
   ``DecryptedBackupStreamer`` and validated in a thread of its own by ``validate_archive``.

Nothing is restored and nothing is written: memory holds a few chunks of 1 MiB at most, whatever the backup's size.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO, cast

from homeassistant.components.backup import AgentBackup, BackupAgentError
from homeassistant.components.backup.util import (
    BackupEmpty,
    DecryptedBackupStreamer,
    IncorrectPassword,
    UnsupportedSecureTarVersion,
    validate_password_stream,
)
from homeassistant.core import HomeAssistant

from .compat import IteratorReader, backup_manager, finish_streamer, iterator_reader
from .const import DOMAIN, LOGGER
from .engine.api import RemoteBackup
from .engine.drill import (
    ArchiveError,
    CheckedStream,
    DrillFailure,
    ExpectedContents,
    check_record,
    compare_with_record,
    describe,
    label,
    validate_archive,
)

__all__ = ["Download", "DrillChecks", "DrillTarget"]

type Download = Callable[[str], Awaitable[AsyncIterator[bytes]]]
"""Opens a backup of the location by its id, as Home Assistant's own download does (``BackupAgentError``)."""


@dataclass(frozen=True, slots=True)
class DrillTarget:
    """The backup a drill tests: the gateway's record and Home Assistant's description (both ``None`` when the
    gateway has no record of a backup this installation sent)."""

    backup_id: str
    name: str | None
    remote: RemoteBackup | None = None
    backup: AgentBackup | None = None


class _Worker[T]:
    """A blocking function in a thread of its own (a drill can take as long as the download)."""

    def __init__(self, hass: HomeAssistant, name: str, target: Callable[[], T]) -> None:
        """Start ``target`` in a new thread."""
        self._hass = hass
        self._target = target
        self._done = asyncio.Event()
        self._result: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._target()
        except BaseException as err:  # handed to the event loop
            self._error = err
        finally:
            self._hass.loop.call_soon_threadsafe(self._done.set)

    async def join(self) -> None:
        """Wait until the thread has ended."""
        await self._done.wait()
        await self._hass.async_add_executor_job(self._thread.join)

    async def result(self) -> T:
        """The function's result, or its exception raised here."""
        await self.join()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


async def _aclose(stream: AsyncIterator[bytes]) -> None:
    """Release a download (the location's streams free their connection even when unread)."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


class DrillChecks:
    """Checks one backup; reports the download's progress (in %) to ``on_progress``."""

    def __init__(self, hass: HomeAssistant, download: Download, on_progress: Callable[[float], None]) -> None:
        """Ready to check backups fetched with ``download`` (the location's own, given by ``__init__.py``)."""
        self.hass = hass
        self._download_backup = download
        self._on_progress = on_progress

    async def run(self, target: DrillTarget) -> None:
        """The three checks, in order; :class:`DrillFailure` with the first that failed."""
        remote = target.remote
        check_record(
            target.name, target.backup_id, remote.sha256 if remote else None, recorded=remote is not None
        )
        assert remote is not None
        assert target.backup is not None
        password: str | None = None
        if target.backup.protected:
            password = backup_manager(self.hass).config.data.create_backup.password
            if not password:
                raise DrillFailure(
                    f"Backup {label(target.name, target.backup_id)} is encrypted, and Home Assistant has no backup "
                    "key to open it (Settings > System > Backups)"
                )
            await self._check_key(target, remote, password)
        await self._full_pass(target, remote, target.backup, password)

    async def _download(self, target: DrillTarget) -> AsyncIterator[bytes]:
        """Open the backup through the backup location, as Home Assistant's own download does."""
        try:
            return await self._download_backup(target.backup_id)
        except BackupAgentError as err:
            raise DrillFailure(
                f"Could not download backup {label(target.name, target.backup_id)}: {describe(err)}"
            ) from err

    def _on_bytes(self, size: int) -> Callable[[int], None]:
        def on_bytes(done: int) -> None:
            self._on_progress(min(100.0, 100.0 * done / size) if size else 100.0)

        return on_bytes

    async def _check_key(self, target: DrillTarget, remote: RemoteBackup, password: str) -> None:
        """Check 2: Home Assistant's backup key opens the first inner archive (a short download)."""
        which = label(target.name, target.backup_id)
        download = await self._download(target)
        stream = CheckedStream(download)
        reader = iterator_reader(self.hass, stream)
        problem: str | None = None
        try:
            worker = _Worker(
                self.hass,
                f"{DOMAIN} key check",
                lambda: validate_password_stream(cast(IO[bytes], reader), password),
            )
            try:
                await worker.result()
            except IncorrectPassword:
                problem = f"The backup key does not open backup {which}: it was encrypted with another key"
            except BackupEmpty:
                problem = f"Backup {which} holds no inner archive to restore"
            except UnsupportedSecureTarVersion:
                problem = (
                    f"Backup {which} was encrypted with a SecureTar version Home Assistant cannot stream"
                )
            except Exception as err:  # whatever the archive made SecureTar or tar raise
                problem = f"Backup {which} cannot be opened: {describe(err)}"
            finally:
                reader.abort()
                await worker.join()
        finally:
            await _aclose(download)
        if problem is None:
            return
        assert remote.sha256 is not None  # checked first
        if stream.error is not None:  # the download broke off: that is the problem, not the key
            raise DrillFailure(
                compare_with_record(target.name, target.backup_id, stream, remote.size, remote.sha256)
                or problem
            )
        # Damaged bytes read like a wrong key: a pass over the whole object tells them apart.
        raise DrillFailure(await self._hash_only(target, remote) or problem)

    async def _hash_only(self, target: DrillTarget, remote: RemoteBackup) -> str | None:
        """Whether storage still holds what the gateway recorded (size, SHA-256): why not, or ``None``."""
        assert remote.sha256 is not None
        download = await self._download(target)
        stream = CheckedStream(download, self._on_bytes(remote.size))
        try:
            await stream.drain()
        finally:
            await _aclose(download)
        return compare_with_record(target.name, target.backup_id, stream, remote.size, remote.sha256)

    async def _full_pass(
        self, target: DrillTarget, remote: RemoteBackup, backup: AgentBackup, password: str | None
    ) -> None:
        """Check 3: one streamed pass, hashed and counted, decrypted and validated as Home Assistant reads it."""
        assert remote.sha256 is not None
        which = label(target.name, target.backup_id)
        expected = ExpectedContents.of(
            backup.backup_id,
            homeassistant=backup.homeassistant_included,
            addons=[addon.slug for addon in backup.addons],
            folders=[str(folder.value) for folder in backup.folders],
        )
        download = await self._download(target)
        stream = CheckedStream(download, self._on_bytes(remote.size))
        archive_problem: str | None = None
        decrypt_error: Exception | None = None
        try:
            streamer: DecryptedBackupStreamer | None = None
            source: AsyncIterator[bytes] = stream
            if password is not None:

                async def open_stream() -> AsyncIterator[bytes]:
                    return stream

                streamer = DecryptedBackupStreamer(self.hass, backup, open_stream, password)
                source = await streamer.open_stream()
            reader: IteratorReader = iterator_reader(self.hass, source)
            worker = _Worker(self.hass, f"{DOMAIN} archive check", lambda: validate_archive(reader, expected))
            try:
                report = await worker.result()
                LOGGER.debug(
                    "Backup %s: %s read whole, %s files, %s bytes uncompressed",
                    which,
                    ", ".join(report.archives),
                    report.files,
                    report.bytes,
                )
            except ArchiveError as err:
                archive_problem = str(err)
            except Exception as err:  # e.g. the reader aborted: worded below
                archive_problem = f"the archive could not be read: {describe(err)}"
            finally:
                reader.abort()
                await worker.join()
                if streamer is not None:
                    decrypt_error = await finish_streamer(self.hass, streamer)
            # After the archive's end (or a failure): the rest of the download, for its size and its hash.
            await stream.drain()
        finally:
            await _aclose(download)
        if problem := compare_with_record(target.name, target.backup_id, stream, remote.size, remote.sha256):
            raise DrillFailure(problem)
        if decrypt_error is not None:  # the key opens it, and storage holds what was uploaded
            raise DrillFailure(
                f"Home Assistant could not decrypt backup {which} to its end: the archive was damaged before it was "
                f"uploaded ({type(decrypt_error).__name__}: {describe(decrypt_error)})"
            )
        if archive_problem is not None:
            raise DrillFailure(f"Backup {which} is not a whole Home Assistant backup: {archive_problem}")
