"""Malformed, oversized and out-of-range input gets a 4xx with a stable code, never a 500."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.gateway.api import Api
from tests.gateway.conftest import PART
from tests.helpers.gateway import RunningGateway


@pytest.fixture
async def api(gateway: RunningGateway, session: aiohttp.ClientSession) -> Api:
    _, token = await gateway.add_instance("home")
    return Api(session, gateway.url, token)


async def raw(api: Api, method: str, path: str, data: bytes, content_type: str = "application/json") -> Any:
    headers = {**api._headers(), "Content-Type": content_type}
    async with api.session.request(method, api.url + path, data=data, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({}, 400, "invalid_request", "name"),
        ({"name": "x"}, 400, "invalid_request", "size"),
        ({"name": "", "size": 1}, 400, "invalid_request", "name"),
        ({"name": "x" * 201, "size": 1}, 400, "invalid_request", "name"),
        ({"name": 5, "size": 1}, 400, "invalid_request", "name"),
        ({"name": "x", "size": 0}, 400, "invalid_request", "size"),
        ({"name": "x", "size": -5}, 400, "invalid_request", "size"),
        ({"name": "x", "size": 1.5}, 400, "invalid_request", "size"),
        ({"name": "x", "size": "10"}, 400, "invalid_request", "size"),
        ({"name": "x", "size": True}, 400, "invalid_request", "size"),
        ({"name": "x", "size": 1, "sha256": "ABC"}, 400, "invalid_request", "sha256"),
        ({"name": "x", "size": 1, "sha256": "A" * 64}, 400, "invalid_request", "sha256"),
        ({"name": "x", "size": 1, "metadata": [1]}, 400, "invalid_request", "metadata"),
        ({"name": "x", "size": 1, "metadata": {"a": "b" * 70_000}}, 400, "invalid_request", "metadata"),
        ({"name": "x", "size": 50 * 1024**3 + 1}, 413, "quota_exceeded", "size"),
    ],
)
async def test_init_rejects(api: Api, body: dict[str, Any], status: int, code: str, field: str) -> None:
    got, answer = await api.call("POST", "/v1/backups", body)
    assert got == status, answer
    assert answer["error"]["code"] == code
    assert field in answer["error"]["message"]


async def test_init_accepts_null_optionals_and_ignores_unknown_fields(api: Api) -> None:
    init = await api.init(10, sha256=None, metadata=None, future_field={"x": 1})
    backup = (await api.ok("GET", f"/v1/backups/{init['id']}"))["backup"]
    assert backup["sha256"] is None
    assert backup["metadata"] == {}


async def test_not_json_and_not_an_object(api: Api) -> None:
    assert await raw(api, "POST", "/v1/backups", b"{nope") == (
        400,
        {"error": {"code": "invalid_json", "message": "the body is not valid JSON"}},
    )
    status, body = await raw(api, "POST", "/v1/backups", b"\xff\xfe")
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    status, body = await raw(api, "POST", "/v1/backups", b"[1, 2]")
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    status, body = await raw(api, "POST", "/v1/backups", b"")
    assert (status, body["error"]["code"]) == (400, "invalid_json")


async def test_oversized_bodies(api: Api) -> None:
    big = json.dumps({"name": "x", "size": 1, "pad": "x" * 200_000}).encode()
    status, body = await raw(api, "POST", "/v1/backups", big)
    assert (status, body["error"]["code"]) == (413, "body_too_large")

    # Without a Content-Length (chunked), the limit holds all the same.
    async def chunks() -> Any:
        for _ in range(40):
            yield b" " * 65536

    async with api.session.post(api.url + "/v1/backups", data=chunks(), headers=api._headers()) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "body_too_large"

    init = await api.init(PART * 2)
    huge = json.dumps({"parts": [{"part_number": 1, "etag": "x" * 200}] * 12000}).encode()
    assert len(huge) > 2 * 1024 * 1024
    status, body = await raw(api, "POST", f"/v1/backups/{init['id']}/complete", huge)
    assert (status, body["error"]["code"]) == (413, "body_too_large")


async def test_complete_accepts_ten_thousand_parts_in_its_body(api: Api) -> None:
    """A real 10,000-part complete body is ~700 KB: it must pass the size limit (then fail on missing parts)."""
    init = await api.init(10_000 * PART)
    assert init["part_count"] == 10_000
    parts = [{"part_number": n, "etag": '"0123456789abcdef0123456789abcdef"'} for n in range(1, 10_001)]
    status, body = await api.call("POST", f"/v1/backups/{init['id']}/complete", {"parts": parts})
    assert (status, body["error"]["code"]) == (409, "parts_missing")


@pytest.mark.parametrize(
    ("numbers", "field"),
    [
        ([], "part_numbers"),
        (list(range(1, 102)), "part_numbers"),
        ([0], "part_numbers"),
        ([-1], "part_numbers"),
        ([4], "out of 1..3"),
        ([1, 1], "duplicates"),
        (["1"], "part_numbers"),
        ([1.0], "part_numbers"),
        ([True], "part_numbers"),
        ("1", "part_numbers"),
        (None, "part_numbers"),
    ],
)
async def test_sign_rejects(api: Api, numbers: Any, field: str) -> None:
    init = await api.init(2 * PART + 1)
    status, body = await api.call("POST", f"/v1/backups/{init['id']}/parts", {"part_numbers": numbers})
    assert (status, body["error"]["code"]) == (400, "invalid_request"), body
    assert field in body["error"]["message"]


async def test_sign_accepts_a_hundred(api: Api) -> None:
    init = await api.init(150 * PART)
    parts = await api.sign(init["id"], list(range(1, 101)))
    assert [p["part_number"] for p in parts] == list(range(1, 101))
    parts = await api.sign(init["id"], [150, 101])
    assert [p["part_number"] for p in parts] == [150, 101]


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([], "parts"),
        ([{"part_number": 1, "etag": "a"}], "missing [2]"),
        ([{"part_number": 1, "etag": "a"}, {"part_number": 1, "etag": "a"}], "twice"),
        (
            [
                {"part_number": 1, "etag": "a"},
                {"part_number": 2, "etag": "a"},
                {"part_number": 3, "etag": "a"},
            ],
            "3",
        ),
        ([{"part_number": 1}, {"part_number": 2, "etag": "a"}], "parts[0].etag"),
        ([{"part_number": "1", "etag": "a"}], "parts[0].part_number"),
        ([{"part_number": 1, "etag": ""}], "parts[0].etag"),
        ("all", "parts"),
    ],
)
async def test_complete_rejects(api: Api, parts: Any, message: str) -> None:
    init = await api.init(PART + 1)
    status, body = await api.call("POST", f"/v1/backups/{init['id']}/complete", {"parts": parts})
    assert (status, body["error"]["code"]) == (400, "invalid_request"), body
    assert message in body["error"]["message"]
    # The upload is untouched.
    assert (await api.ok("GET", f"/v1/backups/{init['id']}"))["backup"]["status"] == "uploading"


async def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    status, body = await api.call("GET", "/v1/nothing")
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = await api.call("GET", "/nothing", headers={"X": "y"})
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = await api.call("PUT", "/v1/backups")
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")
