"""The backup routes: each parses the request, calls the domain (`domain`: begin, complete, abort, delete, the
checks of ownership) and answers. Signing part URLs and listing parts are the API's own: they change nothing but
the upload's last sign of life."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .. import domain
from ..domain.complete import part_length
from ..errors import ApiError
from ..messages import iso
from ..store import COMPLETED, Backup
from .answers import backup_json
from .bodies import (
    BACKUP_ID_RE,
    INIT_SCHEMA,
    MAX_COMPLETE_BODY,
    SIGN_SCHEMA,
    complete_body_limit,
    declared_parts,
    parse_json,
    read_body,
    read_raw,
)
from .keys import BACKUPS, BODY_READS, CLOCK, METRICS, SETTINGS, STORAGE, STORE, instance_of

TOUCH_EVERY = (
    60.0  # an upload's last activity is recorded to the minute: a sign or a listing writes at most once
)


def _backup_id(request: web.Request) -> str:
    """The `{id}` of the route; 404 if it is not an id the gateway makes (nothing to ask the database)."""
    backup_id = request.match_info["id"]
    if not BACKUP_ID_RE.fullmatch(backup_id):
        domain.not_found()
    return backup_id


async def _owned(request: web.Request) -> Backup:
    """The backup `{id}` if it belongs to the caller; 404 otherwise (whether it exists or not)."""
    return await domain.owned(request.app[BACKUPS], instance_of(request).id, _backup_id(request))


async def _touch(request: web.Request, backup: Backup) -> None:
    """The upload shows a sign of life: the sweeper counts its staleness from now."""
    now = request.app[CLOCK]()
    if now - (backup.last_activity or backup.created_at) >= TOUCH_EVERY:
        await request.app[STORE].touch_backup(backup.id, now)


async def create_backup(request: web.Request) -> web.Response:
    app = request.app
    body = await read_body(request, INIT_SCHEMA)
    backup = await domain.begin(
        app[BACKUPS],
        instance_of(request),
        name=body["name"],
        size=body["size"],
        sha256=body.get("sha256"),
        metadata=body.get("metadata") or {},
    )
    assert backup.upload_id is not None
    answer: dict[str, Any] = {
        "id": backup.id,
        "part_size": backup.part_size,
        "part_count": backup.part_count,
        "url_ttl": app[SETTINGS].url_ttl,
    }
    first = min(body.get("part_urls", 0), backup.part_count)
    if first:
        # The URLs of the first parts, asked for with the create: a backup of that many parts needs no signing call.
        answer["parts"] = _part_urls(app, backup, backup.upload_id, range(1, first + 1))
    return web.json_response(answer, status=201)


async def sign_parts(request: web.Request) -> web.Response:
    app = request.app
    backup = await _owned(request)
    upload_id = domain.require_uploading(backup)  # before reading the body: the cheap refusal first
    body = await read_body(request, SIGN_SCHEMA)
    numbers: list[int] = body["part_numbers"]
    if len(set(numbers)) != len(numbers):
        raise ApiError(400, "invalid_request", "part_numbers: duplicates are not allowed")
    for number in numbers:
        if number > backup.part_count:
            raise ApiError(400, "invalid_request", f"part_numbers: {number} is out of 1..{backup.part_count}")
    await _touch(request, backup)
    return web.json_response({"parts": _part_urls(app, backup, upload_id, numbers)})


def _part_urls(
    app: web.Application, backup: Backup, upload_id: str, numbers: Iterable[int]
) -> list[dict[str, Any]]:
    """Presigned UploadPart URLs of these parts, each for its exact length, valid `URL_TTL` seconds."""
    ttl = app[SETTINGS].url_ttl
    expires_at = iso(app[CLOCK]() + ttl)
    presigner = app[STORAGE].presigner
    parts = [
        {
            "part_number": number,
            "url": presigner.upload_part(
                backup.object_key, upload_id, number, ttl, part_length(backup, number)
            ),
            "expires_at": expires_at,
        }
        for number in numbers
    ]
    app[METRICS].part_urls_signed.inc(len(parts))
    return parts


async def list_parts(request: web.Request) -> web.Response:
    backup = await _owned(request)
    upload_id = domain.require_uploading(backup)
    await _touch(request, backup)
    stored = await request.app[STORAGE].list_parts(backup.object_key, upload_id)
    return web.json_response(
        {"parts": [{"part_number": p.part_number, "etag": p.etag, "size": p.size} for p in stored]}
    )


async def _complete_body(request: web.Request, backup_id: str) -> bytes:
    """The complete's body, read whole before any lock or database connection is held: a client trickling its
    body holds neither (its checks come once the lock is held).

    A body that is all here already (sent with its head, as clients do) is taken as it is (up to the largest a
    complete may send; its upload's own limit is checked under the lock). One still arriving is read only for an
    upload of the caller's in progress (the cheap refusal first), one such body of an upload at a time on this
    node, and no longer than its part count needs.
    """
    if request.content.is_eof():
        return await read_raw(request, MAX_COMPLETE_BODY)
    backup = await _owned(request)
    domain.require_uploading(backup)
    async with request.app[BODY_READS].hold(backup_id):
        return await read_raw(request, complete_body_limit(backup.part_count))


async def complete_backup(request: web.Request) -> web.Response:
    backup_id = _backup_id(request)
    raw = await _complete_body(request, backup_id)

    async def parts_of(backup: Backup) -> tuple[dict[int, str], str | None]:
        # Parsed under the backup's lock, once it is known to be the caller's upload in progress.
        limit = complete_body_limit(backup.part_count)
        if len(raw) > limit:
            raise ApiError(413, "body_too_large", f"the body is larger than {limit // 1024} KiB")
        return await declared_parts(parse_json(raw))

    recorded = await domain.complete(request.app[BACKUPS], instance_of(request), backup_id, parts_of)
    return web.json_response({"backup": backup_json(recorded)})


async def abort_upload(request: web.Request) -> web.Response:
    await domain.abort(request.app[BACKUPS], instance_of(request), _backup_id(request))
    return web.Response(status=204)


async def list_backups(request: web.Request) -> web.Response:
    backups = await request.app[STORE].list_backups(instance_of(request).id, COMPLETED)
    return web.json_response({"backups": [backup_json(backup) for backup in backups]})


async def get_backup(request: web.Request) -> web.Response:
    return web.json_response({"backup": backup_json(await _owned(request))})


async def delete_backup(request: web.Request) -> web.Response:
    await domain.delete(request.app[BACKUPS], _backup_id(request), owner=instance_of(request))
    return web.Response(status=204)


async def download_backup(request: web.Request) -> web.Response:
    app = request.app
    backup = await _owned(request)
    if backup.status != COMPLETED:
        raise ApiError(409, "not_completed", f"backup {backup.id} is {backup.status}, not completed")
    ttl = app[SETTINGS].url_ttl
    expires_at = iso(app[CLOCK]() + ttl)
    url = app[STORAGE].presigner.get_object(backup.object_key, ttl)
    return web.json_response({"url": url, "expires_at": expires_at})
