"""Rows to records and back, the same on both stores: column lists, and `Backup`/`Instance` from a row.

A row is anything read by column name: `sqlite3.Row` and `asyncpg.Record` both are. The column lists are constants
that the stores' f-strings splice into SQL; every value goes in as a bound parameter.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

from .base import POLICY_FIELDS, Backup, Instance, Notice, NotifyTarget, PolicyOverrides, Watched

BACKUP_COLUMNS = (
    "id, instance_id, name, size, sha256, status, created_at, completed_at, part_size, part_count, "
    "object_key, upload_id, metadata, last_activity, completion_seq"
)
INSTANCE_COLUMNS = (
    "id, name, created_at, revoked_at, "
    + ", ".join(POLICY_FIELDS)
    + ", notify_url, notify_format, notify_secret, policy_set_at"
)
WATCH_COLUMNS = "instance_id, state, since, notified_at, version"
NOTICE_COLUMNS = "id, instance_id, event, recipient, channel, payload, created_at, next_at, attempts, status, done_at, error"


def newest_first(backups: Iterable[Backup]) -> list[Backup]:
    """Backups in `list_backups`' order, newest first: by the order they completed in (`completion_seq`, which
    the database assigns: no clock decides it), then completion time (none last), then creation, then id."""
    return sorted(
        backups,
        key=lambda b: (
            b.completion_seq is not None,
            b.completion_seq or 0,
            b.completed_at is not None,
            b.completed_at or 0.0,
            b.created_at,
            b.id,
        ),
        reverse=True,
    )


class Row(Protocol):
    """A database row read by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


def backup_from_row(row: Row) -> Backup:
    """The backup a row of `BACKUP_COLUMNS` holds."""
    return Backup(
        id=row["id"],
        instance_id=row["instance_id"],
        name=row["name"],
        size=row["size"],
        sha256=row["sha256"],
        status=row["status"],
        created_at=row["created_at"],
        completed_at=row["completed_at"],
        part_size=row["part_size"],
        part_count=row["part_count"],
        object_key=row["object_key"],
        upload_id=row["upload_id"],
        metadata=json.loads(row["metadata"]),
        last_activity=row["last_activity"],
        completion_seq=row["completion_seq"],
    )


def backup_values(backup: Backup) -> tuple[Any, ...]:
    """The values of `BACKUP_COLUMNS`, in their order, for an INSERT."""
    return (
        backup.id,
        backup.instance_id,
        backup.name,
        backup.size,
        backup.sha256,
        backup.status,
        backup.created_at,
        backup.completed_at,
        backup.part_size,
        backup.part_count,
        backup.object_key,
        backup.upload_id,
        json.dumps(backup.metadata, separators=(",", ":")),
        backup.last_activity if backup.last_activity is not None else backup.created_at,
        backup.completion_seq,  # None: the database assigns the next one if the row is completed
    )


def instance_from_row(row: Row) -> Instance:
    """The instance a row of `INSTANCE_COLUMNS` holds."""
    policy = PolicyOverrides(**{name: row[name] for name in POLICY_FIELDS})
    notify = (
        NotifyTarget(row["notify_url"], row["notify_format"], row["notify_secret"])
        if row["notify_url"] is not None
        else None
    )
    return Instance(
        row["id"],
        row["name"],
        row["created_at"],
        row["revoked_at"],
        policy,
        notify=notify,
        policy_set_at=row["policy_set_at"],
    )


def watched_from_row(row: Row) -> Watched:
    """The watchdog's record a row of `WATCH_COLUMNS` holds."""
    return Watched(row["instance_id"], row["state"], row["since"], row["notified_at"], row["version"])


def notice_from_row(row: Row) -> Notice:
    """The notice a row of `NOTICE_COLUMNS` holds."""
    return Notice(
        id=row["id"],
        instance_id=row["instance_id"],
        event=row["event"],
        recipient=row["recipient"],
        channel=row["channel"],
        payload=json.loads(row["payload"]),
        created_at=row["created_at"],
        next_at=row["next_at"],
        attempts=row["attempts"],
        status=row["status"],
        done_at=row["done_at"],
        error=row["error"],
    )


def notice_values(notice: Notice) -> tuple[Any, ...]:
    """The values of `NOTICE_COLUMNS`, in their order, for an INSERT."""
    return (
        notice.id,
        notice.instance_id,
        notice.event,
        notice.recipient,
        notice.channel,
        json.dumps(notice.payload, separators=(",", ":"), sort_keys=True),
        notice.created_at,
        notice.next_at,
        notice.attempts,
        notice.status,
        notice.done_at,
        notice.error,
    )
