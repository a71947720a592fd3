"""Chunked, retried, resumable multipart upload to the gateway's presigned part URLs.

Plain asyncio + aiohttp, no Home Assistant import. The integration calls::

    backup: RemoteBackup = await upload(
        client=client,                  # api.GatewayClient (its session is used for the PUTs unless session= given)
        open_stream=open_stream,        # async () -> AsyncIterator[bytes]; chunks of any size; may be called again
        size=backup.size,               # exact byte count the stream yields
        name=backup.name,
        metadata=backup.as_dict(),      # stored by the gateway, given back in RemoteBackup.metadata
        options=UploadOptions(),        # parallel=2, max_tries=6, bandwidth_limit=None, …
        progress=lambda done, total: …, # bytes acknowledged by storage; ~once a second or each 1 %
        state=saved_state,              # UploadState.from_dict(stored) to resume, else None
        on_state=persist,               # (state) -> None | Awaitable: after create and after each part
    )

How it works:

- ``POST /v1/backups`` (or, with ``state``, ``GET /v1/backups/{id}/parts`` to see what storage holds). The gateway
  decides the part size (20 MiB by default, raised so there are at most 10,000 parts, never below 5 MiB but for the
  last part); the stream is re-chunked into exactly those parts.
- At most ``parallel`` parts are in flight and one more is being read, so memory stays near
  ``(parallel + 1) * part_size`` whatever the backup's size.
- URLs are asked for in small batches just ahead of use (``url_batch``), re-asked before use once older than
  ``url_refresh`` of their lifetime, and again whenever storage answers 403 (expired).
- Each part is one ``PUT`` with ``Content-Length`` and a timeout of ``timeout_base + part / timeout_min_rate``
  seconds; connection errors, timeouts, 5xx and 429 (``Retry-After`` honoured) are retried with exponential backoff
  and full jitter (``max_tries`` tries, delays capped at ``retry_cap``); any other 4xx fails at once.
- The MD5 of each part is compared with storage's ETag (when the ETag is an MD5); the SHA-256 of the whole stream is
  sent on complete. Hashing runs in the loop's default executor, in parallel with the PUTs.
- Resume: ``on_state`` gets an :class:`UploadState` after the upload is created and after each acknowledged part.
  Persist ``state.to_dict()`` (any later snapshot is valid too: it only grows). Give it back as
  ``state=UploadState.from_dict(...)`` after a restart: the gateway is asked which parts storage holds, the reopened
  stream is read past them (their MD5 is checked against storage's ETag; a part that differs is sent again) and only
  the rest is sent. A stale state (upload gone, other size) starts a new upload. Forget the state once ``upload``
  returns or raises.

Errors — the multipart upload is aborted on the gateway before any of these is raised:

- :class:`UploadError` (or :class:`UploadStreamError` when the stream failed, ended early or ran long): storage kept
  failing or refused a part; the message names the part, the HTTP status, storage's error code and the tries, and
  the attributes ``part_number``, ``status``, ``storage_code``, ``tries`` and ``backup_id`` carry them.
- ``api.GatewayError`` subclasses from gateway calls (``GatewayAuthError`` → reauth, ``GatewayQuotaError``,
  ``GatewayConflictError`` for ``upload_in_progress``, ``GatewayUnavailableError`` after ``max_tries``).
- ``asyncio.CancelledError``: cancelling the task stops promptly and aborts. Cancelling with the message
  :data:`SUSPEND` (``task.cancel(SUSPEND)``, e.g. when Home Assistant stops) stops without aborting so the upload can
  be resumed from the last state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import math
import random
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from yarl import URL

from .api import (
    BackupInit,
    CompletedPart,
    GatewayClient,
    GatewayConflictError,
    GatewayError,
    GatewayNotFoundError,
    GatewayRateLimitedError,
    GatewayUnavailableError,
    RemoteBackup,
    redact_urls,
)

__all__ = [
    "MAX_PARTS",
    "MIN_PART_SIZE",
    "SUSPEND",
    "UploadError",
    "UploadOptions",
    "UploadState",
    "UploadStreamError",
    "upload",
]

_LOGGER = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024
"""S3's minimum size of every part but the last."""
MAX_PARTS = 10_000
"""S3's maximum number of parts."""
SUSPEND = "offsite_backup.suspend"
"""Cancel message (``task.cancel(SUSPEND)``) that stops an upload without aborting it, to resume it later."""

_INLINE_HASH = 256 * 1024  # smaller parts are hashed in the loop, larger ones in the executor
_LIMITED_SLICE = 64 * 1024  # with a bandwidth limit, bodies are sent in slices of this size
_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
_S3_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_S3_MESSAGE = re.compile(rb"<Message>([^<]{1,300})</Message>")
_RANDOM = random.Random()  # noqa: S311 - backoff jitter, not cryptography


# ------------------------------------------------------------------------------------------------ public


@dataclass(frozen=True, slots=True)
class UploadOptions:
    """Tuning of one upload. The defaults suit a home uplink."""

    parallel: int = 2
    """Parts in flight at once."""
    max_tries: int = 6
    """Tries per part (and per gateway call) before giving up."""
    retry_base: float = 1.0
    """First backoff ceiling in seconds; doubles with each try (full jitter: a uniform draw below it)."""
    retry_cap: float = 60.0
    """Longest backoff delay between two tries, in seconds."""
    retry_after_cap: float = 60.0
    """Longest ``Retry-After`` honoured, in seconds (storage's 429/503 and the gateway's 429)."""
    url_batch: int = 0
    """Part URLs asked for at once; 0 = ``2 * parallel`` (at least 2, at most 100)."""
    url_refresh: float = 0.5
    """A URL older than this fraction of its lifetime is signed again before use."""
    timeout_base: float = 60.0
    """Per-attempt timeout of a part: this many seconds…"""
    timeout_min_rate: float = 32 * 1024
    """…plus the part's size divided by this rate (bytes per second) — the slowest upload we accept."""
    bandwidth_limit: int | None = None
    """Bytes per second for all parts together; ``None`` = unlimited."""
    progress_interval: float = 1.0
    """Seconds between two progress reports…"""
    progress_step: float = 0.01
    """…unless at least this fraction of the total was acknowledged since the last one."""
    abort_timeout: float = 15.0
    """Seconds allowed for the abort call after a failure or a cancel."""

    def __post_init__(self) -> None:
        if self.parallel < 1 or self.max_tries < 1:
            raise ValueError("parallel and max_tries must be at least 1")
        if self.bandwidth_limit is not None and self.bandwidth_limit <= 0:
            raise ValueError("bandwidth_limit must be positive (or None)")
        if self.timeout_min_rate <= 0 or self.timeout_base <= 0:
            raise ValueError("timeouts must be positive")

    @property
    def batch(self) -> int:
        """Part URLs asked for at once."""
        return max(1, min(100, self.url_batch or max(2, 2 * self.parallel)))

    def part_timeout(self, nbytes: int) -> float:
        """Per-attempt timeout of a part of ``nbytes``."""
        rate = self.timeout_min_rate
        if self.bandwidth_limit is not None:
            rate = min(rate, self.bandwidth_limit / self.parallel)
        return self.timeout_base + nbytes / rate

    def backoff(self, tries: int) -> float:
        """Delay before try ``tries + 1``: full jitter below ``retry_base * 2^(tries-1)``, capped."""
        ceiling = min(self.retry_cap, self.retry_base * 2 ** min(tries - 1, 30))
        return _RANDOM.uniform(0, ceiling)


@dataclass(slots=True)
class UploadState:
    """What to persist to resume an upload: ``to_dict()`` is JSON-serialisable, ``from_dict()`` reads it back."""

    backup_id: str
    size: int
    part_size: int
    part_count: int
    url_ttl: int
    parts: dict[int, str] = field(default_factory=dict)
    """Acknowledged part number → ETag as storage returned it."""

    VERSION = 1

    def expected_size(self, part_number: int) -> int:
        """Size of part ``part_number``."""
        if part_number < self.part_count:
            return self.part_size
        return self.size - self.part_size * (self.part_count - 1)

    @property
    def acknowledged_bytes(self) -> int:
        """Bytes storage has acknowledged."""
        return sum(self.expected_size(number) for number in self.parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot."""
        return {
            "version": self.VERSION,
            "backup_id": self.backup_id,
            "size": self.size,
            "part_size": self.part_size,
            "part_count": self.part_count,
            "url_ttl": self.url_ttl,
            "parts": [[number, self.parts[number]] for number in sorted(self.parts)],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UploadState:
        """Read a snapshot back; raises ``ValueError`` when it is not one."""
        try:
            if data.get("version") != cls.VERSION:
                raise ValueError(f"unsupported upload state version {data.get('version')!r}")
            state = cls(
                backup_id=str(data["backup_id"]),
                size=int(data["size"]),
                part_size=int(data["part_size"]),
                part_count=int(data["part_count"]),
                url_ttl=int(data["url_ttl"]),
                parts={int(number): str(etag) for number, etag in data["parts"]},
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not an upload state: {err}") from err
        if (
            state.size < 1
            or state.part_size < 1
            or state.part_count != math.ceil(state.size / state.part_size)
            or any(not 1 <= number <= state.part_count for number in state.parts)
        ):
            raise ValueError("inconsistent upload state")
        return state


class UploadError(Exception):
    """The upload failed (and was aborted). The message says what to do; the attributes say what happened."""

    def __init__(
        self,
        message: str,
        *,
        backup_id: str | None = None,
        part_number: int | None = None,
        status: int | None = None,
        storage_code: str | None = None,
        tries: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.backup_id = backup_id
        self.part_number = part_number
        self.status = status
        self.storage_code = storage_code
        self.tries = tries


class UploadStreamError(UploadError):
    """The backup stream failed, ended before ``size`` bytes or yielded more."""


async def upload(
    *,
    client: GatewayClient,
    open_stream: Callable[[], Awaitable[AsyncIterator[bytes]]],
    size: int,
    name: str,
    metadata: dict[str, Any],
    options: UploadOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    state: UploadState | None = None,
    on_state: Callable[[UploadState], Awaitable[None] | None] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> RemoteBackup:
    """Upload ``size`` bytes from ``open_stream()`` as a new backup (or resume ``state``); see the module doc."""
    if size < 1:
        raise ValueError("size must be at least 1 byte")
    job = _Upload(
        client=client,
        session=session or client.session,
        open_stream=open_stream,
        size=size,
        name=name,
        metadata=metadata,
        options=options or UploadOptions(),
        progress=progress,
        on_state=on_state,
    )
    return await job.run(state)


# ----------------------------------------------------------------------------------------------- helpers


@dataclass(slots=True)
class _Outcome:
    """The result of one PUT attempt."""

    etag: str | None = None
    kind: str = "ok"  # ok | retry | resign | fatal
    status: int | None = None
    code: str | None = None
    detail: str = ""
    retry_after: float | None = None


class _RateLimiter:
    """A shared pacing clock: ``take(n)`` waits until ``n`` more bytes fit in the rate."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._next = time.monotonic()

    async def take(self, nbytes: int) -> None:
        now = time.monotonic()
        start = max(self._next, now)
        self._next = start + nbytes / self._rate
        if start > now:
            await asyncio.sleep(start - now)


class _Body:
    """A part's bytes, in a buffer of the pool.

    Parts are copied into whole buffers (rather than kept as views of the stream's chunks) so that each is hashed
    in one call: a thread hashing many pieces must take the GIL back after each one, and those hand-offs made
    hashing several times slower while the loop was busy sending (measured).
    """

    __slots__ = ("buffer", "pieces", "size")

    def __init__(self, buffer: bytearray, size: int) -> None:
        self.buffer = buffer
        self.size = size
        self.pieces = [memoryview(buffer)[:size]]


class _BufferPool:
    """Part buffers, reused: a fresh 20 MiB buffer costs zeroing and page faults on every part."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._free: list[bytearray] = []

    def take(self) -> bytearray:
        return self._free.pop() if self._free else bytearray(self._size)

    def give(self, body: _Body) -> None:
        body.pieces.clear()  # release the view, or the buffer stays exported
        self._free.append(body.buffer)


class _PartPayload(Payload):
    """A part as a request body, written piece by piece without copying (paced when a limiter is given)."""

    def __init__(self, body: _Body, limiter: _RateLimiter | None) -> None:
        super().__init__(body, content_type="application/octet-stream")
        self._body = body
        self._limiter = limiter
        self._size = body.size

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._body.pieces).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        limiter = self._limiter
        for piece in self._body.pieces:
            if limiter is None:
                await writer.write(piece)
                continue
            for offset in range(0, piece.nbytes, _LIMITED_SLICE):
                chunk = piece[offset : offset + _LIMITED_SLICE]
                await limiter.take(chunk.nbytes)
                await writer.write(chunk)


def _hash_part(sha256: Any, body: _Body) -> str:
    """Add the part to the stream's SHA-256; return the part's MD5."""
    md5 = hashlib.md5(usedforsecurity=False)
    for piece in body.pieces:
        sha256.update(piece)
        md5.update(piece)
    return md5.hexdigest()


def _etag_md5(etag: str) -> str | None:
    """The MD5 an ETag stands for, or None when it is not a plain MD5 (multipart, SSE-KMS…)."""
    match = _MD5_ETAG.match(etag.strip())
    return match.group(1).lower() if match else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime  # noqa: PLC0415 - rare path

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _describe(err: BaseException) -> str:
    text = redact_urls(str(err)).strip()
    name = type(err).__name__
    return f"{name}: {text}" if text else name


def _is_suspend(err: BaseException) -> bool:
    return bool(err.args) and err.args[0] == SUSPEND


def _flatten(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_flatten(exc))
        else:
            found.append(exc)
    return found


# ----------------------------------------------------------------------------------------------- the job


class _UrlBook:
    """Presigned part URLs, asked for in small batches just ahead of use."""

    def __init__(self, job: _Upload) -> None:
        self._job = job
        self._urls: dict[int, tuple[str, float]] = {}
        self._lock = asyncio.Lock()

    def _fresh(self, part_number: int, now: float) -> bool:
        entry = self._urls.get(part_number)
        return entry is not None and now - entry[1] < self._job.url_max_age

    async def get(self, part_number: int) -> str:
        async with self._lock:
            now = time.monotonic()
            if not self._fresh(part_number, now):
                job = self._job
                numbers = [part_number]
                candidate = part_number + 1
                while len(numbers) < job.options.batch and candidate <= job.state.part_count:
                    if (
                        candidate not in job.state.parts
                        and candidate not in job.held
                        and not self._fresh(candidate, now)
                    ):
                        numbers.append(candidate)
                    candidate += 1
                signed = await job.gateway_call(job.client.sign_parts, job.state.backup_id, numbers)
                fetched = time.monotonic()
                for part in signed:
                    self._urls[part.part_number] = (part.url, fetched)
                if part_number not in self._urls:
                    raise GatewayUnavailableError(f"The gateway did not sign part {part_number}")
            return self._urls[part_number][0]

    def forget(self, part_number: int) -> None:
        self._urls.pop(part_number, None)


class _Upload:
    """One upload (a new one, or the resumption of a saved state)."""

    def __init__(
        self,
        *,
        client: GatewayClient,
        session: aiohttp.ClientSession,
        open_stream: Callable[[], Awaitable[AsyncIterator[bytes]]],
        size: int,
        name: str,
        metadata: dict[str, Any],
        options: UploadOptions,
        progress: Callable[[int, int], None] | None,
        on_state: Callable[[UploadState], Awaitable[None] | None] | None,
    ) -> None:
        self.client = client
        self.session = session
        self.open_stream = open_stream
        self.size = size
        self.name = name
        self.metadata = metadata
        self.options = options
        self.progress = progress
        self.on_state = on_state
        self.state = UploadState(backup_id="", size=size, part_size=size, part_count=1, url_ttl=0)
        self.held: dict[int, str] = {}  # parts storage already holds (resume): number → ETag
        self.urls = _UrlBook(self)
        self.pool = _BufferPool(0)
        self.limiter = _RateLimiter(options.bandwidth_limit) if options.bandwidth_limit else None
        self.sha = hashlib.sha256()
        self.acked = 0
        self._reported = -1
        self._reported_at = 0.0
        self._loop = asyncio.get_running_loop()

    @property
    def url_max_age(self) -> float:
        ttl = self.state.url_ttl or 900
        return max(1.0, ttl * self.options.url_refresh)

    # ------------------------------------------------------------------------------------------- driving

    async def run(self, state: UploadState | None) -> RemoteBackup:
        try:
            await self._start(state)
            return await self._transfer()
        except asyncio.CancelledError as err:
            if _is_suspend(err):
                _LOGGER.info("Upload of backup %s suspended; it can be resumed", self.state.backup_id)
            else:
                await self._abort("cancelled")
            raise
        except Exception as err:
            await self._abort(_describe(err))
            raise

    async def _start(self, state: UploadState | None) -> None:
        if state is not None and state.size == self.size:
            try:
                stored = await self.gateway_call(self.client.list_parts, state.backup_id)
            except (GatewayNotFoundError, GatewayConflictError) as err:
                _LOGGER.info("Saved upload %s cannot be resumed (%s); starting anew", state.backup_id, err)
            else:
                # storage's word is what counts: parts are acknowledged again as the stream is read past them
                self.state = replace(state, parts={})
                self.held = {
                    part.part_number: part.etag
                    for part in stored
                    if 1 <= part.part_number <= state.part_count
                    and part.size == state.expected_size(part.part_number)
                }
                _LOGGER.debug(
                    "Resuming upload %s: storage holds %d of %d parts",
                    state.backup_id,
                    len(self.held),
                    state.part_count,
                )
                return
        elif state is not None:
            _LOGGER.info("Saved upload %s is for another size; aborting it", state.backup_id)
            try:
                async with asyncio.timeout(self.options.abort_timeout):
                    await self.client.abort_upload(state.backup_id)
            except (GatewayError, TimeoutError) as err:
                _LOGGER.debug("Abort of stale upload %s: %s", state.backup_id, err)

        init = await self._create()
        self.state = UploadState(
            backup_id=init.id,
            size=self.size,
            part_size=init.part_size,
            part_count=init.part_count,
            url_ttl=init.url_ttl,
        )
        if (
            init.part_size < 1
            or init.part_count != math.ceil(self.size / init.part_size)
            or init.part_count > MAX_PARTS
            or (init.part_count > 1 and init.part_size < MIN_PART_SIZE)
        ):
            await self._abort("invalid part layout")
            raise UploadError(
                f"The gateway proposed {init.part_count} parts of {init.part_size} bytes for {self.size} bytes, "
                "which storage cannot accept: check the gateway's PART_SIZE setting",
                backup_id=init.id,
            )
        await self._emit_state()

    async def _transfer(self) -> RemoteBackup:
        self._report(force=True)
        self.pool = _BufferPool(min(self.state.part_size, self.size))
        try:
            stream = await self.open_stream()
        except Exception as err:
            raise UploadStreamError(
                f"Opening the backup failed: {_describe(err)}", backup_id=self.state.backup_id
            ) from err
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    await self._read_and_dispatch(stream, group)
            except BaseExceptionGroup as group_error:
                errors = _flatten(group_error)
                for kind in (UploadError, GatewayError, Exception):
                    for exc in errors:
                        if isinstance(exc, kind):
                            raise exc from None
                raise
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:  # closing is best effort
                    _LOGGER.debug("Closing the backup stream failed", exc_info=True)
        return await self._complete()

    async def _complete(self) -> RemoteBackup:
        state = self.state
        missing = [n for n in range(1, state.part_count + 1) if n not in state.parts]
        if missing:  # pragma: no cover - the reader guarantees every part
            raise UploadError(f"Parts {missing[:5]} were never acknowledged", backup_id=state.backup_id)
        parts = [CompletedPart(n, state.parts[n]) for n in range(1, state.part_count + 1)]
        sha256 = self.sha.hexdigest()
        try:
            backup = await self.gateway_call(
                self.client.complete_backup, state.backup_id, parts, sha256=sha256
            )
        except GatewayConflictError as err:
            if err.code != "not_uploading":
                raise
            # an earlier try may have completed it and its answer got lost
            backup = await self.gateway_call(self.client.get_backup, state.backup_id)
            if backup.status != "completed" or backup.size != self.size:
                raise
        self._report()  # the total, unless already reported
        return backup

    # ------------------------------------------------------------------------------------------- reading

    async def _parts(self, stream: AsyncIterator[bytes]) -> AsyncGenerator[tuple[int, _Body]]:
        """Re-chunk the stream into the gateway's parts (a buffer is only taken when its first bytes arrive)."""
        state = self.state
        number = 1
        want = state.expected_size(1)
        buf: bytearray | None = None
        pos = 0
        read = 0
        iterator = aiter(stream)
        while True:
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                break
            except Exception as err:
                raise UploadStreamError(
                    f"Reading the backup failed after {read} of {self.size} bytes: {_describe(err)}",
                    backup_id=state.backup_id,
                ) from err
            if not chunk:
                continue
            view = memoryview(chunk).cast("B")
            offset = 0
            length = view.nbytes
            read += length
            while offset < length:
                if number > state.part_count:
                    raise UploadStreamError(
                        f"The backup stream yielded more than the {self.size} bytes announced: the backup "
                        "changed while it was read; try again",
                        backup_id=state.backup_id,
                    )
                if buf is None:
                    buf = self.pool.take()
                    pos = 0
                take = min(want - pos, length - offset)
                buf[pos : pos + take] = view[offset : offset + take]
                pos += take
                offset += take
                if pos == want:
                    part = _Body(buf, want)
                    buf = None
                    yield number, part
                    del part  # the consumer owns it now: keep memory at (parallel + 1) parts
                    number += 1
                    if number <= state.part_count:
                        want = state.expected_size(number)
        if number <= state.part_count:
            raise UploadStreamError(
                f"The backup stream ended after {read} of the {self.size} bytes announced: the backup file may "
                "be truncated or was changed while it was read; try again",
                backup_id=state.backup_id,
            )

    async def _read_and_dispatch(self, stream: AsyncIterator[bytes], group: asyncio.TaskGroup) -> None:
        slots = asyncio.Semaphore(self.options.parallel)
        previous: asyncio.Task[str] | None = None
        async with aclosing(self._parts(stream)) as parts:
            async for number, body in parts:
                hashed = group.create_task(self._hash(previous, body))
                previous = hashed
                await slots.acquire()
                group.create_task(self._part(number, body, hashed, slots))
                del body  # only the part's task holds it now
                await asyncio.sleep(0)  # let the part's PUT start before the next part is copied
        if previous is not None:
            await previous

    async def _hash(self, previous: asyncio.Task[str] | None, body: _Body) -> str:
        """MD5 of the part, after adding it to the stream's SHA-256; parts are hashed one after the other.

        One hashing thread at a time (not one per part in flight): on a small machine, parallel hashing threads
        take the CPU from the connection sending the parts, and the upload got slower, not faster (measured).
        """
        if previous is not None:
            await previous
        if body.size <= _INLINE_HASH:
            return _hash_part(self.sha, body)
        return await self._loop.run_in_executor(None, _hash_part, self.sha, body)

    # ------------------------------------------------------------------------------------------- sending

    async def _part(
        self,
        number: int,
        body: _Body,
        md5: asyncio.Task[str],
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            held = self.held.get(number)
            if held is not None:
                stored_md5 = _etag_md5(held)
                if stored_md5 is None or stored_md5 == await md5:
                    await self._ack(number, held)
                    self.pool.give(body)
                    return
                _LOGGER.info("Part %d held by storage differs from the backup; sending it again", number)
                self.held.pop(number, None)
            etag = await self._send(number, body, md5)
            await self._ack(number, etag)
            await md5  # the part stays referenced until the SHA-256 has seen it
            self.pool.give(body)
        finally:
            slots.release()

    async def _send(self, number: int, body: _Body, md5: asyncio.Future[str]) -> str:
        """PUT one part until storage acknowledges it; returns its ETag."""
        options = self.options
        tries = 0
        while True:
            tries += 1
            url = await self.urls.get(number)
            outcome = await self._attempt(number, body, url)
            if outcome.kind == "ok" and outcome.etag is not None:
                expected = _etag_md5(outcome.etag)
                if expected is None or expected == await md5:
                    return outcome.etag
                outcome = _Outcome(
                    kind="retry",
                    status=outcome.status,
                    code="BadDigest",
                    detail=f"storage's ETag {expected} is not the part's MD5 {await md5}",
                )
            if outcome.kind == "resign":
                self.urls.forget(number)
            if outcome.kind == "fatal" or tries >= options.max_tries:
                raise self._part_error(number, outcome, tries)
            if outcome.kind == "resign":
                delay = 0.0
            elif outcome.retry_after is not None:
                delay = min(options.retry_after_cap, outcome.retry_after)
            else:
                delay = options.backoff(tries)
            _LOGGER.debug(
                "Part %d try %d/%d: %s; retrying in %.2f s",
                number,
                tries,
                options.max_tries,
                self._summary(outcome),
                delay,
            )
            if delay > 0:
                await asyncio.sleep(delay)

    async def _attempt(self, number: int, body: _Body, url: str) -> _Outcome:
        timeout = self.options.part_timeout(body.size)
        try:
            async with asyncio.timeout(timeout):
                async with self.session.put(
                    URL(url, encoded=True),
                    data=_PartPayload(body, self.limiter),
                    headers={"Content-Length": str(body.size)},
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(timeout, 30.0)),
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
                    if 200 <= status < 300:
                        etag = resp.headers.get("ETag")
                        await resp.read()
                        if not etag:
                            return _Outcome(
                                kind="retry", status=status, detail="storage answered without an ETag"
                            )
                        return _Outcome(etag=etag, status=status)
                    answer = await resp.content.read(16384)
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            return _Outcome(kind="retry", detail=f"no answer from storage within {timeout:.0f} s")
        except (aiohttp.ClientError, OSError) as err:
            return _Outcome(kind="retry", detail=_describe(err))
        code_match = _S3_CODE.search(answer)
        message_match = _S3_MESSAGE.search(answer)
        code = code_match.group(1).decode(errors="replace") if code_match else None
        message = message_match.group(1).decode(errors="replace") if message_match else ""
        if status == 403:
            kind = "resign"
        elif status == 429 or status >= 500 or status == 408:
            kind = "retry"
        else:
            kind = "fatal"
        return _Outcome(kind=kind, status=status, code=code, detail=message, retry_after=retry_after)

    @staticmethod
    def _summary(outcome: _Outcome) -> str:
        if outcome.status is None:
            return outcome.detail
        text = f"HTTP {outcome.status}"
        if outcome.code:
            text += f" {outcome.code}"
        if outcome.detail:
            text += f" ({outcome.detail})"
        return text

    def _part_error(self, number: int, outcome: _Outcome, tries: int) -> UploadError:
        state = self.state
        where = f"part {number} of {state.part_count} of backup {state.backup_id}"
        tried = f"{tries} {'try' if tries == 1 else 'tries'}"
        summary = self._summary(outcome)
        if outcome.status is None:
            if "no answer" in outcome.detail:
                hint = "the connection to storage is too slow or stalled; check it, or lower the parallel uploads"
            else:
                hint = "storage could not be reached; check the network connection and the storage endpoint"
            message = f"Upload of {where} failed after {tried}: {summary}. {hint}"
        elif outcome.code == "BadDigest":
            message = (
                f"Upload of {where} failed after {tried}: {summary}. The data was corrupted on the way; "
                "check the network path (proxies) to storage"
            )
        elif outcome.status == 403:
            message = (
                f"Storage refused the signed URL of {where} after {tried}: {summary}. Check the gateway's "
                "storage credentials and both clocks"
            )
        elif outcome.status == 404:
            message = (
                f"Storage no longer knows the upload of {where}: {summary}. It was aborted (by the gateway's "
                "sweeper?); start a new backup"
            )
        elif outcome.kind == "fatal":
            message = f"Storage rejected {where}: {summary}. This will not pass by retrying"
        else:
            message = f"Upload of {where} failed after {tried}: storage answered {summary}. Try again later"
        return UploadError(
            message,
            backup_id=state.backup_id,
            part_number=number,
            status=outcome.status,
            storage_code=outcome.code,
            tries=tries,
        )

    # --------------------------------------------------------------------------------------- bookkeeping

    async def _ack(self, number: int, etag: str) -> None:
        self.state.parts[number] = etag
        self.urls.forget(number)
        self.acked += self.state.expected_size(number)
        self._report()
        await self._emit_state()

    async def _emit_state(self) -> None:
        if self.on_state is None:
            return
        result = self.on_state(self.state)
        if inspect.isawaitable(result):
            await result

    def _report(self, *, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not force:
            if self.acked == self._reported:
                return
            if (
                self.acked != self.size
                and now - self._reported_at < self.options.progress_interval
                and self.acked - self._reported < self.options.progress_step * self.size
            ):
                return
        self._reported = self.acked
        self._reported_at = now
        try:
            self.progress(self.acked, self.size)
        except Exception:
            _LOGGER.exception("Upload progress callback failed")

    async def gateway_call[**P, T](
        self, func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Call the gateway, retrying while it is unavailable (``max_tries``, backoff, ``Retry-After``)."""
        tries = 0
        while True:
            tries += 1
            try:
                return await func(*args, **kwargs)
            except GatewayUnavailableError as err:
                if tries >= self.options.max_tries:
                    raise
                if isinstance(err, GatewayRateLimitedError) and err.retry_after is not None:
                    delay = min(self.options.retry_after_cap, err.retry_after)
                else:
                    delay = self.options.backoff(tries)
                _LOGGER.debug("Gateway call failed (%s); retrying in %.2f s", err, delay)
                await asyncio.sleep(delay)

    async def _create(self) -> BackupInit:
        """``POST /v1/backups``; cancelled meanwhile, still learn the new upload's id (briefly) so it is aborted.

        Without this, a cancel that lands while the gateway creates the upload leaves it behind, unknown to us,
        and the instance's next upload gets 409 ``upload_in_progress`` until the gateway's sweeper clears it.
        """
        create = asyncio.ensure_future(
            self.client.create_backup(name=self.name, size=self.size, metadata=self.metadata)
        )
        try:
            return await asyncio.shield(create)
        except asyncio.CancelledError:
            with contextlib.suppress(GatewayError, TimeoutError):
                async with asyncio.timeout(self.options.abort_timeout):
                    self.state.backup_id = (await create).id  # run() aborts it as it handles the cancel
            raise

    async def _abort(self, reason: str) -> None:
        backup_id = self.state.backup_id
        if not backup_id:
            return
        _LOGGER.debug("Aborting upload %s: %s", backup_id, reason)
        try:
            async with asyncio.timeout(self.options.abort_timeout):
                await self.client.abort_upload(backup_id)
        except GatewayConflictError:
            pass  # not uploading any more: nothing to abort
        except (GatewayError, TimeoutError) as err:
            _LOGGER.warning(
                "Could not abort upload %s (%s); the gateway's sweeper will clean it up", backup_id, err
            )
