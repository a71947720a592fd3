"""Retention after complete, and the sweeper: stale uploads, orphan uploads, deletes that failed."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from offsite_gateway.app import METRICS, STORAGE, STORE
from offsite_gateway.manifest import SUFFIX
from offsite_gateway.policy import Policy
from offsite_gateway.retention import select_expired
from offsite_gateway.storage import PendingUpload, StorageError
from offsite_gateway.store import COMPLETED, Backup
from offsite_gateway.sweeper import abort_orphans
from tests.gateway.api import Api
from tests.helpers.gateway import GatewayDatabase, RunningGateway, run_gateway
from tests.helpers.servers import S3Server


def _uploads(s3: S3Server, bucket: str) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads


def _all_keys(s3: S3Server, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", []))


def _objects(s3: S3Server, bucket: str) -> list[str]:
    """The archives; each has its manifest beside it, and no manifest is left without its archive."""
    keys = _all_keys(s3, bucket)
    archives = [key for key in keys if not key.endswith(SUFFIX)]
    assert sorted(key.removesuffix(SUFFIX) for key in keys if key.endswith(SUFFIX)) == archives
    return archives


def _backup(backup_id: str, completed: str, ha_id: str | None = None) -> Backup:
    stamp = datetime.fromisoformat(completed).replace(tzinfo=UTC).timestamp()
    metadata = {"backup_id": ha_id} if ha_id else {}
    return Backup(
        backup_id, "i", backup_id, 1, None, COMPLETED, stamp, stamp, 1, 1, f"i/{backup_id}", metadata=metadata
    )


def _policy(last: int = 0, daily: int = 0, weekly: int = 0, monthly: int = 0) -> Policy:
    return Policy(None, last, daily, weekly, monthly, 0)


def test_select_expired_keeps_newest_n() -> None:
    newest_first = [_backup(str(n), f"2026-11-{30 - n:02d}T01:00:00") for n in range(10)]
    assert [b.id for b in select_expired(newest_first, _policy(3))] == [str(n) for n in range(3, 10)]
    assert select_expired(newest_first, _policy(10)) == []
    assert select_expired([], _policy(1)) == []


def test_select_expired_monthly_keeps_the_newest_of_each_month() -> None:
    stamps = [
        "2026-11-20T01:00:00",
        "2026-11-10T01:00:00",
        "2026-11-01T01:00:00",
        "2026-10-31T01:00:00",
        "2026-10-02T01:00:00",
        "2026-09-15T01:00:00",
        "2026-08-15T01:00:00",
    ]
    newest_first = [_backup(stamp, stamp) for stamp in stamps]
    expired = [b.id for b in select_expired(newest_first, _policy(monthly=3))]
    # Kept: the newest of November, October and September; August is a fourth month.
    assert expired == [
        "2026-11-10T01:00:00",
        "2026-11-01T01:00:00",
        "2026-10-02T01:00:00",
        "2026-08-15T01:00:00",
    ]


def test_select_expired_weekly_uses_iso_weeks_across_a_year() -> None:
    # 2026-12-31 is a Thursday of ISO week 2026-W53; 2027-01-03 a Sunday of the same week; 2027-01-04 is W01.
    stamps = ["2027-01-04T01:00:00", "2027-01-03T01:00:00", "2026-12-31T01:00:00", "2026-12-27T01:00:00"]
    newest_first = [_backup(stamp, stamp) for stamp in stamps]
    expired = [b.id for b in select_expired(newest_first, _policy(weekly=3))]
    assert expired == ["2026-12-31T01:00:00"]  # W53 is kept by its newest, 2027-01-03


def test_copies_of_one_home_assistant_backup_are_backups_like_any_other() -> None:
    """The description is the client's word: a newer upload naming an older one's Home Assistant id deletes
    nothing (issue 24, A2); the rules alone decide."""
    newest_first = [
        _backup("b", "2026-11-30T02:00:00", "ha1"),
        _backup("a", "2026-11-30T01:00:00", "ha1"),
        _backup("c", "2026-11-29T01:00:00", "ha0"),
    ]
    assert select_expired(newest_first, _policy(7)) == []
    assert [b.id for b in select_expired(newest_first, _policy(2))] == ["c"]


def test_retention_never_expires_a_protected_backup_nor_the_one_completing() -> None:
    """Keep-last 1 over ten backups, three of them still protected: the seven others go, the three stay; the
    backup being completed stays whatever its place (issue 24, A1; issue 21, 5)."""
    day = 86_400
    now = datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp()
    newest_first = [_backup(f"n{n}", f"2026-11-{30 - n:02d}T01:00:00") for n in range(10)]
    policy = Policy(None, 1, 0, 0, 0, protect_days=3)
    expired = [b.id for b in select_expired(newest_first, policy, now)]
    assert expired == [f"n{n}" for n in range(3, 10)]  # n0..n2 completed less than 3 days ago
    assert [b.id for b in select_expired(newest_first, policy, now + 2 * day)] == [
        f"n{n}" for n in range(1, 10)
    ]
    with pytest.raises(ValueError, match="needs the time"):
        select_expired(newest_first, policy)
    # The one completing is never chosen, even last in the order given and with no rule keeping it.
    unprotected = _policy(1)
    assert "n9" not in [b.id for b in select_expired(newest_first, unprotected, now, completing="n9")]


def _independent_keep(backups: list[tuple[str, datetime]], policy: Policy) -> set[str]:
    """What retention keeps, computed another way: group by period, newest per period, the last N periods."""
    ordered = sorted(backups, key=lambda item: item[1])
    keep = (
        {name for name, _ in ordered[max(0, len(ordered) - policy.keep_last) :]}
        if policy.keep_last
        else set()
    )
    periods: list[tuple[int, Callable[[datetime], object]]] = [
        (policy.keep_daily, lambda moment: moment.strftime("%Y-%m-%d")),
        (policy.keep_weekly, lambda moment: moment.strftime("%G-W%V")),
        (policy.keep_monthly, lambda moment: moment.strftime("%Y-%m")),
    ]
    for count, label in periods:
        newest: dict[object, tuple[str, datetime]] = {}
        for name, moment in ordered:
            newest[label(moment)] = (name, moment)  # ascending: the last one seen is the newest
        chosen = (
            sorted(newest.values(), key=lambda item: item[1])[max(0, len(newest) - count) :] if count else []
        )
        keep |= {name for name, _ in chosen}
    return keep


def test_four_hundred_nights_with_missed_ones_match_an_independent_computation() -> None:
    """Retention after each night's backup, 400 nights with some missed, against `_independent_keep`."""
    rng = random.Random(12)
    policy = _policy(last=3, daily=7, weekly=5, monthly=12)
    kept: list[Backup] = []
    made: list[tuple[str, datetime]] = []
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for night in range(400):
        if rng.random() < 0.15:  # missed: the house was off, or the night's backup failed
            continue
        moment = start + timedelta(days=night, hours=1, minutes=rng.randrange(120))
        backup = _backup(f"n{night}", moment.replace(tzinfo=None).isoformat())
        made.append((backup.id, moment))
        kept.insert(0, backup)
        expired = {b.id for b in select_expired(kept, policy)}
        kept = [b for b in kept if b.id not in expired]
        assert {b.id for b in kept} == _independent_keep(made, policy), night
    assert 20 <= len(kept) <= 3 + 7 + 5 + 12


async def test_retention_keeps_the_newest_n_per_instance(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database, RETENTION="2") as gateway:
        _, token = await gateway.add_instance("home")
        _, other_token = await gateway.add_instance("cottage")
        api, other = Api(session, gateway.url, token), Api(session, gateway.url, other_token)
        kept_elsewhere = await other.upload(b"other")
        ids = [(await api.upload(f"backup {n}".encode(), f"n{n}"))["id"] for n in range(4)]
        listed = [b["id"] for b in (await api.ok("GET", "/v1/backups"))["backups"]]
        assert listed == [ids[3], ids[2]]
        instance_ids = {b.instance_id for b in await _all(gateway)}
        assert len(instance_ids) == 2
        await gateway.purged()
        assert len(_objects(moto_server, moto_bucket)) == 3
        assert all(
            key.endswith((ids[3], ids[2], kept_elsewhere["id"])) for key in _objects(moto_server, moto_bucket)
        )
        # The other instance's backup was not counted against this one.
        assert [b["id"] for b in (await other.ok("GET", "/v1/backups"))["backups"]] == [kept_elsewhere["id"]]
        assert "offsite_gateway_retention_deleted_total 2.0" in gateway.app[METRICS].render().decode()


async def _all(gateway: RunningGateway) -> list[Backup]:
    store = gateway.app[STORE]
    backups = []
    for instance in await store.list_instances():
        backups += await store.list_backups(instance.id, COMPLETED)
    return backups


async def test_failed_deletes_stay_deleting_and_the_sweeper_retries(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    database: GatewayDatabase,
) -> None:
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database, RETENTION="1") as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        first = await api.upload(b"first")
        storage = gateway.app[STORAGE]
        real_delete = storage.delete_objects

        async def refuse(keys: list[str]) -> dict[str, str]:
            raise StorageError("delete_objects", "InternalError (HTTP 500): try later", "InternalError")

        monkeypatch.setattr(storage, "delete_objects", refuse)
        second = await api.upload(b"second")  # retention's delete of `first` fails: complete still succeeds
        assert second["status"] == "completed"
        await gateway.purged()
        row = await gateway.app[STORE].get_backup(first["id"])
        assert row is not None
        assert row.status == "deleting"
        # Hidden from the API, object still in storage: not forgotten.
        assert [b["id"] for b in (await api.ok("GET", "/v1/backups"))["backups"]] == [second["id"]]
        status, _ = await api.call("GET", f"/v1/backups/{first['id']}")
        assert status == 404
        assert len(_objects(moto_server, moto_bucket)) == 2
        # An explicit DELETE while storage refuses: 502, and the row stays for the sweeper.
        status, body = await api.call("DELETE", f"/v1/backups/{second['id']}")
        assert (status, body["error"]["code"]) == (502, "storage_error")

        report = await gateway.run_sweeper_once()
        assert (report.deletions_done, report.deletions_failed) == (0, 2)

        monkeypatch.setattr(storage, "delete_objects", real_delete)
        report = await gateway.run_sweeper_once()
        assert (report.deletions_done, report.deletions_failed) == (2, 0)
        assert _objects(moto_server, moto_bucket) == []
        assert await gateway.app[STORE].get_backup(first["id"]) is None


async def test_sweeper_fails_stale_uploads(
    gateway: RunningGateway, session: aiohttp.ClientSession, moto_server: S3Server
) -> None:
    _, token = await gateway.add_instance("home")
    api = Api(session, gateway.url, token)
    init = await api.init(10)
    bucket = gateway.settings.s3_bucket
    # Not stale yet: untouched.
    report = await gateway.run_sweeper_once()
    assert report.stale_failed == 0
    assert report.orphans_aborted == 0
    assert len(_uploads(moto_server, bucket)) == 1
    # Six hours and a bit later.
    report = await gateway.run_sweeper_once(now=time.time() + 6 * 3600 + 60)
    assert report.stale_failed == 1
    assert _uploads(moto_server, bucket) == []
    assert (await api.ok("GET", f"/v1/backups/{init['id']}"))["backup"]["status"] == "failed"
    await api.init(10)  # the instance may start again


async def test_sweeper_aborts_uploads_the_database_does_not_know(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    client = moto_server.client()
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, S3_PREFIX="offsite"
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        known = await api.init(10)
        orphan = client.create_multipart_upload(Bucket=moto_bucket, Key="offsite/someone/lost")
        other_app = client.create_multipart_upload(Bucket=moto_bucket, Key="elsewhere/not-ours")
        report = await gateway.run_sweeper_once()
        assert report.orphans_aborted == 1
        remaining = {(u["Key"], u["UploadId"]) for u in _uploads(moto_server, moto_bucket)}
        assert (orphan["Key"], orphan["UploadId"]) not in remaining
        assert (other_app["Key"], other_app["UploadId"]) in remaining  # outside our prefix
        assert any(key.startswith("offsite/") and key.endswith(known["id"]) for key, _ in remaining)
        # A second upload id on a known backup's key is an orphan too.
        row = await gateway.app[STORE].get_backup(known["id"])
        assert row is not None
        assert row.object_key.startswith("offsite/")
        client.create_multipart_upload(Bucket=moto_bucket, Key=row.object_key)
        assert (await gateway.run_sweeper_once()).orphans_aborted == 1
        keys = [(u["Key"], u["UploadId"]) for u in _uploads(moto_server, moto_bucket)]
        assert (row.object_key, row.upload_id) in keys
        # Aborted by the gateway (failed row): its upload is no orphan any more, and is gone.
        client.abort_multipart_upload(
            Bucket=moto_bucket, Key="elsewhere/not-ours", UploadId=other_app["UploadId"]
        )


async def test_an_upload_completed_since_the_listing_is_no_orphan(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """The sweeper lists storage before it reads the database: an upload completed in between is not an upload
    the database knows as in progress, but storage no longer knows it either: nothing aborted, nothing counted."""
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database) as gateway:
        _, token = await gateway.add_instance("home")
        backup = await Api(session, gateway.url, token).upload(b"done")
        row = await gateway.app[STORE].get_backup(backup["id"])
        assert row is not None
        assert row.upload_id is not None
        listed = PendingUpload(
            row.object_key, row.upload_id, None
        )  # as the listing saw it, before the complete
        store, storage = gateway.app[STORE], gateway.app[STORAGE]
        assert await abort_orphans(store, storage, [listed]) == 0
        assert await storage.object_size(row.object_key) == 4


async def test_sweeper_runs_on_its_interval(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, database: GatewayDatabase
) -> None:
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, SWEEP_INTERVAL="1"
    ) as gateway:
        metrics = gateway.app[METRICS]
        async with asyncio.timeout(30):  # a generous bound for a loaded machine: what counts is that it runs
            while "offsite_gateway_sweeps_total 1.0" not in metrics.render().decode():
                await asyncio.sleep(0.1)


async def test_the_sweeper_leaves_a_shared_buckets_other_uploads_alone(
    gateway: RunningGateway, session: aiohttp.ClientSession, moto_server: S3Server
) -> None:
    """No S3_PREFIX: the sweeper only touches keys under the ids of instances it knows."""
    bucket = gateway.settings.s3_bucket
    client = moto_server.client()
    instance_id, token = await gateway.add_instance("home")
    revoked_id, _ = await gateway.add_instance("gone")
    await gateway.revoke_instance("gone")
    known = await Api(session, gateway.url, token).init(10)
    foreign = [
        client.create_multipart_upload(Bucket=bucket, Key=key)
        for key in ("photos/2026/holiday.mov", "0123456789abcdef0123456789abcdef/not-ours", "loose-object")
    ]
    ours = [
        client.create_multipart_upload(Bucket=bucket, Key=key)
        for key in (f"{instance_id}/lost", f"{revoked_id}/left-behind")
    ]
    report = await gateway.run_sweeper_once()
    assert report.orphans_aborted == 2
    remaining = {(u["Key"], u["UploadId"]) for u in _uploads(moto_server, bucket)}
    assert remaining == {(u["Key"], u["UploadId"]) for u in foreign} | {
        (f"{instance_id}/{known['id']}", (await gateway.app[STORE].get_backup(known["id"])).upload_id)  # type: ignore[union-attr]
    }
    assert not {(u["Key"], u["UploadId"]) for u in ours} & remaining
    # Stale uploads are aborted by their own key only: the foreign ones stay, even much later.
    report = await gateway.run_sweeper_once(now=time.time() + 30 * 24 * 3600)
    assert report.stale_failed == 1
    assert {(u["Key"], u["UploadId"]) for u in _uploads(moto_server, bucket)} == {
        (u["Key"], u["UploadId"]) for u in foreign
    }
    for upload in foreign:
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
