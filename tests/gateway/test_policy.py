"""What an operator sets and a homeowner sees: usage from storage, the quota, per-instance policy, generational
retention through the gateway, delete protection, Object Lock; and the sweeper's clock (last activity, pruning).

The gateway runs for real on moto with a driven clock (`run_gateway(clock=...)`, the sweeper's `run_once(now)`).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from botocore.exceptions import ClientError

from offsite_gateway import cli
from offsite_gateway.app import STORAGE, STORE
from offsite_gateway.manifest import SUFFIX
from tests.gateway.api import Api, put
from tests.helpers.gateway import GatewayDatabase, run_gateway
from tests.helpers.servers import S3Server

PART = 5 * 1024 * 1024
DAY = 86_400.0


class Clock:
    """The gateway's clock, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _keys(s3: S3Server, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", []))


async def test_a_slow_upload_outlives_the_stale_limit_and_completes(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """Staleness runs from the last signing or listing: an upload that keeps asking lives on past the limit;
    one that goes quiet for longer than the limit is swept."""
    clock = Clock(1_800_000_000.0)
    async with run_gateway(
        moto_server,
        moto_bucket,
        tmp_path,
        database=database,
        clock=clock,
        PART_SIZE=str(PART),
        STALE_UPLOAD_AFTER="3600",
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        data = bytes(range(256)) * (5 * PART // 256) + b"tail"  # 6 parts, the last of 4 bytes
        init = await api.init(len(data))
        started = clock.now
        parts = []
        for number in range(1, init["part_count"] + 1):
            clock.now += 50 * 60  # a part every 50 minutes: 5 hours in all, the limit is 1 hour
            if number == 3:
                await api.ok("GET", f"/v1/backups/{init['id']}/parts")  # a listing counts too
                clock.now += 50 * 60
            url = (await api.sign(init["id"], [number]))[0]["url"]
            etag = await put(session, url, data[(number - 1) * PART : number * PART])
            parts.append({"part_number": number, "etag": etag})
            report = await gateway.run_sweeper_once(clock.now + 59 * 60)
            assert report.stale_failed == 0, number
        assert clock.now - started > 5 * 3600
        backup = (await api.ok("POST", f"/v1/backups/{init['id']}/complete", {"parts": parts}))["backup"]
        assert backup["status"] == "completed"

        # Quiet for longer than the limit after its last signing: swept.
        quiet = await api.init(10)
        await api.sign(quiet["id"], [1])
        signed_at = clock.now
        assert (await gateway.run_sweeper_once(signed_at + 3500)).stale_failed == 0
        assert (await gateway.run_sweeper_once(signed_at + 3601)).stale_failed == 1
        assert (await api.ok("GET", f"/v1/backups/{quiet['id']}"))["backup"]["status"] == "failed"


async def test_failed_rows_are_pruned_after_a_while(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    clock = Clock(1_800_000_000.0)
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, clock=clock, PRUNE_FAILED_AFTER=str(2 * 86400)
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        init = await api.init(10, metadata={"big": "x" * 60_000})
        clock.now += 3600
        await api.ok("DELETE", f"/v1/backups/{init['id']}/upload", expect=204)
        failed_at = clock.now
        report = await gateway.run_sweeper_once(failed_at + 2 * DAY - 1)
        assert report.failed_pruned == 0
        assert (await api.ok("GET", f"/v1/backups/{init['id']}"))["backup"]["status"] == "failed"
        report = await gateway.run_sweeper_once(failed_at + 2 * DAY + 1)
        assert report.failed_pruned == 1
        status, _ = await api.call("GET", f"/v1/backups/{init['id']}")
        assert status == 404
        # Completed backups are not touched.
        done = await api.upload(b"kept")
        assert (await gateway.run_sweeper_once(clock.now + 30 * DAY)).failed_pruned == 0
        await api.ok("GET", f"/v1/backups/{done['id']}")


async def test_usage_is_what_storage_holds_and_the_quota_counts_it(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, PART_SIZE=str(PART), QUOTA=str(3 * PART)
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        info = await api.ok("GET", "/v1/instance")
        assert info["usage"] == {"bytes": 0, "backups": 0, "quota_bytes": 3 * PART}
        first = await api.upload(b"a" * 1000)
        assert (await api.ok("GET", "/v1/instance"))["usage"] == {
            "bytes": 1000,
            "backups": 1,
            "quota_bytes": 3 * PART,
        }
        # An upload in progress counts by the parts storage holds, not by the size it declared.
        init = await api.init(PART + 10)
        assert (await api.ok("GET", "/v1/instance"))["usage"]["bytes"] == 1000
        url = (await api.sign(init["id"], [1]))[0]["url"]
        await put(session, url, b"b" * PART)
        assert (await api.ok("GET", "/v1/instance"))["usage"] == {
            "bytes": 1000 + PART,
            "backups": 1,
            "quota_bytes": 3 * PART,
        }
        await api.ok("DELETE", f"/v1/backups/{init['id']}/upload", expect=204)

        # Over the quota: 413 with what is used and what the backup needed.
        status, body = await api.call("POST", "/v1/backups", {"name": "big", "size": 3 * PART - 999})
        assert status == 413
        error = body["error"]
        assert error["code"] == "quota_exceeded"
        assert (error["used_bytes"], error["needed_bytes"], error["quota_bytes"]) == (
            1000,
            3 * PART - 999,
            3 * PART,
        )
        assert "1000" in error["message"]
        await api.init(3 * PART - 1000, "fits exactly")

        # Another instance has its own usage; an instance set with quota 0 has none.
        other_id, other_token = await gateway.add_instance("cottage")
        other = Api(session, gateway.url, other_token)
        assert (await other.ok("GET", "/v1/instance"))["usage"]["bytes"] == 0
        await gateway.app[STORE].set_policy("cottage", {"quota_bytes": 0})
        assert (await other.ok("GET", "/v1/instance"))["usage"]["quota_bytes"] is None
        assert first["id"] not in str(await other.ok("GET", "/v1/backups"))
        assert other_id


async def test_instance_set_and_list(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`instance set` from the command line; the running gateway applies it at the next request."""
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, RETENTION_WEEKLY="4"
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        monkeypatch.setenv("OFFSITE_GATEWAY_DB", database.setting)
        monkeypatch.setenv("OFFSITE_GATEWAY_RETENTION_WEEKLY", "4")

        def run(*args: str) -> tuple[int, str, str]:
            code = cli.main(list(args))
            captured = capsys.readouterr()
            return code, captured.out, captured.err

        code, out, _ = await asyncio.to_thread(
            run,
            "instance",
            "set",
            "home",
            "--quota",
            "200 GiB",
            "--keep-last",
            "3",
            "--keep-daily",
            "7",
            "--keep-monthly",
            "12",
            "--protect-days",
            "14",
        )
        assert code == 0, out
        assert (
            "quota=200GiB* keep-last=3* keep-daily=7* keep-weekly=4 keep-monthly=12* protect-days=14*" in out
        )
        policy = (await api.ok("GET", "/v1/instance"))["policy"]
        assert policy == {
            "quota_bytes": 200 * 1024**3,
            "keep_last": 3,
            "keep_daily": 7,
            "keep_weekly": 4,
            "keep_monthly": 12,
            "protect_days": 14,
            "object_lock": False,
        }
        code, out, _ = await asyncio.to_thread(run, "instance", "set", "home", "--keep-last", "default")
        assert code == 0
        assert "keep-last=7 " in out
        code, out, _ = await asyncio.to_thread(run, "instance", "list")
        assert "home" in out
        assert "quota=200GiB* keep-last=7 keep-daily=7*" in out
        # Refused: a policy keeping nothing, junk, an unknown instance.
        code, _, err = await asyncio.to_thread(
            run, "instance", "set", "home", "--keep-last", "0", "--keep-daily", "0", "--keep-weekly", "0",
            "--keep-monthly", "0",
        )  # fmt: skip
        assert (code, "keeps no backup" in err) == (2, True)
        code, _, err = await asyncio.to_thread(run, "instance", "set", "home", "--quota", "lots")
        assert (code, "--quota" in err) == (2, True)
        code, _, err = await asyncio.to_thread(run, "instance", "set", "home", "--protect-days", "-1")
        assert code == 2
        code, _, err = await asyncio.to_thread(run, "instance", "set", "nobody", "--keep-last", "2")
        assert (code, "no active instance" in err) == (1, True)
        assert (await api.ok("GET", "/v1/instance"))["policy"]["keep_last"] == 7


async def test_delete_protection(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The token cannot delete a completed backup younger than protect-days (403 `protected`, with the date),
    nor does retention (which the token's uploads trigger); the operator's `backup delete` can."""
    clock = Clock(datetime(2026, 11, 26, 1, 0, tzinfo=UTC).timestamp())
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, clock=clock, PROTECT_DAYS="2", RETENTION="2"
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        first = await api.upload(b"first")
        clock.now += 3600
        status, body = await api.call("DELETE", f"/v1/backups/{first['id']}")
        assert status == 403
        assert body["error"]["code"] == "protected"
        assert body["error"]["deletable_at"] == "2026-11-28T01:00:00Z"
        assert "2026-11-28T01:00:00Z" in body["error"]["message"]
        await api.ok("GET", f"/v1/backups/{first['id']}")
        # An upload in progress is not protected: it can always be aborted or deleted.
        init = await api.init(10)
        await api.ok("DELETE", f"/v1/backups/{init['id']}", expect=204)
        # Two days later it can go.
        clock.now = datetime(2026, 11, 28, 1, 0, 0, tzinfo=UTC).timestamp()
        await api.ok("DELETE", f"/v1/backups/{first['id']}", expect=204)

        # Retention is bound by it too: keep-last 2, three backups within the hour, all kept while protected.
        made = []
        for n in range(3):
            clock.now += 60
            made.append((await api.upload(f"b{n}".encode()))["id"])
        listed = [b["id"] for b in (await api.ok("GET", "/v1/backups"))["backups"]]
        assert listed == [made[2], made[1], made[0]]
        # The operator is not.
        monkeypatch.setenv("OFFSITE_GATEWAY_DB", database.setting)
        for name, value in moto_server.gateway_env(moto_bucket).items():
            monkeypatch.setenv(name, value)
        code = await asyncio.to_thread(cli.main, ["backup", "delete", made[2]])
        assert code == 0, capsys.readouterr()
        assert "deleted" in capsys.readouterr().out
        assert [b["id"] for b in (await api.ok("GET", "/v1/backups"))["backups"]] == [made[1], made[0]]
        assert not any(made[2] in key for key in _keys(moto_server, moto_bucket))
        code = await asyncio.to_thread(cli.main, ["backup", "delete", made[2]])
        assert code == 1
        assert "no backup" in capsys.readouterr().err


def _independent_kept(
    made: list[tuple[str, datetime]], last: int, daily: int, weekly: int, monthly: int
) -> set[str]:
    """What generational retention keeps, computed by grouping: newest per period, the last N periods."""
    ordered = sorted(made, key=lambda item: item[1])
    kept = {name for name, _ in ordered[max(0, len(ordered) - last) :]}
    rules: list[tuple[int, Callable[[datetime], str]]] = [
        (daily, lambda moment: moment.strftime("%Y-%m-%d")),
        (weekly, lambda moment: moment.strftime("%G-W%V")),
        (monthly, lambda moment: moment.strftime("%Y-%m")),
    ]
    for count, label in rules:
        newest: dict[str, tuple[str, datetime]] = {}
        for name, moment in ordered:
            newest[label(moment)] = (name, moment)
        by_time = sorted(newest.values(), key=lambda item: item[1])
        kept |= {name for name, _ in by_time[max(0, len(by_time) - count) :]} if count else set()
    return kept


async def test_four_hundred_nights_of_generational_retention(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """400 simulated nights (a backup at a random time of the night, some nights missed) through the gateway:
    the backups it keeps, and the archives and manifests in the bucket, are what an independent computation
    keeps; everything else is gone from storage and the database."""
    rng = random.Random(400)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock = Clock(start.timestamp())
    async with run_gateway(
        moto_server,
        moto_bucket,
        tmp_path,
        database=database,
        clock=clock,
        RETENTION="2",
        RETENTION_DAILY="7",
        RETENTION_WEEKLY="4",
        RETENTION_MONTHLY="6",
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        made: list[tuple[str, datetime]] = []
        for night in range(400):
            if rng.random() < 0.15:
                continue  # missed
            moment = start + timedelta(days=night, minutes=30 + rng.randrange(150))
            clock.now = moment.timestamp()
            backup = await api.upload(f"night {night}".encode(), f"night {night}")
            made.append((backup["id"], moment))
            if night % 50 == 0 or night == 399:
                listed = {b["id"] for b in (await api.ok("GET", "/v1/backups"))["backups"]}
                assert listed == _independent_kept(made, 2, 7, 4, 6), night
        expected = _independent_kept(made, 2, 7, 4, 6)
        await gateway.purged()
        keys = _keys(moto_server, moto_bucket)
        archives = {key.rsplit("/", 1)[-1] for key in keys if not key.endswith(SUFFIX)}
        manifests = {key.rsplit("/", 1)[-1].removesuffix(SUFFIX) for key in keys if key.endswith(SUFFIX)}
        assert archives == manifests == expected
        assert len(expected) >= 12
        info = await api.ok("GET", "/v1/instance")
        assert info["usage"]["backups"] == len(expected)


async def test_object_lock_on_moto(
    moto_server: S3Server, tmp_path: Path, session: aiohttp.ClientSession, database: GatewayDatabase
) -> None:
    """With OBJECT_LOCK, each completed archive and its manifest are under governance-mode Object Lock until
    protect-days after completion: storage itself refuses to delete them without bypass; retention (once the
    gateway's protection has ended) and the operator's delete bypass it and leave no version behind."""
    bucket = f"locked-{uuid.uuid4().hex[:12]}"
    # Storage compares the lock's date with its own clock: the gateway's is the real one here.
    clock = Clock(float(int(time.time())))
    until = datetime.fromtimestamp(clock.now + 3 * DAY, UTC)
    async with run_gateway(
        moto_server, bucket, tmp_path, database=database, clock=clock, OBJECT_LOCK="true", PROTECT_DAYS="3"
    ) as gateway:
        assert await gateway.app[STORAGE].create_bucket() is True  # `bucket create`: with Object Lock enabled
        s3 = moto_server.client()
        assert (
            s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]["ObjectLockEnabled"]
            == "Enabled"
        )
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        backup = await api.upload(b"locked")
        assert (await api.ok("GET", "/v1/instance"))["policy"]["object_lock"] is True
        keys = [key for key in _keys(moto_server, bucket) if backup["id"] in key]
        assert len(keys) == 2  # the archive and its manifest
        for key in keys:
            head = s3.head_object(Bucket=bucket, Key=key)
            assert head["ObjectLockMode"] == "GOVERNANCE"
            assert head["ObjectLockRetainUntilDate"] == until
            version = head["VersionId"]
            with pytest.raises(ClientError) as refused:
                s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
            assert refused.value.response["Error"]["Code"] == "AccessDenied"
        status, body = await api.call("DELETE", f"/v1/backups/{backup['id']}")
        assert (status, body["error"]["code"]) == (403, "protected")

        # Retention keeps it while protected; once the gateway's protection has ended (moto's lock, on moto's own
        # clock, still holds) it deletes it, bypassing governance, every version (keep-last 1).
        await gateway.app[STORE].set_policy("home", {"keep_last": 1})
        clock.now += 60
        second = await api.upload(b"second")
        assert [b["id"] for b in (await api.ok("GET", "/v1/backups"))["backups"]] == [
            second["id"],
            backup["id"],
        ]
        clock.now += 3 * DAY
        newest = await api.upload(b"third")
        await gateway.purged()
        versions = s3.list_object_versions(Bucket=bucket)
        left = {v["Key"] for v in versions.get("Versions", []) + versions.get("DeleteMarkers", [])}
        assert left == set(_keys(moto_server, bucket))
        assert all(newest["id"] in key for key in left), (left, newest["id"])
        assert [b["id"] for b in (await api.ok("GET", "/v1/backups"))["backups"]] == [newest["id"]]
