"""Sending one part to storage through its presigned URL, retried until storage holds it.

- URLs are asked for in small batches just ahead of use, signed again before use once older than ``url_refresh``
  of their lifetime, and again whenever storage answers 403 (expired).
- Each part is one ``PUT`` with ``Content-Length`` and a timeout scaled to its size; connection errors, timeouts,
  5xx, 429, 408 and S3's ``400 RequestTimeout`` are retried until the upload's deadline (``upload_retry``:
  exponential backoff with full jitter, capped, ``Retry-After`` honoured); a part corrupted on the way is sent
  again ``max_tries`` times; any other 4xx fails at once.
- Storage's ETag is checked against the part's MD5 unless storage says it is not one (SSE-KMS, SSE-C).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from multidict import CIMultiDictProxy
from yarl import URL

from .api import GatewayUnavailableError, PartUrl, parse_retry_after
from .upload_errors import Outcome, describe, part_error
from .upload_model import UploadOptions, UploadState
from .upload_reader import Body, etag_md5
from .upload_retry import Retrier

_LOGGER = logging.getLogger(__name__)

_LIMITED_SLICE = 64 * 1024  # with a bandwidth limit, bodies are sent in slices of this size
_S3_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_S3_MESSAGE = re.compile(rb"<Message>([^<]{1,300})</Message>")
# Storage answers these when the part's ETag is not its MD5 (server-side encryption with KMS or the client's key).
_ETAG_NOT_MD5_HEADERS = ("x-amz-server-side-encryption-customer-algorithm",)
_ETAG_NOT_MD5_ENCRYPTION = ("aws:kms", "aws:kms:dsse")
_RETRIED_400_CODES = frozenset({"RequestTimeout"})  # S3: "your socket connection was not read from in time"


class RateLimiter:
    """A shared pacing clock: ``take(n)`` waits until ``n`` more bytes fit in the rate."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._next = time.monotonic()

    async def take(self, nbytes: int) -> None:
        """Wait for the room to send ``nbytes``."""
        now = time.monotonic()
        start = max(self._next, now)
        self._next = start + nbytes / self._rate
        if start > now:
            await asyncio.sleep(start - now)


class _PartPayload(Payload):
    """A part as a request body, written piece by piece without copying (paced when a limiter is given)."""

    def __init__(self, body: Body, limiter: RateLimiter | None) -> None:
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


class UrlBook:
    """Presigned part URLs, asked for in small batches just ahead of use."""

    def __init__(
        self,
        sign: Callable[[list[int]], Awaitable[list[PartUrl]]],
        options: UploadOptions,
        state: UploadState,
        skip: Callable[[int], bool],
    ) -> None:
        """``sign(numbers)`` asks the gateway; ``skip(n)`` tells a part that needs no URL (already stored)."""
        self._sign = sign
        self._options = options
        self._state = state
        self._skip = skip
        self._urls: dict[int, tuple[str, float]] = {}
        self._lock = asyncio.Lock()

    @property
    def _max_age(self) -> float:
        ttl = self._state.url_ttl or 900
        return max(1.0, ttl * self._options.url_refresh)

    def _fresh(self, part_number: int, now: float) -> bool:
        entry = self._urls.get(part_number)
        return entry is not None and now - entry[1] < self._max_age

    async def get(self, part_number: int) -> str:
        """A fresh URL for ``part_number`` (with a few of the next parts' signed in the same call)."""
        async with self._lock:
            now = time.monotonic()
            if not self._fresh(part_number, now):
                numbers = [part_number, *self._next_needed(part_number + 1, now)]
                signed = await self._sign(numbers)
                fetched = time.monotonic()
                for part in signed:
                    self._urls[part.part_number] = (part.url, fetched)
                if part_number not in self._urls:
                    raise GatewayUnavailableError(f"The gateway did not sign part {part_number}")
            return self._urls[part_number][0]

    def _next_needed(self, start: int, now: float) -> Iterable[int]:
        wanted = self._options.batch - 1
        candidate = start
        while wanted > 0 and candidate <= self._state.part_count:
            if not self._skip(candidate) and not self._fresh(candidate, now):
                wanted -= 1
                yield candidate
            candidate += 1

    def seed(self, parts: Iterable[PartUrl]) -> None:
        """URLs the gateway signed already (with the create), fresh from now."""
        fetched = time.monotonic()
        for part in parts:
            if 1 <= part.part_number <= self._state.part_count:
                self._urls[part.part_number] = (part.url, fetched)

    def forget(self, part_number: int) -> None:
        """Drop a part's URL (stored, or refused as expired)."""
        self._urls.pop(part_number, None)


class PartSender:
    """PUTs parts through their presigned URLs until storage acknowledges them."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        urls: UrlBook,
        options: UploadOptions,
        state: UploadState,
        retrier: Retrier,
    ) -> None:
        """Send with ``session``, URLs from ``urls``, the parts of ``state``; ``retrier`` paces transient failures."""
        self._session = session
        self._urls = urls
        self._options = options
        self._state = state
        self._retrier = retrier
        self._limiter = RateLimiter(options.bandwidth_limit) if options.bandwidth_limit else None

    async def send(self, number: int, body: Body, md5: asyncio.Future[str]) -> str:
        """PUT one part until storage acknowledges it; returns its ETag. Raises ``UploadError`` when it gives up.

        Transient failures are retried until the retrier's deadline; a refused URL (403, signed again) and a part
        corrupted on the way are tried ``max_tries`` times; anything else fails at once.
        """
        options = self._options
        tries = 0  # every PUT
        counted = 0  # the PUTs that count against max_tries
        transient = 0
        since: float | None = None  # when the current run of transient failures began
        try:
            while True:
                tries += 1
                url = await self._urls.get(number)
                with self._retrier.request():
                    outcome = await self._attempt(body, url)
                if outcome.kind == "ok" and outcome.etag is not None:
                    expected = etag_md5(outcome.etag) if outcome.etag_is_md5 else None
                    if expected is None or expected == await md5:
                        self._retrier.recovered(number)
                        return outcome.etag
                    outcome = Outcome(
                        kind="resend",
                        status=outcome.status,
                        code="BadDigest",
                        detail=f"storage's ETag {expected} is not the part's MD5 {await md5}",
                    )
                if outcome.kind == "fatal":
                    raise self._error(number, outcome, tries, since)
                if outcome.kind in ("resign", "resend"):
                    since = None
                    transient = 0
                    self._retrier.forget(number)
                    counted += 1
                    if counted >= options.max_tries:
                        raise self._error(number, outcome, tries, None)
                    if outcome.kind == "resign":
                        self._urls.forget(number)
                        continue  # signed again at once
                    delay = options.backoff(counted)
                    _LOGGER.debug(
                        "Part %d try %d: %s; again in %.2f s", number, tries, outcome.summary(), delay
                    )
                    await self._retrier.clock.sleep(delay)
                    continue
                transient += 1
                if since is None:
                    since = self._retrier.clock.now()
                if not await self._retrier.pause(
                    number,
                    since=since,
                    tries=transient,
                    error=f"storage did not take part {number}: {outcome.summary()}",
                    retry_after=outcome.retry_after,
                ):
                    raise self._error(number, outcome, tries, since)
        finally:
            self._retrier.forget(number)

    def _error(self, number: int, outcome: Outcome, tries: int, since: float | None) -> Exception:
        waited = None if since is None else self._retrier.clock.now() - since
        return part_error(
            backup_id=self._state.backup_id,
            part_number=number,
            part_count=self._state.part_count,
            outcome=outcome,
            tries=tries,
            waited=waited,
        )

    async def _attempt(self, body: Body, url: str) -> Outcome:
        timeout = self._options.part_timeout(body.size)
        try:
            async with asyncio.timeout(timeout):
                async with self._session.put(
                    URL(url, encoded=True),
                    data=_PartPayload(body, self._limiter),
                    headers={"Content-Length": str(body.size)},
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(timeout, 30.0)),
                    allow_redirects=False,
                ) as resp:
                    status = resp.status
                    if 200 <= status < 300:
                        etag = resp.headers.get("ETag")
                        await resp.read()
                        if not etag:
                            return Outcome(
                                kind="retry", status=status, detail="storage answered without an ETag"
                            )
                        return Outcome(etag=etag, status=status, etag_is_md5=_etag_may_be_md5(resp.headers))
                    answer = await resp.content.read(16384)
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            return Outcome(kind="retry", detail=f"no answer from storage within {timeout:.0f} s")
        except (aiohttp.ClientError, OSError) as err:
            return Outcome(kind="retry", detail=describe(err))
        code_match = _S3_CODE.search(answer)
        message_match = _S3_MESSAGE.search(answer)
        code = code_match.group(1).decode(errors="replace") if code_match else None
        message = message_match.group(1).decode(errors="replace") if message_match else ""
        if status == 403:
            kind = "resign"
        elif status in (408, 429) or status >= 500 or (status == 400 and code in _RETRIED_400_CODES):
            kind = "retry"
        else:
            kind = "fatal"
        return Outcome(kind=kind, status=status, code=code, detail=message, retry_after=retry_after)


def _etag_may_be_md5(headers: CIMultiDictProxy[str]) -> bool:
    """False when storage says this part's ETag is not its MD5 (encrypted with KMS or the client's own key)."""
    encryption = headers.get("x-amz-server-side-encryption", "").lower()
    return encryption not in _ETAG_NOT_MD5_ENCRYPTION and not any(
        headers.get(name) for name in _ETAG_NOT_MD5_HEADERS
    )
