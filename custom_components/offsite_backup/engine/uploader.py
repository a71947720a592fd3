"""Chunked, retried, resumable multipart upload to the gateway's presigned part URLs.

Plain asyncio + aiohttp. The integration calls::

    backup: RemoteBackup = await upload(
        client=client,                  # api.GatewayClient (its session is used for the PUTs unless session= given)
        open_stream=open_stream,        # async () -> AsyncIterator[bytes]; chunks of any size; may be called again
        size=backup.size,               # exact byte count the stream yields
        name=backup.name,
        metadata=backup.as_dict(),      # stored by the gateway, given back in RemoteBackup.metadata
        options=UploadOptions(),        # parallel=2, deadline=None, patience=600, bandwidth_limit=None, …
        progress=lambda done, total: …, # bytes acknowledged by storage; ~once a second or each 1 %
        state=saved_state,              # UploadState.from_dict(stored) to resume, else None
        on_state=persist,               # (state) -> None | Awaitable: after create and after each part
        clock=Clock(),                  # where time is read and how it waits (time.time, asyncio.sleep)
        on_wait=show_waiting,           # (Waiting | None) -> None: a transient failure is being waited out
    )

How it works:

- ``POST /v1/backups`` (or, with ``state``, ``GET /v1/backups/{id}/parts`` to see what storage holds). The gateway
  decides the part size (20 MiB by default, raised so there are at most 10,000 parts, never below 5 MiB but for the
  last part); the stream is re-chunked into exactly those parts.
- At most ``parallel`` parts are in flight and one more is being read, so memory stays near
  ``(parallel + 1) * part_size`` whatever the backup's size.
- URLs are asked for in small batches just ahead of use (``url_batch``; the first batch with the create), re-asked
  before use once older than ``url_refresh`` of their lifetime, and again whenever storage answers 403 (expired).
- Each part is one ``PUT`` with ``Content-Length`` and a timeout of ``timeout_base + part / timeout_min_rate``
  seconds. Transient failures (connection errors, timeouts, 5xx, 429, 408 and S3's ``400 RequestTimeout``) are
  retried against a deadline, not a count (``upload_retry``): until ``options.deadline``, and at least
  ``patience`` seconds, with exponential backoff and full jitter capped at ``retry_cap`` (``Retry-After``
  honoured); meanwhile nothing is aborted and ``on_wait`` says who waits until when. A part corrupted on the way
  or refused with 403 (signed again) is tried ``max_tries`` times; any other 4xx fails at once. Creating the
  upload and every other gateway call are retried the same way while the gateway is unavailable.
- The MD5 of each part is compared with storage's ETag (when the ETag is an MD5); the SHA-256 of the whole stream is
  sent on complete. Hashing runs in the loop's default executor, in parallel with the PUTs.

The pieces: ``upload_model`` (options, the persisted state), ``upload_reader`` (reading and hashing),
``upload_sender`` (sending a part), ``upload_errors`` (wording a failure); this module drives them.
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
  ``GatewayConflictError`` for ``upload_in_progress``, ``GatewayUnavailableError`` once the deadline passed).
- ``asyncio.CancelledError``: cancelling the task stops promptly and aborts. Cancelling with the message
  :data:`SUSPEND` (``task.cancel(SUSPEND)``, e.g. when Home Assistant stops) stops without aborting so the upload can
  be resumed from the last state.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from .api import (
    BackupInit,
    CompletedPart,
    GatewayClient,
    GatewayConflictError,
    GatewayError,
    GatewayNotFoundError,
    GatewayRateLimitedError,
    GatewayUnavailableError,
    PartUrl,
    RemoteBackup,
)
from .upload_errors import UploadError, UploadStreamError, describe
from .upload_model import MAX_PARTS, MIN_PART_SIZE, SUSPEND, UploadOptions, UploadState
from .upload_reader import Body, BufferPool, StreamHasher, etag_md5, read_parts
from .upload_retry import Clock, Retrier, Waiting, duration
from .upload_sender import PartSender, UrlBook

__all__ = [
    "MAX_PARTS",
    "MIN_PART_SIZE",
    "SUSPEND",
    "Clock",
    "UploadError",
    "UploadOptions",
    "UploadState",
    "UploadStreamError",
    "Waiting",
    "upload",
]

_LOGGER = logging.getLogger(__name__)


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
    clock: Clock | None = None,
    on_wait: Callable[[Waiting | None], None] | None = None,
) -> RemoteBackup:
    """Upload ``size`` bytes from ``open_stream()`` as a new backup (or resume ``state``); see the module doc."""
    if size < 1:
        raise ValueError("size must be at least 1 byte")
    options = options or UploadOptions()
    job = _Upload(
        client=client,
        session=session or client.session,
        open_stream=open_stream,
        size=size,
        name=name,
        metadata=metadata,
        options=options,
        progress=progress,
        on_state=on_state,
        retrier=Retrier(options, clock or Clock(), on_wait),
    )
    return await job.run(state)


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


@dataclass(frozen=True, slots=True)
class _Parts:
    """What the parts of one transfer share: buffers, URLs, the sender, the slots of parts in flight."""

    pool: BufferPool
    urls: UrlBook
    sender: PartSender
    slots: asyncio.Semaphore


class _Upload:
    """One upload (a new one, or the resumption of a saved state): creating, reading, completing, bookkeeping."""

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
        retrier: Retrier,
    ) -> None:
        self.client = client
        self.retrier = retrier
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
        self.first_urls: tuple[PartUrl, ...] = ()  # signed with the create
        self.acked = 0
        self._reported = -1
        self._reported_at = 0.0

    # ------------------------------------------------------------------------------------------- driving

    async def run(self, state: UploadState | None) -> RemoteBackup:
        try:
            if (done := await self._start(state)) is not None:
                return done
            return await self._transfer()
        except asyncio.CancelledError as err:
            if _is_suspend(err):
                _LOGGER.info("Upload of backup %s suspended; it can be resumed", self.state.backup_id)
            else:
                await self._abort("cancelled")
            raise
        except Exception as err:
            await self._abort(describe(err))
            raise

    async def _start(self, state: UploadState | None) -> RemoteBackup | None:
        """Create the upload, or pick up the saved one; a saved one the gateway completed already is returned."""
        if state is not None and state.size == self.size:
            try:
                stored = await self.gateway_call(self.client.list_parts, state.backup_id)
            except (GatewayNotFoundError, GatewayConflictError) as err:
                if (done := await self._completed(state, err)) is not None:
                    return done
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
                return None
        elif state is not None:
            _LOGGER.info("Saved upload %s is for another size; aborting it", state.backup_id)
            try:
                async with asyncio.timeout(self.options.abort_timeout):
                    await self.client.abort_upload(state.backup_id)
            except (GatewayError, TimeoutError) as err:
                _LOGGER.debug("Abort of stale upload %s: %s", state.backup_id, err)

        init = await self._create()
        self.first_urls = init.parts
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
        return None

    async def _completed(self, state: UploadState, err: GatewayError) -> RemoteBackup | None:
        """The saved upload, if the gateway completed it already (the stop came while it completed).

        Only this upload's own complete can have completed it, after every part was acknowledged, and the gateway
        checked them and the size: the backup is the one this state describes, so nothing is sent again.
        """
        if not isinstance(err, GatewayConflictError):
            return None
        try:
            backup = await self.gateway_call(self.client.get_backup, state.backup_id)
        except GatewayNotFoundError:
            return None
        if backup.status != "completed" or backup.size != self.size:
            return None
        _LOGGER.info("Saved upload %s was completed before the restart: nothing to send again", backup.id)
        self.state = state
        self.acked = self.size
        self._report(force=True)
        return backup

    async def _transfer(self) -> RemoteBackup:
        self._report(force=True)
        try:
            stream = await self.open_stream()
        except Exception as err:
            raise UploadStreamError(
                f"Opening the backup failed: {describe(err)}", backup_id=self.state.backup_id
            ) from err
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    sha256 = await self._read_and_dispatch(stream, group)
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
        return await self._complete(sha256)

    async def _complete(self, sha256: str) -> RemoteBackup:
        state = self.state
        missing = [n for n in range(1, state.part_count + 1) if n not in state.parts]
        if missing:  # pragma: no cover - the reader guarantees every part
            raise UploadError(f"Parts {missing[:5]} were never acknowledged", backup_id=state.backup_id)
        parts = [CompletedPart(n, state.parts[n]) for n in range(1, state.part_count + 1)]
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

    # --------------------------------------------------------------------------------------- the parts

    async def _read_and_dispatch(self, stream: AsyncIterator[bytes], group: asyncio.TaskGroup) -> str:
        """Read the parts and hand each to a task of its own; returns the stream's SHA-256."""
        urls = UrlBook(
            lambda numbers: self.gateway_call(self.client.sign_parts, self.state.backup_id, numbers),
            self.options,
            self.state,
            skip=lambda number: number in self.state.parts or number in self.held,
        )
        urls.seed(self.first_urls)
        self.first_urls = ()
        parts = _Parts(
            pool=BufferPool(min(self.state.part_size, self.size)),
            urls=urls,
            sender=PartSender(self.session, urls, self.options, self.state, self.retrier),
            slots=asyncio.Semaphore(self.options.parallel),
        )
        hasher = StreamHasher()
        async with aclosing(read_parts(stream, self.state, parts.pool)) as reader:
            async for number, body in reader:
                md5 = hasher.add(group, body)
                await parts.slots.acquire()
                group.create_task(self._part(number, body, md5, parts))
                del body  # only the part's task holds it now
                await asyncio.sleep(0)  # let the part's PUT start before the next part is copied
        return await hasher.sha256()

    async def _part(self, number: int, body: Body, md5: asyncio.Task[str], parts: _Parts) -> None:
        """Make sure storage holds part ``number``: it may already (resume), else send it."""
        try:
            held = self.held.pop(number, None)
            stored_md5 = etag_md5(held) if held is not None else None
            if held is not None and (stored_md5 is None or stored_md5 == await md5):
                etag = held  # storage holds it already (an ETag that is no MD5 cannot be checked: trusted)
            else:
                if held is not None:
                    _LOGGER.info("Part %d held by storage differs from the backup; sending it again", number)
                etag = await parts.sender.send(number, body, md5)
            parts.urls.forget(number)
            await self._ack(number, etag)
            await md5  # the buffer is reused once given back: the hashes must have read it
            parts.pool.give(body)
        finally:
            parts.slots.release()

    # --------------------------------------------------------------------------------------- bookkeeping

    async def _ack(self, number: int, etag: str) -> None:
        self.state.parts[number] = etag
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

    # ------------------------------------------------------------------------------------------ gateway

    async def gateway_call[**P, T](
        self, func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Call the gateway, retrying while it is unavailable until the deadline (backoff, ``Retry-After``).

        Giving up, it raises the last error, its message saying how long it tried.
        """
        key = object()
        tries = 0
        since: float | None = None
        try:
            while True:
                tries += 1
                try:
                    with self.retrier.request():
                        result = await func(*args, **kwargs)
                except GatewayUnavailableError as err:
                    if since is None:
                        since = self.retrier.clock.now()
                    retry_after = err.retry_after if isinstance(err, GatewayRateLimitedError) else None
                    if not await self.retrier.pause(
                        key, since=since, tries=tries, error=err.message, retry_after=retry_after
                    ):
                        if tries > 1:
                            err.message = (
                                f"{err.message} (tried {tries} times in "
                                f"{duration(self.retrier.clock.now() - since)})"
                            )
                            err.args = (err.message,)
                        raise
                else:
                    self.retrier.recovered(key)
                    return result
        finally:
            self.retrier.forget(key)

    async def _create(self) -> BackupInit:
        """``POST /v1/backups``, retried while the gateway is unavailable.

        Cancelled meanwhile, it still learns the new upload's id (briefly) so that it is aborted: without this, a
        cancel that lands while the gateway creates the upload leaves it behind, unknown to us, and the instance's
        next upload gets 409 ``upload_in_progress`` until the gateway's sweeper clears it.
        """
        return await self.gateway_call(self._create_once)

    async def _create_once(self) -> BackupInit:
        create = asyncio.ensure_future(
            self.client.create_backup(
                name=self.name, size=self.size, metadata=self.metadata, part_urls=self.options.batch
            )
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
