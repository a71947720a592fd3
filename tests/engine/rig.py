"""The test rig of the upload engine: real gateway + fault proxy + real S3 server, and byte streams."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from custom_components.offsite_backup.engine.api import BackupInit, GatewayClient, PartUrl
from custom_components.offsite_backup.engine.upload_retry import Clock
from tests.engine.proxy import FaultProxy
from tests.helpers.gateway import RunningGateway, run_gateway
from tests.helpers.servers import S3Server

MIB = 1024 * 1024
PART = 5 * MIB


class CountingClient(GatewayClient):
    """A gateway client that counts how often each part number was signed, and the calls that signed some: the
    create (the first parts' URLs come with it) and the signing calls."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        super().__init__(session, url, token)
        self.signed: Counter[int] = Counter()
        self.sign_calls = 0

    async def create_backup(self, **kwargs: Any) -> BackupInit:
        init = await super().create_backup(**kwargs)
        if init.parts:
            self.sign_calls += 1
            self.signed.update(part.part_number for part in init.parts)
        return init

    async def sign_parts(self, backup_id: str, part_numbers: Iterable[int]) -> list[PartUrl]:
        numbers = list(part_numbers)
        self.sign_calls += 1
        self.signed.update(numbers)
        return await super().sign_parts(backup_id, numbers)


@dataclass
class Rig:
    """Everything one engine test needs."""

    s3: S3Server
    bucket: str
    gateway: RunningGateway
    proxy: FaultProxy
    client: CountingClient
    http: aiohttp.ClientSession
    token: str

    def multipart_uploads(self) -> list[dict[str, Any]]:
        """ListMultipartUploads on the bucket, straight from the S3 server."""
        answer = self.s3.client().list_multipart_uploads(Bucket=self.bucket)
        uploads: list[dict[str, Any]] = answer.get("Uploads", [])
        return uploads

    async def downloaded_sha256(self, backup_id: str) -> str:
        digest = hashlib.sha256()
        async for chunk in await self.client.download(backup_id):
            digest.update(chunk)
        return digest.hexdigest()


@asynccontextmanager
async def make_rig(
    s3: S3Server,
    bucket: str,
    tmp_path: Path,
    http: aiohttp.ClientSession,
    *,
    opaque_etags: bool = False,
    **overrides: str,
) -> AsyncIterator[Rig]:
    """A gateway whose presigned URLs point at a fault proxy in front of ``s3``.

    With ``opaque_etags``, the gateway reaches storage through the proxy too, and storage's ETags are not MD5s.
    """
    settings = {"PART_SIZE": str(PART), **overrides}
    async with FaultProxy(s3.endpoint, opaque_etags=opaque_etags) as proxy:
        if opaque_etags:
            settings["S3_ENDPOINT"] = proxy.url
        async with run_gateway(s3, bucket, tmp_path, S3_PUBLIC_ENDPOINT=proxy.url, **settings) as gateway:
            _, token = await gateway.add_instance("home")
            client = CountingClient(http, gateway.url, token)
            yield Rig(s3, bucket, gateway, proxy, client, http, token)


def make_data(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Source:
    """An ``open_stream`` over ``data`` yielding chunks of irregular sizes (some larger than a part)."""

    data: bytes
    seed: int = 7
    max_chunk: int = 300 * 1024
    pause_after: dict[int, float] = field(default_factory=dict)  # byte offset → seconds to sleep there
    opens: int = 0
    served: int = 0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    async def open(self) -> AsyncIterator[bytes]:
        self.opens += 1
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        rng = random.Random(self.seed)
        pos = 0
        pauses = dict(self.pause_after)
        while pos < len(self.data):
            # now and then a chunk spanning part boundaries
            big = rng.random() < 0.03
            size = rng.randint(PART, 2 * PART) if big else rng.randint(1, self.max_chunk)
            for offset in sorted(pauses):
                if pos < offset:
                    size = min(size, offset - pos)
                    break
            chunk = self.data[pos : pos + size]
            pos += len(chunk)
            self.served += len(chunk)
            yield chunk
            if pos in pauses:
                await asyncio.sleep(pauses.pop(pos))


class VirtualClock:
    """Simulated time for the engine's retries: a sleep moves the clock on at once, so that an outage of minutes
    or hours passes in a moment of real time. Each sleeper wakes no earlier than its own wake-up time (concurrent
    sleeps overlap rather than add up)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.start = start
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        wake = self.t + seconds
        self.sleeps.append(seconds)
        await asyncio.sleep(0)
        self.t = max(self.t, wake)

    @property
    def elapsed(self) -> float:
        """Simulated seconds since the start."""
        return self.t - self.start

    @property
    def clock(self) -> Clock:
        return Clock(now=self.now, sleep=self.sleep)


class Progress:
    """Records progress reports."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))


type OpenStream = Callable[[], Awaitable[AsyncIterator[bytes]]]
