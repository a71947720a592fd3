"""The bucket describes itself: a manifest beside each archive, and `reindex` rebuilding a lost database from them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from offsite_gateway import cli, manifest
from offsite_gateway.app import STORE
from offsite_gateway.store import Backup, Instance
from tests.gateway.api import Api, put
from tests.gateway.conftest import PART
from tests.helpers.gateway import GatewayDatabase, RunningGateway, run_gateway
from tests.helpers.servers import S3Server

HA_METADATA = {
    "backup_id": "abc123",
    "name": "Automatic backup 2026.11.26",
    "date": "2026-11-26T23:59:00+01:00",
    "protected": True,
    "addons": [],
    "folders": ["share"],
    "homeassistant_included": True,
    "homeassistant_version": "2026.11.3",
    "database_included": True,
    "extra_metadata": {"instance_id": "d4e5", "with_automatic_settings": True},
}


def _keys(s3: S3Server, bucket: str) -> dict[str, int]:
    listing = s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"]: item["Size"] for item in listing}


def _read(s3: S3Server, bucket: str, key: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    return document


async def _listed(api: Api) -> list[str]:
    return [backup["id"] for backup in (await api.ok("GET", "/v1/backups"))["backups"]]


async def _download(session: aiohttp.ClientSession, api: Api, backup_id: str) -> bytes:
    url = (await api.ok("POST", f"/v1/backups/{backup_id}/download"))["url"]
    async with session.get(url) as resp:
        assert resp.status == 200
        return await resp.read()


async def test_complete_writes_a_manifest_beside_the_archive(
    gateway: RunningGateway, session: aiohttp.ClientSession, moto_server: S3Server
) -> None:
    bucket = gateway.settings.s3_bucket
    instance_id, token = await gateway.add_instance("Maison Dupont, 3 rue des Lilas")
    api = Api(session, gateway.url, token)
    data = os.urandom(PART + 1000)
    backup = await api.upload(data, "Automatic backup", metadata=HA_METADATA)
    row = await gateway.app[STORE].get_backup(backup["id"])
    assert row is not None

    keys = _keys(moto_server, bucket)
    assert keys == {
        row.object_key: len(data),
        row.object_key + ".manifest.json": keys[row.object_key + ".manifest.json"],
    }
    assert row.object_key == f"{instance_id}/{backup['id']}"  # opaque: ids only, no name in any key
    assert not any("Maison" in key or "Automatic" in key for key in keys)
    document = _read(moto_server, bucket, manifest.manifest_key(row.object_key))
    assert document["format"] == "offsite-backup-manifest"
    assert document["version"] == 1
    assert document["instance"]["id"] == instance_id
    assert document["instance"]["name"] == "Maison Dupont, 3 rue des Lilas"
    described = document["backup"]
    assert described["metadata"] == HA_METADATA
    assert {key: described[key] for key in ("id", "name", "size", "sha256", "part_size", "part_count")} == {
        key: backup[key] for key in ("id", "name", "size", "sha256", "part_size", "part_count")
    }
    assert described["sha256"] == hashlib.sha256(data).hexdigest()
    # Everything the row holds but secrets: the storage upload id and the token (hash) are nowhere in it.
    text = json.dumps(document)
    assert row.upload_id is not None
    assert row.upload_id not in text
    assert token not in text
    assert "token" not in text
    # It reads back as the row, to the microsecond.
    instance, parsed = manifest.parse(json.dumps(document).encode(), manifest.manifest_key(row.object_key))
    assert instance.id == instance_id
    assert parsed.created_at == pytest.approx(row.created_at, abs=1e-6)
    assert parsed.completed_at == pytest.approx(row.completed_at, abs=1e-6)
    assert parsed == Backup(
        **{
            **row.__dict__,
            "upload_id": None,
            "created_at": parsed.created_at,
            "completed_at": parsed.completed_at,
            "last_activity": None,  # an upload's, not the backup's: not in the manifest
        }
    )


async def test_reindex_rebuilds_a_lost_database(
    gateway: RunningGateway, session: aiohttp.ClientSession, moto_server: S3Server
) -> None:
    """Back up, lose the database, reindex, rotate: the same instances list and download the same backups."""
    home_id, home_token = await gateway.add_instance("home")
    cottage_id, cottage_token = await gateway.add_instance("cottage")
    home, cottage = Api(session, gateway.url, home_token), Api(session, gateway.url, cottage_token)
    first = os.urandom(PART + 123)
    await home.upload(first, "first", metadata=HA_METADATA)
    await home.upload(b"second", "second", metadata={"n": 2})
    await cottage.upload(b"cottage's", "only")
    in_progress = await home.init(10, "never finished")  # not completed: not in the bucket's description
    listed_home = (await home.ok("GET", "/v1/backups"))["backups"]
    listed_cottage = (await cottage.ok("GET", "/v1/backups"))["backups"]

    await gateway.lose_database()
    assert await gateway.app[STORE].list_instances() == []
    assert (await home.call("GET", "/v1/instance"))[0] == 401

    report = await gateway.reindex()
    assert (report.manifests, report.backups_added, report.backups_known) == (3, 3, 0)
    assert sorted(report.instances_added) == ["cottage", "home"]
    assert report.skipped == {}
    assert report.manifests_written == 0
    # No token works until the operator rotates: the old ones were never stored, only their hashes.
    assert (await home.call("GET", "/v1/instance"))[0] == 401
    home.token = await gateway.rotate_token("home")
    cottage.token = await gateway.rotate_token("cottage")
    assert (await home.ok("GET", "/v1/instance"))[
        "id"
    ] == home_id  # the same instance: Home Assistant reauths
    assert (await cottage.ok("GET", "/v1/instance"))["id"] == cottage_id
    assert (await home.ok("GET", "/v1/backups"))["backups"] == listed_home
    assert (await cottage.ok("GET", "/v1/backups"))["backups"] == listed_cottage
    newest_first = [backup["name"] for backup in listed_home]
    assert newest_first == ["second", "first"]
    assert await _download(session, home, listed_home[1]["id"]) == first
    assert (await home.call("GET", f"/v1/backups/{in_progress['id']}"))[0] == 404
    # Life goes on: a new backup, and retention counts the reindexed ones.
    await home.upload(b"third", "third")
    assert len((await home.ok("GET", "/v1/backups"))["backups"]) == 3

    again = await gateway.reindex()  # idempotent
    assert (again.backups_added, again.backups_known, again.instances_added) == (0, 4, [])
    assert (await home.ok("GET", "/v1/instance"))["id"] == home_id  # tokens untouched


async def test_reindex_skips_what_it_cannot_trust_and_writes_missing_manifests(
    gateway: RunningGateway, session: aiohttp.ClientSession, moto_server: S3Server
) -> None:
    bucket = gateway.settings.s3_bucket
    client = moto_server.client()
    _, token = await gateway.add_instance("home")
    api = Api(session, gateway.url, token)
    kept = await api.upload(b"kept", "kept")
    lost_archive = await api.upload(b"archive lost", "lost archive")
    no_manifest = await api.upload(b"completed before manifests", "old")
    store = gateway.app[STORE]
    rows = {b["id"]: await store.get_backup(b["id"]) for b in (kept, lost_archive, no_manifest)}
    keys = {backup_id: row.object_key for backup_id, row in rows.items() if row is not None}

    client.delete_object(Bucket=bucket, Key=keys[lost_archive["id"]])
    client.delete_object(Bucket=bucket, Key=manifest.manifest_key(keys[no_manifest["id"]]))
    client.put_object(Bucket=bucket, Key="someone/else.manifest.json", Body=b"not json")
    newer = _read(moto_server, bucket, manifest.manifest_key(keys[kept["id"]]))
    newer["version"] = 99
    client.put_object(Bucket=bucket, Key="x/y.manifest.json", Body=json.dumps(newer).encode())
    moved = _read(moto_server, bucket, manifest.manifest_key(keys[kept["id"]]))
    client.put_object(Bucket=bucket, Key="elsewhere.manifest.json", Body=json.dumps(moved).encode())

    # While the database still knows them all: only the missing manifest is written, from the row.
    report = await gateway.reindex()
    assert report.manifests_written == 1
    assert manifest.manifest_key(keys[no_manifest["id"]]) in _keys(moto_server, bucket)

    await gateway.lose_database()
    report = await gateway.reindex()
    assert report.backups_added == 2  # kept, and the old one through the manifest written above
    assert report.skipped.keys() == {
        manifest.manifest_key(keys[lost_archive["id"]]),
        "someone/else.manifest.json",
        "x/y.manifest.json",
        "elsewhere.manifest.json",
    }
    assert "archive is not in the bucket" in report.skipped[manifest.manifest_key(keys[lost_archive["id"]])]
    assert "not JSON" in report.skipped["someone/else.manifest.json"]
    assert "newer than this gateway" in report.skipped["x/y.manifest.json"]
    assert "not the archive beside it" in report.skipped["elsewhere.manifest.json"]
    api.token = await gateway.rotate_token("home")
    names = [b["name"] for b in (await api.ok("GET", "/v1/backups"))["backups"]]
    assert sorted(names) == ["kept", "old"]


async def test_reindex_keeps_one_active_instance_per_name(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    """A name revoked and given again: after reindex the newer instance holds it, the older comes back revoked."""
    _, old_token = await gateway.add_instance("home")
    await Api(session, gateway.url, old_token).upload(b"old", "old")
    await gateway.revoke_instance("home")
    new_id, new_token = await gateway.add_instance("home")
    await Api(session, gateway.url, new_token).upload(b"new", "new")

    await gateway.lose_database()
    report = await gateway.reindex()
    assert report.instances_added == ["home"]
    assert len(report.instances_revoked) == 1
    instances = await gateway.app[STORE].list_instances()
    active = [i for i in instances if i.revoked_at is None]
    assert [(i.id, i.name) for i in active] == [(new_id, "home")]
    api = Api(session, gateway.url, await gateway.rotate_token("home"))
    assert [b["name"] for b in (await api.ok("GET", "/v1/backups"))["backups"]] == ["new"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="something else"), "not an offsite-backup-manifest"),
        (lambda d: d["backup"].update(size="12"), "backup.size"),
        (lambda d: d["backup"].update(size=0), "at least 1"),
        (lambda d: d["backup"].update(part_count=7), "part_count"),
        (lambda d: d["backup"].update(sha256="XYZ"), "sha256"),
        (lambda d: d["backup"].update(id="../../etc"), "32 lower-case hexadecimal"),
        (lambda d: d["backup"].update(created_at="yesterday"), "ISO 8601"),
        (lambda d: d["backup"].update(completed_at="2026-11-26T23:59:00"), "no time zone"),
        (lambda d: d["instance"].update(name="  "), "empty name"),
        (lambda d: d.pop("instance"), "manifest.instance"),
        (lambda d: d["backup"].update(metadata=[]), "backup.metadata"),
    ],
)
def test_manifest_parse_refuses_junk(change: Any, message: str) -> None:
    instance = Instance("a" * 32, "home", 1_764_201_540.5)
    backup = Backup(
        "b" * 32, "a" * 32, "n", 12, None, "completed", 1.25, 2.5, 10, 2, f"p/{'a' * 32}/{'b' * 32}"
    )
    key = manifest.manifest_key(backup.object_key)
    document = json.loads(manifest.build(backup, instance))
    assert manifest.parse(json.dumps(document).encode(), key) == (instance, backup)
    change(document)
    with pytest.raises(manifest.ManifestError, match=message):
        manifest.parse(json.dumps(document).encode(), key)


async def test_reindex_command(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """`offsite-gateway reindex` after the database is gone: it says what it did and which tokens to rotate."""
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database) as gateway:
        _, token = await gateway.add_instance("home")
        await Api(session, gateway.url, token).upload(b"data", "kept")
    await asyncio.to_thread(database.wipe)
    env = {
        "PATH": "/usr/bin:/bin",
        **moto_server.gateway_env(moto_bucket),
        "OFFSITE_GATEWAY_DB": database.setting,
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "offsite_gateway", "reindex"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Read 1 manifest(s): 1 backup(s) added, 0 already known, 0 skipped." in result.stdout
    assert "offsite-gateway instance rotate home" in result.stdout
    rotated = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "offsite_gateway", "instance", "rotate", "home"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rotated.returncode == 0, rotated.stderr
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database) as gateway:
        api = Api(session, gateway.url, rotated.stdout.strip().splitlines()[-1])
        assert [b["name"] for b in (await api.ok("GET", "/v1/backups"))["backups"]] == ["kept"]


async def _cli(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str) -> int:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return await asyncio.to_thread(cli.main, list(args))


async def test_reindex_after_an_older_dump_is_restored_loses_nothing_it_could_keep(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Last night's dump restored today, then `reindex` (issue 21, 6): the backup that completed after the dump
    (Home Assistant was told it succeeded) is completed again, not left `uploading` to be swept and pruned; the
    backup deleted after the dump is reported, and with `--prune-missing` removed; the policy set after the dump
    comes back from the bucket, so the next complete does not apply the default retention."""
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database, RETENTION="2") as gateway:
        env = {**moto_server.gateway_env(moto_bucket), "OFFSITE_GATEWAY_DB": database.setting}
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        assert await _cli(monkeypatch, env, "instance", "set", "home", "--keep-last", "4") == 0
        first = (await api.upload(b"first", "first"))["id"]
        second = (await api.upload(b"second", "second"))["id"]
        late = await api.init(4, "completed after the dump")
        url = (await api.sign(late["id"], [1]))[0]["url"]
        etag = await put(session, url, b"late")

        dump = tmp_path / "last-night.dump"
        await asyncio.to_thread(database.dump, dump)

        await api.ok(
            "POST", f"/v1/backups/{late['id']}/complete", {"parts": [{"part_number": 1, "etag": etag}]}
        )
        await api.ok("DELETE", f"/v1/backups/{first}", expect=204)
        assert await _cli(monkeypatch, env, "instance", "set", "home", "--keep-last", "6") == 0
        assert "instance.json" in " ".join(_keys(moto_server, moto_bucket))
        capsys.readouterr()

        await gateway.restore_database(dump)
        assert await _listed(api) == [second, first]  # as the dump had it
        assert (await api.ok("GET", "/v1/instance"))["policy"]["keep_last"] == 4

        report = await gateway.reindex()
        assert report.backups_promoted == [late["id"]]
        assert report.missing == [first]
        assert report.pruned == []
        assert report.policies_restored == ["home"]
        assert report.skipped == {}
        assert await _listed(api) == [late["id"], second, first]  # the missing one only reported
        assert await _download(session, api, late["id"]) == b"late"
        assert (await api.ok("GET", "/v1/instance"))["policy"]["keep_last"] == 6

        pruned = await gateway.reindex(prune_missing=True)
        assert (pruned.missing, pruned.pruned, pruned.backups_promoted, pruned.policies_restored) == (
            [first],
            [first],
            [],
            [],
        )
        assert await _listed(api) == [late["id"], second]
        # The next completes keep what the policy keeps: six, not the default two.
        made = [(await api.upload(f"new {n}".encode(), f"new {n}"))["id"] for n in range(4)]
        await gateway.purged()
        assert await _listed(api) == [*reversed(made), late["id"], second]
        again = await gateway.reindex()
        assert (again.backups_promoted, again.missing, again.policies_restored) == ([], [], [])


async def test_reindex_command_reports_and_prunes(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`offsite-gateway reindex` says what it promoted, which listed backups lost their archive and how to remove
    them, and `--prune-missing` removes them."""
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database) as gateway:
        env = {**moto_server.gateway_env(moto_bucket), "OFFSITE_GATEWAY_DB": database.setting}
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        gone = (await api.upload(b"gone", "gone"))["id"]
        dump = tmp_path / "dump"
        await asyncio.to_thread(database.dump, dump)
        await api.ok("DELETE", f"/v1/backups/{gone}", expect=204)
        await gateway.restore_database(dump)
        capsys.readouterr()
        assert await _cli(monkeypatch, env, "reindex") == 0
        out = capsys.readouterr().out
        assert (
            f"1 listed backup(s) have no archive in the bucket any more (deleted after the database's copy was made?): {gone}"
            in out
        )
        assert "offsite-gateway reindex --prune-missing" in out
        assert await _listed(api) == [gone]
        assert await _cli(monkeypatch, env, "reindex", "--prune-missing") == 0
        assert f"Removed 1 of 1 listed backup(s) whose archive is gone: {gone}" in capsys.readouterr().out
        assert await _listed(api) == []


async def test_policies_come_back_from_the_backups_manifests(
    gateway: RunningGateway, session: aiohttp.ClientSession, moto_server: S3Server
) -> None:
    """A policy set where the bucket could not be written (`instance set` without the storage settings) is in
    every later backup's manifest: a lost database gets it back with its backups."""
    _, token = await gateway.add_instance("home")
    api = Api(session, gateway.url, token)
    await api.upload(b"before the policy")
    await gateway.app[STORE].set_policy(
        "home", {"keep_last": 9, "quota_bytes": 10**9, "expect_every": 8 * 86400}
    )
    await api.upload(b"after the policy")
    assert not any(key.endswith("instance.json") for key in _keys(moto_server, gateway.settings.s3_bucket))
    await gateway.lose_database()
    report = await gateway.reindex()
    assert report.policies_restored == ["home"]
    api.token = await gateway.rotate_token("home")
    answer = await api.ok("GET", "/v1/instance")
    assert (answer["policy"]["keep_last"], answer["policy"]["quota_bytes"]) == (9, 10**9)
    assert answer["watch"]["expect_every"] == 8 * 86400  # the watchdog's interval is part of the policy


async def test_an_instance_manifest_that_is_not_one_is_skipped(
    gateway: RunningGateway, session: aiohttp.ClientSession, moto_server: S3Server
) -> None:
    instance_id, token = await gateway.add_instance("home")
    await Api(session, gateway.url, token).upload(b"data")
    bucket = gateway.settings.s3_bucket
    key = manifest.instance_manifest_key("", instance_id)
    moto_server.client().put_object(Bucket=bucket, Key=key, Body=b'{"format": "offsite-backup-instance"}')
    other = manifest.instance_manifest_key("", "f" * 32)
    document = json.loads(manifest.build_instance(Instance(instance_id, "home", 1.0, policy_set_at=2.0)))
    moto_server.client().put_object(Bucket=bucket, Key=other, Body=json.dumps(document).encode())
    report = await gateway.reindex()
    assert set(report.skipped) == {key, other}
    assert "no format version" in report.skipped[key]
    assert "another instance" in report.skipped[other]
