"""The instance's own routes: what it is, its limits, usage, policy and watch; the notify URL it sets."""

from __future__ import annotations

import logging
import secrets

from aiohttp import web

from ..errors import ApiError
from ..messages import redact_url
from ..notify import DeliveryError
from ..policy import policy_for
from ..storage import StorageError
from ..store import UPLOADING, Instance, NotifyTarget
from ..watchdog import expectation, watch_json
from .answers import policy_json
from .bodies import NOTIFY_SCHEMA, read_body
from .keys import CLOCK, OUTBOX, SETTINGS, STORAGE, STORE, instance_of

_LOGGER = logging.getLogger(__name__)


async def stored_bytes(app: web.Application, instance: Instance) -> tuple[int, int]:
    """(bytes, backups): what storage holds for the instance, its completed backups (each one's size read back
    from storage at complete) and the parts of its upload in progress as ListParts reports them."""
    store, storage = app[STORE], app[STORAGE]
    stored, count = await store.usage(instance.id)
    for backup in await store.list_backups(instance.id, UPLOADING):
        if backup.upload_id is None:
            continue
        try:
            stored += sum(part.size for part in await storage.list_parts(backup.object_key, backup.upload_id))
        except StorageError as err:
            if err.code != "NoSuchUpload":
                raise
    return stored, count


async def get_instance(request: web.Request) -> web.Response:
    app = request.app
    settings = app[SETTINGS]
    instance = instance_of(request)
    policy = policy_for(instance, settings)
    stored, count = await stored_bytes(app, instance)
    return web.json_response(
        {
            "id": instance.id,
            "name": instance.name,
            "limits": {
                "max_backup_bytes": settings.max_backup_bytes,
                "part_size": settings.part_size,
                "retention": policy.keep_last,
                "url_ttl": settings.url_ttl,
            },
            "usage": {"bytes": stored, "backups": count, "quota_bytes": policy.quota_bytes},
            "policy": policy_json(policy, settings),
            "watch": watch_json(
                instance,
                expectation(instance, await app[STORE].last_success(instance.id), settings, app[CLOCK]()),
                settings,
            ),
        }
    )


async def set_notify(request: web.Request) -> web.Response:
    """The house's notify URL: where the watchdog tells it that its backups stopped (and are back)."""
    instance = instance_of(request)
    body = await read_body(request, NOTIFY_SCHEMA)
    url, fmt = body["url"], body["format"]
    try:
        await request.app[OUTBOX].webhooks.check(url)  # told now, rather than found out when it is late
    except DeliveryError as err:
        code = "forbidden_address" if err.reason == "forbidden_address" else "invalid_request"
        raise ApiError(400, code, f"url: {err}") from None
    secret = secrets.token_urlsafe(32)
    if not await request.app[STORE].set_notify(instance.id, NotifyTarget(url, fmt, secret)):
        raise ApiError(401, "unauthorized", "this instance was revoked")
    _LOGGER.info("Instance %s set its notify URL: %s (%s)", instance.id, redact_url(url), fmt)
    return web.json_response({"notify": {"url": redact_url(url), "format": fmt, "secret": secret}})


async def clear_notify(request: web.Request) -> web.Response:
    instance = instance_of(request)
    await request.app[STORE].set_notify(instance.id, None)
    _LOGGER.info("Instance %s cleared its notify URL", instance.id)
    return web.Response(status=204)
