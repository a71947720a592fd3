"""Tokens and ownership: 401 without a valid active token (revoked, rotated), 404 for another instance's backups."""

from __future__ import annotations

import os

import aiohttp
import pytest

from offsite_gateway.app import ROUTES, STORE
from offsite_gateway.auth import hash_token
from offsite_gateway.store import UnknownInstance
from tests.gateway.api import Api, put
from tests.helpers.gateway import RunningGateway
from tests.helpers.servers import S3Server

V1_ROUTES = [(method, path) for method, path, _ in ROUTES if path.startswith("/v1")]
ID_ROUTES = [(method, path) for method, path in V1_ROUTES if "{id}" in path]
BODIES = {
    "/v1/backups": {"name": "x", "size": 10},
    "/v1/backups/{id}/parts": {"part_numbers": [1]},
    "/v1/backups/{id}/complete": {"parts": [{"part_number": 1, "etag": "x"}]},
}


def _body(method: str, path: str) -> object:
    return BODIES.get(path) if method == "POST" else None


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer not-a-token", "bearer wrong" + "x" * 40],
)
async def test_missing_and_wrong_tokens_get_401_on_every_route(
    gateway: RunningGateway, session: aiohttp.ClientSession, authorization: str | None
) -> None:
    await gateway.add_instance("home")
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in V1_ROUTES:
        url = gateway.url + path.replace("{id}", "0" * 32)
        async with session.request(method, url, json=_body(method, path), headers=headers) as resp:
            assert resp.status == 401, (method, path)
            body = await resp.json()
            assert body["error"]["code"] == "unauthorized"
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_revoked_instance_gets_401(gateway: RunningGateway, session: aiohttp.ClientSession) -> None:
    _, token = await gateway.add_instance("home")
    _, other_token = await gateway.add_instance("cottage")
    api = Api(session, gateway.url, token)
    await api.ok("GET", "/v1/instance")
    await gateway.revoke_instance("home")
    for method, path in V1_ROUTES:
        status, body = await api.call(method, path.replace("{id}", "0" * 32), _body(method, path))
        assert status == 401, (method, path)
        assert body["error"]["code"] == "unauthorized"
    # The other instance is untouched; the name can be given to a new instance (a new token).
    await Api(session, gateway.url, other_token).ok("GET", "/v1/instance")
    _, new_token = await gateway.add_instance("home")
    assert new_token != token
    await Api(session, gateway.url, new_token).ok("GET", "/v1/instance")
    with pytest.raises(LookupError):
        await gateway.revoke_instance("nobody")


async def test_instance_info(gateway: RunningGateway, session: aiohttp.ClientSession) -> None:
    instance_id, token = await gateway.add_instance("home")
    body = await Api(session, gateway.url, token).ok("GET", "/v1/instance")
    watch = body.pop("watch")  # the watchdog's view: tests/gateway/test_watchdog.py
    assert (watch["state"], watch["expect_every"], watch["notify"]) == ("ok", 36 * 3600, None)
    assert body == {
        "id": instance_id,
        "name": "home",
        "limits": {
            "max_backup_bytes": 50 * 1024**3,
            "part_size": 5 * 1024 * 1024,
            "retention": 7,
            "url_ttl": 900,
        },
        "usage": {"bytes": 0, "backups": 0, "quota_bytes": None},
        "policy": {
            "quota_bytes": None,
            "keep_last": 7,
            "keep_daily": 0,
            "keep_weekly": 0,
            "keep_monthly": 0,
            "protect_days": 0,
            "object_lock": False,
        },
    }


async def test_other_instances_backups_are_404_on_every_route(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    _, owner_token = await gateway.add_instance("owner")
    _, thief_token = await gateway.add_instance("thief")
    owner = Api(session, gateway.url, owner_token)
    thief = Api(session, gateway.url, thief_token)

    completed = await owner.upload(os.urandom(1000), "done")
    uploading = await owner.init(1000, "in progress")
    for backup_id in (completed["id"], uploading["id"]):
        for method, path in ID_ROUTES:
            status, body = await thief.call(method, path.replace("{id}", backup_id), _body(method, path))
            assert status == 404, (method, path)
            assert body["error"]["code"] == "not_found"
        # The same answer as for an id that does not exist at all: nothing leaks.
        for method, path in ID_ROUTES:
            status, body = await thief.call(method, path.replace("{id}", "f" * 32), _body(method, path))
            assert status == 404, (method, path)
    assert (await thief.ok("GET", "/v1/backups"))["backups"] == []
    # The thief's attempts changed nothing for the owner.
    assert (await owner.ok("GET", f"/v1/backups/{uploading['id']}"))["backup"]["status"] == "uploading"
    assert [b["id"] for b in (await owner.ok("GET", "/v1/backups"))["backups"]] == [completed["id"]]


async def test_rotated_token_replaces_the_old_one_at_once(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    instance_id, old_token = await gateway.add_instance("home")
    _, other_token = await gateway.add_instance("cottage")
    old = Api(session, gateway.url, old_token)
    completed = await old.upload(os.urandom(1000), "done")
    uploading = await old.init(100, "in progress")
    url = (await old.sign(uploading["id"], [1]))[0]["url"]

    new_token = await gateway.rotate_token("home")
    assert len(new_token) == 43
    assert new_token not in (old_token, other_token)
    # The old token is refused on every /v1 route, from the next request on; an id route with a real id too.
    for method, path in V1_ROUTES:
        for backup_id in ("0" * 32, uploading["id"]):
            status, body = await old.call(method, path.replace("{id}", backup_id), _body(method, path))
            assert status == 401, (method, path)
            assert body["error"]["code"] == "unauthorized"

    # The new token is the same instance: same id and name, same backups, and the upload goes on.
    new = Api(session, gateway.url, new_token)
    assert (await new.ok("GET", "/v1/instance"))["id"] == instance_id
    assert (await new.ok("GET", "/v1/instance"))["name"] == "home"
    assert (await new.ok("GET", "/v1/backups"))["backups"] == [completed]
    assert (await new.ok("GET", f"/v1/backups/{uploading['id']}"))["backup"]["status"] == "uploading"
    status, body = await new.call("POST", "/v1/backups", {"name": "second", "size": 10})
    assert (status, body["error"]["code"]) == (409, "upload_in_progress")  # the same instance's upload
    etag = await put(session, url, b"x" * 100)
    done = await new.ok(
        "POST", f"/v1/backups/{uploading['id']}/complete", {"parts": [{"part_number": 1, "etag": etag}]}
    )
    assert done["backup"]["status"] == "completed"
    assert [b["id"] for b in (await new.ok("GET", "/v1/backups"))["backups"]] == [
        uploading["id"],
        completed["id"],
    ]
    # The other instance is untouched.
    await Api(session, gateway.url, other_token).ok("GET", "/v1/instance")

    # Rotating again retires the second token as well.
    third_token = await gateway.rotate_token(" home ")
    assert (await new.call("GET", "/v1/instance"))[0] == 401
    assert (await old.call("GET", "/v1/instance"))[0] == 401
    assert (await Api(session, gateway.url, third_token).ok("GET", "/v1/instance"))["id"] == instance_id

    # The gateway keeps only the hash: neither token is in the database.
    await gateway.app[STORE].ping()
    stored = gateway.database.contents()
    assert stored
    for token in (old_token, new_token, third_token):
        assert token.encode() not in stored
    assert hash_token(third_token).encode() in stored


async def test_rotate_refuses_unknown_and_revoked_names(
    gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(UnknownInstance):
        await gateway.rotate_token("nobody")
    _, token = await gateway.add_instance("home")
    await gateway.revoke_instance("home")
    with pytest.raises(LookupError):
        await gateway.rotate_token("home")
    # A failed rotation brought nothing back to life.
    assert (await Api(session, gateway.url, token).call("GET", "/v1/instance"))[0] == 401

    # A new instance under a revoked name: rotation concerns the active one only.
    new_id, new_token = await gateway.add_instance("home")
    rotated = await gateway.rotate_token("home")
    assert (await Api(session, gateway.url, new_token).call("GET", "/v1/instance"))[0] == 401
    assert (await Api(session, gateway.url, rotated).ok("GET", "/v1/instance"))["id"] == new_id
    assert (await Api(session, gateway.url, token).call("GET", "/v1/instance"))[0] == 401


async def test_revoking_aborts_the_upload_in_progress(
    gateway: RunningGateway, session: aiohttp.ClientSession, moto_server: S3Server
) -> None:
    _, token = await gateway.add_instance("home")
    _, other_token = await gateway.add_instance("cottage")
    api, other = Api(session, gateway.url, token), Api(session, gateway.url, other_token)
    init = await api.init(100)
    url = (await api.sign(init["id"], [1]))[0]["url"]
    others = await other.init(100)
    other_url = (await other.sign(others["id"], [1]))[0]["url"]

    await gateway.revoke_instance("home")
    # A part URL signed before the revocation is refused by storage at once: its upload is gone.
    async with session.put(url, data=b"x" * 100, headers={"Content-Length": "100"}) as resp:
        assert resp.status >= 400, await resp.text()  # moto: 500, S3 and SeaweedFS: 403/404
    row = await gateway.app[STORE].get_backup(init["id"])
    assert row is not None
    assert row.status == "failed"
    keys = [
        u["Key"]
        for u in moto_server.client()
        .list_multipart_uploads(Bucket=gateway.settings.s3_bucket)
        .get("Uploads", [])
    ]
    assert keys == [f"{(await other.ok('GET', '/v1/instance'))['id']}/{others['id']}"]
    # The other instance's upload goes on.
    await put(session, other_url, b"y" * 100)
