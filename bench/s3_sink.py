"""A minimal local S3 server for benchmarks (bodies discarded), plus a stand-in of the gateway's upload routes.

Run as its own process (so it does not share the client's event loop or GIL):

    python bench/s3_sink.py [--port 0] [--part-size 20971520]

It prints ``PORT <n>`` once listening on 127.0.0.1, then serves until killed. It is storage that costs almost
nothing (well under a millisecond of CPU per call), so what a benchmark measures through it is its client's cost.

- S3, path style, no signature or expiry checks (SigV4 headers and presigned queries are accepted, unread), the
  XML botocore parses; every call the gateway makes (offsite_gateway/storage.py):
  HeadBucket (``HEAD /{bucket}``), CreateBucket (``PUT /{bucket}``), ListMultipartUploads
  (``GET /{bucket}?uploads``: ``prefix``, ``key-marker``/``upload-id-marker``, ``max-uploads``, ``IsTruncated``),
  CreateMultipartUpload (``POST /{bucket}/{key}?uploads``), UploadPart (``PUT …?partNumber=&uploadId=``, as
  presigned), ListParts (``GET …?uploadId=``: ``max-parts``, ``part-number-marker``, ``IsTruncated``),
  CompleteMultipartUpload (``POST …?uploadId=``: parts listed in order, present, with their ETag, all but the last
  >= 5 MiB; the object's ETag is S3's MD5-of-MD5s ``-N``), AbortMultipartUpload (``DELETE …?uploadId=``),
  PutObject, HeadObject (its ``Content-Length``), DeleteObject (204 whether or not it exists), DeleteObjects
  (``POST /{bucket}?delete``, quiet). Unknown buckets,
  uploads and parts get S3's error codes (NoSuchBucket, NoSuchUpload, InvalidPart, …). GetObject and copies are
  not served (501): no body is kept.
- Bodies are read and discarded; the MD5 of each one is computed so the ETag is real (clients that check it, ours
  does, see a correct one). State is small and in memory: per upload in progress, part number -> (ETag, size);
  per object, its size. Bucket ``bench`` exists from the start.
- Gateway v1 stand-in: ``GET /v1/instance``, ``POST /v1/backups`` (opens an upload in bucket ``bench``, its id
  the backup's), ``POST /v1/backups/{id}/parts`` (URLs of UploadPart on this sink), ``GET …/parts`` (empty),
  ``POST …/complete`` (the upload becomes an object), ``DELETE …/upload``. No auth, no database.
- ``GET /stats``: bytes received, PUTs of a body, and the count of each S3 call.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import math
import sys
import time
import uuid
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

MIB = 1024 * 1024
MAX_PARTS = 10_000
MIN_PART = 5 * MIB  # every part but the last, at CompleteMultipartUpload
PAGE = 1000  # ListParts / ListMultipartUploads page: S3's default and maximum
XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
STAND_IN_BUCKET = "bench"
OWNER = "<ID>sink</ID><DisplayName>sink</DisplayName>"
UPLOAD_OPERATIONS = {
    "PUT": "UploadPart",
    "GET": "ListParts",
    "POST": "CompleteMultipartUpload",
    "DELETE": "AbortMultipartUpload",
}


@dataclass(slots=True)
class Upload:
    bucket: str
    key: str
    initiated: float
    order: int  # S3 lists one key's uploads by initiation time
    parts: dict[int, tuple[str, int]] = field(default_factory=dict)  # number -> (MD5 hex, size)


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(stamp))


def _xml(root: str, body: str, status: int = 200) -> web.Response:
    text = f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{XMLNS}">{body}</{root}>'
    return web.Response(text=text, status=status, content_type="application/xml")


def _error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    if request.method == "HEAD":  # no body: clients take the code from the status
        return web.Response(status=status)
    body = (
        f"<Code>{code}</Code><Message>{escape(message)}</Message><Resource>{escape(request.path)}</Resource>"
    )
    text = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{body}<RequestId>sink</RequestId></Error>'
    return web.Response(text=text, status=status, content_type="application/xml")


def _int(request: web.Request, name: str, default: int) -> int | None:
    """A non-negative integer query parameter; None if it is not one."""
    value = request.query.get(name, "")
    if not value:
        return default
    return int(value) if value.isdigit() else None


class Sink:
    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.received = 0
        self.puts = 0
        self.calls: Counter[str] = Counter()
        self.buckets: set[str] = {STAND_IN_BUCKET}
        self.uploads: dict[str, Upload] = {}
        self.objects: dict[tuple[str, str], int] = {}  # (bucket, key) -> size
        self.order = itertools.count()
        self.backups: dict[str, dict[str, Any]] = {}
        self.base = ""

    # ------------------------------------------------------------------------------------------------ S3

    async def _drain(self, request: web.Request, md5: Any = None) -> int:
        total = 0
        while chunk := await request.content.readany():
            if md5 is not None:
                md5.update(chunk)
            total += len(chunk)
        return total

    async def _receive(self, request: web.Request) -> tuple[str, int]:
        """Read and discard the body: its MD5 hex and size."""
        md5 = hashlib.md5(usedforsecurity=False)
        size = await self._drain(request, md5)
        self.received += size
        self.puts += 1
        return md5.hexdigest(), size

    def _upload(self, request: web.Request, bucket: str, key: str) -> Upload | web.Response:
        upload = self.uploads.get(request.query["uploadId"])
        if upload is None or upload.bucket != bucket or upload.key != key:
            return _error(request, 404, "NoSuchUpload", "The specified upload does not exist.")
        return upload

    async def s3_bucket(self, request: web.Request) -> web.StreamResponse:
        bucket = request.match_info["bucket"]
        method, query = request.method, request.query
        if method == "PUT" and not query:
            self.calls["CreateBucket"] += 1
            await self._drain(request)  # CreateBucketConfiguration: any region is fine
            if bucket in self.buckets:
                return _error(request, 409, "BucketAlreadyOwnedByYou", "You already own this bucket.")
            self.buckets.add(bucket)
            return web.Response(headers={"Location": f"/{bucket}"})
        if bucket not in self.buckets:
            return _error(request, 404, "NoSuchBucket", "The specified bucket does not exist.")
        if method == "HEAD" and not query:
            self.calls["HeadBucket"] += 1
            return web.Response()
        if method == "GET" and "uploads" in query:
            self.calls["ListMultipartUploads"] += 1
            return self._list_uploads(request, bucket)
        if method == "POST" and "delete" in query:
            self.calls["DeleteObjects"] += 1
            return await self._delete_objects(request, bucket)
        return _error(
            request, 501, "NotImplemented", f"{method} on a bucket with {sorted(query)} is not served"
        )

    async def _delete_objects(self, request: web.Request, bucket: str) -> web.Response:
        """DeleteObjects: every listed key goes (a missing one counts as deleted); quiet, so no <Deleted>."""
        body = await request.read()
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            return _error(request, 400, "MalformedXML", "The XML you provided was not well-formed.")
        for item in root.iter():
            if item.tag.rsplit("}", 1)[-1] == "Key":
                self.objects.pop((bucket, item.text or ""), None)
        return _xml("DeleteResult", "")

    def _list_uploads(self, request: web.Request, bucket: str) -> web.Response:
        query = request.query
        limit = _int(request, "max-uploads", PAGE)
        if limit is None:
            return _error(request, 400, "InvalidArgument", "max-uploads must be a non-negative integer")
        if "delimiter" in query:
            return _error(request, 501, "NotImplemented", "delimiter is not served")
        limit = min(limit, PAGE)
        prefix = query.get("prefix", "")
        key_marker = query.get("key-marker", "")
        id_marker = query.get("upload-id-marker", "") if key_marker else ""
        after = self.uploads.get(id_marker)
        after_order = after.order if after is not None and after.key == key_marker else math.inf
        matching = sorted(
            (upload.key, upload.order, upload_id, upload)
            for upload_id, upload in self.uploads.items()
            if upload.bucket == bucket
            and upload.key.startswith(prefix)
            and (
                upload.key > key_marker
                or (id_marker and upload.key == key_marker and upload.order > after_order)
            )
        )
        page, truncated = matching[:limit], len(matching) > limit
        entries = "".join(
            f"<Upload><Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId><Initiator>{OWNER}</Initiator>"
            f"<Owner>{OWNER}</Owner><StorageClass>STANDARD</StorageClass>"
            f"<Initiated>{_iso(upload.initiated)}</Initiated></Upload>"
            for key, _, upload_id, upload in page
        )
        next_markers = ""
        if page:
            next_markers = f"<NextKeyMarker>{escape(page[-1][0])}</NextKeyMarker>"
            next_markers += f"<NextUploadIdMarker>{page[-1][2]}</NextUploadIdMarker>"
        return _xml(
            "ListMultipartUploadsResult",
            f"<Bucket>{escape(bucket)}</Bucket><KeyMarker>{escape(key_marker)}</KeyMarker>"
            f"<UploadIdMarker>{escape(id_marker)}</UploadIdMarker>{next_markers}"
            f"<Prefix>{escape(prefix)}</Prefix><MaxUploads>{limit}</MaxUploads>"
            f"<IsTruncated>{str(truncated).lower()}</IsTruncated>{entries}",
        )

    async def s3_object(self, request: web.Request) -> web.StreamResponse:
        bucket, key = request.match_info["bucket"], request.match_info["key"]
        method, query = request.method, request.query
        if bucket not in self.buckets:
            await self._drain(request)
            return _error(request, 404, "NoSuchBucket", "The specified bucket does not exist.")
        if "x-amz-copy-source" in request.headers:
            return _error(request, 501, "NotImplemented", "copies are not served: no body is kept")
        if method == "POST" and "uploads" in query:
            self.calls["CreateMultipartUpload"] += 1
            await self._drain(request)
            upload_id = uuid.uuid4().hex
            self.uploads[upload_id] = Upload(bucket, key, time.time(), next(self.order))
            return _xml(
                "InitiateMultipartUploadResult",
                f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>",
            )
        if "uploadId" in query:
            operation = UPLOAD_OPERATIONS.get(method)
            if operation is None:
                return _error(request, 501, "NotImplemented", f"{method} with an uploadId is not served")
            self.calls[operation] += 1
            upload = self._upload(request, bucket, key)
            if isinstance(upload, web.Response):
                await self._drain(request)
                return upload
            if method == "PUT":
                return await self._upload_part(request, upload)
            if method == "GET":
                return self._list_parts(request, upload)
            if method == "POST":
                return await self._complete(request, upload)
            del self.uploads[query["uploadId"]]  # DELETE: AbortMultipartUpload
            return web.Response(status=204)
        if method == "PUT":
            self.calls["PutObject"] += 1
            digest, size = await self._receive(request)
            self.objects[bucket, key] = size
            return web.Response(headers={"ETag": f'"{digest}"'})
        if method == "HEAD":
            self.calls["HeadObject"] += 1
            length = self.objects.get((bucket, key))
            if length is None:
                return _error(request, 404, "NoSuchKey", "The specified key does not exist.")
            # Content-Length is the object's, with no body (HTTP HEAD): aiohttp sends the header as set.
            headers = {"Content-Length": str(length), "Content-Type": "binary/octet-stream"}
            return web.Response(headers=headers)
        if method == "DELETE":
            self.calls["DeleteObject"] += 1
            self.objects.pop((bucket, key), None)
            return web.Response(status=204)
        return _error(request, 501, "NotImplemented", f"{method} with {sorted(query)} is not served")

    async def _upload_part(self, request: web.Request, upload: Upload) -> web.Response:
        number = _int(request, "partNumber", 0)
        if not number or number > MAX_PARTS:
            await self._drain(request)
            return _error(request, 400, "InvalidArgument", f"partNumber must be in 1..{MAX_PARTS}")
        digest, size = await self._receive(request)
        upload.parts[number] = (digest, size)
        return web.Response(headers={"ETag": f'"{digest}"'})

    def _list_parts(self, request: web.Request, upload: Upload) -> web.Response:
        limit, marker = _int(request, "max-parts", PAGE), _int(request, "part-number-marker", 0)
        if limit is None or marker is None:
            return _error(request, 400, "InvalidArgument", "max-parts and part-number-marker are integers")
        limit = min(limit, PAGE)
        numbers = sorted(number for number in upload.parts if number > marker)
        page, truncated = numbers[:limit], len(numbers) > limit
        entries = "".join(
            f'<Part><PartNumber>{n}</PartNumber><ETag>"{upload.parts[n][0]}"</ETag><Size>{upload.parts[n][1]}</Size>'
            "</Part>"
            for n in page
        )
        return _xml(
            "ListPartsResult",
            f"<Bucket>{escape(upload.bucket)}</Bucket><Key>{escape(upload.key)}</Key>"
            f"<UploadId>{request.query['uploadId']}</UploadId><Initiator>{OWNER}</Initiator><Owner>{OWNER}</Owner>"
            f"<StorageClass>STANDARD</StorageClass><PartNumberMarker>{marker}</PartNumberMarker>"
            f"<NextPartNumberMarker>{page[-1] if page else marker}</NextPartNumberMarker>"
            f"<MaxParts>{limit}</MaxParts><IsTruncated>{str(truncated).lower()}</IsTruncated>{entries}",
        )

    async def _complete(self, request: web.Request, upload: Upload) -> web.Response:
        try:
            root = ElementTree.fromstring(await request.read())
        except ElementTree.ParseError:
            return _error(request, 400, "MalformedXML", "The XML you provided was not well-formed.")
        listed: list[tuple[int, str]] = []
        for part in root:
            if part.tag.rsplit("}", 1)[-1] != "Part":
                continue
            fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "").strip() for child in part}
            if not fields.get("PartNumber", "").isdigit():
                return _error(request, 400, "MalformedXML", "a Part without a PartNumber")
            listed.append((int(fields["PartNumber"]), fields.get("ETag", "").strip('"')))
        if not listed:
            return _error(request, 400, "MalformedXML", "no Part listed")
        numbers = [number for number, _ in listed]
        if numbers != sorted(set(numbers)):
            return _error(request, 400, "InvalidPartOrder", "The list of parts was not in ascending order.")
        total = 0
        digests = []
        for index, (number, etag) in enumerate(listed):
            stored = upload.parts.get(number)
            if stored is None or stored[0] != etag:
                return _error(
                    request, 400, "InvalidPart", f"Part {number} was not found or its ETag differs."
                )
            if stored[1] < MIN_PART and index < len(listed) - 1:
                return _error(request, 400, "EntityTooSmall", f"Part {number} is smaller than the minimum.")
            total += stored[1]
            digests.append(bytes.fromhex(stored[0]))
        del self.uploads[request.query["uploadId"]]
        self.objects[upload.bucket, upload.key] = total
        etag = f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(listed)}"
        return _xml(
            "CompleteMultipartUploadResult",
            f"<Location>{escape(self.base)}/{escape(upload.bucket)}/{escape(upload.key)}</Location>"
            f'<Bucket>{escape(upload.bucket)}</Bucket><Key>{escape(upload.key)}</Key><ETag>"{etag}"</ETag>',
        )

    # ------------------------------------------------------------------------------------ gateway stand-in

    async def instance(self, request: web.Request) -> web.Response:
        limits = {"max_backup_bytes": 1 << 50, "part_size": self.part_size, "retention": 7, "url_ttl": 900}
        return web.json_response({"id": "bench", "name": "bench", "limits": limits})

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        size = int(body["size"])
        part_size = self.part_size
        if math.ceil(size / part_size) > MAX_PARTS:
            part_size = math.ceil(size / MAX_PARTS / MIB) * MIB
        backup_id = uuid.uuid4().hex
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.backups[backup_id] = {
            "id": backup_id,
            "name": body["name"],
            "size": size,
            "sha256": None,
            "status": "uploading",
            "created_at": now,
            "completed_at": None,
            "part_size": part_size,
            "part_count": math.ceil(size / part_size),
            "metadata": body.get("metadata") or {},
        }
        # The S3 upload its part URLs point at: key and upload id are the backup's id.
        self.uploads[backup_id] = Upload(STAND_IN_BUCKET, backup_id, time.time(), next(self.order))
        answer = {"id": backup_id, "part_size": part_size, "part_count": math.ceil(size / part_size)}
        return web.json_response({**answer, "url_ttl": 900}, status=201)

    async def sign(self, request: web.Request) -> web.Response:
        backup_id = request.match_info["id"]
        numbers = (await request.json())["part_numbers"]
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 900))
        parts = [
            {
                "part_number": n,
                "url": (
                    f"{self.base}/{STAND_IN_BUCKET}/{backup_id}?partNumber={n}&uploadId={backup_id}"
                    "&X-Amz-Signature=x"
                ),
                "expires_at": expires,
            }
            for n in numbers
        ]
        return web.json_response({"parts": parts})

    async def stored(self, request: web.Request) -> web.Response:
        return web.json_response({"parts": []})

    async def complete(self, request: web.Request) -> web.Response:
        backup_id = request.match_info["id"]
        backup = self.backups[backup_id]
        body = await request.json()
        backup.update(
            status="completed",
            sha256=body.get("sha256"),
            completed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        if (upload := self.uploads.pop(backup_id, None)) is not None:
            self.objects[STAND_IN_BUCKET, backup_id] = sum(size for _, size in upload.parts.values())
        return web.json_response({"backup": backup})

    async def abort(self, request: web.Request) -> web.Response:
        backup_id = request.match_info["id"]
        self.backups[backup_id]["status"] = "failed"
        self.uploads.pop(backup_id, None)
        return web.Response(status=204)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "received": self.received,
                "puts": self.puts,
                "calls": dict(self.calls),
                "uploads": len(self.uploads),
                "objects": len(self.objects),
            }
        )


async def serve(port: int, part_size: int) -> None:
    sink = Sink(part_size)
    app = web.Application(client_max_size=1 << 40)
    app.router.add_get("/stats", sink.stats)
    app.router.add_get("/v1/instance", sink.instance)
    app.router.add_post("/v1/backups", sink.create)
    app.router.add_post("/v1/backups/{id}/parts", sink.sign)
    app.router.add_get("/v1/backups/{id}/parts", sink.stored)
    app.router.add_post("/v1/backups/{id}/complete", sink.complete)
    app.router.add_delete("/v1/backups/{id}/upload", sink.abort)
    app.router.add_route("*", "/{bucket}", sink.s3_bucket)
    app.router.add_route("*", "/{bucket}/", sink.s3_bucket)
    app.router.add_route("*", "/{bucket}/{key:.+}", sink.s3_object)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, bound = runner.addresses[0][:2]
    sink.base = f"http://{host}:{bound}"
    print(f"PORT {bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--part-size", type=int, default=20 * MIB)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.port, args.part_size))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
