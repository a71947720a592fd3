"""The floor under the gateway's CPU per backup: a server that does only the I/O a backup needs, with no logic.

bench/night.py `--floor` runs two of these where it ran the gateway's nodes, on the same PostgreSQL and S3 sink,
and drives them with the same homes: the CPU each backup costs here is what the gateway's stack (aiohttp's server
and client, asyncpg, botocore's SigV4 signer) costs before any of the gateway's own work. Per backup, as the
gateway does on a night (bench/night.py's sequence, a first call of the night for each token):

- `POST /v1/backups`: the JSON body read and parsed; three database round trips (the gateway's token lookup,
  `offsite_begin_backup`, `offsite_set_upload_id`), here `SELECT $1::text`; CreateMultipartUpload, header-signed
  by botocore and sent with aiohttp (offsite_gateway/s3.py's `S3Client`, the leanest way the gateway has), its
  UploadId read from the XML; the part's URL presigned by botocore (offsite_gateway/storage.py's `Presigner`);
  a JSON answer, 201.
- `POST /v1/backups/{id}/complete`: the JSON body read and parsed; two round trips (the lock, the complete);
  CompleteMultipartUpload with the parts' ETags; PutObject of a manifest about as large as the gateway's;
  a JSON answer, 200.

`--layers` peels the floor apart: `http` answers both calls with the same JSON and nothing else (its part URL, of one
upload created at start, is unsigned: the sink checks no signature), `db` adds the five round trips, `all` (the default) adds storage and signing.

Nothing is checked, logged (no access log), counted or kept: no token, quota, rate limit, retention, manifest
content, metrics. The ids are the client's word (a random id per create). Do not run this anywhere but a bench.

    python bench/floor_node.py --port P --db postgresql://... --s3 http://127.0.0.1:S --bucket B [--layers all]
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from offsite_gateway.config import Settings  # noqa: E402
from offsite_gateway.s3 import S3Client, child_text  # noqa: E402
from offsite_gateway.storage import XMLNS, Presigner  # noqa: E402

URL_TTL = 900
MANIFEST_FILLER = "x" * 1000  # the gateway's manifest of bench/night.py's backups is about 1 KB
LAYERS = ("http", "db", "all")


class Floor:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.s3 = S3Client(
            endpoint=args.s3,
            bucket=args.bucket,
            region="us-east-1",
            access_key="bench",
            secret_key="bench-secret",
        )
        self.presigner = Presigner(
            Settings(
                s3_endpoint=args.s3,
                s3_bucket=args.bucket,
                s3_access_key="bench",
                s3_secret_key="bench-secret",
            )
        )
        self.pool: asyncpg.Pool[Any] | None = None
        self.db = args.layers in ("db", "all")
        self.storage = args.layers == "all"
        self.upload_id = (
            "floor"  # the one upload every create of `http` and `db` answers (its PUT goes to the sink)
        )

    async def _first_upload(self) -> None:
        answer = await self.s3.request("POST", "floor/shared", {"uploads": ""})
        self.upload_id = child_text(answer.xml(), "UploadId")

    async def start(self, _app: web.Application) -> None:
        await self.s3.open()
        self.pool = await asyncpg.create_pool(self.args.db, min_size=10, max_size=10)
        if not self.storage:
            await self._first_upload()

    async def stop(self, _app: web.Application) -> None:
        await self.s3.close()
        if self.pool is not None:
            await self.pool.close()

    async def _round_trip(self, value: str) -> None:
        if not self.db:
            return
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            await conn.fetchval("SELECT $1::text", value)

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def create(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        backup_id = uuid.uuid4().hex
        key = f"floor/{backup_id}"
        for _ in range(3):
            await self._round_trip(backup_id)
        if self.storage:
            answer = await self.s3.request("POST", key, {"uploads": ""})
            upload_id = child_text(answer.xml(), "UploadId")
            url = self.presigner.upload_part(key, upload_id, 1, URL_TTL, int(body["size"]))
        else:  # the sink checks no signature: a URL of the shared upload, not signed for this part
            upload_id = self.upload_id
            url = self.s3.url("floor/shared", {"partNumber": "1", "uploadId": upload_id})
        return web.json_response(
            {
                "id": f"{backup_id}.{upload_id}",
                "part_count": 1,
                "parts": [{"part_number": 1, "url": url}],
            },
            status=201,
        )

    async def complete(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        backup_id, _, upload_id = request.match_info["backup_id"].partition(".")
        key = f"floor/{backup_id}"
        await self._round_trip(backup_id)  # the gateway's lock
        if self.storage:
            listed = "".join(
                f"<Part><PartNumber>{part['part_number']}</PartNumber><ETag>{part['etag']}</ETag></Part>"
                for part in body["parts"]
            )
            await self.s3.request(
                "POST",
                key,
                {"uploadId": upload_id},
                f'<CompleteMultipartUpload xmlns="{XMLNS}">{listed}</CompleteMultipartUpload>'.encode(),
            )
            manifest = json.dumps({"id": backup_id, "filler": MANIFEST_FILLER}).encode()
            await self.s3.request(
                "PUT", key + ".json", body=manifest, headers={"Content-Type": "application/json"}
            )
        await self._round_trip(backup_id)  # the gateway's complete
        return web.json_response({"id": backup_id, "status": "completed"})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--s3", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--layers", choices=LAYERS, default="all")
    args = parser.parse_args()
    floor = Floor(args)
    app = web.Application()
    app.on_startup.append(floor.start)
    app.on_cleanup.append(floor.stop)
    app.router.add_get("/healthz", floor.healthz)
    app.router.add_post("/v1/backups", floor.create)
    app.router.add_post("/v1/backups/{backup_id}/complete", floor.complete)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
