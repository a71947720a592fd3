"""Object Lock end to end on SeaweedFS, a real S3 server that enforces it (moto lets a lock be shortened and
ignores a bucket's default retention: test_policy.py's moto test shows only the calls' shapes).

The operator creates the bucket with `offsite-gateway bucket create` and OBJECT_LOCK=true; a completed backup is
put under governance retention until protect-days after it completed; a stolen instance token cannot delete it
(403 `protected`), nor can storage's own keys without the governance bypass (403 AccessDenied: they can only hide
it behind a delete marker); retention leaves it alone until its protection ends and then deletes it, and
`offsite-gateway backup delete` deletes it before its date, as docs/gateway.md says, each leaving no version and
no delete marker of it behind.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError

from offsite_gateway.app import STORE
from offsite_gateway.manifest import SUFFIX
from tests.gateway.api import Api
from tests.gateway.watching import Clock
from tests.helpers.cli import cli_env, run_cli
from tests.helpers.gateway import GatewayDatabase, run_gateway
from tests.helpers.servers import S3Server

DAY = 24 * 3600


def _versions(s3: S3Server, bucket: str, key: str) -> list[dict[str, Any]]:
    """Every version and delete marker of exactly `key`."""
    answer = s3.client().list_object_versions(Bucket=bucket, Prefix=key)
    found = answer.get("Versions", []) + answer.get("DeleteMarkers", [])
    return [version for version in found if version["Key"] == key]


async def test_object_lock_end_to_end(
    seaweedfs_server: S3Server, tmp_path: Path, session: aiohttp.ClientSession, database: GatewayDatabase
) -> None:
    s3 = seaweedfs_server.client()
    bucket = f"locked-{uuid.uuid4().hex[:12]}"
    settings = {"OBJECT_LOCK": "true", "PROTECT_DAYS": "3", "RETENTION": "7"}
    env = cli_env(seaweedfs_server, bucket, tmp_path, DB=database.setting, **settings)
    created = run_cli("bucket", "create", env=env)
    assert f"Bucket {bucket!r} created, with Object Lock" in created.stdout
    lock = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert lock == {
        "ObjectLockEnabled": "Enabled"
    }  # no default retention: the gateway sets each backup's own
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"

    clock = Clock()  # the gateway's: moved past the protection below
    async with run_gateway(
        seaweedfs_server, bucket, tmp_path, database=database, clock=clock, **settings
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        before = int(clock())  # the gateway's time, which stands still until the test moves it
        first = await api.upload(b"the first backup")
        assert (await api.ok("GET", "/v1/instance"))["policy"]["object_lock"] is True
        row = await gateway.app[STORE].get_backup(first["id"])
        assert row is not None
        keys = [row.object_key, row.object_key + SUFFIX]
        for key in keys:
            head = s3.head_object(Bucket=bucket, Key=key)
            assert head["ObjectLockMode"] == "GOVERNANCE"
            until = head["ObjectLockRetainUntilDate"]
            assert before + 3 * DAY <= until.timestamp() <= time.time() + 3 * DAY + 1
            assert abs(until.timestamp() - (row.completed_at or 0) - 3 * DAY) < 1

        # A stolen instance token: refused by the gateway.
        status, body = await api.call("DELETE", f"/v1/backups/{first['id']}")
        assert (status, body["error"]["code"]) == (403, "protected")
        assert datetime.fromisoformat(body["error"]["deletable_at"]) >= datetime.fromtimestamp(
            before + 3 * DAY, UTC
        )
        # Storage's own keys without the governance bypass: storage refuses to delete the locked version ...
        for key in keys:
            version = s3.head_object(Bucket=bucket, Key=key)["VersionId"]
            with pytest.raises(ClientError) as refused:
                s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
            assert refused.value.response["Error"]["Code"] == "AccessDenied"
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        # ... and a delete without a version only hides the archive behind a delete marker: its bytes stay.
        s3.delete_object(Bucket=bucket, Key=row.object_key)
        assert [v.get("IsLatest") for v in _versions(seaweedfs_server, bucket, row.object_key)].count(
            True
        ) == 1
        assert len(_versions(seaweedfs_server, bucket, row.object_key)) == 2

        # Retention never deletes a backup under protection (docs/gateway.md): keep-last 1, and the next backup
        # leaves the first as it is, listed, every version of it there ...
        await gateway.app[STORE].set_policy("home", {"keep_last": 1})
        held = {key: _versions(seaweedfs_server, bucket, key) for key in keys}
        second = await api.upload(b"the second backup")
        await gateway.purged()
        assert {b["id"] for b in (await api.ok("GET", "/v1/backups"))["backups"]} == {
            first["id"],
            second["id"],
        }
        assert {key: _versions(seaweedfs_server, bucket, key) for key in keys} == held
        # ... until its protection ends: the next complete deletes it (bypassing the lock, whose date storage
        # still holds), every version of the archive and the manifest, the delete marker too; the second, past
        # its protection as well, goes with it.
        clock.advance(3 * DAY + 1)
        third = await api.upload(b"the third backup")
        await gateway.purged()
        for key in keys:
            assert _versions(seaweedfs_server, bucket, key) == []
        assert [b["id"] for b in (await api.ok("GET", "/v1/backups"))["backups"]] == [third["id"]]

        # The operator's `backup delete`: not bound by delete protection nor by the lock.
        third_row = await gateway.app[STORE].get_backup(third["id"])
        assert third_row is not None
        assert s3.head_object(Bucket=bucket, Key=third_row.object_key)["ObjectLockMode"] == "GOVERNANCE"
        deleted = run_cli("backup", "delete", third["id"], env=env)
        assert f"Backup {third['id']} of instance" in deleted.stdout
        for key in (third_row.object_key, third_row.object_key + SUFFIX):
            assert _versions(seaweedfs_server, bucket, key) == []
        assert (await api.ok("GET", "/v1/backups"))["backups"] == []
    listed = s3.list_object_versions(Bucket=bucket)
    assert listed.get("Versions", []) == listed.get("DeleteMarkers", []) == []
