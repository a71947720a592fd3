"""Against SeaweedFS, a real S3 server that checks presigned URLs: what the gateway signs cannot be bent.

A tampered signature, a URL edited to another part number or another key, and an expired URL are refused (403),
and storage holds nothing from them; the same URLs unedited work, end to end.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

import aiohttp

from tests.gateway.api import Api, put
from tests.helpers.gateway import GatewayDatabase, run_gateway
from tests.helpers.servers import S3Server

PART = 5 * 1024 * 1024


async def _put_status(session: aiohttp.ClientSession, url: str, data: bytes) -> tuple[int, str]:
    async with session.put(url, data=data, headers={"Content-Length": str(len(data))}) as resp:
        return resp.status, await resp.text()


async def test_edited_urls_are_refused(
    seaweedfs_server: S3Server,
    seaweedfs_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    async with run_gateway(
        seaweedfs_server, seaweedfs_bucket, tmp_path, database=database, PART_SIZE=str(PART)
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        data = os.urandom(PART + 1000)
        init = await api.init(len(data))
        urls = {p["part_number"]: p["url"] for p in await api.sign(init["id"], [1, 2])}
        chunk = data[:PART]

        signature = re.search(r"X-Amz-Signature=([0-9a-f]{64})", urls[1])
        assert signature is not None
        flipped = "0" if signature.group(1)[-1] != "0" else "1"
        tampered = urls[1][:-1] + flipped
        other_part = urls[1].replace("partNumber=1&", "partNumber=2&")
        assert other_part != urls[1]
        other_key = urls[1].replace(init["id"], "0" * 32)
        longer = urls[1].replace("X-Amz-Expires=900", "X-Amz-Expires=604800")
        assert longer != urls[1]
        for name, url in [
            ("tampered signature", tampered),
            ("other part", other_part),
            ("other key", other_key),
            ("longer life", longer),
        ]:
            status, text = await _put_status(session, url, chunk)
            assert status == 403, (name, status, text[:300])
        assert (await api.ok("GET", f"/v1/backups/{init['id']}/parts"))["parts"] == []

        # The URLs as signed work: the whole path on a server that checks signatures.
        parts = [
            {"part_number": 1, "etag": await put(session, urls[1], chunk)},
            {"part_number": 2, "etag": await put(session, urls[2], data[PART:])},
        ]
        backup = (await api.ok("POST", f"/v1/backups/{init['id']}/complete", {"parts": parts}))["backup"]
        download = await api.ok("POST", f"/v1/backups/{backup['id']}/download")
        async with session.get(download["url"]) as resp:
            assert resp.status == 200
            assert hashlib.sha256(await resp.read()).digest() == hashlib.sha256(data).digest()
        async with session.get(download["url"][:-1] + ("0" if download["url"][-1] != "0" else "1")) as resp:
            assert resp.status == 403


async def test_expired_urls_are_refused(
    seaweedfs_server: S3Server,
    seaweedfs_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    async with run_gateway(
        seaweedfs_server, seaweedfs_bucket, tmp_path, database=database, URL_TTL="2"
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        init = await api.init(1000)
        url = (await api.sign(init["id"], [1]))[0]["url"]
        assert "X-Amz-Expires=2&" in url
        await asyncio.sleep(3.5)
        status, text = await _put_status(session, url, b"x" * 1000)
        assert status == 403, text[:300]
        assert (await api.ok("GET", f"/v1/backups/{init['id']}/parts"))["parts"] == []
        # Asking again gives a fresh URL that works (the client's answer to a 403).
        fresh = (await api.sign(init["id"], [1]))[0]["url"]
        etag = await put(session, fresh, b"x" * 1000)
        parts = (await api.ok("GET", f"/v1/backups/{init['id']}/parts"))["parts"]
        assert [(p["part_number"], p["etag"], p["size"]) for p in parts] == [(1, etag, 1000)]


async def test_a_part_of_any_other_length_is_refused(
    seaweedfs_server: S3Server,
    seaweedfs_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """Each part URL signs its exact length (Content-Length): storage refuses a PUT of more or fewer bytes, and
    holds nothing from it, so a token cannot store more than the size it declared (and the quota counted)."""
    async with run_gateway(
        seaweedfs_server, seaweedfs_bucket, tmp_path, database=database, PART_SIZE=str(PART)
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        data = os.urandom(PART + 1000)
        init = await api.init(len(data))
        urls = {p["part_number"]: p["url"] for p in await api.sign(init["id"], [1, 2])}
        assert all("X-Amz-SignedHeaders=content-length%3Bhost&" in url for url in urls.values())
        for number, body in [
            (1, data[: PART - 1]),  # one byte short
            (1, data[:PART] + b"x"),  # one byte more
            (1, os.urandom(64 * 1024 * 1024)),  # far more: what a token holder would smuggle in
            (2, data[PART:] + b"more"),  # the last part, longer
            (2, data[PART:-1]),  # the last part, shorter
            (2, data[:PART]),  # the last part, a whole part's length
        ]:
            status, text = await _put_status(session, urls[number], body)
            assert status == 403, (number, len(body), status, text[:300])
        assert (await api.ok("GET", f"/v1/backups/{init['id']}/parts"))["parts"] == []
        assert (await api.ok("GET", "/v1/instance"))["usage"]["bytes"] == 0
        # The exact lengths go through.
        parts = [
            {"part_number": 1, "etag": await put(session, urls[1], data[:PART])},
            {"part_number": 2, "etag": await put(session, urls[2], data[PART:])},
        ]
        assert (await api.ok("GET", "/v1/instance"))["usage"]["bytes"] == len(data)
        backup = (await api.ok("POST", f"/v1/backups/{init['id']}/complete", {"parts": parts}))["backup"]
        assert backup["size"] == len(data)
