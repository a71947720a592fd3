"""The `offsite-gateway` command: instance add/list/revoke/rotate, bucket create, serve, and configuration errors."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from offsite_gateway.app import STORE
from offsite_gateway.cli import _backup_delete
from tests.gateway.api import Api
from tests.helpers.cli import COMMAND
from tests.helpers.cli import cli_env as _s3_env
from tests.helpers.cli import run_cli as run
from tests.helpers.cli import settings_env as _env
from tests.helpers.gateway import GatewayDatabase, run_gateway
from tests.helpers.servers import S3Server, free_port


def test_instance_commands(database: GatewayDatabase) -> None:
    env = _env(DB=database.setting)  # no storage settings needed to manage instances
    added = run("instance", "add", "home", env=env)
    token = added.stdout.strip().splitlines()[-1]
    assert len(token) == 43
    assert token.replace("-", "").replace("_", "").isalnum()
    assert "home" in added.stdout

    listed = run("instance", "list", env=env).stdout
    assert "home" in listed
    assert "active" in listed
    assert token not in listed

    duplicate = run("instance", "add", "home", env=env, check=False)
    assert duplicate.returncode == 1
    assert "already named 'home'" in duplicate.stderr

    revoked = run("instance", "revoke", "home", env=env)
    assert "revoked" in revoked.stdout
    assert "revoked 20" in run("instance", "list", env=env).stdout
    again = run("instance", "revoke", "home", env=env, check=False)
    assert again.returncode == 1
    assert "no active instance" in again.stderr

    other = run("instance", "add", "home", env=env).stdout.strip().splitlines()[-1]
    assert other != token

    bad = run("instance", "add", "   ", env=env, check=False)
    assert bad.returncode == 2


async def test_instance_rotate(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """`instance rotate` from another process: the running gateway refuses the old token at once."""
    env = _env(DB=database.setting)
    old_token = (
        (await asyncio.to_thread(run, "instance", "add", "home", env=env)).stdout.strip().splitlines()[-1]
    )
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database) as gateway:
        old = Api(session, gateway.url, old_token)
        backup = await old.upload(b"kept across the rotation")
        instance = await old.ok("GET", "/v1/instance")

        rotated = await asyncio.to_thread(run, "instance", "rotate", "home", env=env)
        lines = rotated.stdout.strip().splitlines()
        new_token = lines[-1]
        assert len(new_token) == 43
        assert new_token.replace("-", "").replace("_", "").isalnum()
        assert new_token != old_token
        assert "'home'" in lines[0]
        assert instance["id"] in lines[0]
        assert new_token not in "\n".join(lines[:-1])
        assert rotated.stderr == ""

        status, body = await old.call("GET", "/v1/instance")
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        new = Api(session, gateway.url, new_token)
        assert await new.ok("GET", "/v1/instance") == instance
        assert (await new.ok("GET", "/v1/backups"))["backups"] == [backup]

    listed = (await asyncio.to_thread(run, "instance", "list", env=env)).stdout
    assert listed.count("home") == 1  # the same instance, not a new one
    assert instance["id"] in listed
    assert new_token not in listed
    assert old_token not in listed

    unknown = await asyncio.to_thread(run, "instance", "rotate", "nobody", env=env, check=False)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "offsite-gateway: no active instance is named 'nobody'"
    assert unknown.stdout == ""

    await asyncio.to_thread(run, "instance", "revoke", "home", env=env)
    revoked = await asyncio.to_thread(run, "instance", "rotate", "home", env=env, check=False)
    assert revoked.returncode == 1
    assert "instance 'home' is revoked" in revoked.stderr
    assert "instance add 'home'" in revoked.stderr
    assert revoked.stdout == ""
    assert "revoked 20" in (await asyncio.to_thread(run, "instance", "list", env=env)).stdout  # still revoked


def test_empty_list(database: GatewayDatabase) -> None:
    assert "No instances yet" in run("instance", "list", env=_env(DB=database.setting)).stdout


def test_bucket_create(moto_server: S3Server, tmp_path: Path) -> None:
    env = _s3_env(moto_server, "created-by-cli", tmp_path)
    assert "created" in run("bucket", "create", env=env).stdout
    moto_server.client().head_bucket(Bucket="created-by-cli")
    assert "already exists" in run("bucket", "create", env=env).stdout
    unreachable = _s3_env(moto_server, "b-c-d", tmp_path, S3_ENDPOINT="http://127.0.0.1:1")
    failed = run("bucket", "create", env=unreachable, check=False)
    assert failed.returncode == 1
    assert "could not create bucket" in failed.stderr


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({"PART_SIZE": "1"}, "OFFSITE_GATEWAY_PART_SIZE"),
        ({"S3_BUCKET": ""}, "OFFSITE_GATEWAY_S3_BUCKET"),
        ({"LISTEN": "nowhere"}, "OFFSITE_GATEWAY_LISTEN"),
    ],
)
def test_serve_stops_on_bad_settings(
    moto_server: S3Server, tmp_path: Path, settings: dict[str, str], variable: str
) -> None:
    env = _s3_env(moto_server, "some-bucket", tmp_path, **settings)
    result = run("serve", env=env, check=False)
    assert result.returncode == 2
    assert variable in result.stderr
    assert "configuration error" in result.stderr


def test_config_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'db = "{tmp_path / "from-file.sqlite3"}"\n')
    run("--config", str(config), "instance", "add", "a", env=_env())
    assert (tmp_path / "from-file.sqlite3").exists()
    run("instance", "add", "b", "--config", str(config), env=_env(DB=str(tmp_path / "from-env.sqlite3")))
    assert (tmp_path / "from-env.sqlite3").exists()
    bad = run("--config", str(tmp_path / "missing.toml"), "instance", "list", env=_env(), check=False)
    assert bad.returncode == 2
    assert "missing.toml" in bad.stderr


def _request(url: str, method: str = "GET", token: str | None = None, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_serve(moto_server: S3Server, moto_bucket: str, tmp_path: Path, database: GatewayDatabase) -> None:
    port = free_port()
    env = _s3_env(
        moto_server, moto_bucket, tmp_path, LISTEN=f"127.0.0.1:{port}", LOG_LEVEL="DEBUG", DB=database.setting
    )
    token = run("instance", "add", "home", env=env).stdout.strip().splitlines()[-1]
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        process = subprocess.Popen([*COMMAND, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                status, body = _request(url + "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert (status, body) == (200, {"status": "ok"})

        status, init = _request(url + "/v1/backups", "POST", token, {"name": "n", "size": 5})
        assert status == 201
        status, signed = _request(
            url + f"/v1/backups/{init['id']}/parts", "POST", token, {"part_numbers": [1]}
        )
        assert status == 200
        assert "X-Amz-Signature=" in signed["parts"][0]["url"]
        assert _request(url + "/v1/instance", token="wrong")[0] == 401

        # A second gateway cannot take the same port: it says so and exits non-zero.
        busy = run("serve", env=env, check=False)
        assert busy.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
    output = log.read_text()
    assert code == 0, output
    assert f"Listening on http://127.0.0.1:{port}" in output
    assert "POST /v1/backups/" in output  # the access log
    assert token not in output
    assert "X-Amz-Signature" not in output
    assert "Signature=" not in output
    if database.store == "postgresql":
        password = database.setting.split(":")[2].split("@")[0]
        assert password not in output


def _uploads(s3: S3Server, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


async def test_instance_revoke_aborts_the_upload_in_progress(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    with_storage = _s3_env(moto_server, moto_bucket, tmp_path, DB=database.setting)
    database_only = _env(DB=database.setting)
    home = run("instance", "add", "home", env=database_only).stdout.strip().splitlines()[-1]
    cottage = run("instance", "add", "cottage", env=database_only).stdout.strip().splitlines()[-1]
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database) as gateway:
        api = Api(session, gateway.url, home)
        init = await api.init(100)
        url = (await api.sign(init["id"], [1]))[0]["url"]

        # With the storage settings at hand, revoke aborts the upload in storage at once.
        revoked = await asyncio.to_thread(run, "instance", "revoke", "home", env=with_storage)
        assert "upload in progress was aborted" in revoked.stdout
        async with session.put(url, data=b"x" * 100, headers={"Content-Length": "100"}) as resp:
            assert resp.status >= 400  # moto: 500, S3 and SeaweedFS: 403/404
        assert _uploads(moto_server, moto_bucket) == []
        assert (await gateway.app[STORE].get_backup(init["id"])).status == "failed"  # type: ignore[union-attr]

        # Without them, the upload is marked failed at once, and the gateway's sweeper aborts it.
        api = Api(session, gateway.url, cottage)
        init = await api.init(100)
        url = (await api.sign(init["id"], [1]))[0]["url"]
        revoked = await asyncio.to_thread(run, "instance", "revoke", "cottage", env=database_only)
        assert "the gateway's sweeper aborts it in storage" in revoked.stdout
        assert (await gateway.app[STORE].get_backup(init["id"])).status == "failed"  # type: ignore[union-attr]
        assert len(_uploads(moto_server, moto_bucket)) == 1
        report = await gateway.run_sweeper_once()
        assert report.orphans_aborted == 1
        async with session.put(url, data=b"x" * 100, headers={"Content-Length": "100"}) as resp:
            assert resp.status >= 400  # moto: 500, S3 and SeaweedFS: 403/404
        assert _uploads(moto_server, moto_bucket) == []


async def test_backup_delete_of_an_upload_storage_cannot_abort_leaves_the_abort_to_the_sweeper(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The operator's `backup delete` of an upload in progress is the API's delete (`domain.delete`): storage
    refusing the abort does not stop it; the upload is gone from the database, and the sweeper aborts it."""
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database) as gateway:
        _, token = await gateway.add_instance("home")
        init = await Api(session, gateway.url, token).init(100)
        unreachable = dataclasses.replace(gateway.settings, s3_endpoint=f"http://127.0.0.1:{free_port()}")
        assert await _backup_delete(unreachable, init["id"]) == 0, capsys.readouterr()
        assert f"Backup {init['id']} of instance" in capsys.readouterr().out
        assert await gateway.app[STORE].get_backup(init["id"]) is None
        assert len(_uploads(moto_server, moto_bucket)) == 1
        assert (await gateway.run_sweeper_once()).orphans_aborted == 1
        assert _uploads(moto_server, moto_bucket) == []
