"""The whole path with real parts on moto: init → sign → PUT each part → complete → list → presigned GET."""

from __future__ import annotations

import hashlib
import os

import aiohttp

from tests.gateway.api import Api
from tests.gateway.conftest import PART
from tests.helpers.gateway import RunningGateway


async def test_full_backup_roundtrip(gateway: RunningGateway, session: aiohttp.ClientSession) -> None:
    _, token = await gateway.add_instance("home")
    api = Api(session, gateway.url, token)
    data = os.urandom(2 * PART + 12345)
    sha = hashlib.sha256(data).hexdigest()

    init = await api.init(len(data), "nightly", sha256=sha, metadata={"backup_id": "abc", "protected": True})
    assert init["part_size"] == PART
    assert init["part_count"] == 3
    assert init["url_ttl"] == 900
    parts = await api.put_parts(init["id"], data, init["part_size"])

    listed = await api.ok("GET", f"/v1/backups/{init['id']}/parts")
    assert [p["part_number"] for p in listed["parts"]] == [1, 2, 3]
    assert [p["size"] for p in listed["parts"]] == [PART, PART, 12345]

    done = await api.ok("POST", f"/v1/backups/{init['id']}/complete", {"parts": parts})
    backup = done["backup"]
    assert backup["status"] == "completed"
    assert backup["sha256"] == sha
    assert backup["size"] == len(data)
    assert backup["metadata"] == {"backup_id": "abc", "protected": True}
    assert backup["completed_at"].endswith("Z")

    listing = await api.ok("GET", "/v1/backups")
    assert [b["id"] for b in listing["backups"]] == [init["id"]]

    download = await api.ok("POST", f"/v1/backups/{init['id']}/download")
    async with session.get(download["url"]) as resp:
        assert resp.status == 200
        fetched = await resp.read()
    assert hashlib.sha256(fetched).hexdigest() == sha
