"""Helpers of the watchdog's tests: a clock the test moves, a gateway that watches with it, and signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from offsite_gateway import auth
from offsite_gateway.app import OUTBOX, STORE, WATCHDOG
from offsite_gateway.outbox import OutboxReport
from offsite_gateway.watchdog import WatchReport
from tests.gateway.api import Api
from tests.helpers.gateway import GatewayDatabase, RunningGateway, run_gateway
from tests.helpers.receivers import Received, WebhookReceiver
from tests.helpers.servers import S3Server

HOUR = 3600
DAY = 24 * HOUR
OPERATOR_SECRET = "the operator's signing key"
METRICS_TOKEN = (
    "watchdog-tests-metrics-token"  # /metrics is served only behind a token or on its own listener
)


async def metrics_text(session: aiohttp.ClientSession, gateway: RunningGateway) -> str:
    """The gateway's /metrics, asked with the token `watching_gateway` gives it."""
    headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    async with session.get(gateway.url + "/metrics", headers=headers) as resp:
        assert resp.status == 200, resp.status
        return await resp.text()


class Clock:
    """The gateway's clock, moved by the test (`advance`), starting at the real time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@asynccontextmanager
async def watching_gateway(
    s3: S3Server,
    bucket: str,
    tmp_path: Path,
    database: GatewayDatabase,
    clock: Clock,
    receiver: WebhookReceiver | None = None,
    **settings: str,
) -> AsyncIterator[RunningGateway]:
    """A gateway whose watchdog the test drives (its timer off), allowed to notify 127.0.0.1, telling the operator's
    webhook `/operator` on `receiver` (signed JSON) unless `settings` say otherwise."""
    defaults = {
        "WATCH_INTERVAL": "0",
        "NOTIFY_ALLOWED_NETWORKS": "127.0.0.0/8",
        "NOTIFY_TIMEOUT": "2",
        "METRICS_TOKEN": METRICS_TOKEN,
    }
    if receiver is not None:
        defaults |= {"NOTIFY_URL": receiver.url("/operator"), "NOTIFY_SECRET": OPERATOR_SECRET}
    async with run_gateway(
        s3,
        bucket,
        tmp_path,
        database=database,
        clock=clock,
        PART_SIZE=str(5 * 1024 * 1024),
        **(defaults | settings),
    ) as gateway:
        yield gateway


async def add_instance(gateway: RunningGateway, name: str, clock: Clock) -> tuple[str, str]:
    """An instance created at the clock's now: (id, token)."""
    instance, token = await auth.add_instance(gateway.app[STORE], name, now=clock())
    return instance.id, token


async def look(gateway: RunningGateway, clock: Clock) -> tuple[WatchReport, OutboxReport]:
    """One look of the watchdog at the clock's now, then one delivery run."""
    report = await gateway.app[WATCHDOG].run_once(clock())
    delivered = await gateway.app[OUTBOX].run_once(clock())
    return report, delivered


async def set_notify(
    session: aiohttp.ClientSession, gateway: RunningGateway, token: str, url: str, fmt: str = "json"
) -> str:
    """Set the house's notify URL through the API; the signing secret it answers."""
    answer = await Api(session, gateway.url, token).ok(
        "PUT", "/v1/instance/notify", {"url": url, "format": fmt}
    )
    secret: str = answer["notify"]["secret"]
    return secret


def check_signature(request: Received, secret: str) -> None:
    """Check a notification's signature as docs/gateway.md tells a receiver to."""
    timestamp = request.headers["X-Offsite-Timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-Offsite-Signature"], "sha256=" + expected)


def verify(request: Received, secret: str) -> dict[str, Any]:
    """A signed JSON notification's body, its signature checked."""
    check_signature(request, secret)
    body: dict[str, Any] = json.loads(request.body)
    return body


def by_path(received: list[Received]) -> dict[str, list[Received]]:
    found: dict[str, list[Received]] = {}
    for request in received:
        found.setdefault(request.path, []).append(request)
    return found
