"""What the gateway answers when it refuses: an error code and a message for people, with an HTTP status and the
code's own fields (`details`); the API sends it as `{"error": {"code", "message", **details}}` (`api.answers`)."""

from __future__ import annotations

from typing import Any


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
