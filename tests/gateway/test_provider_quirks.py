"""What real providers break (../shared/research/s3-providers.md), on SeaweedFS behind a proxy that records every
storage request and plays the stricter providers' rules (tests/helpers/s3proxy.py):

- no storage call of the gateway, in a whole backup's life, carries an SDK integrity-checksum header (B2, Hetzner
  and others refuse them), and every one is SigV4, header-signed or presigned;
- every presigned URL is SigV4 whatever the region and endpoint (botocore presigns SigV2 for us-east-1 unless told);
- every part but the last has the same size (R2 refuses otherwise at complete), and a complete storage refuses
  for a part's size is answered with the part named;
- `MAX_PARTS` (Scaleway: 1,000) raises the part size of big backups, and never past S3's 5 GiB part.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import boto3
import pytest
from botocore.config import Config

from offsite_gateway.app import STORAGE, STORE
from offsite_gateway.cli import _backup_delete
from offsite_gateway.config import GIB, MIB, S3_MAX_PART_SIZE, ConfigError, load_settings
from offsite_gateway.parts import TooLarge, largest_backup, plan_parts
from offsite_gateway.storage import Presigner
from tests.gateway.api import Api, put
from tests.helpers.gateway import GatewayDatabase, run_gateway
from tests.helpers.s3proxy import S3Proxy
from tests.helpers.servers import S3Server

PART = 5 * MIB


def _through(proxy: S3Proxy, server: S3Server) -> S3Server:
    """`server` as the gateway sees it: every request through the proxy."""
    return S3Server(
        "proxy",
        proxy.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        region=server.region,
    )


@pytest.mark.parametrize("object_lock", [False, True], ids=["plain", "object-lock"])
async def test_a_backups_whole_life_sends_no_checksum_header_and_only_sigv4(
    seaweedfs_server: S3Server,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
    object_lock: bool,
) -> None:
    """Bucket created, backup begun, parts signed, PUT, listed, completed, its manifest written (and locked),
    downloaded, the instance's usage read; retention deletes it, another upload is aborted, the sweeper lists and
    aborts an orphan, the operator deletes the last backup: every request storage got, whoever sent it, was
    SigV4 and without an SDK checksum header, and none was refused by the providers' rules."""
    bucket = f"quirks-{os.urandom(6).hex()}"
    async with S3Proxy(
        seaweedfs_server.endpoint, no_checksums=True, sigv4_only=True, equal_parts=True, max_parts=1000
    ) as proxy:
        lock = {"OBJECT_LOCK": "true", "PROTECT_DAYS": "1"} if object_lock else {}
        async with run_gateway(
            _through(proxy, seaweedfs_server),
            bucket,
            tmp_path,
            database=database,
            PART_SIZE=str(PART),
            RETENTION="1",
            MAX_PARTS="1000",
            **lock,
        ) as gateway:
            assert await gateway.app[STORAGE].create_bucket() is True
            _, token = await gateway.add_instance("home")
            api = Api(session, gateway.url, token)
            data = os.urandom(2 * PART + 1000)
            init = await api.init(len(data))
            parts = []
            for part in await api.sign(init["id"], [1, 2, 3]):
                number = part["part_number"]
                parts.append(
                    {"part_number": number, "etag": await put(session, part["url"], _part(data, number))}
                )
            assert len((await api.ok("GET", f"/v1/backups/{init['id']}/parts"))["parts"]) == 3
            assert (await api.ok("GET", "/v1/instance"))["usage"]["bytes"] == len(data)
            first = (await api.ok("POST", f"/v1/backups/{init['id']}/complete", {"parts": parts}))["backup"]
            url = (await api.ok("POST", f"/v1/backups/{first['id']}/download"))["url"]
            async with session.get(url) as resp:
                assert resp.status == 200
                assert await resp.read() == data
            second = await api.upload(b"second")
            await gateway.purged()  # retention (keep-last 1) deleted the first
            aborted = await api.init(10)
            await api.sign(aborted["id"], [1])
            await api.ok("DELETE", f"/v1/backups/{aborted['id']}/upload", expect=204)
            row = await gateway.app[STORE].get_backup(second["id"])
            assert row is not None
            instance_prefix = row.object_key.rsplit("/", 1)[0]
            seaweedfs_server.client().create_multipart_upload(Bucket=bucket, Key=f"{instance_prefix}/orphan")
            assert (await gateway.run_sweeper_once()).orphans_aborted == 1
            assert await _backup_delete(gateway.settings, second["id"]) == 0

        assert proxy.refused == []
        expected = {
            "CreateBucket",
            "CreateMultipartUpload",
            "UploadPart",
            "ListParts",
            "CompleteMultipartUpload",
            "PutObject",
            "GetObject",
            "AbortMultipartUpload",
            "ListMultipartUploads",
        }
        expected |= (
            {"PutObjectRetention", "ListObjectVersions", "DeleteObjectVersion"}
            if object_lock
            else {"DeleteObjects"}
        )
        assert expected <= proxy.operations(), proxy.operations()
        # `bucket create` asks first whether the bucket is there (404); every other call succeeded.
        assert [(r.operation, r.status) for r in proxy.requests[:2]] == [
            ("HeadBucket", 404),
            ("CreateBucket", 200),
        ]
        for request in proxy.requests:
            assert request.checksum_headers() == [], (request.operation, request.headers)
            assert request.sigv4(), (request.operation, request.headers, request.query)
        for request in proxy.requests[1:]:
            assert 200 <= request.status < 300, (request.operation, request.status)
        presigned = {request.operation for request in proxy.requests if request.presigned}
        assert presigned == {"UploadPart", "GetObject"}


def _part(data: bytes, number: int) -> bytes:
    return data[(number - 1) * PART : number * PART]


async def test_the_proxy_catches_an_sdks_default_checksums(
    seaweedfs_server: S3Server, seaweedfs_bucket: str
) -> None:
    """The rule above can fail: boto3's default client (botocore >= 1.36) adds its checksum headers, which the
    proxy records and refuses as B2 does; with `when_required` (what core's aws_s3 sets) it adds none."""
    async with S3Proxy(seaweedfs_server.endpoint, no_checksums=True) as proxy:

        def client(**config: str) -> object:
            return boto3.client(
                "s3",
                endpoint_url=proxy.endpoint,
                aws_access_key_id=seaweedfs_server.access_key,
                aws_secret_access_key=seaweedfs_server.secret_key,
                region_name="us-east-1",
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, **config),
            )

        def default_put() -> str:
            try:
                client().put_object(Bucket=seaweedfs_bucket, Key="k", Body=b"x")  # type: ignore[attr-defined]
            except Exception as err:
                return type(err).__name__
            return "stored"

        assert await asyncio.to_thread(default_put) == "ClientError"
        assert [code for _, code in proxy.refused] == ["InvalidArgument"]
        assert proxy.requests[-1].checksum_headers()
        careful = client(request_checksum_calculation="when_required")
        await asyncio.to_thread(careful.put_object, Bucket=seaweedfs_bucket, Key="k", Body=b"x")  # type: ignore[attr-defined]
        assert proxy.requests[-1].checksum_headers() == []
        assert proxy.requests[-1].status == 200


def _sigv4_query(url: str, region: str) -> dict[str, str]:
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    assert query.get("X-Amz-Algorithm") == "AWS4-HMAC-SHA256", url
    assert query["X-Amz-Credential"].endswith(f"/{region}/s3/aws4_request"), url
    assert len(query["X-Amz-Signature"]) == 64
    assert not {"AWSAccessKeyId", "Signature", "Expires"} & set(query), url  # SigV2's parameters
    return query


@pytest.mark.parametrize(
    ("region", "endpoint"),
    [
        ("us-east-1", None),  # AWS: where botocore, left alone, presigns SigV2
        ("us-east-1", "https://s3.amazonaws.com"),
        ("eu-central-1", None),
        ("auto", "https://0123456789abcdef.r2.cloudflarestorage.com"),  # Cloudflare R2
        ("fr-par", "https://s3.fr-par.scw.cloud"),  # Scaleway
        ("us-west-004", "https://s3.us-west-004.backblazeb2.com"),  # Backblaze B2
        ("eu-central-2", "https://s3.eu-central-2.wasabisys.com"),  # Wasabi
        ("fsn1", "https://fsn1.your-objectstorage.com"),  # Hetzner
        ("us-east-1", "http://127.0.0.1:8333/s3"),  # self-hosted, behind a path
    ],
)
@pytest.mark.parametrize("addressing", ["path", "virtual"])
def test_every_presigned_url_is_sigv4(region: str, endpoint: str | None, addressing: str) -> None:
    env = {
        "OFFSITE_GATEWAY_S3_BUCKET": "bkt",
        "OFFSITE_GATEWAY_S3_ACCESS_KEY": "AKIDEXAMPLE",
        "OFFSITE_GATEWAY_S3_SECRET_KEY": "secret",
        "OFFSITE_GATEWAY_S3_REGION": region,
        "OFFSITE_GATEWAY_S3_ADDRESSING": addressing,
    }
    if endpoint:
        env["OFFSITE_GATEWAY_S3_PUBLIC_ENDPOINT"] = endpoint
    presigner = Presigner(load_settings(env))
    part = _sigv4_query(presigner.upload_part("i/b", "upload", 3, 900, PART), region)
    assert part["X-Amz-SignedHeaders"] == "content-length;host"
    assert (part["partNumber"], part["uploadId"]) == ("3", "upload")
    assert _sigv4_query(presigner.get_object("i/b", 900), region)["X-Amz-SignedHeaders"] == "host"


def test_the_sigv4_check_can_fail() -> None:
    """botocore's own presigning, without `signature_version="s3v4"`, gives SigV2 for us-east-1: the check
    above refuses it."""
    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret"
    )
    url = client.generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": "i/b"}, ExpiresIn=60)
    if "X-Amz-Algorithm" in url:
        pytest.skip("this botocore presigns SigV4 by default")
    with pytest.raises(AssertionError):
        _sigv4_query(url, "us-east-1")


# --- part sizes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_parts", [1, 3, 1000, 10_000])
@pytest.mark.parametrize(
    "size",
    [1, PART - 1, PART, PART + 1, 20 * MIB * 1000, 20 * MIB * 1000 + 1, 19 * GIB, 50 * GIB, 5 * 1024 * GIB],
)
def test_parts_are_equal_but_the_last_and_within_the_limits(size: int, max_parts: int) -> None:
    if size > largest_backup(max_parts):
        with pytest.raises(TooLarge):
            plan_parts(size, 20 * MIB, max_parts)
        return
    part_size, count = plan_parts(size, 20 * MIB, max_parts)
    assert count <= max_parts
    assert 20 * MIB <= part_size <= S3_MAX_PART_SIZE
    assert part_size % MIB == 0
    last = size - (count - 1) * part_size
    assert 0 < last <= part_size  # every part `part_size` but the last, which is not larger
    if part_size > 20 * MIB:  # raised: to the smallest whole MiB that fits
        assert plan_parts(size, part_size - MIB, max_parts)[0] == part_size
        assert -(-size // (part_size - MIB)) > max_parts


def test_scaleways_thousand_parts() -> None:
    """20 MiB parts hold 19.5 GiB in 1,000 parts; a 50 GiB backup gets 52 MiB parts there."""
    assert plan_parts(20 * MIB * 1000, 20 * MIB, 1000) == (20 * MIB, 1000)
    assert plan_parts(50 * GIB, 20 * MIB, 1000) == (52 * MIB, 985)
    assert plan_parts(50 * GIB, 20 * MIB) == (20 * MIB, 2560)


def _env(**settings: str) -> dict[str, str]:
    base = {"S3_BUCKET": "bkt", "S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "b"}
    return {f"OFFSITE_GATEWAY_{name}": value for name, value in {**base, **settings}.items()}


def test_max_parts_setting() -> None:
    assert load_settings(_env()).max_parts == 10_000
    assert load_settings(_env(MAX_PARTS="1000")).max_parts == 1000
    for bad in ("0", "10001", "many"):
        with pytest.raises(ConfigError, match="OFFSITE_GATEWAY_MAX_PARTS"):
            load_settings(_env(MAX_PARTS=bad))
    # 10 parts of at most 5 GiB hold 50 GiB, the default largest backup; 9 do not: the setting says so at start.
    assert load_settings(_env(MAX_PARTS="10")).max_backup_bytes == 50 * GIB
    with pytest.raises(
        ConfigError, match=r"MAX_BACKUP_BYTES=53687091200 does not fit in .*MAX_PARTS=9 .*45 GiB"
    ):
        load_settings(_env(MAX_PARTS="9"))
    with pytest.raises(ConfigError, match="MAX_BACKUP_BYTES"):
        load_settings(_env(MAX_PARTS="1000", MAX_BACKUP_BYTES="5TiB"))
    assert load_settings(_env(MAX_PARTS="1000", MAX_BACKUP_BYTES="4000GiB")).max_parts == 1000


async def test_the_gateway_plans_within_max_parts_and_signs_each_exact_length(
    seaweedfs_server: S3Server,
    seaweedfs_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """MAX_PARTS=3 (Scaleway's rule, scaled down): a backup of 3.5 parts gets a bigger part size, kept for the
    upload; each URL signs its exact length, all the part size but the last; storage (behind Scaleway's and R2's
    rules) takes them and the backup completes."""
    async with S3Proxy(seaweedfs_server.endpoint, max_parts=3, equal_parts=True) as proxy:
        async with run_gateway(
            _through(proxy, seaweedfs_server),
            seaweedfs_bucket,
            tmp_path,
            database=database,
            PART_SIZE=str(PART),
            MAX_PARTS="3",
            MAX_BACKUP_BYTES="15GiB",
        ) as gateway:
            _, token = await gateway.add_instance("home")
            api = Api(session, gateway.url, token)
            data = os.urandom(3 * PART + PART // 2)
            init = await api.init(len(data))
            assert (init["part_size"], init["part_count"]) == (6 * MIB, 3)
            signed = await api.sign(init["id"], [1, 2, 3])
            parts = []
            for part in signed:
                number = part["part_number"]
                chunk = data[(number - 1) * 6 * MIB : number * 6 * MIB]
                parts.append({"part_number": number, "etag": await put(session, part["url"], chunk)})
            backup = (await api.ok("POST", f"/v1/backups/{init['id']}/complete", {"parts": parts}))["backup"]
            assert (backup["size"], backup["part_size"], backup["part_count"]) == (len(data), 6 * MIB, 3)
            row = await gateway.app[STORE].get_backup(backup["id"])
            assert row is not None
            assert row.upload_id is not None
            # What storage received: every part the part size but the last (the URLs sign each exact length).
            assert proxy.part_sizes(row.upload_id) == {1: 6 * MIB, 2: 6 * MIB, 3: len(data) - 12 * MIB}
            # Over what 3 parts of 5 GiB hold: refused before anything starts (MAX_BACKUP_BYTES is 15 GiB).
            status, body = await api.call("POST", "/v1/backups", {"name": "big", "size": 15 * GIB + 1})
            assert (status, body["error"]["code"]) == (413, "quota_exceeded")
        assert proxy.refused == []
        assert max(int(r.query["partNumber"]) for r in proxy.requests if r.operation == "UploadPart") == 3


@pytest.mark.parametrize("storage_rule", ["EntityTooSmall", "InvalidPart"])
async def test_a_complete_storage_refuses_for_a_parts_size_names_the_part(
    seaweedfs_server: S3Server,
    seaweedfs_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
    storage_rule: str,
) -> None:
    """A part of another length than its URL signs cannot come through the URL (storage refuses the PUT); put
    there by other means (storage's own keys, or a storage that ignored the signed length), storage refuses the
    complete: SeaweedFS for a middle part under 5 MiB (EntityTooSmall), R2 for unequal parts (InvalidPart, played
    by the proxy). The gateway then lists the parts and its 409 names the one of the wrong size; nothing is
    recorded as completed."""
    async with S3Proxy(seaweedfs_server.endpoint, equal_parts=storage_rule == "InvalidPart") as proxy:
        async with run_gateway(
            _through(proxy, seaweedfs_server),
            seaweedfs_bucket,
            tmp_path,
            database=database,
            PART_SIZE=str(PART),
        ) as gateway:
            _, token = await gateway.add_instance("home")
            api = Api(session, gateway.url, token)
            data = os.urandom(2 * PART + 1000)
            init = await api.init(len(data))
            urls = {p["part_number"]: p["url"] for p in await api.sign(init["id"], [1, 2, 3])}
            row = await gateway.app[STORE].get_backup(init["id"])
            assert row is not None
            assert row.upload_id is not None
            wrong = b"x" * (1000 if storage_rule == "EntityTooSmall" else PART + 1)
            keys = boto3.client(
                "s3",
                endpoint_url=proxy.endpoint,
                aws_access_key_id=seaweedfs_server.access_key,
                aws_secret_access_key=seaweedfs_server.secret_key,
                region_name="us-east-1",
                config=Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    request_checksum_calculation="when_required",
                ),
            )
            stored = await asyncio.to_thread(
                keys.upload_part,
                Bucket=seaweedfs_bucket,
                Key=row.object_key,
                UploadId=row.upload_id,
                PartNumber=1,
                Body=wrong,
            )
            parts = [{"part_number": 1, "etag": stored["ETag"]}]
            for number in (2, 3):
                parts.append(
                    {"part_number": number, "etag": await put(session, urls[number], _part(data, number))}
                )
            status, body = await api.call("POST", f"/v1/backups/{init['id']}/complete", {"parts": parts})
            assert (status, body["error"]["code"]) == (409, "size_mismatch"), body
            assert f"part 1 holds {len(wrong)} bytes, {PART} expected" in body["error"]["message"]
            assert (await api.ok("GET", f"/v1/backups/{init['id']}"))["backup"]["status"] == "uploading"
            assert (await api.ok("GET", "/v1/backups"))["backups"] == []
        refused = [code for _, code in proxy.refused]
        assert refused == (["InvalidPart"] if storage_rule == "InvalidPart" else [])
