"""The restore drill's checks, as plain code, tested on their own.

A drill downloads a backup through the backup location and checks, without restoring anything:

1. that the gateway still has a record of it, with a SHA-256 (:func:`check_record`);
2. that Home Assistant's backup key opens it (Home Assistant's own ``validate_password_stream``: see
   ``drill_checks.py``);
3. in one streamed pass: the SHA-256 and the size of what storage sends against the gateway's record
   (:class:`CheckedStream`, :func:`compare_with_record`), and the archive itself (:func:`validate_archive`, fed
   with Home Assistant's decryption of the same stream): ``backup.json`` names the backup, every inner archive the
   description promises is there, and each is read to its end, so that gzip's CRC and the tar structure are
   checked.

Memory stays bounded whatever the backup's size: the stream is read in chunks of at most 1 MiB, tar and gzip are
read in streaming mode, and nothing is kept but the running hash and a few counters.

It also decides when a scheduled drill is due and which backup it tests (:func:`weekly_due`, :func:`pick_backup`).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import random
import tarfile
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import PurePath
from typing import IO, Protocol, cast

from .api import redact_urls

__all__ = [
    "ArchiveError",
    "ArchiveReport",
    "CheckedStream",
    "DrillFailure",
    "ExpectedContents",
    "check_record",
    "compare_with_record",
    "label",
    "pick_backup",
    "validate_archive",
    "weekly_due",
]

READ_SIZE = 1 << 20
"""Bytes read at a time from a stream (tar's buffer, gzip's reads, draining)."""

MAX_METADATA = 16 << 20
"""``backup.json`` is a few KiB; a larger one is refused rather than read into memory."""

INNER_SUFFIXES = ("tar", "tgz", "tar.gz")
ALSO_CHECKED = frozenset({"supervisor"})
"""Inner archives checked when present though the description does not name them (the Supervisor's own)."""

WEEK = timedelta(days=7)


class Readable(Protocol):
    """A blocking byte stream: Home Assistant's reader of an async stream, an open file."""

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end."""


class DrillFailure(Exception):
    """A check failed; the message says which backup and what, for a person."""


class ArchiveError(DrillFailure):
    """The archive is not a whole Home Assistant backup; the message says what is wrong (without the backup)."""


def label(name: str | None, backup_id: str) -> str:
    """How a message names a backup: ``Name (id)``, or the id alone when the name is not known."""
    return f"{name} ({backup_id})" if name else backup_id


def describe(err: BaseException) -> str:
    """An exception's message (without the signature of any URL in it), or its type when it has none."""
    return redact_urls(str(err)).strip() or type(err).__name__


# ----------------------------------------------------------------------------------------------- the record


def check_record(name: str | None, backup_id: str, sha256: str | None, *, recorded: bool) -> None:
    """Check 1: the gateway has a record of the backup, with a SHA-256; :class:`DrillFailure` otherwise."""
    if not recorded:
        raise DrillFailure(f"The gateway has no record of backup {label(name, backup_id)}")
    if not sha256:
        raise DrillFailure(f"The gateway recorded no SHA-256 for backup {label(name, backup_id)}")


# ----------------------------------------------------------------------------------------------- the stream


class CheckedStream:
    """A download passed through untouched: counted, hashed, and ended (never raised) when it breaks.

    Home Assistant's readers consume it from other threads; an error from the source ends the stream early
    (kept in :attr:`error`, so the drill words it), instead of surfacing as a traceback in their thread. A lock
    lets one reader at a time pull a chunk: after a reader is aborted, :meth:`drain` waits for its pending pull
    before reading the rest, so every byte is hashed once and in order.
    """

    def __init__(self, source: AsyncIterator[bytes], on_bytes: Callable[[int], None] | None = None) -> None:
        """Pass ``source`` through; ``on_bytes(total)`` is called after each chunk."""
        self._source = source
        self._on_bytes = on_bytes
        self._sha256 = hashlib.sha256()
        self._lock = asyncio.Lock()
        self._ended = False
        self.count = 0
        self.error: Exception | None = None

    def __aiter__(self) -> CheckedStream:
        return self

    async def __anext__(self) -> bytes:
        async with self._lock:
            while not self._ended:
                try:
                    chunk = await anext(self._source)
                except StopAsyncIteration:
                    self._ended = True
                    break
                except Exception as err:  # any failure of the source ends the stream, kept
                    self._ended = True
                    self.error = err
                    break
                if not chunk:
                    continue  # an empty chunk would read as the end to Home Assistant's readers
                self._sha256.update(chunk)
                self.count += len(chunk)
                if self._on_bytes is not None:
                    self._on_bytes(self.count)
                return chunk
        raise StopAsyncIteration

    async def drain(self) -> None:
        """Read what is left of the stream (hashed and counted like the rest)."""
        async for _ in self:
            pass

    @property
    def ended(self) -> bool:
        """Whether the source is read to its end (or broke off)."""
        return self._ended

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the bytes read so far."""
        return self._sha256.hexdigest()


def compare_with_record(
    name: str | None, backup_id: str, stream: CheckedStream, size: int, sha256: str
) -> str | None:
    """Check 3a, once the stream is read whole: why it is not what the gateway recorded, or ``None``."""
    which = label(name, backup_id)
    if stream.error is not None:
        return (
            f"The download of backup {which} broke off after {stream.count} of {size} bytes: "
            f"{describe(stream.error)}"
        )
    if stream.count < size:
        return f"Backup {which} is truncated: storage sent {stream.count} bytes of the {size} the gateway recorded"
    if stream.count > size:
        return (
            f"Backup {which} has changed size: storage sent {stream.count} bytes, the gateway recorded {size}"
        )
    if stream.sha256 != sha256.lower():
        return (
            f"Backup {which} was changed after it was uploaded: the SHA-256 of what storage holds is "
            f"{stream.sha256}, the gateway recorded {sha256.lower()}"
        )
    return None


# ----------------------------------------------------------------------------------------------- the archive


@dataclass(frozen=True, slots=True)
class ExpectedContents:
    """What Home Assistant's description of a backup promises its archive holds."""

    backup_id: str
    archives: frozenset[str]  # inner archive names without their suffix: homeassistant, add-on slugs, folders

    @classmethod
    def of(
        cls, backup_id: str, *, homeassistant: bool, addons: Iterable[str], folders: Iterable[str]
    ) -> ExpectedContents:
        """From the description: Home Assistant included, the add-ons' slugs, the folders."""
        names = {*addons, *(folder.replace("/", "_") for folder in folders)}
        if homeassistant:
            names.add("homeassistant")
        return cls(backup_id, frozenset(names))


@dataclass(slots=True)
class ArchiveReport:
    """What was read of a valid archive."""

    archives: list[str] = field(default_factory=list)  # the inner archives read to their end
    files: int = 0  # members of the inner archives
    bytes: int = 0  # their contents, uncompressed


def validate_archive(fileobj: Readable, expected: ExpectedContents) -> ArchiveReport:
    """Check 3b: read a (decrypted) backup archive from a stream to its end; :class:`ArchiveError` when it is not
    whole.

    Blocking: run it in a thread. ``fileobj`` needs only ``read``; it is read to its end, even past the archive's
    end-of-archive blocks (Home Assistant pads a decrypted stream).
    """
    report = ArchiveReport()
    metadata_found = False
    checked: set[str] = set()
    try:
        with tarfile.open(fileobj=cast(IO[bytes], fileobj), mode="r|", bufsize=READ_SIZE) as outer:
            for member in outer:
                path = PurePath(member.name)
                if path == PurePath("backup.json"):
                    _check_metadata(outer, member, expected)
                    metadata_found = True
                    continue
                prefix, _, suffix = path.name.partition(".")
                if suffix not in INNER_SUFFIXES or not member.isfile():
                    continue
                if prefix not in expected.archives and prefix not in ALSO_CHECKED:
                    continue  # not promised by the description: Home Assistant leaves it as it is
                _read_inner(outer, member, suffix != "tar", report)
                checked.add(prefix)
                report.archives.append(path.name)
        while fileobj.read(READ_SIZE):
            pass
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ArchiveError(f"the archive is damaged: {describe(err)}") from err
    if not metadata_found:
        raise ArchiveError("backup.json is missing")
    if missing := sorted(expected.archives - checked):
        raise ArchiveError(f"inner archive{'s' if len(missing) > 1 else ''} missing: {', '.join(missing)}")
    return report


def _check_metadata(outer: tarfile.TarFile, member: tarfile.TarInfo, expected: ExpectedContents) -> None:
    reader = outer.extractfile(member)
    if reader is None or member.size > MAX_METADATA:
        raise ArchiveError("backup.json is not a regular file of a few KiB")
    try:
        data = json.loads(reader.read())
    except ValueError as err:
        raise ArchiveError(f"backup.json is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ArchiveError("backup.json is not a JSON object")
    if data.get("slug") != expected.backup_id:
        raise ArchiveError(f"backup.json describes backup {data.get('slug')!r}, not {expected.backup_id}")


def _read_inner(
    outer: tarfile.TarFile, member: tarfile.TarInfo, compressed: bool, report: ArchiveReport
) -> None:
    """Read an inner archive to its very end: every member's contents, then gzip's trailer (its CRC and size)."""
    name = PurePath(member.name).name
    raw = outer.extractfile(member)
    if raw is None:  # pragma: no cover - isfile() was checked
        raise ArchiveError(f"{name} is not a file")
    source = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")) if compressed else raw
    try:
        with tarfile.open(fileobj=source, mode="r|", bufsize=READ_SIZE) as inner:
            for item in inner:
                report.files += 1
                if item.isfile() and (data := inner.extractfile(item)) is not None:
                    while chunk := data.read(READ_SIZE):
                        report.bytes += len(chunk)
        while source.read(READ_SIZE):
            pass
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ArchiveError(f"{name} is damaged: {describe(err)}") from err


# ----------------------------------------------------------------------------------------------- scheduling


def weekly_due(today: date, last_verified: date | None, last_failed: bool) -> bool:
    """Whether a weekly drill runs after tonight's backup (``today`` and ``last_verified`` are local dates).

    Due when no drill has succeeded yet, when the last drill failed (so that a repaired problem shows the next
    night), or when the last success is a calendar week old or more (dates, not hours: tonight's backup may run a
    little earlier in the window than last week's). A last success dated after today (the clock was ahead when it
    was recorded) is no reason to wait: due.
    """
    return last_verified is None or last_failed or today >= last_verified + WEEK or last_verified > today


def pick_backup[T](newest: T, older: Sequence[T], today: date, rng: random.Random) -> T:
    """The backup a weekly drill tests: the newest, except one ISO week in four a random older one (if any)."""
    if older and today.isocalendar().week % 4 == 0:
        return rng.choice(older)
    return newest
