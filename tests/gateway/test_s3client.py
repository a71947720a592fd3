"""The gateway's own S3 client (offsite_gateway/s3.py): addressing, requests canonically the ones botocore sends
(so signed alike), every call against SeaweedFS, error answers (also inside a 200), retries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import boto3
import pytest
from aiohttp import web
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials

from offsite_gateway.config import load_settings
from offsite_gateway.s3 import MAX_ANSWER, S3Client, S3Error
from offsite_gateway.storage import Storage, StorageError
from tests.helpers.servers import S3Server


def _client(endpoint: str | None, addressing: str = "path", region: str = "eu-west-3") -> S3Client:
    return S3Client(
        endpoint=endpoint, bucket="bkt", region=region, access_key="a", secret_key="b", addressing=addressing
    )


def test_addressing() -> None:
    assert _client("http://127.0.0.1:9000").url("i/b") == "http://127.0.0.1:9000/bkt/i/b"
    assert _client("http://127.0.0.1:9000", "virtual").url("k") == "http://127.0.0.1:9000/bkt/k"  # IP: path
    assert (
        _client("https://minio.example.org/s3/", "virtual").url("k") == "https://bkt.minio.example.org/s3/k"
    )
    assert _client("https://minio.example.org", "virtual").url(None) == "https://bkt.minio.example.org/"
    # Connections go where the URL points (the signed Host header is the URL's).
    assert (
        _client("https://minio.example.org:9000/s3", "virtual").origin == "https://bkt.minio.example.org:9000"
    )
    assert _client("http://127.0.0.1:9000", "virtual").origin == "http://127.0.0.1:9000"
    assert _client(None).origin == "https://s3.eu-west-3.amazonaws.com"
    assert _client(None).url(None, {"uploads": ""}) == "https://s3.eu-west-3.amazonaws.com/bkt?uploads="
    # Keys and query values are encoded as AWS canonicalises them: what is sent is what is signed.
    url = _client("http://h").url("a b/é+~", {"uploadId": "x+y/z=", "partNumber": "1"})
    assert url == "http://h/bkt/a%20b/%C3%A9%2B~?partNumber=1&uploadId=x%2By%2Fz%3D"
    headers = _client("http://h").sign("PUT", url, b"body")
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=a/")
    assert "/eu-west-3/s3/aws4_request" in headers["Authorization"]
    assert (
        headers["X-Amz-Content-SHA256"] == "230d8358dc8e8890b4c58deeb62912ee2f20357ae92a5cc861b98e68fe31acb5"
    )


async def test_the_calls_against_seaweedfs(seaweedfs_server: S3Server, seaweedfs_bucket: str) -> None:
    """Every call the gateway makes, on a real S3 server that checks signatures, with awkward keys."""
    env = {**seaweedfs_server.gateway_env(seaweedfs_bucket), "OFFSITE_GATEWAY_DB": "/nonexistent"}
    storage = Storage(load_settings(env))
    await storage.open()
    try:
        key = "odd key/é+(1)~'!*.manifest.json"
        await storage.put_object(key, b'{"a": 1}')
        assert await storage.get_object(key, 100) == b'{"a": 1}'
        with pytest.raises(StorageError, match="larger than 4 bytes"):
            await storage.get_object(key, 4)
        assert [o.key async for o in storage.list_objects("odd key/")] == [key]
        upload_id = await storage.create_multipart_upload("i/b")
        assert await storage.list_parts("i/b", upload_id) == []
        assert [(u.key, u.upload_id) for u in await storage.list_multipart_uploads("i/")] == [
            ("i/b", upload_id)
        ]
        assert await storage.abort_multipart_upload("i/b", upload_id) is True
        # Gone already: nothing to do, and no error. (S3 and moto answer NoSuchUpload, hence False; SeaweedFS
        # answers 204 again, so the answer alone cannot say whether storage still knew the upload.)
        await storage.abort_multipart_upload("i/b", upload_id)
        assert await storage.list_multipart_uploads("i/") == []
        assert await storage.object_size(key) == 8
        assert await storage.object_size("missing") is None
        assert await storage.get_object("missing", 100) is None
        await storage.delete_object(key)
        await storage.delete_object(key)
        # DeleteObjects: several keys in one call, a missing one counting as deleted.
        others = [f"batch/{n} & <{n}>" for n in range(3)]
        for other in others:
            await storage.put_object(other, b"{}")
        assert await storage.delete_objects([*others, "batch/missing"]) == {}
        assert [o.key async for o in storage.list_objects("batch/")] == []
        with pytest.raises(StorageError) as refused:
            await storage.complete_multipart_upload("i/b", upload_id, [])
        assert refused.value.code in ("NoSuchUpload", "MalformedXML", "InvalidRequest")
    finally:
        await storage.close()


@pytest.mark.parametrize(
    ("operation", "params", "ours"),
    [
        ("put_object", {"Key": "odd key/é+(1)~'!*", "Body": b"x"}, ("PUT", "odd key/é+(1)~'!*", {})),
        (
            "list_parts",
            {"Key": "i/b", "UploadId": "x+y/z=~", "MaxParts": 1000, "PartNumberMarker": 7},
            ("GET", "i/b", {"uploadId": "x+y/z=~", "max-parts": "1000", "part-number-marker": "7"}),
        ),
        (
            "list_objects_v2",
            {"Prefix": "p/q r", "MaxKeys": 1000, "ContinuationToken": "a+b/c="},
            (
                "GET",
                None,
                {"list-type": "2", "prefix": "p/q r", "max-keys": "1000", "continuation-token": "a+b/c="},
            ),
        ),
        ("create_multipart_upload", {"Key": "i/b"}, ("POST", "i/b", {"uploads": ""})),
    ],
)
@pytest.mark.parametrize("addressing", ["path", "virtual"])
def test_requests_are_canonically_what_botocore_sends(
    operation: str, params: dict[str, object], ours: tuple[str, str | None, dict[str, str]], addressing: str
) -> None:
    """The canonical request (method, URI, query) SigV4 signs is the one botocore itself would sign."""
    endpoint = "https://storage.example.org"
    captured: list[AWSRequest] = []

    def capture(request: AWSRequest, **_: object) -> None:
        captured.append(AWSRequest(method=request.method, url=request.url))

    def answer(request: AWSRequest, **_: object) -> AWSResponse:
        return AWSResponse(request.url, 200, {}, None)  # nothing leaves the test

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="eu-west-3",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        config=Config(signature_version="s3v4", s3={"addressing_style": addressing}),
    )
    client.meta.events.register("before-sign.s3.*", capture)
    client.meta.events.register("before-send.s3.*", answer)
    with contextlib.suppress(Exception):  # the empty answer does not parse: only the request matters
        getattr(client, operation)(Bucket="bkt", **params)
    assert captured
    theirs = captured[0]
    method, key, query = ours
    mine = AWSRequest(method=method, url=_client(endpoint, addressing).url(key, query))
    auth = S3SigV4Auth(Credentials("a", "b"), "s3", "eu-west-3")

    def head(request: AWSRequest) -> list[str]:
        method, uri, query = str(auth.canonical_request(request)).split("\n")[:3]
        # botocore asks ListObjectsV2 for URL-encoded keys (and decodes them); ours are ids, plain in XML.
        query = "&".join(item for item in query.split("&") if item != "encoding-type=url")
        return [method, uri, query]

    assert head(mine) == head(theirs)
    assert urlsplit(mine.url).netloc == urlsplit(theirs.url).netloc


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[str, list[str]]]:
    """A server answering from a script: each request takes the next answer."""
    script: list[str] = []
    seen: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path_qs}")
        answer = script.pop(0) if script else "ok"
        if answer == "503":
            return web.Response(
                status=503, text="<Error><Code>SlowDown</Code><Message>later</Message></Error>"
            )
        if answer == "error-in-200":
            return web.Response(text="<Error><Code>InternalError</Code><Message>oops</Message></Error>")
        if answer == "404-head":
            return web.Response(status=404)
        if answer == "403":
            return web.Response(
                status=403, text="<Error><Code>AccessDenied</Code><Message>no</Message></Error>"
            )
        if answer == "hang":
            await asyncio.sleep(30)
        return web.Response(text="<CompleteMultipartUploadResult/>")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", script  # the script is filled by each test
    finally:
        await runner.cleanup()


async def test_retries_and_errors(flaky: tuple[str, list[str]]) -> None:
    endpoint, script = flaky
    client = _client(endpoint)
    await client.open()
    try:
        script[:] = ["503", "503"]
        answer = await client.request("POST", "k", {"uploadId": "u"})
        assert answer.status == 200  # the third attempt
        script[:] = ["503", "503", "503"]
        with pytest.raises(S3Error) as failed:
            await client.request("POST", "k", {"uploadId": "u"})
        assert (failed.value.status, failed.value.code) == (503, "SlowDown")
        script[:] = ["error-in-200", "error-in-200", "error-in-200"]
        with pytest.raises(S3Error) as failed:
            await client.request("POST", "k", {"uploadId": "u"})
        assert (failed.value.status, failed.value.code, failed.value.message) == (
            200,
            "InternalError",
            "oops",
        )
        script[:] = ["403", "ok"]
        with pytest.raises(S3Error) as failed:
            await client.request("PUT", "k")
        assert failed.value.code == "AccessDenied"  # not retried
        assert script == ["ok"]
        script[:] = ["404-head"]
        with pytest.raises(S3Error) as failed:
            await client.request("HEAD", "k")
        assert failed.value.code == "404"
    finally:
        await client.close()
    unreachable = _client("http://127.0.0.1:1")
    await unreachable.open()
    try:
        with pytest.raises(S3Error) as failed:
            await unreachable.request("HEAD", None)
        assert failed.value.status == 0
        assert "Connect" in failed.value.code
    finally:
        await unreachable.close()


class Script:
    """A raw TCP server on 127.0.0.1: each request gets the next scripted answer (raw bytes; None: never
    answer), whatever connection it comes on; it counts the connections."""

    def __init__(self) -> None:
        self.answers: list[bytes | None] = []
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                answer = (
                    self.answers.pop(0) if self.answers else b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                )
                if answer is None:
                    await reader.read()
                    return
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def script() -> AsyncIterator[tuple[Script, str]]:
    scripted = Script()
    server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield scripted, f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_connections_kept_alive_and_answers_read(script: tuple[Script, str]) -> None:
    """One connection for consecutive calls; chunked and sized answers; a HEAD reads no body; a request is sent
    as it was signed (its target, its signature, its body's length)."""
    scripted, url = script
    client = _client(url)
    await client.open()
    try:
        scripted.answers[:] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",  # HEAD: announced, never sent
        ]
        first = await client.request("PUT", "a b/k", {"partNumber": "1"}, b"body")
        assert (first.status, first.body, first.headers["x-a"]) == (200, b"hello", "1")
        assert scripted.requests[0].startswith(b"PUT /bkt/a%20b/k?partNumber=1 HTTP/1.1\r\n")
        assert b"Authorization: AWS4-HMAC-SHA256 Credential=a/" in scripted.requests[0]
        assert b"User-Agent" not in scripted.requests[0]
        assert scripted.requests[0].endswith(b"\r\n\r\nbody")
        assert (await client.request("POST", "k", {"uploads": ""})).body == b"abcde"
        assert (await client.request("DELETE", "k")).status == 204
        assert (await client.request("HEAD", None)).body == b""
        assert scripted.connections == 1
    finally:
        await client.close()


async def test_junk_large_and_silent_answers(script: tuple[Script, str]) -> None:
    """Not HTTP, larger than the client reads, or no answer within the deadline: an S3Error after the retries,
    and the client goes on working on a new connection."""
    scripted, url = script
    client = S3Client(
        endpoint=url,
        bucket="bkt",
        region="eu-west-3",
        access_key="a",
        secret_key="b",
        timeout=aiohttp.ClientTimeout(total=1, sock_connect=1, sock_read=0.5),
    )
    await client.open()
    try:
        scripted.answers[:] = [b"SSH-2.0-OpenSSH\r\n\r\n"] * 3
        with pytest.raises(S3Error) as failed:
            await client.request("GET", "k")
        assert failed.value.status == 0
        too_large = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_ANSWER + 1)
        scripted.answers[:] = [too_large]
        with pytest.raises(S3Error) as failed:
            await client.request("GET", "k")
        assert failed.value.code == "AnswerTooLarge"
        scripted.answers[:] = [None, None, None]
        started = time.monotonic()
        with pytest.raises(S3Error) as failed:
            await client.request("GET", "k")
        assert failed.value.message == "timed out"
        assert time.monotonic() - started < 5
        assert (await client.request("GET", "k")).status == 200
    finally:
        await client.close()
