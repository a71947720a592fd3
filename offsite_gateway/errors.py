"""What the API answers when it refuses: `{"error": {"code", "message", **details}}` with an HTTP status."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class ApiError(Exception):
    """An answer `{"error": {"code", "message", **details}}` with an HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.details = details


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
