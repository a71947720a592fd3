"""The gateway client's errors: one class per kind of failure a caller handles differently (see api.py's table)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class GatewayError(Exception):
    """A gateway call failed; ``message`` is meant for a person, ``code`` is the gateway's stable code.

    ``details`` holds the error object's other fields, e.g. ``backup_id`` with 409 ``upload_in_progress``.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details: dict[str, Any] = dict(details or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r}, status={self.status!r})"


class GatewayAuthError(GatewayError):
    """The gateway refused the token (401): it is wrong or was revoked. Start a reauth."""


class GatewayNotFoundError(GatewayError):
    """The backup does not exist, or belongs to another instance (404)."""


class GatewayQuotaError(GatewayError):
    """Over quota or too large (413); the numbers the gateway gave, when it gave them."""

    def _bytes(self, key: str) -> int | None:
        value = self.details.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    @property
    def used_bytes(self) -> int | None:
        """What the instance holds in storage already."""
        return self._bytes("used_bytes")

    @property
    def needed_bytes(self) -> int | None:
        """What the refused backup needed."""
        return self._bytes("needed_bytes")

    @property
    def quota_bytes(self) -> int | None:
        """The instance's quota."""
        return self._bytes("quota_bytes")


class GatewayProtectedError(GatewayError):
    """403 ``protected``: the backup is under delete protection; ``gateway_message`` says until when."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Mapping[str, Any] | None = None,
        gateway_message: str = "",
    ) -> None:
        super().__init__(message, code=code, status=status, details=details)
        self.gateway_message = gateway_message or message


class GatewayConflictError(GatewayError):
    """The request conflicts with the backup's state (409), e.g. ``upload_in_progress``, ``not_uploading``."""


class GatewayUnavailableError(GatewayError):
    """The gateway could not be reached, timed out, failed (5xx) or did not answer the expected JSON."""


class GatewayRateLimitedError(GatewayUnavailableError):
    """Too many requests (429); try again after ``retry_after`` seconds (``None`` when not given)."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, details=details)
        self.retry_after = retry_after


# The error class of each HTTP status that has its own (others: GatewayError, 5xx: GatewayUnavailableError).
STATUS_ERRORS: dict[int, type[GatewayError]] = {
    401: GatewayAuthError,
    403: GatewayAuthError,
    404: GatewayNotFoundError,
    409: GatewayConflictError,
    413: GatewayQuotaError,
}
