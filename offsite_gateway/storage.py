"""S3-compatible storage: multipart uploads through signed requests (s3.py), URLs presigned locally by botocore.

Presigning needs no network: botocore's SigV4 query signer (`S3SigV4QueryAuth`) signs a request built once per URL.
Going through the signer directly rather than `generate_presigned_url` skips botocore's whole request pipeline
(parameter validation, serialisation, event hooks), about 2.3x faster, and yields the same URL (tested). A part's
URL also signs its exact length: `Content-Length` is among its signed headers, so storage refuses a PUT of any
other length (the quota holds whatever a token holder sends). The calls to storage itself are header-signed by
botocore's `S3SigV4Auth` and sent with aiohttp (s3.py).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlencode, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from botocore.auth import S3SigV4QueryAuth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]

from .config import Settings
from .s3 import Answer, S3Client, S3Error, child_text, children, local

_LOGGER = logging.getLogger(__name__)

MAX_POOL_CONNECTIONS = 100
DELETE_BATCH = 1000  # keys in one DeleteObjects call (S3's maximum)


class StorageError(Exception):
    """Storage refused or could not be reached; the message says what it answered (never a credential)."""

    def __init__(
        self, operation: str, detail: str, code: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(f"{operation}: {detail}")
        self.operation = operation
        self.code = code
        self.status = status  # storage's HTTP status; 0: no answer (unreachable, timed out); None: not said


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


def _error(operation: str, err: S3Error) -> StorageError:
    if err.status == 0:
        return StorageError(operation, err.message, err.code, 0)
    return StorageError(
        operation, f"{err.code or 'error'} (HTTP {err.status}): {err.message}", err.code, err.status
    )


XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"


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
        self._signers: dict[int, S3SigV4QueryAuth] = {}  # by lifetime: one URL_TTL, so one signer

    def _signer(self, expires: int) -> S3SigV4QueryAuth:
        signer = self._signers.get(expires)
        if signer is None:
            if len(self._signers) > 16:
                self._signers.clear()
            signer = self._signers[expires] = S3SigV4QueryAuth(
                self._credentials, "s3", self._region, expires=expires
            )
        return signer

    def url(
        self,
        method: str,
        key: str,
        expires: int,
        query: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """A presigned URL for `method` on `key` with the operation's query parameters, valid `expires` s;
        `headers` are signed too (the request must then send them with these values)."""
        url = self._base + quote(key, safe="/~")
        if query:
            url += "?" + urlencode(query)
        request = AWSRequest(method=method, url=url, headers=dict(headers or {}))
        self._signer(expires).add_auth(request)
        signed: str = request.url
        return signed

    def upload_part(self, key: str, upload_id: str, part_number: int, expires: int, length: int) -> str:
        """UploadPart of exactly `length` bytes: the query (uploadId, partNumber) and `Content-Length` are part
        of what is signed."""
        return self.url(
            "PUT",
            key,
            expires,
            {"uploadId": upload_id, "partNumber": part_number},
            {"Content-Length": str(length)},
        )

    def get_object(self, key: str, expires: int) -> str:
        """GetObject."""
        return self.url("GET", key, expires)


class Storage:
    """The bucket the gateway manages, through `S3Client` (signed aiohttp requests; see s3.py)."""

    page_size = 1000  # ListParts / ListMultipartUploads / ListObjectsV2 page (S3's maximum)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.presigner = Presigner(settings)
        self._client: S3Client | None = None

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("storage is not open")
        return self._client

    async def open(self) -> None:
        """Create the S3 client (no request is made)."""
        settings = self.settings
        client = S3Client(
            endpoint=settings.s3_endpoint,
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            addressing=settings.s3_addressing,
            pool_size=MAX_POOL_CONNECTIONS,
        )
        await client.open()
        self._client = client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def _call(
        self,
        operation: str,
        method: str,
        key: str | None = None,
        *,
        query: dict[str, str] | None = None,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Answer:
        try:
            return await self.client.request(method, key, query, body, headers)
        except S3Error as err:
            raise _error(operation, err) from None

    async def head_bucket(self) -> None:
        await self._call("head_bucket", "HEAD")

    async def bucket_configuration(self, name: str) -> ElementTree.Element:
        """A configuration of the bucket (`GET ?versioning`, `?object-lock`, `?lifecycle`), as storage answers it."""
        operation = "get_bucket_" + name.replace("-", "_")
        return _xml(operation, await self._call(operation, "GET", query={name: ""}))

    async def create_bucket(self) -> bool:
        """Create the bucket; False if it already existed (and is ours)."""
        try:
            await self.head_bucket()
        except StorageError as err:
            if err.code not in ("404", "NoSuchBucket", "NotFound"):
                raise
        else:
            return False
        body = b""
        headers = {"x-amz-bucket-object-lock-enabled": "true"} if self.settings.object_lock else None
        if self.settings.s3_region != "us-east-1":
            body = (
                f'<CreateBucketConfiguration xmlns="{XMLNS}"><LocationConstraint>{escape(self.settings.s3_region)}'
                "</LocationConstraint></CreateBucketConfiguration>"
            ).encode()
        try:
            await self._call("create_bucket", "PUT", body=body, headers=headers)
        except StorageError as err:
            if err.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return False
            raise
        return True

    async def create_multipart_upload(self, key: str) -> str:
        answer = await self._call("create_multipart_upload", "POST", key, query={"uploads": ""})
        upload_id = child_text(_xml("create_multipart_upload", answer), "UploadId")
        if not upload_id:
            raise StorageError("create_multipart_upload", "storage answered no UploadId")
        return upload_id

    async def list_parts(self, key: str, upload_id: str) -> list[StoredPart]:
        """Every part storage holds for the upload, ascending."""
        parts: list[StoredPart] = []
        marker = 0
        while True:
            query = {"uploadId": upload_id, "max-parts": str(self.page_size)}
            if marker:
                query["part-number-marker"] = str(marker)
            root = _xml("list_parts", await self._call("list_parts", "GET", key, query=query))
            try:
                for part in children(root, "Part"):
                    parts.append(
                        StoredPart(
                            int(child_text(part, "PartNumber")),
                            child_text(part, "ETag"),
                            int(child_text(part, "Size")),
                        )
                    )
                next_marker = int(child_text(root, "NextPartNumberMarker") or 0)
            except ValueError:
                raise StorageError(
                    "list_parts", "storage answered a part without its number or size"
                ) from None
            if child_text(root, "IsTruncated").lower() != "true" or next_marker <= marker:
                break
            marker = next_marker
        parts.sort(key=lambda part: part.part_number)
        return parts

    async def complete_multipart_upload(self, key: str, upload_id: str, parts: Sequence[StoredPart]) -> None:
        listed = "".join(
            f"<Part><PartNumber>{part.part_number}</PartNumber><ETag>{escape(part.etag)}</ETag></Part>"
            for part in parts
        )
        body = f'<CompleteMultipartUpload xmlns="{XMLNS}">{listed}</CompleteMultipartUpload>'.encode()
        await self._call("complete_multipart_upload", "POST", key, query={"uploadId": upload_id}, body=body)

    async def abort_multipart_upload(self, key: str, upload_id: str) -> bool:
        """Abort; False if storage says it no longer knew the upload (completed or aborted meanwhile: nothing to
        do). True does not prove storage still had it: SeaweedFS answers 204 to an abort of any upload id."""
        try:
            await self._call("abort_multipart_upload", "DELETE", key, query={"uploadId": upload_id})
        except StorageError as err:
            if err.code != "NoSuchUpload":
                raise
            return False
        return True

    async def object_size(self, key: str) -> int | None:
        """The object's size, or None if there is no such object."""
        try:
            answer = await self._call("head_object", "HEAD", key)
        except StorageError as err:
            if err.code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        try:
            return int(answer.headers.get("content-length", ""))
        except ValueError:
            raise StorageError("head_object", "storage answered no Content-Length") from None

    async def delete_object(self, key: str) -> None:
        """Delete; an object already gone counts as deleted.

        With Object Lock (`OBJECT_LOCK`), the bucket keeps versions: every version of the key (and delete marker)
        is deleted, bypassing governance retention, so that nothing of it stays behind.
        """
        if self.settings.object_lock:
            await self.delete_versions(key)
            return
        try:
            await self._call("delete_object", "DELETE", key)
        except StorageError as err:
            if err.code != "NoSuchKey":
                raise

    async def delete_objects(self, keys: Sequence[str]) -> dict[str, str]:
        """Delete `keys` (DeleteObjects: up to `DELETE_BATCH` keys a call); the keys storage did not delete, with
        why. An object already gone counts as deleted. With Object Lock, each key's versions go one by one
        (`delete_object`)."""
        refused: dict[str, str] = {}
        if self.settings.object_lock:
            for key in keys:
                try:
                    await self.delete_object(key)
                except StorageError as err:
                    refused[key] = str(err)
            return refused
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            listed = "".join(f"<Object><Key>{escape(key)}</Key></Object>" for key in batch)
            body = f'<Delete xmlns="{XMLNS}"><Quiet>true</Quiet>{listed}</Delete>'.encode()
            md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324 - S3 asks for it
            answer = await self._call(
                "delete_objects",
                "POST",
                query={"delete": ""},
                body=body,
                headers={"Content-MD5": md5, "Content-Type": "application/xml"},
            )
            for error in children(_xml("delete_objects", answer), "Error"):
                code = child_text(error, "Code")
                if code != "NoSuchKey":
                    refused[child_text(error, "Key")] = f"{code}: {child_text(error, 'Message')}"
        return refused

    async def delete_versions(self, key: str) -> None:
        """Delete every version of `key` and its delete markers, bypassing governance retention."""
        for version_id in await self.list_versions(key):
            try:
                await self._call(
                    "delete_object",
                    "DELETE",
                    key,
                    query={"versionId": version_id},
                    headers={"x-amz-bypass-governance-retention": "true"},
                )
            except StorageError as err:
                if err.code not in ("NoSuchKey", "NoSuchVersion"):
                    raise

    async def list_versions(self, key: str) -> list[str]:
        """The version ids of `key` (delete markers too), newest first."""
        versions: list[str] = []
        markers: dict[str, str] = {}
        while True:
            query = {"versions": "", "prefix": key, "max-keys": str(self.page_size), **markers}
            root = _xml("list_object_versions", await self._call("list_object_versions", "GET", query=query))
            for item in root:
                if local(item.tag) in ("Version", "DeleteMarker") and child_text(item, "Key") == key:
                    versions.append(child_text(item, "VersionId"))
            if child_text(root, "IsTruncated").lower() != "true":
                break
            new_markers = {
                "key-marker": child_text(root, "NextKeyMarker"),
                "version-id-marker": child_text(root, "NextVersionIdMarker"),
            }
            if not new_markers["key-marker"] or new_markers == markers:
                break
            markers = new_markers
        return versions

    async def lock_object(self, key: str, until: float) -> None:
        """Put the object under S3 Object Lock, governance mode, until `until` (PutObjectRetention)."""
        when = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = (
            f'<Retention xmlns="{XMLNS}"><Mode>GOVERNANCE</Mode><RetainUntilDate>{when}</RetainUntilDate>'
            "</Retention>"
        ).encode()
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324 - S3 asks for it
        await self._call(
            "put_object_retention",
            "PUT",
            key,
            query={"retention": ""},
            body=body,
            headers={"Content-MD5": md5, "Content-Type": "application/xml"},
        )

    async def put_object(self, key: str, body: bytes, content_type: str = "application/json") -> None:
        await self._call("put_object", "PUT", key, body=body, headers={"Content-Type": content_type})

    async def get_object(self, key: str, max_size: int) -> bytes | None:
        """A small object's bytes (at most `max_size`, else StorageError); None if there is no such object."""
        try:
            answer = await self._call("get_object", "GET", key)
        except StorageError as err:
            if err.code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        if len(answer.body) > max_size:
            raise StorageError("get_object", f"{key} is larger than {max_size} bytes")
        return answer.body

    async def list_objects(self, prefix: str) -> AsyncIterator[StoredObject]:
        """Every object under `prefix`, page by page, in key order."""
        token = ""
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(self.page_size)}
            if token:
                query["continuation-token"] = token
            root = _xml("list_objects_v2", await self._call("list_objects_v2", "GET", query=query))
            for item in children(root, "Contents"):
                try:
                    yield StoredObject(child_text(item, "Key"), int(child_text(item, "Size")))
                except ValueError:
                    raise StorageError(
                        "list_objects_v2", "storage answered an object without its size"
                    ) from None
            token = child_text(root, "NextContinuationToken")
            if child_text(root, "IsTruncated").lower() != "true" or not token:
                break

    async def list_multipart_uploads(self, prefix: str) -> list[PendingUpload]:
        uploads: list[PendingUpload] = []
        markers: dict[str, str] = {}
        while True:
            query = {"uploads": "", "prefix": prefix, "max-uploads": str(self.page_size), **markers}
            root = _xml(
                "list_multipart_uploads", await self._call("list_multipart_uploads", "GET", query=query)
            )
            for upload in children(root, "Upload"):
                uploads.append(
                    PendingUpload(
                        child_text(upload, "Key"),
                        child_text(upload, "UploadId"),
                        _when(child_text(upload, "Initiated")),
                    )
                )
            if child_text(root, "IsTruncated").lower() != "true":
                break
            key_marker = child_text(root, "NextKeyMarker")
            upload_marker = child_text(root, "NextUploadIdMarker")
            if not key_marker:
                break
            new_markers = {"key-marker": key_marker}
            if upload_marker:
                new_markers["upload-id-marker"] = upload_marker
            if new_markers == markers:
                break
            markers = new_markers
        return uploads


def _xml(operation: str, answer: Answer) -> ElementTree.Element:
    try:
        return answer.xml()
    except S3Error as err:
        raise _error(operation, err) from None


def _when(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None
