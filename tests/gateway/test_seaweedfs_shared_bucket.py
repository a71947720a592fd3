"""The sweeper and the purger on SeaweedFS, in a bucket shared with another application: only the gateway's keys
are touched; and the sweeper's race with a complete, where SeaweedFS answers an abort as if it still had the
upload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from offsite_gateway.app import STORAGE, STORE
from offsite_gateway.manifest import SUFFIX
from offsite_gateway.storage import PendingUpload
from offsite_gateway.sweeper import abort_orphans
from tests.gateway.api import Api
from tests.gateway.watching import Clock
from tests.helpers.gateway import GatewayDatabase, run_gateway
from tests.helpers.servers import S3Server

DAY = 24 * 3600


async def test_an_upload_completed_since_the_listing_is_no_orphan_on_seaweedfs(
    seaweedfs_server: S3Server,
    seaweedfs_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """The sweeper lists storage, then reads the database: an upload completed in between is neither in
    progress nor an orphan. SeaweedFS answers the abort of an upload it completed with 204, as if it had aborted
    it, so only the database can tell: the sweeper counts nothing, and the backup stays whole."""
    async with run_gateway(seaweedfs_server, seaweedfs_bucket, tmp_path, database=database) as gateway:
        store, storage = gateway.app[STORE], gateway.app[STORAGE]
        _, token = await gateway.add_instance("home")
        backup = await Api(session, gateway.url, token).upload(b"done")
        row = await store.get_backup(backup["id"])
        assert row is not None
        assert row.upload_id is not None
        # SeaweedFS's answer alone cannot say that the upload was gone:
        assert await storage.abort_multipart_upload(row.object_key, row.upload_id) is True
        listed = PendingUpload(row.object_key, row.upload_id, None)  # as a listing before the complete saw it
        assert await abort_orphans(store, storage, [listed]) == 0
        assert await storage.object_size(row.object_key) == 4
        # A real orphan beside it (another upload id on the same key) is still aborted and counted.
        orphan = await storage.create_multipart_upload(row.object_key)
        assert await abort_orphans(store, storage, [PendingUpload(row.object_key, orphan, None)]) == 1
        assert await storage.list_multipart_uploads(row.object_key) == []
        assert (await gateway.run_sweeper_once()).orphans_aborted == 0
        assert await storage.object_size(row.object_key) == 4


def _keys(s3: S3Server, bucket: str) -> dict[str, bytes]:
    client = s3.client()
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def _uploads(s3: S3Server, bucket: str) -> set[tuple[str, str]]:
    uploads = s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return {(u["Key"], u["UploadId"]) for u in uploads}


def _versions(s3: S3Server, bucket: str) -> set[tuple[str, str, bool]]:
    """(key, version id, is a delete marker) of every version in the bucket."""
    answer: dict[str, Any] = s3.client().list_object_versions(Bucket=bucket)
    return {(v["Key"], v["VersionId"], False) for v in answer.get("Versions", [])} | {
        (m["Key"], m["VersionId"], True) for m in answer.get("DeleteMarkers", [])
    }


@pytest.mark.parametrize(
    ("object_lock", "prefix"), [(False, ""), (True, "offsite")], ids=["plain-no-prefix", "object-lock-prefix"]
)
async def test_sweeper_and_purger_touch_only_the_gateways_keys(
    seaweedfs_server: S3Server,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
    object_lock: bool,
    prefix: str,
) -> None:
    """Another application's objects and uploads share the bucket, some with keys that begin like the gateway's
    (a backup's key with more after it, another instance-like folder, the prefix without its slash). Retention
    (the purger), the operator's delete, the sweeper's stale and orphan aborts and its retried deletes touch the
    gateway's keys only (uploads under the prefix, or without one under a known instance's id, are the
    gateway's: docs/gateway.md): the other objects keep their bytes (and, in a versioned bucket, their versions, with no
    delete marker added), the other uploads stay; of the gateway's deleted backups nothing is left."""
    s3 = seaweedfs_server.client()
    bucket = seaweedfs_server.create_bucket("shared", object_lock=object_lock)
    settings: dict[str, str] = {"RETENTION": "1", "S3_PREFIX": prefix}
    if object_lock:
        settings |= {"OBJECT_LOCK": "true", "PROTECT_DAYS": "1"}
    clock = Clock()  # the gateway's: each backup below past the one-day protection of the one before
    async with run_gateway(
        seaweedfs_server, bucket, tmp_path, database=database, clock=clock, **settings
    ) as gateway:
        store = gateway.app[STORE]
        instance_id, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        first = await api.upload(b"first")
        row = await store.get_backup(first["id"])
        assert row is not None
        ours = f"{prefix}/" if prefix else f"{instance_id}/"
        foreign_objects = {
            "photos/2026/holiday.jpg": b"a photo",
            "0123456789abcdef0123456789abcdef/not-ours": b"an instance-like folder",
            f"{row.object_key}.bak": b"begins with a backup's key",
            f"{row.object_key}{SUFFIX}.old": b"begins with a manifest's key",
            "loose-object": b"at the root",
        }
        if prefix:
            foreign_objects[f"{prefix}-elsewhere/file"] = b"the prefix without its slash"
        for key, body in foreign_objects.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        foreign_uploads = {
            (key, s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])
            for key in [
                "photos/2026/holiday.mov",
                "0123456789abcdef0123456789abcdef/not-ours",
                *([f"{prefix}-elsewhere/upload"] if prefix else []),
            ]
        }
        foreign_versions = {v for v in _versions(seaweedfs_server, bucket) if v[0] in foreign_objects}
        orphan = s3.create_multipart_upload(Bucket=bucket, Key=f"{ours}lost")["UploadId"]

        clock.advance(DAY + 1)
        second = await api.upload(b"second")  # retention (keep-last 1) deletes the first: the purger
        await gateway.purged()
        clock.advance(DAY + 1)
        third = await api.upload(b"third")  # and the second; but its delete is left to the sweeper
        await gateway.purged()
        stale = await api.init(10)
        report = await gateway.run_sweeper_once(now=clock() + 2 * DAY)
        assert (report.stale_failed, report.orphans_aborted) == (1, 1)
        await store.mark_deleting([third["id"]])  # as if storage had refused its delete: the sweeper retries
        assert (await gateway.run_sweeper_once()).deletions_done == 1
        assert (await api.ok("GET", "/v1/backups"))["backups"] == []

        assert _keys(seaweedfs_server, bucket) == foreign_objects
        assert _uploads(seaweedfs_server, bucket) == foreign_uploads
        versions = _versions(seaweedfs_server, bucket)
        if object_lock:
            assert {v for v in versions if v[0] in foreign_objects} == foreign_versions
        # Nothing of the gateway's backups is left: no object, no version, no delete marker, no upload.
        gone = {first["id"], second["id"], third["id"], stale["id"]}
        assert not [
            v
            for v in versions
            if any(backup_id in v[0] for backup_id in gone) and v[0] not in foreign_objects
        ]
        assert not [u for u in _uploads(seaweedfs_server, bucket) if u[1] == orphan]
        for key, upload_id in foreign_uploads:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
