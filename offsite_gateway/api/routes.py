"""The whole API: (method, path, handler); tests check it against openapi.yaml."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from .backups import (
    abort_upload,
    complete_backup,
    create_backup,
    delete_backup,
    download_backup,
    get_backup,
    list_backups,
    list_parts,
    sign_parts,
)
from .instance import clear_notify, get_instance, set_notify
from .service import healthz, metrics, readyz, root

ROUTES: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("GET", "/v1/instance", get_instance),
    ("PUT", "/v1/instance/notify", set_notify),
    ("DELETE", "/v1/instance/notify", clear_notify),
    ("POST", "/v1/backups", create_backup),
    ("GET", "/v1/backups", list_backups),
    ("GET", "/v1/backups/{id}", get_backup),
    ("DELETE", "/v1/backups/{id}", delete_backup),
    ("POST", "/v1/backups/{id}/parts", sign_parts),
    ("GET", "/v1/backups/{id}/parts", list_parts),
    ("POST", "/v1/backups/{id}/complete", complete_backup),
    ("DELETE", "/v1/backups/{id}/upload", abort_upload),
    ("POST", "/v1/backups/{id}/download", download_backup),
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
    ("GET", "/metrics", metrics),
    ("GET", "/", root),
)
