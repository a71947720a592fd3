"""Metadata store: instances, backups and init events, on SQLite (one node) or PostgreSQL (several nodes).

`create_store(settings)` picks the store from `OFFSITE_GATEWAY_DB`: a `postgresql://` URL is PostgreSQL, anything
else a SQLite file. The interface and its rules are in `base.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (
    COMPLETED,
    DELETING,
    DROPPED,
    FAILED,
    GAVE_UP,
    LATE,
    NEVER,
    OK,
    PAUSED,
    PENDING,
    POLICY_FIELDS,
    SENT,
    UPLOADING,
    WATCH_STATES,
    Activity,
    Backup,
    DuplicateInstance,
    Instance,
    Notice,
    NotifyTarget,
    PolicyOverrides,
    QuotaExceeded,
    RateLimited,
    SchemaStatus,
    SchemaTooNew,
    Store,
    StoreError,
    StoreUnavailable,
    UnknownInstance,
    UploadInProgress,
    Watched,
)
from .migrations import MIGRATIONS, SCHEMA_VERSION
from .rows import newest_first
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "COMPLETED",
    "DELETING",
    "DROPPED",
    "FAILED",
    "GAVE_UP",
    "LATE",
    "MIGRATIONS",
    "NEVER",
    "OK",
    "PAUSED",
    "PENDING",
    "POLICY_FIELDS",
    "SCHEMA_VERSION",
    "SENT",
    "UPLOADING",
    "WATCH_STATES",
    "Activity",
    "Backup",
    "DuplicateInstance",
    "Instance",
    "Notice",
    "NotifyTarget",
    "PolicyOverrides",
    "QuotaExceeded",
    "RateLimited",
    "SQLiteStore",
    "SchemaStatus",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UnknownInstance",
    "UploadInProgress",
    "Watched",
    "create_store",
    "newest_first",
]


def create_store(settings: Settings) -> Store:
    """The store `settings.db` names: PostgreSQL for a `postgresql://` URL, else a SQLite file."""
    from ..config import PostgresDatabase  # noqa: PLC0415 - config imports nothing of ours; avoid a cycle

    if isinstance(settings.db, PostgresDatabase):
        from .postgres import PostgresStore  # noqa: PLC0415 - asyncpg only when PostgreSQL is used

        return PostgresStore(settings.db.url, pool_size=settings.db_pool_size, timeout=settings.db_timeout)
    return SQLiteStore(settings.db)
