"""A real gateway for tests: the app served on a 127.0.0.1 TCP port, in-process, against a local S3 server.

    async with run_gateway(moto_server, moto_bucket, tmp_path, PART_SIZE="5242880") as gateway:
        instance_id, token = await gateway.add_instance("home")
        ...  # talk to gateway.url with aiohttp
        token = await gateway.rotate_token("home")  # same instance, new token (reauth); the old one gets 401

Overrides are settings without the `OFFSITE_GATEWAY_` prefix: PART_SIZE, URL_TTL, RETENTION, INIT_RATE,
S3_PUBLIC_ENDPOINT (where clients reach storage, e.g. a fault-injecting proxy), SWEEP_INTERVAL, DB, ...
The database is `tmp_path / "gateway.sqlite3"` unless DB is given: a second `run_gateway` on the same tmp_path
is the same gateway restarted. Everything (server, S3 client, sweeper task, database) is closed on exit.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from offsite_gateway import auth
from offsite_gateway.app import STORAGE, STORE, SWEEPER, create_app, make_runner
from offsite_gateway.config import PREFIX, Settings, load_settings
from offsite_gateway.sweeper import SweepReport, abort_instance_uploads
from tests.helpers.servers import S3Server


@dataclass
class RunningGateway:
    """A gateway serving on `url`."""

    url: str
    settings: Settings
    app: web.Application

    async def add_instance(self, name: str) -> tuple[str, str]:
        """Create an instance as `offsite-gateway instance add` does; return (instance_id, token)."""
        instance, token = await auth.add_instance(self.app[STORE], name)
        return instance.id, token

    async def revoke_instance(self, name: str) -> None:
        """Revoke as `offsite-gateway instance revoke` does (with the storage settings at hand): the token is
        refused, and the instance's upload in progress aborted."""
        revoked = await auth.revoke_instance(self.app[STORE], name)
        if revoked is None:
            raise LookupError(f"no active instance named {name!r}")
        await abort_instance_uploads(self.app[STORE], self.app[STORAGE], self.settings, revoked.id)

    async def rotate_token(self, name: str) -> str:
        """A new token for the same instance, as `offsite-gateway instance rotate` does; the old one gets 401.

        Raises LookupError if no active instance has this name (unknown or revoked).
        """
        return await auth.rotate_token(self.app[STORE], name)

    async def run_sweeper_once(self, now: float | None = None) -> SweepReport:
        """One sweeper pass now (or as if the clock said `now`)."""
        return await self.app[SWEEPER].run_once(now)


def gateway_settings(s3: S3Server, bucket: str, tmp_path: Path, **overrides: str) -> Settings:
    """The settings `run_gateway` uses."""
    env = {
        **s3.gateway_env(bucket),
        f"{PREFIX}DB": str(tmp_path / "gateway.sqlite3"),
        f"{PREFIX}LISTEN": "127.0.0.1:0",
    }
    env.update({PREFIX + name.upper(): value for name, value in overrides.items()})
    return load_settings(env)


@asynccontextmanager
async def run_gateway(
    s3: S3Server,
    bucket: str,
    tmp_path: Path,
    *,
    clock: Callable[[], float] = time.time,
    **overrides: str,
) -> AsyncIterator[RunningGateway]:
    """Serve a gateway for the block (see the module's docstring)."""
    settings = gateway_settings(s3, bucket, tmp_path, **overrides)
    app = create_app(settings, clock=clock)
    runner = make_runner(app, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", settings.listen_port)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield RunningGateway(url=f"http://{host}:{port}", settings=settings, app=app)
    finally:
        await runner.cleanup()
