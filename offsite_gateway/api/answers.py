"""What the API answers: its errors as JSON, and a backup and a policy as JSON."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..config import Settings
from ..messages import iso
from ..policy import Policy
from ..store import Backup


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> web.Response:
    """`{"error": {"code", "message"}}`, plus the code's own extra fields (`details`) if any."""
    error: dict[str, Any] = {"code": code, "message": message}
    error.update((key, value) for key, value in (details or {}).items() if key not in error)
    return web.json_response({"error": error}, status=status, headers=headers)


def backup_json(backup: Backup) -> dict[str, Any]:
    return {
        "id": backup.id,
        "name": backup.name,
        "size": backup.size,
        "sha256": backup.sha256,
        "status": backup.status,
        "created_at": iso(backup.created_at),
        "completed_at": iso(backup.completed_at),
        "part_size": backup.part_size,
        "part_count": backup.part_count,
        "metadata": backup.metadata,
    }


def policy_json(policy: Policy, settings: Settings) -> dict[str, Any]:
    return {**policy.as_json(), "object_lock": settings.object_lock and policy.protect_days > 0}
