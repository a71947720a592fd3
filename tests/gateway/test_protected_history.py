"""Nothing the instance's token can cause shortens its protected history, and retention never trusts a clock.

- Retention its own uploads trigger never deletes a backup under delete protection; protected backups keep
  counting against the quota, so a flood of uploads ends in 413, and the operator's `backup delete` stays the way
  out (issue 24, A1), with and without Object Lock (SeaweedFS enforces it for real).
- A newer upload naming an older backup's Home Assistant id deletes nothing (issue 24, A2).
- With the gateway's clock stepped back, the backup being completed is never expired: "newest" is the order
  backups complete in (issue 21, 5).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from offsite_gateway import cli
from offsite_gateway.app import STORE
from offsite_gateway.manifest import SUFFIX
from offsite_gateway.store import COMPLETED
from tests.gateway.api import Api
from tests.helpers.gateway import GatewayDatabase, run_gateway
from tests.helpers.servers import S3Server

DAY = 86_400.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _archives(s3: S3Server, bucket: str) -> set[str]:
    listing = s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"].rsplit("/", 1)[-1] for item in listing if not item["Key"].endswith(SUFFIX)}


async def _listed(api: Api) -> list[str]:
    return [backup["id"] for backup in (await api.ok("GET", "/v1/backups"))["backups"]]


def _described(ha_id: str) -> dict[str, Any]:
    return {"backup_id": ha_id, "name": f"Automatic backup {ha_id}", "date": "2026-11-26T01:00:00+00:00"}


async def test_uploads_never_expire_protected_backups(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Keep-last 3, protect-days 7: a stolen token uploading one-byte backups as fast as it may never removes the
    three real ones; the quota fills (413) instead. The operator's delete still works, and once protection ends
    retention removes what its rules do not keep."""
    start = datetime(2026, 11, 20, 1, 0, tzinfo=UTC).timestamp()
    clock = Clock(start)
    async with run_gateway(
        moto_server,
        moto_bucket,
        tmp_path,
        database=database,
        clock=clock,
        RETENTION="3",
        PROTECT_DAYS="7",
        QUOTA=str(3 * 1000 + 8),
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        real = []
        for night in range(3):
            clock.now = start + night * DAY
            real.append((await api.upload(bytes([night]) * 1000, f"night {night}"))["id"])
        clock.now += 3600
        junk = []
        for n in range(8):
            clock.now += 1
            junk.append((await api.upload(bytes([n]), f"junk {n}"))["id"])
        await gateway.purged()
        assert set(await _listed(api)) == set(real) | set(junk)
        assert _archives(moto_server, moto_bucket) == set(real) | set(junk)
        # Protected backups count against the quota: the flood ends in 413, not in a shorter history.
        status, body = await api.call("POST", "/v1/backups", {"name": "junk 9", "size": 1})
        assert (status, body["error"]["code"]) == (413, "quota_exceeded"), body
        assert body["error"]["used_bytes"] == 3 * 1000 + 8
        for backup_id in real:  # nor can the token delete them itself
            status, body = await api.call("DELETE", f"/v1/backups/{backup_id}")
            assert (status, body["error"]["code"]) == (403, "protected")

        # The operator's `backup delete` is the way out.
        monkeypatch.setenv("OFFSITE_GATEWAY_DB", database.setting)
        for name, value in moto_server.gateway_env(moto_bucket).items():
            monkeypatch.setenv(name, value)
        assert await asyncio.to_thread(cli.main, ["backup", "delete", junk[0]]) == 0, capsys.readouterr()
        assert junk[0] not in await _listed(api)

        # Once their protection has ended, retention's rules apply again at the next complete.
        clock.now = start + 10 * DAY
        newest = (await api.upload(b"a", "after"))["id"]  # the quota is full but for this byte
        await gateway.purged()
        assert await _listed(api) == [newest, junk[7], junk[6]]
        assert _archives(moto_server, moto_bucket) == {newest, junk[7], junk[6]}


async def test_a_backup_naming_another_ones_home_assistant_id_deletes_nothing(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """A one-byte upload carrying a victim's Home Assistant `backup_id` in its description leaves the victim's
    objects and row alone, protected or not: the description is the client's word."""
    clock = Clock(datetime(2026, 11, 26, 1, 0, tzinfo=UTC).timestamp())
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, clock=clock, PROTECT_DAYS="7", RETENTION="7"
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        victim = (await api.upload(b"the real backup" * 100, "real", metadata=_described("abc123")))["id"]
        await gateway.app[STORE].set_policy("home", {"protect_days": 0})
        unprotected = (await api.upload(b"another real one" * 100, "real 2", metadata=_described("def456")))[
            "id"
        ]
        await gateway.app[STORE].set_policy("home", {"protect_days": None})
        clock.now += 60
        impostors = [
            (await api.upload(b"x", "impostor", metadata=_described(ha_id)))["id"]
            for ha_id in ("abc123", "def456")
        ]
        await gateway.purged()
        assert await _listed(api) == [*reversed(impostors), unprotected, victim]
        assert {victim, unprotected} <= _archives(moto_server, moto_bucket)
        row = await gateway.app[STORE].get_backup(victim)
        assert row is not None
        assert row.status == COMPLETED


async def test_a_clock_stepped_back_never_expires_the_backup_completing(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """Keep-last 2; the gateway's clock (or another node's) steps back a day after three backups: the backup
    completed then is the newest, kept, listed first and in storage; retention removes the oldest instead."""
    clock = Clock(datetime(2026, 11, 26, 1, 0, tzinfo=UTC).timestamp())
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, clock=clock, RETENTION="2"
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        made = []
        for n in range(3):
            clock.now += 60
            made.append((await api.upload(f"backup {n}".encode(), f"n{n}"))["id"])
        clock.now -= DAY
        stepped = await api.upload(b"completed with the clock a day back", "stepped back")
        assert stepped["status"] == "completed"
        await gateway.purged()
        assert await _listed(api) == [stepped["id"], made[2]]
        assert _archives(moto_server, moto_bucket) == {stepped["id"], made[2]}
        row = await gateway.app[STORE].get_backup(stepped["id"])
        assert row is not None
        assert row.status == COMPLETED
        # And again, the clock still behind: each new one is the newest.
        clock.now += 60
        again = (await api.upload(b"one more", "one more"))["id"]
        await gateway.purged()
        assert await _listed(api) == [again, stepped["id"]]
        assert _archives(moto_server, moto_bucket) == {again, stepped["id"]}


async def _versions(s3: S3Server, bucket: str, backup_id: str) -> list[str]:
    listing = await asyncio.to_thread(s3.client().list_object_versions, Bucket=bucket)
    return [v["VersionId"] for v in listing.get("Versions", []) if v["Key"].endswith(backup_id)]


async def test_object_lock_and_protection_hold_against_the_token_on_seaweedfs(
    seaweedfs_server: S3Server,
    seaweedfs_lock_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """On storage that enforces Object Lock: keep-last 1 and protect-days 1, a real backup, then one-byte uploads
    (one naming the real one's Home Assistant id): the real backup stays listed, its archive and manifest stay
    in storage under their lock; nothing of it was deleted, not even with governance bypass."""
    async with run_gateway(
        seaweedfs_server,
        seaweedfs_lock_bucket,
        tmp_path,
        database=database,
        clock=time.time,  # storage compares the lock's date with its own clock
        OBJECT_LOCK="true",
        PROTECT_DAYS="1",
        RETENTION="1",
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        real = (await api.upload(b"real" * 1000, "real", metadata=_described("abc123")))["id"]
        versions = await _versions(seaweedfs_server, seaweedfs_lock_bucket, real)
        junk = [(await api.upload(b"x", "impostor", metadata=_described("abc123")))["id"]]
        junk += [(await api.upload(bytes([n]), f"junk {n}"))["id"] for n in range(3)]
        await gateway.purged()
        assert set(await _listed(api)) == {real, *junk}
        assert await _versions(seaweedfs_server, seaweedfs_lock_bucket, real) == versions
        keys = {key for key in await _keys(seaweedfs_server, seaweedfs_lock_bucket) if real in key}
        assert len(keys) == 2  # the archive and its manifest
        await _still_downloadable(session, api, real, b"real" * 1000)


async def _keys(s3: S3Server, bucket: str) -> list[str]:
    listing = await asyncio.to_thread(s3.client().list_objects_v2, Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


async def _still_downloadable(session: aiohttp.ClientSession, api: Api, backup_id: str, data: bytes) -> None:
    url = (await api.ok("POST", f"/v1/backups/{backup_id}/download"))["url"]
    async with session.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == data
