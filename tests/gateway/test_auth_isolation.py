"""Tokens and ownership: 401 without a valid active token, 404 for another instance's backups on every route."""

from __future__ import annotations

import os

import aiohttp
import pytest

from offsite_gateway.app import ROUTES
from tests.gateway.api import Api
from tests.helpers.gateway import RunningGateway

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
    assert body == {
        "id": instance_id,
        "name": "home",
        "limits": {
            "max_backup_bytes": 50 * 1024**3,
            "part_size": 5 * 1024 * 1024,
            "retention": 7,
            "url_ttl": 900,
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
