"""A real gateway for tests: the app served on a 127.0.0.1 TCP port, in-process, against a local S3 server.

    async with run_gateway(moto_server, moto_bucket, tmp_path, PART_SIZE="5242880") as gateway:
        instance_id, token = await gateway.add_instance("home")
        ...  # talk to gateway.url with aiohttp
        token = await gateway.rotate_token("home")  # same instance, new token (reauth); the old one gets 401

Overrides are settings without the `OFFSITE_GATEWAY_` prefix: PART_SIZE, URL_TTL, RETENTION, INIT_RATE,
S3_PUBLIC_ENDPOINT (where clients reach storage, e.g. a fault-injecting proxy), SWEEP_INTERVAL, ...
The database is `tmp_path / "gateway.sqlite3"` unless `database=` (a `GatewayDatabase`: SQLite or PostgreSQL, see
tests/gateway/conftest.py's `database` fixture) or DB is given: a second `run_gateway` on the same database is the
same gateway restarted. Everything (server, S3 client, sweeper task, database) is closed on exit.

Losing the database and getting it back from the bucket (what an operator does after a disaster):

    await gateway.lose_database()       # the gateway's database is now empty (schema only)
    report = await gateway.reindex()    # `offsite-gateway reindex`: instances and backups from the manifests
    gateway.database.dump(path); ...; await gateway.restore_database(path)  # back to an older dump
    token = await gateway.rotate_token("home")  # `offsite-gateway instance rotate home`: the token to reauth with

Where a test needs process-level behaviour (a low file limit, what `serve` logs), `serve_process` runs
`python -m offsite_gateway serve` as a subprocess instead, with the same settings, `database=` and overrides:

    with serve_process(moto_server, moto_bucket, tmp_path, nofile=(256, 256)) as process:
        ...  # process.url, process.log() (its stderr so far), process.pid
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from offsite_gateway import auth
from offsite_gateway.app import PURGER, STORAGE, STORE, SWEEPER, create_app, make_runner
from offsite_gateway.config import PREFIX, Settings, load_settings
from offsite_gateway.reindex import ReindexReport, reindex
from offsite_gateway.sweeper import SweepReport, abort_instance_uploads
from tests.helpers.postgres import PostgresCluster
from tests.helpers.servers import S3Server, free_port

STORES = ("sqlite", "postgresql")


def selected_stores() -> list[str]:
    """The stores the gateway tests run on: OFFSITE_TEST_STORES (comma-separated), else both."""
    raw = os.environ.get("OFFSITE_TEST_STORES", "").strip()
    if not raw:
        return list(STORES)
    chosen = [name.strip().lower() for name in raw.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(STORES))
    if unknown or not chosen:
        raise ValueError(f"OFFSITE_TEST_STORES={raw!r}: expected some of {', '.join(STORES)}")
    return [name for name in STORES if name in chosen]


@dataclass
class GatewayDatabase:
    """A test's gateway database: a SQLite file, or a database of the session's PostgreSQL cluster."""

    store: str  # "sqlite" or "postgresql"
    setting: str  # OFFSITE_GATEWAY_DB
    path: Path | None = None
    cluster: PostgresCluster | None = None

    @classmethod
    def sqlite(cls, path: Path) -> GatewayDatabase:
        return cls("sqlite", str(path), path=path)

    @classmethod
    def postgresql(cls, url: str, cluster: PostgresCluster) -> GatewayDatabase:
        return cls("postgresql", url, cluster=cluster)

    def wipe(self) -> None:
        """Lose everything in it (the gateway must have closed it)."""
        if self.path is not None:
            for path in self.path.parent.glob(self.path.name + "*"):
                path.unlink()
        else:
            assert self.cluster is not None
            self.cluster.wipe(self.setting)

    def dump(self, path: Path) -> None:
        """Back it up as an operator does: SQLite's online backup, or `pg_dump -Fc`."""
        if self.path is not None:
            with (
                contextlib.closing(sqlite3.connect(self.path)) as source,
                contextlib.closing(sqlite3.connect(path)) as target,
            ):
                source.backup(target)
            return
        assert self.cluster is not None
        self.cluster.dump(self.setting, path)

    def restore(self, path: Path) -> None:
        """Put back what `dump` saved: everything since is lost (the gateway must have closed it)."""
        self.wipe()
        if self.path is not None:
            shutil.copyfile(path, self.path)
            self.path.chmod(0o600)
            return
        assert self.cluster is not None
        self.cluster.restore(self.setting, path)

    def contents(self) -> bytes:
        """Everything it stores, as bytes (to check what is and is not in it)."""
        if self.path is not None:
            return b"".join(path.read_bytes() for path in self.path.parent.glob(self.path.name + "*"))
        assert self.cluster is not None
        return self.cluster.dump_text(self.setting).encode()


@contextmanager
def database_in(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[GatewayDatabase]:
    """A test's own database in ``store``: a SQLite file under ``tmp_path``, or a database of the session's
    PostgreSQL cluster (the ``postgres_cluster`` fixture, started on first use), dropped afterwards."""
    if store == "sqlite":
        yield GatewayDatabase.sqlite(tmp_path / "gateway.sqlite3")
        return
    cluster = request.getfixturevalue("postgres_cluster")
    url = cluster.create_database()
    try:
        yield GatewayDatabase.postgresql(url, cluster)
    finally:
        cluster.drop_database(url)


@dataclass
class RunningGateway:
    """A gateway serving on `url`."""

    url: str
    settings: Settings
    app: web.Application
    database: GatewayDatabase

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

    async def purged(self) -> None:
        """Until the purger has deleted what retention marked `deleting` (it batches them: offsite_gateway/purger.py)."""
        await self.app[PURGER].wait_idle()

    async def lose_database(self) -> None:
        """The database is lost while the gateway runs: it comes back empty, its schema migrated again."""
        store = self.app[STORE]
        await store.close()
        await asyncio.to_thread(self.database.wipe)
        await store.open()

    async def restore_database(self, dump: Path) -> None:
        """The database is restored from a dump (`GatewayDatabase.dump`) taken earlier: what happened since is lost."""
        store = self.app[STORE]
        await store.close()
        await asyncio.to_thread(self.database.restore, dump)
        await store.open()

    async def reindex(self, *, prune_missing: bool = False) -> ReindexReport:
        """Rebuild the database from the bucket's manifests, as `offsite-gateway reindex` does."""
        return await reindex(self.app[STORE], self.app[STORAGE], self.settings, prune_missing=prune_missing)


def gateway_settings(
    s3: S3Server, bucket: str, tmp_path: Path, database: GatewayDatabase | None = None, **overrides: str
) -> Settings:
    """The settings `run_gateway` uses."""
    env = {
        **s3.gateway_env(bucket),
        f"{PREFIX}DB": database.setting if database is not None else str(tmp_path / "gateway.sqlite3"),
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
    database: GatewayDatabase | None = None,
    clock: Callable[[], float] = time.time,
    **overrides: str,
) -> AsyncIterator[RunningGateway]:
    """Serve a gateway for the block (see the module's docstring)."""
    settings = gateway_settings(s3, bucket, tmp_path, database, **overrides)
    if database is None:
        db = settings.db
        database = (
            GatewayDatabase.sqlite(db) if isinstance(db, Path) else GatewayDatabase("postgresql", db.url)
        )
    app = create_app(settings, clock=clock)
    runner = make_runner(app, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", settings.listen_port)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield RunningGateway(url=f"http://{host}:{port}", settings=settings, app=app, database=database)
    finally:
        await runner.cleanup()


@dataclass
class GatewayProcess:
    """`offsite-gateway serve` running as a subprocess on `url`."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        """What it wrote to stderr so far (its log)."""
        return self.log_path.read_text(errors="replace")


def _gateway_env(
    s3: S3Server, bucket: str, tmp_path: Path, port: int, database: GatewayDatabase | None, **overrides: str
) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(PREFIX)}
    env.update(s3.gateway_env(bucket))
    env[f"{PREFIX}DB"] = database.setting if database is not None else str(tmp_path / "gateway.sqlite3")
    env[f"{PREFIX}LISTEN"] = f"127.0.0.1:{port}"
    env.update({PREFIX + name.upper(): value for name, value in overrides.items()})
    return env


@contextmanager
def serve_process(
    s3: S3Server,
    bucket: str,
    tmp_path: Path,
    *,
    database: GatewayDatabase | None = None,
    nofile: tuple[int, int] | None = None,
    port: int | None = None,
    **overrides: str,
) -> Iterator[GatewayProcess]:
    """Run `python -m offsite_gateway serve` until the block ends (SIGTERM, then SIGKILL after 20 s).

    `nofile` is the (soft, hard) RLIMIT_NOFILE the process starts with; `port` a port to listen on (the same one
    restarts the same gateway: the database is in `tmp_path`). Ready once `GET /healthz` answers.
    """
    port = port or free_port()
    env = _gateway_env(s3, bucket, tmp_path, port, database, **overrides)
    log_path = tmp_path / f"gateway-{port}.log"

    def limit_files() -> None:  # runs in the child, before exec
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "offsite_gateway", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=limit_files,  # noqa: PLW1509 - only setrlimit, no threads in the test process here
        )
    running = GatewayProcess(f"http://127.0.0.1:{port}", process, log_path, env)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}:\n{running.log()}")
            try:
                with urllib.request.urlopen(running.url + "/healthz", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not answer within 30 s:\n{running.log()}") from None
                time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
