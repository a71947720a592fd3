"""A minimal local S3 sink for benchmarks, plus a stand-in of the gateway's upload routes.

Run as its own process (so it does not share the client's event loop or GIL):

    python bench/s3_sink.py [--port 0] [--part-size 20MiB]

It prints ``PORT <n>`` once listening on 127.0.0.1, then serves until killed:

- S3 (path style, no signature checks): CreateMultipartUpload (``POST /{bucket}/{key}?uploads``), UploadPart
  (``PUT …?partNumber=&uploadId=``), CompleteMultipartUpload (``POST …?uploadId=``), AbortMultipartUpload
  (``DELETE …?uploadId=``) and a plain PutObject. Bodies are read and discarded; the MD5 of each one is computed
  so the ETag is real (clients that check it, ours does, see a correct one).
- Gateway v1 stand-in: ``GET /v1/instance``, ``POST /v1/backups``, ``POST /v1/backups/{id}/parts`` (URLs pointing
  at this sink), ``GET …/parts`` (empty), ``POST …/complete``, ``DELETE …/upload``. No auth, no database.
- ``GET /stats``: bytes received so far.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import sys
import time
import uuid
from typing import Any

from aiohttp import web

MIB = 1024 * 1024
MAX_PARTS = 10_000


class Sink:
    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.received = 0
        self.puts = 0
        self.backups: dict[str, dict[str, Any]] = {}
        self.base = ""

    # ------------------------------------------------------------------------------------------------ S3

    async def _drain(self, request: web.Request) -> str:
        md5 = hashlib.md5(usedforsecurity=False)
        total = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            md5.update(chunk)
            total += len(chunk)
        self.received += total
        self.puts += 1
        return md5.hexdigest()

    async def s3(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        if request.method == "POST" and "uploads" in query:
            upload_id = uuid.uuid4().hex
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<InitiateMultipartUploadResult>'
                f"<Bucket>{request.match_info['bucket']}</Bucket><Key>{request.match_info['key']}</Key>"
                f"<UploadId>{upload_id}</UploadId></InitiateMultipartUploadResult>"
            )
            return web.Response(text=xml, content_type="application/xml")
        if request.method == "PUT":
            digest = await self._drain(request)
            return web.Response(headers={"ETag": f'"{digest}"'})
        if request.method == "POST" and "uploadId" in query:
            await request.read()
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<CompleteMultipartUploadResult>'
                f"<Bucket>{request.match_info['bucket']}</Bucket><Key>{request.match_info['key']}</Key>"
                '<ETag>"00000000000000000000000000000000-1"</ETag></CompleteMultipartUploadResult>'
            )
            return web.Response(text=xml, content_type="application/xml")
        if request.method == "DELETE":
            return web.Response(status=204)
        return web.Response(status=405)

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
        answer = {"id": backup_id, "part_size": part_size, "part_count": math.ceil(size / part_size)}
        return web.json_response({**answer, "url_ttl": 900}, status=201)

    async def sign(self, request: web.Request) -> web.Response:
        backup_id = request.match_info["id"]
        numbers = (await request.json())["part_numbers"]
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 900))
        parts = [
            {
                "part_number": n,
                "url": f"{self.base}/bench/{backup_id}?partNumber={n}&uploadId={backup_id}&X-Amz-Signature=x",
                "expires_at": expires,
            }
            for n in numbers
        ]
        return web.json_response({"parts": parts})

    async def stored(self, request: web.Request) -> web.Response:
        return web.json_response({"parts": []})

    async def complete(self, request: web.Request) -> web.Response:
        backup = self.backups[request.match_info["id"]]
        body = await request.json()
        backup.update(
            status="completed",
            sha256=body.get("sha256"),
            completed_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        return web.json_response({"backup": backup})

    async def abort(self, request: web.Request) -> web.Response:
        self.backups[request.match_info["id"]]["status"] = "failed"
        return web.Response(status=204)

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"received": self.received, "puts": self.puts})


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
    app.router.add_route("*", "/{bucket}/{key:.+}", sink.s3)
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
