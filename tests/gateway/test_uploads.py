"""Upload life cycle rules: one at a time, rate, quota, complete's checks, abort, delete, part planning."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from offsite_gateway.app import METRICS, STORAGE, STORE
from offsite_gateway.config import GIB, MIB
from offsite_gateway.manifest import SUFFIX
from offsite_gateway.parts import plan_parts
from tests.gateway.api import Api, put
from tests.gateway.conftest import PART
from tests.helpers.gateway import GatewayDatabase, RunningGateway, run_gateway
from tests.helpers.servers import S3Server


@pytest.fixture
async def api(gateway: RunningGateway, session: aiohttp.ClientSession) -> Api:
    _, token = await gateway.add_instance("home")
    return Api(session, gateway.url, token)


def _uploads(s3: S3Server, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def _objects(s3: S3Server, bucket: str) -> list[str]:
    """The archives; each has its manifest beside it, and no manifest is left without its archive."""
    keys = sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", []))
    archives = [key for key in keys if not key.endswith(SUFFIX)]
    assert sorted(key.removesuffix(SUFFIX) for key in keys if key.endswith(SUFFIX)) == archives
    return archives


@pytest.mark.parametrize(
    ("size", "configured", "expected"),
    [
        (1, 20 * MIB, (20 * MIB, 1)),
        (20 * MIB, 20 * MIB, (20 * MIB, 1)),
        (20 * MIB + 1, 20 * MIB, (20 * MIB, 2)),
        (10_000 * 20 * MIB, 20 * MIB, (20 * MIB, 10_000)),
        (10_000 * 20 * MIB + 1, 20 * MIB, (21 * MIB, 9524)),
        (50 * GIB, 5 * MIB, (6 * MIB, 8534)),
        (5 * 1024 * GIB, 20 * MIB, (525 * MIB, 9987)),
    ],
)
def test_plan_parts(size: int, configured: int, expected: tuple[int, int]) -> None:
    part_size, count = plan_parts(size, configured)
    assert (part_size, count) == expected
    assert count <= 10_000
    assert part_size % MIB == 0
    assert (count - 1) * part_size < size <= count * part_size


async def test_part_size_raised_for_big_backups(api: Api) -> None:
    init = await api.init(50 * GIB)
    assert (init["part_size"], init["part_count"]) == (6 * MIB, 8534)


async def test_one_upload_at_a_time(
    api: Api, gateway: RunningGateway, session: aiohttp.ClientSession
) -> None:
    first = await api.init(10)
    status, body = await api.call("POST", "/v1/backups", {"name": "again", "size": 10})
    assert (status, body["error"]["code"]) == (409, "upload_in_progress")
    # The answer names the upload in progress, so its owner can abort it even if it never saw the 201.
    assert body["error"]["backup_id"] == first["id"]
    assert first["id"] in body["error"]["message"]
    assert set(body["error"]) == {"code", "message", "backup_id"}
    # Another instance is not held up, and its own 409 names its own upload, never the first instance's.
    _, other_token = await gateway.add_instance("cottage")
    other = Api(session, gateway.url, other_token)
    others = await other.init(10)
    status, body = await other.call("POST", "/v1/backups", {"name": "again", "size": 10})
    assert (status, body["error"]["code"]) == (409, "upload_in_progress")
    assert body["error"]["backup_id"] == others["id"] != first["id"]
    assert first["id"] not in body["error"]["message"]
    assert (await other.ok("GET", f"/v1/backups/{others['id']}"))["backup"]["status"] == "uploading"
    assert (await api.call("GET", f"/v1/backups/{others['id']}"))[0] == 404
    status, body = await api.call("POST", "/v1/backups", {"name": "again", "size": 10})
    assert body["error"]["backup_id"] == first["id"]
    # Once the first is aborted, a new one may begin.
    await api.ok("DELETE", f"/v1/backups/{first['id']}/upload", expect=204)
    await api.init(10)


@pytest.mark.parametrize("abort_while_creating", [False, True], ids=["created", "still-creating"])
async def test_owner_recovers_from_a_lost_create_answer(
    api: Api,
    gateway: RunningGateway,
    moto_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    abort_while_creating: bool,
) -> None:
    """The client gave up on its create while storage created the upload, so it never learned the id.

    The next create's 409 names that upload; its owner aborts it and begins again, instead of waiting hours for
    the sweeper. Also while the lost create is still running: that create then aborts the upload it made.
    """
    bucket = gateway.settings.s3_bucket
    store, storage = gateway.app[STORE], gateway.app[STORAGE]
    create = storage.create_multipart_upload
    release, created = asyncio.Event(), asyncio.Event()

    async def slow_create(key: str) -> str:
        await release.wait()
        upload_id = await create(key)
        created.set()
        return upload_id

    monkeypatch.setattr(storage, "create_multipart_upload", slow_create)
    with pytest.raises(TimeoutError):
        await api.call(
            "POST", "/v1/backups", {"name": "lost", "size": 10}, timeout=aiohttp.ClientTimeout(total=0.3)
        )
    if not abort_while_creating:
        release.set()
        await asyncio.wait_for(created.wait(), 10)
        assert len(_uploads(moto_server, bucket)) == 1

    status, body = await api.call("POST", "/v1/backups", {"name": "retry", "size": 10})
    assert (status, body["error"]["code"]) == (409, "upload_in_progress")
    stale_id = body["error"]["backup_id"]
    stale = (await api.ok("GET", f"/v1/backups/{stale_id}"))["backup"]
    assert (stale["name"], stale["status"]) == ("lost", "uploading")
    if abort_while_creating:
        status, body = await api.call("POST", f"/v1/backups/{stale_id}/parts", {"part_numbers": [1]})
        assert (status, body["error"]["code"]) == (409, "not_uploading")
        assert "still being created" in body["error"]["message"]

    await api.ok("DELETE", f"/v1/backups/{stale_id}/upload", expect=204)
    if abort_while_creating:
        release.set()
        await asyncio.wait_for(created.wait(), 10)
    deadline = asyncio.get_running_loop().time() + 10
    while _uploads(moto_server, bucket):  # aborted by the DELETE, or by the lost create once it saw it
        assert asyncio.get_running_loop().time() < deadline, _uploads(moto_server, bucket)
        await asyncio.sleep(0.05)
    row = await store.get_backup(stale_id)
    assert row is not None
    assert row.status == "failed"
    assert (row.upload_id is None) == abort_while_creating

    init = await api.init(10, "again")
    assert init["id"] != stale_id
    report = await gateway.run_sweeper_once()
    assert (report.stale_failed, report.orphans_aborted) == (0, 0)
    assert len(_uploads(moto_server, bucket)) == 1  # only the new one


async def test_init_rate_limit(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database, INIT_RATE="2") as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        for _ in range(2):
            init = await api.init(10)
            await api.ok("DELETE", f"/v1/backups/{init['id']}/upload", expect=204)
        async with session.post(
            gateway.url + "/v1/backups", json={"name": "x", "size": 10}, headers=api._headers()
        ) as resp:
            assert resp.status == 429
            assert (await resp.json())["error"]["code"] == "rate_limited"
            assert 1 <= int(resp.headers["Retry-After"]) <= 3600
        # Per instance: another one is not limited.
        _, other = await gateway.add_instance("cottage")
        await Api(session, gateway.url, other).init(10)


async def test_complete_refuses_missing_parts(api: Api, session: aiohttp.ClientSession) -> None:
    data = os.urandom(PART + 10)
    init = await api.init(len(data))
    url = (await api.sign(init["id"], [1]))[0]["url"]
    etag = await put(session, url, data[:PART])
    status, body = await api.call(
        "POST",
        f"/v1/backups/{init['id']}/complete",
        {"parts": [{"part_number": 1, "etag": etag}, {"part_number": 2, "etag": etag}]},
    )
    assert (status, body["error"]["code"]) == (409, "parts_missing")
    assert "part 2" in body["error"]["message"]
    # Nothing was completed; the upload goes on.
    listed = await api.ok("GET", f"/v1/backups/{init['id']}/parts")
    assert [(p["part_number"], p["size"]) for p in listed["parts"]] == [(1, PART)]
    assert listed["parts"][0]["etag"].strip('"') == hashlib.md5(data[:PART]).hexdigest()


async def test_complete_refuses_a_wrong_etag(api: Api, session: aiohttp.ClientSession) -> None:
    init = await api.init(100)
    url = (await api.sign(init["id"], [1]))[0]["url"]
    await put(session, url, b"x" * 100)
    status, body = await api.call(
        "POST",
        f"/v1/backups/{init['id']}/complete",
        {"parts": [{"part_number": 1, "etag": '"' + "0" * 32 + '"'}]},
    )
    assert (status, body["error"]["code"]) == (409, "parts_missing")
    assert "ETag" in body["error"]["message"]


async def test_complete_names_a_part_of_another_length(api: Api, session: aiohttp.ClientSession) -> None:
    """Storage refuses a PUT of any other length than the one its URL signs (tests/gateway/test_seaweedfs_urls.py), so
    complete does not list the parts first. moto checks no signature, but refuses to complete with a part below
    5 MiB that is not the last: then the parts are listed, and the answer names the part and its length."""
    init = await api.init(PART + 100)
    urls = {p["part_number"]: p["url"] for p in await api.sign(init["id"], [1, 2])}
    parts = [
        {"part_number": 1, "etag": await put(session, urls[1], b"a" * (PART - 1))},
        {"part_number": 2, "etag": await put(session, urls[2], b"b" * 101)},
    ]
    status, body = await api.call("POST", f"/v1/backups/{init['id']}/complete", {"parts": parts})
    assert (status, body["error"]["code"]) == (409, "size_mismatch"), body
    assert f"part 1 holds {PART - 1} bytes, {PART} expected" in body["error"]["message"]
    assert (await api.ok("GET", f"/v1/backups/{init['id']}"))["backup"]["status"] == "uploading"


async def test_the_create_signs_the_first_parts_when_asked(
    api: Api, session: aiohttp.ClientSession, gateway: RunningGateway
) -> None:
    """`part_urls` asks for the first parts' URLs with the create: a backup of that many parts needs no signing
    call (two gateway calls in all). They are the URLs `POST …/parts` gives: exact lengths, working."""
    data = os.urandom(2 * PART + 7)
    init = await api.init(len(data), part_urls=2)
    assert init["part_count"] == 3
    assert [part["part_number"] for part in init["parts"]] == [1, 2]
    assert all(part["expires_at"].endswith("Z") for part in init["parts"])
    assert all("X-Amz-SignedHeaders=content-length%3Bhost&" in part["url"] for part in init["parts"])
    url3 = (await api.sign(init["id"], [3]))[0]["url"]
    parts = [
        {"part_number": 1, "etag": await put(session, init["parts"][0]["url"], data[:PART])},
        {"part_number": 2, "etag": await put(session, init["parts"][1]["url"], data[PART : 2 * PART])},
        {"part_number": 3, "etag": await put(session, url3, data[2 * PART :])},
    ]
    backup = (await api.ok("POST", f"/v1/backups/{init['id']}/complete", {"parts": parts}))["backup"]
    assert backup["size"] == len(data)
    # No more than the backup has; none unless asked.
    small = await api.init(10, part_urls=100)
    assert [part["part_number"] for part in small["parts"]] == [1]
    await api.ok("DELETE", f"/v1/backups/{small['id']}/upload", expect=204)
    assert "parts" not in await api.init(10, part_urls=0)
    for bad in (101, -1, "4", True):
        status, body = await api.call("POST", "/v1/backups", {"name": "x", "size": 10, "part_urls": bad})
        assert (status, body["error"]["code"]) == (400, "invalid_request"), bad


async def test_etags_compared_without_quotes_and_sha256_at_complete(
    api: Api, session: aiohttp.ClientSession
) -> None:
    data = b"hello world"
    init = await api.init(len(data))
    url = (await api.sign(init["id"], [1]))[0]["url"]
    etag = (await put(session, url, data)).strip('"')
    sha = hashlib.sha256(data).hexdigest()
    body = await api.ok(
        "POST",
        f"/v1/backups/{init['id']}/complete",
        {"parts": [{"part_number": 1, "etag": etag}], "sha256": sha},
    )
    assert body["backup"]["sha256"] == sha


async def test_sha256_must_match_the_declared_one(api: Api, session: aiohttp.ClientSession) -> None:
    data = b"hello world"
    init = await api.init(len(data), sha256="a" * 64)
    url = (await api.sign(init["id"], [1]))[0]["url"]
    etag = await put(session, url, data)
    status, body = await api.call(
        "POST",
        f"/v1/backups/{init['id']}/complete",
        {"parts": [{"part_number": 1, "etag": etag}], "sha256": "b" * 64},
    )
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    assert "sha256" in body["error"]["message"]


async def test_two_completes_at_once(api: Api, session: aiohttp.ClientSession) -> None:
    init = await api.init(10)
    url = (await api.sign(init["id"], [1]))[0]["url"]
    body = {"parts": [{"part_number": 1, "etag": await put(session, url, b"0123456789")}]}
    path = f"/v1/backups/{init['id']}/complete"
    results = await asyncio.gather(api.call("POST", path, body), api.call("POST", path, body))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 409]
    assert [b["error"]["code"] for s, b in results if s == 409] == ["not_uploading"]


async def test_complete_done_in_storage_but_not_recorded(
    api: Api, gateway: RunningGateway, session: aiohttp.ClientSession, moto_server: S3Server
) -> None:
    """A complete that stopped between storage and the database (crash, cancel) is recorded on retry."""
    init = await api.init(10)
    url = (await api.sign(init["id"], [1]))[0]["url"]
    etag = await put(session, url, b"0123456789")

    backup = await gateway.app[STORE].get_backup(init["id"])
    assert backup is not None
    moto_server.client().complete_multipart_upload(
        Bucket=gateway.settings.s3_bucket,
        Key=backup.object_key,
        UploadId=backup.upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )
    body = await api.ok(
        "POST", f"/v1/backups/{init['id']}/complete", {"parts": [{"part_number": 1, "etag": etag}]}
    )
    assert body["backup"]["status"] == "completed"


async def test_abort(api: Api, gateway: RunningGateway, moto_server: S3Server) -> None:
    init = await api.init(PART + 1)
    await api.sign(init["id"], [1, 2])
    assert len(_uploads(moto_server, gateway.settings.s3_bucket)) == 1
    await api.ok("DELETE", f"/v1/backups/{init['id']}/upload", expect=204)
    assert _uploads(moto_server, gateway.settings.s3_bucket) == []
    assert (await api.ok("GET", f"/v1/backups/{init['id']}"))["backup"]["status"] == "failed"
    path = f"/v1/backups/{init['id']}"
    for method, sub, body in [
        ("POST", "/parts", {"part_numbers": [1]}),
        ("GET", "/parts", None),
        ("POST", "/complete", {"parts": [{"part_number": 1, "etag": "x"}, {"part_number": 2, "etag": "x"}]}),
        ("DELETE", "/upload", None),
    ]:
        status, answer = await api.call(method, path + sub, body)
        assert (status, answer["error"]["code"]) == (409, "not_uploading"), (method, sub)
    status, answer = await api.call("POST", path + "/download")
    assert (status, answer["error"]["code"]) == (409, "not_completed")
    assert (await api.ok("GET", "/v1/backups"))["backups"] == []


async def test_delete_in_every_state(api: Api, gateway: RunningGateway, moto_server: S3Server) -> None:
    bucket = gateway.settings.s3_bucket
    completed = await api.upload(b"completed")
    assert len(_objects(moto_server, bucket)) == 1
    await api.ok("DELETE", f"/v1/backups/{completed['id']}", expect=204)
    assert _objects(moto_server, bucket) == []
    status, _ = await api.call("GET", f"/v1/backups/{completed['id']}")
    assert status == 404

    uploading = await api.init(10)
    await api.ok("DELETE", f"/v1/backups/{uploading['id']}", expect=204)
    assert _uploads(moto_server, bucket) == []
    status, _ = await api.call("GET", f"/v1/backups/{uploading['id']}")
    assert status == 404

    failed = await api.init(10)
    await api.ok("DELETE", f"/v1/backups/{failed['id']}/upload", expect=204)
    await api.ok("DELETE", f"/v1/backups/{failed['id']}", expect=204)
    status, _ = await api.call("DELETE", f"/v1/backups/{failed['id']}")
    assert status == 404


async def test_list_is_completed_only_newest_first(api: Api) -> None:
    first = await api.upload(b"one", "one")
    second = await api.upload(b"two", "two")
    await api.init(10, "in progress")
    listed = (await api.ok("GET", "/v1/backups"))["backups"]
    assert [b["id"] for b in listed] == [second["id"], first["id"]]
    assert listed[0] == second
    assert set(listed[0]) == {
        "id", "name", "size", "sha256", "status", "created_at", "completed_at", "part_size", "part_count",
        "metadata",
    }  # fmt: skip


async def test_storage_listings_follow_pages(
    api: Api, gateway: RunningGateway, session: aiohttp.ClientSession, moto_server: S3Server
) -> None:
    storage = gateway.app[STORAGE]
    storage.page_size = 2
    data = b"".join(bytes([n]) * 100 for n in range(5))
    init = await api.init(len(data))
    # Five 100-byte parts: storage accepts small parts until complete; enough to page through ListParts.
    store = gateway.app[STORE]
    row = await store.get_backup(init["id"])
    assert row is not None
    assert row.upload_id is not None
    for number in range(1, 6):
        url = storage.presigner.upload_part(row.object_key, row.upload_id, number, 60, 100)
        await put(session, url, data[(number - 1) * 100 : number * 100])
    listed = (await api.ok("GET", f"/v1/backups/{init['id']}/parts"))["parts"]
    assert [p["part_number"] for p in listed] == [1, 2, 3, 4, 5]
    for n in range(5):
        moto_server.client().create_multipart_upload(Bucket=gateway.settings.s3_bucket, Key=f"k/{n}")
    uploads = await storage.list_multipart_uploads("")
    assert len(uploads) == 6


@pytest.mark.parametrize("sent", [5000, 999], ids=["longer", "shorter"])
async def test_complete_checks_what_storage_holds(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
    caplog: pytest.LogCaptureFixture,
    sent: int,
) -> None:
    """Storage that does not enforce a URL's signed length (moto; LocalStack with `Transfer-Encoding: chunked`)
    keeps a part of any length. The complete reads back what storage holds: another size than declared is
    refused (409 `size_mismatch`), the upload failed and its object deleted, a warning logged, and the quota
    never counts the declared size for bytes storage holds otherwise (issue 24, A3)."""
    caplog.set_level(logging.INFO, logger="offsite_gateway")
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, PART_SIZE=str(PART), QUOTA="6000"
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        init = await api.init(1000)
        url = (await api.sign(init["id"], [1]))[0]["url"]
        etag = await put(session, url, b"z" * sent)  # moto stores it: it checks no signed header
        status, body = await api.call(
            "POST", f"/v1/backups/{init['id']}/complete", {"parts": [{"part_number": 1, "etag": etag}]}
        )
        assert (status, body["error"]["code"]) == (409, "size_mismatch"), body
        assert (
            f"storage holds {sent} bytes for this backup, not the 1000 declared" in body["error"]["message"]
        )
        await gateway.purged()
        assert (await api.ok("GET", f"/v1/backups/{init['id']}"))["backup"]["status"] == "failed"
        assert _objects(moto_server, moto_bucket) == []
        assert (await api.ok("GET", "/v1/instance"))["usage"] == {
            "bytes": 0,
            "backups": 0,
            "quota_bytes": 6000,
        }
        assert (await api.ok("GET", "/v1/backups"))["backups"] == []
        refusals = [r.getMessage() for r in caplog.records if "Refused the complete" in r.getMessage()]
        assert len(refusals) == 1, refusals
        assert f"storage holds {sent} bytes where 1000 were declared" in refusals[0]
        assert token not in caplog.text
        assert "X-Amz-Signature" not in caplog.text
        metrics = gateway.app[METRICS].render().decode()
        assert 'offsite_gateway_uploads_refused_total{reason="size_mismatch"} 1.0' in metrics
        # The quota counts what storage holds: five backups of 1000 bytes fit in 6000, a sixth and a 1001-byte one
        # do not (had the refused one been recorded, only four would have).
        for n in range(5):
            await api.upload(bytes([n]) * 1000, f"ok {n}")
        status, body = await api.call("POST", "/v1/backups", {"name": "over", "size": 1001})
        assert (status, body["error"]["used_bytes"]) == (413, 5000)


async def test_creates_during_a_complete_count_the_completing_upload(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Quota 15,000 with 10,000 held: creates fired while a 5,000-byte upload completes (storage has completed it,
    the database not yet) must not pass because the completing upload counted as nothing. The interleaving is
    pinned: storage's complete returns only once every create has reached the database, and those reach it only
    once the complete is recorded (issue 24, A4)."""
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, PART_SIZE=str(PART), QUOTA="15000"
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        for n in range(2):
            await api.upload(bytes([n]) * 5000, f"held {n}")
        init = await api.init(5000, "completing")
        url = (await api.sign(init["id"], [1]))[0]["url"]
        etag = await put(session, url, b"c" * 5000)

        creates = 4
        storage_completed, creates_waiting, recorded = asyncio.Event(), asyncio.Event(), asyncio.Event()
        arrived = 0
        storage, store = gateway.app[STORAGE], gateway.app[STORE]
        real_complete, real_begin = storage.complete_multipart_upload, store.begin_backup

        async def complete_then_wait(*args: Any, **kwargs: Any) -> None:
            await real_complete(*args, **kwargs)
            storage_completed.set()
            await asyncio.wait_for(creates_waiting.wait(), 10)

        async def begin_once_recorded(*args: Any, **kwargs: Any) -> None:
            nonlocal arrived
            arrived += 1
            if arrived == creates:
                creates_waiting.set()
            await asyncio.wait_for(recorded.wait(), 10)
            await real_begin(*args, **kwargs)

        monkeypatch.setattr(storage, "complete_multipart_upload", complete_then_wait)
        monkeypatch.setattr(store, "begin_backup", begin_once_recorded)
        completing = asyncio.create_task(
            api.call(
                "POST", f"/v1/backups/{init['id']}/complete", {"parts": [{"part_number": 1, "etag": etag}]}
            )
        )
        await asyncio.wait_for(storage_completed.wait(), 10)
        fired = [
            asyncio.create_task(api.call("POST", "/v1/backups", {"name": f"racing {n}", "size": 5000}))
            for n in range(creates)
        ]
        status, _ = await completing
        assert status == 200
        recorded.set()
        answers = await asyncio.gather(*fired)
        monkeypatch.undo()

        assert [(status, body.get("error", {}).get("code")) for status, body in answers] == [
            (413, "quota_exceeded")
        ] * creates
        assert all(body["error"]["used_bytes"] == 15000 for _, body in answers)
        assert (await api.ok("GET", "/v1/instance"))["usage"]["bytes"] == 15000
        assert [b["name"] for b in (await api.ok("GET", "/v1/backups"))["backups"]] == [
            "completing",
            "held 1",
            "held 0",
        ]


async def test_a_failed_upload_keeps_no_metadata(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """Up to 64 KiB of description per create, kept 7 days for every failed upload, would be a database's worth a
    week per token outside any quota: the description is dropped as the upload fails, whether aborted, swept
    as stale, or failed by a revocation (issue 24, A10). Nothing needs it after: it is what a completed backup
    is listed and restored with."""
    big = {"backup_id": "x", "padding": "p" * 60_000}
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, STALE_UPLOAD_AFTER="3600"
    ) as gateway:
        store = gateway.app[STORE]
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        aborted = await api.init(10, metadata=big)
        assert (await store.get_backup(aborted["id"])).metadata == big  # type: ignore[union-attr]
        await api.ok("DELETE", f"/v1/backups/{aborted['id']}/upload", expect=204)
        stale = await api.init(10, metadata=big)
        assert (await gateway.run_sweeper_once(time.time() + 7200)).stale_failed == 1
        _, cottage_token = await gateway.add_instance("cottage")
        revoked = await Api(session, gateway.url, cottage_token).init(10, metadata=big)
        await gateway.revoke_instance("cottage")
        for backup_id in (aborted["id"], stale["id"], revoked["id"]):
            row = await store.get_backup(backup_id)
            assert row is not None
            assert (row.status, row.metadata) == ("failed", {}), backup_id
        answer = await api.ok("GET", f"/v1/backups/{aborted['id']}")
        assert answer["backup"]["metadata"] == {}
        # A completed backup keeps its description.
        done = await api.upload(b"kept", metadata=big)
        assert done["metadata"] == big
        assert (await store.get_backup(done["id"])).metadata == big  # type: ignore[union-attr]
