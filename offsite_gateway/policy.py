"""An instance's policy: its quota, its generational retention, its delete protection.

The operator sets each field per instance (`offsite-gateway instance set`); a field left unset follows the
gateway's settings (`OFFSITE_GATEWAY_QUOTA`, `RETENTION`, `RETENTION_DAILY`, `RETENTION_WEEKLY`,
`RETENTION_MONTHLY`, `PROTECT_DAYS`), so changing a setting changes every instance that did not choose otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .store import Instance

DAY = 86_400


@dataclass(frozen=True)
class Policy:
    """The policy in force for one instance."""

    quota_bytes: int | None  # None: no quota
    keep_last: int
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    protect_days: int

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def keeps_something(self) -> bool:
        return bool(self.keep_last or self.keep_daily or self.keep_weekly or self.keep_monthly)

    def deletable_at(self, completed_at: float) -> float:
        """When a backup completed at `completed_at` may be deleted with the instance's token."""
        return completed_at + self.protect_days * DAY


def default_policy(settings: Settings) -> Policy:
    return Policy(
        quota_bytes=settings.quota,
        keep_last=settings.retention,
        keep_daily=settings.retention_daily,
        keep_weekly=settings.retention_weekly,
        keep_monthly=settings.retention_monthly,
        protect_days=settings.protect_days,
    )


def policy_for(instance: Instance, settings: Settings) -> Policy:
    """The instance's own fields where the operator set them, the gateway's settings elsewhere.

    A quota set to 0 means "no quota" for this instance, whatever the default.
    """
    default = default_policy(settings)
    own = instance.policy
    quota = default.quota_bytes if own.quota_bytes is None else (own.quota_bytes or None)
    return Policy(
        quota_bytes=quota,
        keep_last=default.keep_last if own.keep_last is None else own.keep_last,
        keep_daily=default.keep_daily if own.keep_daily is None else own.keep_daily,
        keep_weekly=default.keep_weekly if own.keep_weekly is None else own.keep_weekly,
        keep_monthly=default.keep_monthly if own.keep_monthly is None else own.keep_monthly,
        protect_days=default.protect_days if own.protect_days is None else own.protect_days,
    )
