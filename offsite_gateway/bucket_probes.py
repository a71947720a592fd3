"""`bucket check`'s probes: what a backup does to storage, done once and undone, to prove the permissions the
gateway needs (see bucket_check.py). Everything goes under `<S3_PREFIX>offsite-gateway-check/`, a key no backup
has; nothing is left behind unless storage refuses a delete, which the finding then says."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from xml.etree import ElementTree

import aiohttp

from .bucket import CANNOT, NOTE, OK, WARNING, Findings, ObjectLock, said
from .config import PREFIX, Settings
from .logs import escape
from .s3 import child_text
from .storage import Storage, StorageError

PROBE_LOCK = 60  # seconds the probe object is locked for (what is left if storage refuses the bypass)
PROBE_FOLDER = "offsite-gateway-check/"
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)


def _probe_key(settings: Settings) -> str:
    return f"{settings.s3_prefix}{PROBE_FOLDER}{uuid.uuid4().hex}"


async def upload_probe(findings: Findings, storage: Storage, settings: Settings) -> None:
    """Begin a multipart upload, PUT a one-byte part through its presigned URL, list, abort."""
    key = _probe_key(settings)
    put: tuple[str, str] | None = None
    try:
        upload_id = await storage.create_multipart_upload(key)
    except StorageError as err:
        findings.add(
            CANNOT, "uploads", f"storage refuses to begin a multipart upload ({said(err)}): s3:PutObject"
        )
        return
    try:
        put = await _put_part(storage.presigner.upload_part(key, upload_id, 1, 300, 1))
        if put is not None:
            word, text = put
            findings.add(word, "uploads", text)
            if word == CANNOT:
                return
        try:
            parts = await storage.list_parts(key, upload_id)
            listed = [upload.upload_id for upload in await storage.list_multipart_uploads(key)]
        except StorageError as err:
            findings.add(
                CANNOT,
                "uploads",
                f"listing an upload's parts or the uploads in progress is refused ({said(err)}): the gateway needs "
                "s3:ListMultipartUploadParts and s3:ListBucketMultipartUploads (quota, complete, the sweeper)",
            )
            return
        if put is None and [(part.part_number, part.size) for part in parts] != [(1, 1)]:
            findings.add(WARNING, "uploads", "storage does not list the part just uploaded")
        if upload_id not in listed:
            findings.add(
                WARNING,
                "uploads",
                "storage does not list the upload in progress: the sweeper cannot find leftovers",
            )
    finally:
        try:
            await storage.abort_multipart_upload(key, upload_id)
        except StorageError as err:
            findings.add(
                CANNOT,
                "uploads",
                f"aborting an upload is refused ({said(err)}): the gateway needs s3:AbortMultipartUpload; the "
                f"probe's upload of {escape(key)} is left behind",
            )
        else:
            if put is None:
                findings.add(
                    OK,
                    "uploads",
                    "a multipart upload was begun, a part PUT through its presigned URL as Home Assistant sends "
                    "it, the parts and the uploads listed, the upload aborted",
                )


async def _put_part(url: str) -> tuple[str, str] | None:
    """PUT one byte to a part URL, as Home Assistant does; None if storage took it, else the finding."""
    where = escape(url.split("?", 1)[0])
    try:
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
            session.put(url, data=b"x", headers={"Content-Length": "1"}) as response,
        ):
            if response.status == 200:
                return None
            body = (await response.content.read(4096)).decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        return WARNING, (
            f"the part URL's storage ({where}) could not be reached from here ({type(err).__name__}): Home "
            f"Assistant must reach it ({PREFIX}S3_PUBLIC_ENDPOINT, if it reaches storage by another address)"
        )
    code = child_text_of(body, "Code") or str(response.status)
    message = child_text_of(body, "Message")
    hint = ""
    if code == "SignatureDoesNotMatch":
        hint = (
            f": {PREFIX}S3_PUBLIC_ENDPOINT must reach this storage under the host name and path it signs for"
        )
    elif "MD5" in message or "Content-MD5" in body:
        hint = (
            ": storage asks for Content-MD5 (a default retention?), which presigned part uploads do not carry"
        )
    return CANNOT, (
        f"a part PUT through its presigned URL, as Home Assistant sends it, was refused (HTTP {response.status} "
        f"{escape(code, 64)}: {escape(message, 200)}){hint}"
    )


def child_text_of(document: str, name: str) -> str:
    """A child's text in an S3 error document ("" if it is not one)."""
    try:
        root = ElementTree.fromstring(document)  # noqa: S314 - storage's answer, a few KB; see s3.Answer.xml
    except ElementTree.ParseError:
        return ""
    return child_text(root, name)


async def object_probe(
    findings: Findings, storage: Storage, settings: Settings, lock: ObjectLock | None, versioning: str | None
) -> None:
    """Write, read, list, (OBJECT_LOCK) lock and delete a small object as the gateway does."""
    key = _probe_key(settings)
    body = b'{"offsite-gateway": "bucket check"}'
    try:
        await storage.put_object(key, body)
    except StorageError as err:
        findings.add(
            CANNOT, "objects", f"writing an object is refused ({said(err)}): the manifests need s3:PutObject"
        )
        return
    done = ["written"]
    try:
        if await storage.get_object(key, 1024) != body:
            findings.add(CANNOT, "objects", "the object just written does not read back the same")
        else:
            done.append("read")
        if key in [found.key async for found in storage.list_objects(key)]:
            done.append("listed")
        else:
            findings.add(
                WARNING,
                "objects",
                "the object just written is not listed: `reindex` could not find manifests",
            )
    except StorageError as err:
        findings.add(
            CANNOT,
            "objects",
            f"reading or listing objects is refused ({said(err)}): s3:GetObject, s3:ListBucket",
        )
    locked_until = None
    if settings.object_lock and (lock is None or lock.enabled):  # unread: the completes will try all the same
        until = time.time() + PROBE_LOCK
        try:
            await storage.lock_object(key, until)
        except StorageError as err:
            findings.add(
                CANNOT,
                "objects",
                f"putting an object under governance retention is refused ({said(err)}): every complete would "
                "fail; the gateway needs s3:PutObjectRetention",
            )
        else:
            locked_until = datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            done.append(f"locked for {PROBE_LOCK} s")
    try:
        await storage.delete_object(key)  # as retention deletes: with OBJECT_LOCK, every version, bypassing
    except StorageError as err:
        if locked_until is not None:
            findings.add(
                CANNOT,
                "objects",
                f"deleting a locked object's versions with the governance bypass is refused ({said(err)}): "
                "retention and `backup delete` could not delete locked backups; the gateway needs "
                "s3:BypassGovernanceRetention, s3:DeleteObjectVersion and s3:ListBucketVersions. The probe "
                f"{escape(key)} stays locked until {locked_until}: delete it then",
            )
        else:
            findings.add(
                CANNOT,
                "objects",
                f"deleting an object is refused ({said(err)}): the gateway needs s3:DeleteObject",
            )
        return
    done.append("deleted" + (" with every version" if settings.object_lock else ""))
    if versioning == "Enabled" and not settings.object_lock:
        try:
            await storage.delete_versions(key)  # the check's own litter; the gateway leaves these behind
        except StorageError as err:
            findings.add(
                NOTE, "objects", f"the probe's old version stays behind as {escape(key)} ({said(err)})"
            )
    elif settings.object_lock:
        try:
            left = await storage.list_versions(key)
        except StorageError as err:
            findings.add(
                CANNOT, "objects", f"listing versions is refused ({said(err)}): s3:ListBucketVersions"
            )
            return
        if left:
            findings.add(
                WARNING, "objects", f"{len(left)} version(s) of the probe are left behind as {escape(key)}"
            )
    findings.add(OK, "objects", "an object was " + ", ".join(done))
