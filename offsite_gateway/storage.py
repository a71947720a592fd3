"""S3-compatible storage: multipart uploads through aiobotocore, URLs presigned locally by botocore.

Presigning needs no network: botocore's SigV4 query signer (`S3SigV4QueryAuth`) signs a request built once per URL.
Going through the signer directly rather than `generate_presigned_url` skips botocore's whole request pipeline
(parameter validation, serialisation, event hooks), about 2.3x faster, and yields the same URL (tested).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from aiobotocore.session import get_session  # type: ignore[import-untyped]
from botocore.auth import S3SigV4QueryAuth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from .config import Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

_LOGGER = logging.getLogger(__name__)

MAX_POOL_CONNECTIONS = 100


class StorageError(Exception):
    """Storage refused or could not be reached; the message says what it answered (never a credential)."""

    def __init__(self, operation: str, detail: str, code: str | None = None) -> None:
        super().__init__(f"{operation}: {detail}")
        self.operation = operation
        self.code = code


@dataclass(frozen=True)
class StoredPart:
    """A part storage holds for a multipart upload."""

    part_number: int
    etag: str
    size: int


@dataclass(frozen=True)
class StoredObject:
    """An object in the bucket, as a listing shows it."""

    key: str
    size: int


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload in progress in the bucket."""

    key: str
    upload_id: str
    initiated: datetime | None


def _error(operation: str, err: BaseException) -> StorageError:
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        code = str(error.get("Code", "")) or None
        message = str(error.get("Message", "")) or "no message"
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return StorageError(operation, f"{code or 'error'} (HTTP {status}): {message}", code)
    if isinstance(err, TimeoutError):
        return StorageError(operation, "timed out")
    return StorageError(operation, f"{type(err).__name__}: {err}")


_STORAGE_EXCEPTIONS = (ClientError, BotoCoreError, aiohttp.ClientError, TimeoutError, OSError)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Presigner:
    """Presigns S3 requests with SigV4 query authentication, without network or botocore's request pipeline.

    Virtual-host addressing falls back to path style on an IP address endpoint, as botocore does.
    """

    def __init__(self, settings: Settings) -> None:
        endpoint = settings.presign_endpoint or f"https://s3.{settings.s3_region}.amazonaws.com"
        parts = urlsplit(endpoint)
        base_path = parts.path.rstrip("/")
        if settings.s3_addressing == "virtual" and not _is_ip(parts.hostname or ""):
            self._base = f"{parts.scheme}://{settings.s3_bucket}.{parts.netloc}{base_path}/"
        else:
            self._base = f"{parts.scheme}://{parts.netloc}{base_path}/{settings.s3_bucket}/"
        self._credentials = Credentials(settings.s3_access_key, settings.s3_secret_key)
        self._region = settings.s3_region

    def url(self, method: str, key: str, expires: int, query: Mapping[str, str | int] | None = None) -> str:
        """A presigned URL for `method` on `key` with the operation's query parameters, valid `expires` s."""
        url = self._base + quote(key, safe="/~")
        if query:
            url += "?" + urlencode(query)
        request = AWSRequest(method=method, url=url)
        S3SigV4QueryAuth(self._credentials, "s3", self._region, expires=expires).add_auth(request)
        signed: str = request.url
        return signed

    def upload_part(self, key: str, upload_id: str, part_number: int, expires: int) -> str:
        """UploadPart: the query (uploadId, partNumber) is part of what is signed."""
        return self.url("PUT", key, expires, {"uploadId": upload_id, "partNumber": part_number})

    def get_object(self, key: str, expires: int) -> str:
        """GetObject."""
        return self.url("GET", key, expires)


class Storage:
    """The bucket the gateway manages, through one aiobotocore client."""

    page_size = 1000  # ListParts / ListMultipartUploads page (S3's maximum)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.presigner = Presigner(settings)
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: S3Client | None = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("storage is not open")
        return self._client

    async def open(self) -> None:
        """Create the S3 client (no request is made)."""
        settings = self.settings
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": settings.s3_addressing},
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=MAX_POOL_CONNECTIONS,
            # botocore >= 1.36 adds CRC checksums to every request and checks them on responses; several
            # S3-compatible servers reject or lack them. Multipart integrity is the ETag/size check at complete.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Our own code builds every request: botocore's per-call parameter validation is pure overhead.
            parameter_validation=False,
        )
        stack = contextlib.AsyncExitStack()
        session = get_session()
        try:
            self._client = await stack.enter_async_context(
                session.create_client(
                    "s3",
                    endpoint_url=settings.s3_endpoint,
                    region_name=settings.s3_region,
                    aws_access_key_id=settings.s3_access_key,
                    aws_secret_access_key=settings.s3_secret_key,
                    config=config,
                )
            )
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._client = self._stack, None, None
            await stack.aclose()

    async def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return await getattr(self.client, operation)(Bucket=self.bucket, **kwargs)
        except _STORAGE_EXCEPTIONS as err:
            raise _error(operation, err) from None

    async def head_bucket(self) -> None:
        await self._call("head_bucket")

    async def create_bucket(self) -> bool:
        """Create the bucket; False if it already existed (and is ours)."""
        try:
            await self.head_bucket()
        except StorageError as err:
            if err.code not in ("404", "NoSuchBucket", "NotFound"):
                raise
        else:
            return False
        kwargs: dict[str, Any] = {}
        if self.settings.s3_region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.settings.s3_region}
        try:
            await self._call("create_bucket", **kwargs)
        except StorageError as err:
            if err.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return False
            raise
        return True

    async def create_multipart_upload(self, key: str) -> str:
        response = await self._call("create_multipart_upload", Key=key)
        upload_id: str = response["UploadId"]
        return upload_id

    async def list_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        """Every part storage holds for the upload, ascending."""
        parts: list[StoredPart] = []
        marker = 0
        while True:
            response = await self._call(
                "list_parts", Key=key, UploadId=upload_id, MaxParts=self.page_size, PartNumberMarker=marker
            )
            for part in response.get("Parts", []):
                parts.append(StoredPart(int(part["PartNumber"]), str(part["ETag"]), int(part["Size"])))
            if not response.get("IsTruncated"):
                break
            next_marker = int(response.get("NextPartNumberMarker") or 0)
            if next_marker <= marker:
                break
            marker = next_marker
        parts.sort(key=lambda part: part.part_number)
        return parts

    async def complete_multipart_upload(self, key: str, upload_id: str, parts: Sequence[StoredPart]) -> None:
        await self._call(
            "complete_multipart_upload",
            Key=key,
            UploadId=upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": part.part_number, "ETag": part.etag} for part in parts]
            },
        )

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """Abort; an upload storage no longer knows counts as aborted."""
        try:
            await self._call("abort_multipart_upload", Key=key, UploadId=upload_id)
        except StorageError as err:
            if err.code != "NoSuchUpload":
                raise

    async def object_size(self, key: str) -> int | None:
        """The object's size, or None if there is no such object."""
        try:
            response = await self._call("head_object", Key=key)
        except StorageError as err:
            if err.code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        size: int = response["ContentLength"]
        return size

    async def delete_object(self, key: str) -> None:
        """Delete; an object already gone counts as deleted."""
        try:
            await self._call("delete_object", Key=key)
        except StorageError as err:
            if err.code != "NoSuchKey":
                raise

    async def put_object(self, key: str, body: bytes, content_type: str = "application/json") -> None:
        await self._call("put_object", Key=key, Body=body, ContentType=content_type)

    async def get_object(self, key: str, max_size: int) -> bytes | None:
        """A small object's bytes (at most `max_size`, else StorageError); None if there is no such object."""
        try:
            response = await self._call("get_object", Key=key)
        except StorageError as err:
            if err.code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        async with response["Body"] as body:
            if int(response.get("ContentLength") or 0) > max_size:
                raise StorageError("get_object", f"{key} is larger than {max_size} bytes")
            try:
                data: bytes = await body.read()
            except _STORAGE_EXCEPTIONS as err:
                raise _error("get_object", err) from None
        return data

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        """Every object under `prefix`, page by page, in key order."""
        token: dict[str, str] = {}
        while True:
            response = await self._call("list_objects_v2", Prefix=prefix, MaxKeys=self.page_size, **token)
            for item in response.get("Contents", []):
                yield StoredObject(item["Key"], int(item["Size"]))
            next_token = response.get("NextContinuationToken")
            if not response.get("IsTruncated") or not next_token:
                break
            token = {"ContinuationToken": next_token}

    async def list_multipart_uploads(self, prefix: str) -> list[PendingUpload]:
        uploads: list[PendingUpload] = []
        markers: dict[str, str] = {}
        while True:
            response = await self._call(
                "list_multipart_uploads", Prefix=prefix, MaxUploads=self.page_size, **markers
            )
            for upload in response.get("Uploads", []):
                uploads.append(PendingUpload(upload["Key"], upload["UploadId"], upload.get("Initiated")))
            if not response.get("IsTruncated"):
                break
            key_marker = response.get("NextKeyMarker")
            upload_marker = response.get("NextUploadIdMarker")
            if not key_marker:
                break
            new_markers = {"KeyMarker": key_marker}
            if upload_marker:
                new_markers["UploadIdMarker"] = upload_marker
            if new_markers == markers:
                break
            markers = new_markers
        return uploads
