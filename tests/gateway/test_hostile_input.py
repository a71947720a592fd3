"""What an attacker sent: each gets a JSON 4xx with a stable code, never a 500 (issue 14, items 3 and 8)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import aiohttp
import pytest

from tests.gateway.api import Api
from tests.gateway.conftest import PART
from tests.gateway.raw import exchange, request_bytes
from tests.helpers.gateway import RunningGateway


@pytest.fixture
async def token(gateway: RunningGateway) -> str:
    _, token = await gateway.add_instance("home")
    return token


@pytest.fixture
async def api(gateway: RunningGateway, session: aiohttp.ClientSession, token: str) -> Api:
    return Api(session, gateway.url, token)


async def post_raw(api: Api, path: str, body: bytes) -> tuple[int, Any]:
    headers = {**api._headers(), "Content-Type": "application/json"}
    async with api.session.post(api.url + path, data=body, headers=headers) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer \xff\xfe\xfd",
        b"Bearer \xc3\x28",
        b"\xff",
        b"Bearer " + b"\xed\xa0\x80" * 3,
        b"Bearer token\xe9",
    ],
)
async def test_a_non_utf8_authorization_is_a_401(
    gateway: RunningGateway, authorization: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    data = request_bytes("GET", "/v1/instance", raw_headers=b"Authorization: " + authorization + b"\r\n")
    answer = await exchange(gateway.url, data)
    assert answer.status == 401, answer
    assert answer.json()["error"]["code"] == "unauthorized"
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_a_valid_token_with_a_non_utf8_tail_is_refused(gateway: RunningGateway, token: str) -> None:
    header = b"Authorization: Bearer " + token.encode() + b"\xff\r\n"
    answer = await exchange(gateway.url, request_bytes("GET", "/v1/instance", raw_headers=header))
    assert (answer.status, answer.json()["error"]["code"]) == (401, "unauthorized")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (rb'{"name": "\ud800", "size": 10}', "name"),
        (rb'{"name": "a\udfffb", "size": 10}', "name"),
        (rb'{"name": "\ude00\ud83d", "size": 10}', "name"),  # a pair the wrong way round
        (rb'{"name": "n", "size": 10, "metadata": {"k": "\ud800"}}', "metadata"),
        (rb'{"name": "n", "size": 10, "metadata": {"\udc00": 1}}', "metadata"),
        (rb'{"name": "n", "size": 10, "metadata": {"list": [1, ["\ud800"]]}}', "metadata"),
    ],
)
async def test_lone_surrogates_are_refused(api: Api, body: bytes, field: str) -> None:
    status, answer = await post_raw(api, "/v1/backups", body)
    assert (status, answer["error"]["code"]) == (400, "invalid_request"), answer
    assert field in answer["error"]["message"]


async def test_escaped_surrogate_pairs_are_characters(api: Api) -> None:
    """Python's own json.dumps escapes an emoji as a surrogate pair: that is valid, and kept."""
    body = json.dumps({"name": "😀 nightly", "size": 10, "metadata": {"note": "🏠"}}).encode()
    assert b"\\ud83d" in body
    status, init = await post_raw(api, "/v1/backups", body)
    assert status == 201, init
    backup = (await api.ok("GET", f"/v1/backups/{init['id']}"))["backup"]
    assert (backup["name"], backup["metadata"]) == ("😀 nightly", {"note": "🏠"})


@pytest.mark.parametrize("depth", [10_000, 60_000])
async def test_deeply_nested_json_is_a_400(api: Api, depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    for body in (nested, b'{"name": "n", "size": 10, "metadata": {"x": ' + nested + b"}}"):
        status, answer = await post_raw(api, "/v1/backups", body)
        assert status == 400, answer
        assert answer["error"]["code"] in ("invalid_json", "invalid_request")


async def test_nesting_deeper_than_the_limit_is_refused_by_name(api: Api) -> None:
    # Deep enough to recurse in the gateway's own encoder later on, far below Python's parser limit.
    deep: Any = "leaf"
    for _ in range(500):
        deep = {"x": deep}
    status, answer = await post_raw(
        api, "/v1/backups", json.dumps({"name": "n", "size": 1, "metadata": deep}).encode()
    )
    assert (status, answer["error"]["code"]) == (400, "invalid_request"), answer
    assert "metadata" in answer["error"]["message"]
    assert "deep" in answer["error"]["message"]
    # What Home Assistant sends (a few levels) passes.
    metadata = {"addons": [{"name": "a", "slug": "a", "version": "1"}], "extra": {"a": {"b": {"c": [1, 2]}}}}
    init = await api.init(10, metadata=metadata)
    assert (await api.ok("GET", f"/v1/backups/{init['id']}"))["backup"]["metadata"] == metadata


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\x00"])
async def test_sha256_must_be_exactly_64_hex(api: Api, suffix: str) -> None:
    sha = "a" * 64 + suffix
    status, answer = await api.call("POST", "/v1/backups", {"name": "n", "size": 10, "sha256": sha})
    assert (status, answer["error"]["code"]) == (400, "invalid_request"), answer
    assert "sha256" in answer["error"]["message"]
    init = await api.init(10)
    status, answer = await api.call(
        "POST",
        f"/v1/backups/{init['id']}/complete",
        {"parts": [{"part_number": 1, "etag": "x"}], "sha256": sha},
    )
    assert (status, answer["error"]["code"]) == (400, "invalid_request"), answer
    assert "sha256" in answer["error"]["message"]


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"])
async def test_nan_and_infinity_are_not_json(api: Api, constant: bytes) -> None:
    body = b'{"name": "n", "size": 10, "metadata": {"x": ' + constant + b"}}"
    status, answer = await post_raw(api, "/v1/backups", body)
    assert (status, answer["error"]["code"]) == (400, "invalid_json"), answer
    # Nothing was stored, so nothing answers a bare NaN later.
    assert (await api.ok("GET", "/v1/backups"))["backups"] == []
    status, _ = await api.call("POST", "/v1/backups", {"name": "n", "size": 10})
    assert status == 201


@pytest.mark.parametrize(
    "path",
    [
        "/v1/backups/%ED%A0%80",
        "/v1/backups/%ED%A0%80/parts",
        "/v1/backups/%FF%FE",
        "/v1/backups/%00",
        "/v1/backups/" + "a" * 5000 + "/download",
        "/v1/backups/%2e%2e%2f%2e%2e",
        "/v1/backups/%F0%9F%98%80/download",
    ],
)
async def test_odd_ids_are_404(gateway: RunningGateway, token: str, path: str) -> None:
    method = "POST" if path.endswith(("/parts", "/download")) else "GET"
    body = b'{"part_numbers": [1]}' if path.endswith("/parts") else b""
    data = request_bytes(method, path, {"Authorization": f"Bearer {token}"}, body)
    answer = await exchange(gateway.url, data)
    assert (answer.status, answer.json()["error"]["code"]) == (404, "not_found"), answer


PROTOCOL_JUNK = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01Name: y\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/backups HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
]


@pytest.mark.parametrize("data", PROTOCOL_JUNK, ids=range(len(PROTOCOL_JUNK)))
async def test_protocol_errors_are_json(gateway: RunningGateway, data: bytes) -> None:
    answer = await exchange(gateway.url, data)
    assert 400 <= answer.status < 500, answer
    error = answer.json()["error"]
    assert error["code"] == "bad_request"
    # Nothing of what was sent is echoed back.
    assert b"aaaa" not in answer.body
    assert b"Bad" not in answer.body
    assert answer.headers["connection"].lower() == "close"


async def test_no_version_in_the_server_header(gateway: RunningGateway, token: str) -> None:
    answers = [
        await exchange(gateway.url, request_bytes("GET", "/healthz")),
        await exchange(gateway.url, request_bytes("GET", "/nowhere")),
        await exchange(gateway.url, request_bytes("GET", "/v1/instance")),
        await exchange(
            gateway.url, request_bytes("GET", "/v1/instance", {"Authorization": f"Bearer {token}"})
        ),
        await exchange(gateway.url, PROTOCOL_JUNK[0]),
    ]
    assert [answer.status for answer in answers] == [200, 404, 401, 200, 400]
    for answer in answers:
        assert answer.headers["server"] == "offsite-gateway", answer.headers
        assert not re.search(r"\d", answer.headers["server"])


async def test_complete_with_a_wrong_part_count_in_a_small_upload(api: Api) -> None:
    """A body far larger than the upload's part count could ever need is refused before it is parsed."""
    init = await api.init(PART + 1)  # two parts
    parts = [{"part_number": n, "etag": "0" * 32} for n in range(1, 10_001)]
    status, answer = await api.call("POST", f"/v1/backups/{init['id']}/complete", {"parts": parts})
    assert (status, answer["error"]["code"]) == (413, "body_too_large"), answer
