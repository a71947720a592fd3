"""Security properties of the URLs the gateway signs (moto does not check them; test_seaweedfs_urls.py proves them on SeaweedFS)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import boto3
import pytest
from botocore.config import Config

from offsite_gateway.config import load_settings
from offsite_gateway.storage import Presigner
from tests.gateway.api import Api
from tests.helpers.gateway import GatewayDatabase, run_gateway
from tests.helpers.servers import S3Server


def _query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def assert_sigv4(url: str, ttl: int, method_params: dict[str, str], signed_headers: str = "host") -> None:
    pairs = _query(url)
    query = dict(pairs)
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert 1 <= int(query["X-Amz-Expires"]) <= ttl
    assert query["X-Amz-SignedHeaders"] == signed_headers
    assert query["X-Amz-Credential"].endswith("/us-east-1/s3/aws4_request")
    assert len(query["X-Amz-Signature"]) == 64
    # The operation's parameters are in the query, before the signature: SigV4 query auth signs every query
    # parameter but X-Amz-Signature, so changing one of them breaks the signature.
    assert pairs[-1][0] == "X-Amz-Signature"
    for name, value in method_params.items():
        assert query[name] == value
    assert "X-Amz-Security-Token" not in query
    signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs(signed_at - datetime.now(UTC)) < timedelta(minutes=1)


async def test_part_and_download_urls(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, URL_TTL="300", PART_SIZE="5MiB"
    ) as gateway:
        instance_id, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        init = await api.init(3 * 5 * 1024 * 1024)
        parts = await api.sign(init["id"], [3, 1])
        upload_id = moto_server.client().list_multipart_uploads(Bucket=moto_bucket)["Uploads"][0]["UploadId"]
        for part in parts:
            url = part["url"]
            assert url.startswith(f"{moto_server.endpoint}/{moto_bucket}/{instance_id}/{init['id']}?")
            # A part's exact length is signed: storage refuses a PUT of any other (test_seaweedfs_urls.py).
            assert_sigv4(
                url,
                300,
                {"partNumber": str(part["part_number"]), "uploadId": upload_id},
                "content-length;host",
            )
            expires_at = datetime.fromisoformat(part["expires_at"])
            signed_at = datetime.strptime(dict(_query(url))["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(
                tzinfo=UTC
            )
            # Announced no later than the real expiry, and not much earlier.
            assert signed_at + timedelta(seconds=300) - timedelta(seconds=2) <= expires_at
            assert expires_at <= signed_at + timedelta(seconds=300)
        await api.ok("DELETE", f"/v1/backups/{init['id']}/upload", expect=204)

        backup = await api.upload(b"data")
        download = await api.ok("POST", f"/v1/backups/{backup['id']}/download")
        assert urlsplit(download["url"]).path == f"/{moto_bucket}/{instance_id}/{backup['id']}"
        assert_sigv4(download["url"], 300, {})


async def test_public_endpoint_goes_into_urls(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    async with run_gateway(
        moto_server,
        moto_bucket,
        tmp_path,
        database=database,
        S3_PUBLIC_ENDPOINT="https://backups.example.org/s3/",
    ) as gateway:
        _, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        init = await api.init(10)  # the gateway itself still talks to moto
        url = (await api.sign(init["id"], [1]))[0]["url"]
        assert url.startswith(f"https://backups.example.org/s3/{moto_bucket}/")
        assert_sigv4(url, 900, {"partNumber": "1"}, "content-length;host")


def _settings(addressing: str, endpoint: str = "http://127.0.0.1:9000") -> dict[str, str]:
    return {
        "OFFSITE_GATEWAY_S3_ENDPOINT": endpoint,
        "OFFSITE_GATEWAY_S3_BUCKET": "bkt",
        "OFFSITE_GATEWAY_S3_ACCESS_KEY": "AKIDEXAMPLE",
        "OFFSITE_GATEWAY_S3_SECRET_KEY": "secret",
        "OFFSITE_GATEWAY_S3_REGION": "eu-west-3",
        "OFFSITE_GATEWAY_S3_ADDRESSING": addressing,
    }


@pytest.mark.parametrize("addressing", ["path", "virtual"])
@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:9000", "https://storage.example.org", "http://minio:9000"]
)
@pytest.mark.parametrize("key", ["inst/abc", "pre fix/it's(1)/x~y*z"])
def test_presigner_matches_botocore_generate_presigned_url(
    freezer: object, addressing: str, endpoint: str, key: str
) -> None:
    """The fast path signs exactly what botocore's full pipeline signs."""
    presigner = Presigner(load_settings(_settings(addressing, endpoint)))
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="eu-west-3",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=Config(signature_version="s3v4", s3={"addressing_style": addressing}),
    )
    expected = client.generate_presigned_url(
        "upload_part",
        Params={"Bucket": "bkt", "Key": key, "UploadId": "u/p+id=", "PartNumber": 7, "ContentLength": 1234},
        ExpiresIn=600,
    )
    assert "X-Amz-SignedHeaders=content-length%3Bhost&" in expected
    assert presigner.upload_part(key, "u/p+id=", 7, 600, 1234) == expected
    expected = client.generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": key}, ExpiresIn=60)
    assert presigner.get_object(key, 60) == expected


def test_presigner_without_endpoint_uses_aws() -> None:
    settings = load_settings({k: v for k, v in _settings("virtual").items() if "ENDPOINT" not in k})
    assert Presigner(settings).get_object("a/b", 60).startswith("https://bkt.s3.eu-west-3.amazonaws.com/a/b?")
