"""A small test-side client of the gateway API (the tests speak HTTP, like Home Assistant does)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass
class Api:
    session: aiohttp.ClientSession
    url: str
    token: str | None

    def _headers(self, token: str | None = None) -> dict[str, str]:
        token = token if token is not None else self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def call(self, method: str, path: str, json: Any = None, **kwargs: Any) -> tuple[int, Any]:
        """(status, JSON body or None)."""
        headers = kwargs.pop("headers", None) or self._headers()
        async with self.session.request(
            method, self.url + path, json=json, headers=headers, **kwargs
        ) as resp:
            body = await resp.read()
            if resp.content_type == "application/json" and body:
                return resp.status, await resp.json()
            return resp.status, body or None

    async def ok(self, method: str, path: str, json: Any = None, expect: int = 200) -> Any:
        status, body = await self.call(method, path, json)
        assert status == expect, (method, path, status, body)
        return body

    async def init(self, size: int, name: str = "backup", **extra: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.ok(
            "POST", "/v1/backups", {"name": name, "size": size, **extra}, 201
        )
        return result

    async def sign(self, backup_id: str, numbers: list[int]) -> list[dict[str, Any]]:
        body = await self.ok("POST", f"/v1/backups/{backup_id}/parts", {"part_numbers": numbers})
        parts: list[dict[str, Any]] = body["parts"]
        return parts

    async def put_parts(self, backup_id: str, data: bytes, part_size: int) -> list[dict[str, Any]]:
        """Sign and PUT every part; return the complete body's parts."""
        count = max(1, -(-len(data) // part_size))
        done = []
        for start in range(1, count + 1, 100):
            numbers = list(range(start, min(count, start + 99) + 1))
            for part in await self.sign(backup_id, numbers):
                number = part["part_number"]
                chunk = data[(number - 1) * part_size : number * part_size]
                etag = await put(self.session, part["url"], chunk)
                done.append({"part_number": number, "etag": etag})
        return done

    async def upload(self, data: bytes, name: str = "backup", **extra: Any) -> dict[str, Any]:
        """A whole backup: init, sign, PUT, complete; returns the completed backup."""
        init = await self.init(len(data), name, sha256=hashlib.sha256(data).hexdigest(), **extra)
        parts = await self.put_parts(init["id"], data, init["part_size"])
        body = await self.ok("POST", f"/v1/backups/{init['id']}/complete", {"parts": parts})
        backup: dict[str, Any] = body["backup"]
        return backup


async def put(session: aiohttp.ClientSession, url: str, chunk: bytes) -> str:
    """PUT a part to its presigned URL (with Content-Length); return the ETag."""
    async with session.put(url, data=chunk, headers={"Content-Length": str(len(chunk))}) as resp:
        text = await resp.text()
        assert resp.status == 200, (resp.status, text[:500])
        return resp.headers["ETag"]
