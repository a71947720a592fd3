"""Metadata store: instances, backups and init events.

`Store` is the interface the gateway uses (async, so a PostgreSQL implementation can fill it later); `SQLiteStore`
implements it with the standard library's `sqlite3` in WAL mode. Its queries are short and local, so they run
synchronously on the event loop: no thread pool, nothing to clean up but the connection.

Backup status: `uploading` → `completed` | `failed`; `completed` → `deleting` (retention or DELETE) → row removed
once the object is gone from storage. A row stays `deleting` until its object delete succeeded: the sweeper
retries it, so nothing is forgotten half-way.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

UPLOADING = "uploading"
COMPLETED = "completed"
FAILED = "failed"
DELETING = "deleting"


class StoreError(Exception):
    """Base class of the store's expected refusals."""


class UploadInProgress(StoreError):
    """The instance already has an upload in progress: backup `backup_id`."""

    def __init__(self, backup_id: str) -> None:
        super().__init__(f"backup {backup_id} is uploading")
        self.backup_id = backup_id


class RateLimited(StoreError):
    """The instance started too many uploads within the last hour."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many uploads started; retry in {retry_after} s")
        self.retry_after = retry_after


class DuplicateInstance(StoreError):
    """An active instance already has this name."""


class UnknownInstance(StoreError, LookupError):
    """No active instance has this name (there is none, or it was revoked)."""


@dataclass(frozen=True)
class Instance:
    """A Home Assistant installation allowed to back up through the gateway."""

    id: str
    name: str
    created_at: float
    revoked_at: float | None = None


@dataclass
class Backup:
    """One backup: an upload in progress, a completed object, a failed attempt, or an object being deleted."""

    id: str
    instance_id: str
    name: str
    size: int
    sha256: str | None
    status: str
    created_at: float
    completed_at: float | None
    part_size: int
    part_count: int
    object_key: str
    upload_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class Store(Protocol):
    """What the gateway needs from its metadata database."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def create_instance(self, instance: Instance, token_hash: str) -> None: ...
    async def list_instances(self) -> list[Instance]: ...
    async def revoke_instance(self, name: str, now: float) -> Instance | None:
        """Revoke the active instance with this name and, in the same transaction, mark its uploads in progress
        failed (their storage uploads become orphans: see `sweeper`); None if there is none."""
        ...

    async def rotate_token(self, name: str, token_hash: str) -> Instance | None:
        """Replace the token hash of the active instance with this name; None if there is none."""
        ...

    async def instance_by_token_hash(self, token_hash: str) -> Instance | None: ...

    async def begin_backup(self, backup: Backup, now: float, init_rate: int) -> None:
        """Insert an `uploading` backup; raise UploadInProgress (naming the upload) or RateLimited, atomically."""
        ...

    async def set_upload_id(self, backup_id: str, upload_id: str) -> bool:
        """Record the storage upload of an `uploading` backup; False if it is not uploading any more."""
        ...

    async def get_backup(self, backup_id: str) -> Backup | None: ...
    async def list_backups(self, instance_id: str, status: str) -> list[Backup]:
        """Backups of one instance with one status, newest first (completion, then creation)."""
        ...

    async def complete_backup(self, backup_id: str, sha256: str | None, now: float) -> bool:
        """`uploading` → `completed`; False if it was not uploading any more."""
        ...

    async def fail_backup(self, backup_id: str) -> bool:
        """`uploading` → `failed`; False if it was not uploading any more."""
        ...

    async def mark_deleting(self, backup_ids: Sequence[str]) -> None: ...
    async def delete_backup(self, backup_id: str) -> None: ...
    async def stale_uploads(self, started_before: float) -> list[Backup]: ...
    async def deleting_backups(self) -> list[Backup]: ...
    async def count_uploading(self) -> int: ...
    async def prune_init_events(self, before: float) -> None: ...


# Each entry moves the schema from version i to i + 1 (PRAGMA user_version).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE UNIQUE INDEX instances_active_name ON instances(name) WHERE revoked_at IS NULL;
    CREATE TABLE backups (
        id TEXT PRIMARY KEY,
        instance_id TEXT NOT NULL REFERENCES instances(id),
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT,
        status TEXT NOT NULL CHECK (status IN ('uploading', 'completed', 'failed', 'deleting')),
        created_at REAL NOT NULL,
        completed_at REAL,
        part_size INTEGER NOT NULL,
        part_count INTEGER NOT NULL,
        object_key TEXT NOT NULL,
        upload_id TEXT,
        metadata TEXT NOT NULL
    );
    CREATE UNIQUE INDEX backups_one_upload ON backups(instance_id) WHERE status = 'uploading';
    CREATE INDEX backups_by_instance ON backups(instance_id, status, completed_at);
    CREATE INDEX backups_by_status ON backups(status, created_at);
    CREATE TABLE init_events (
        instance_id TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX init_events_by_instance ON init_events(instance_id, at);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

# A constant: the f-strings below only splice it in, every value is a bound parameter.
_BACKUP_COLUMNS = (
    "id, instance_id, name, size, sha256, status, created_at, completed_at, part_size, part_count, "
    "object_key, upload_id, metadata"
)


def _backup(row: sqlite3.Row) -> Backup:
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
    )


def _instance(row: sqlite3.Row) -> Instance:
    return Instance(row["id"], row["name"], row["created_at"], row["revoked_at"])


class SQLiteStore:
    """The `Store` on one SQLite file (WAL)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the store is not open")
        return self._conn

    async def open(self) -> None:
        self.open_sync()

    def open_sync(self) -> None:
        """Open the database and bring its schema up to date.

        A new database file (and a folder made for it) is its owner's only: 0600 (0700), whatever the umask;
        SQLite gives the WAL and its index the database file's mode.
        """
        if self.path.parent != Path():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database schema is version {version}, newer than this gateway's {SCHEMA_VERSION}"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def ping(self) -> None:
        self.conn.execute("SELECT 1").fetchone()

    async def create_instance(self, instance: Instance, token_hash: str) -> None:
        try:
            self.conn.execute(
                "INSERT INTO instances (id, name, token_hash, created_at) VALUES (?, ?, ?, ?)",
                (instance.id, instance.name, token_hash, instance.created_at),
            )
        except sqlite3.IntegrityError as err:
            raise DuplicateInstance(instance.name) from err

    async def list_instances(self) -> list[Instance]:
        rows = self.conn.execute(
            "SELECT id, name, created_at, revoked_at FROM instances ORDER BY created_at, name"
        ).fetchall()
        return [_instance(row) for row in rows]

    async def revoke_instance(self, name: str, now: float) -> Instance | None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(
                "UPDATE instances SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL "
                "RETURNING id, name, created_at, revoked_at",
                (now, name),
            ).fetchall()
            if rows:
                conn.execute(
                    "UPDATE backups SET status = 'failed' WHERE instance_id = ? AND status = 'uploading'",
                    (rows[0]["id"],),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return _instance(rows[0]) if rows else None

    async def rotate_token(self, name: str, token_hash: str) -> Instance | None:
        rows = self.conn.execute(
            "UPDATE instances SET token_hash = ? WHERE name = ? AND revoked_at IS NULL "
            "RETURNING id, name, created_at, revoked_at",
            (token_hash, name),
        ).fetchall()
        return _instance(rows[0]) if rows else None

    async def instance_by_token_hash(self, token_hash: str) -> Instance | None:
        row = self.conn.execute(
            "SELECT id, name, created_at, revoked_at FROM instances WHERE token_hash = ? AND revoked_at IS NULL",
            (token_hash,),
        ).fetchone()
        return None if row is None else _instance(row)

    async def begin_backup(self, backup: Backup, now: float, init_rate: int) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            busy = conn.execute(
                "SELECT id FROM backups WHERE instance_id = ? AND status = 'uploading'", (backup.instance_id,)
            ).fetchone()
            if busy is not None:
                raise UploadInProgress(busy["id"])  # noqa: TRY301 - rolled back below
            window_start = now - 3600
            recent = conn.execute(
                "SELECT count(*), min(at) FROM init_events WHERE instance_id = ? AND at > ?",
                (backup.instance_id, window_start),
            ).fetchone()
            if recent[0] >= init_rate:
                raise RateLimited(max(1, int(recent[1] - window_start) + 1))  # noqa: TRY301
            conn.execute(
                f"INSERT INTO backups ({_BACKUP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
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
                ),
            )
            conn.execute("INSERT INTO init_events (instance_id, at) VALUES (?, ?)", (backup.instance_id, now))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def set_upload_id(self, backup_id: str, upload_id: str) -> bool:
        cursor = self.conn.execute(
            "UPDATE backups SET upload_id = ? WHERE id = ? AND status = 'uploading'", (upload_id, backup_id)
        )
        return cursor.rowcount > 0

    async def get_backup(self, backup_id: str) -> Backup | None:
        row = self.conn.execute(
            f"SELECT {_BACKUP_COLUMNS} FROM backups WHERE id = ?",  # noqa: S608
            (backup_id,),
        ).fetchone()
        return None if row is None else _backup(row)

    async def list_backups(self, instance_id: str, status: str) -> list[Backup]:
        rows = self.conn.execute(
            f"SELECT {_BACKUP_COLUMNS} FROM backups WHERE instance_id = ? AND status = ? "  # noqa: S608
            "ORDER BY completed_at DESC, created_at DESC, rowid DESC",
            (instance_id, status),
        ).fetchall()
        return [_backup(row) for row in rows]

    async def complete_backup(self, backup_id: str, sha256: str | None, now: float) -> bool:
        cursor = self.conn.execute(
            "UPDATE backups SET status = 'completed', completed_at = ?, sha256 = coalesce(?, sha256) "
            "WHERE id = ? AND status = 'uploading'",
            (now, sha256, backup_id),
        )
        return cursor.rowcount > 0

    async def fail_backup(self, backup_id: str) -> bool:
        cursor = self.conn.execute(
            "UPDATE backups SET status = 'failed' WHERE id = ? AND status = 'uploading'", (backup_id,)
        )
        return cursor.rowcount > 0

    async def mark_deleting(self, backup_ids: Sequence[str]) -> None:
        self.conn.executemany(
            "UPDATE backups SET status = 'deleting' WHERE id = ?", [(backup_id,) for backup_id in backup_ids]
        )

    async def delete_backup(self, backup_id: str) -> None:
        self.conn.execute("DELETE FROM backups WHERE id = ?", (backup_id,))

    async def stale_uploads(self, started_before: float) -> list[Backup]:
        rows = self.conn.execute(
            f"SELECT {_BACKUP_COLUMNS} FROM backups WHERE status = 'uploading' AND created_at < ? "  # noqa: S608
            "ORDER BY created_at",
            (started_before,),
        ).fetchall()
        return [_backup(row) for row in rows]

    async def deleting_backups(self) -> list[Backup]:
        rows = self.conn.execute(
            f"SELECT {_BACKUP_COLUMNS} FROM backups WHERE status = 'deleting' ORDER BY created_at"  # noqa: S608
        ).fetchall()
        return [_backup(row) for row in rows]

    async def count_uploading(self) -> int:
        count: int = self.conn.execute("SELECT count(*) FROM backups WHERE status = 'uploading'").fetchone()[
            0
        ]
        return count

    async def prune_init_events(self, before: float) -> None:
        self.conn.execute("DELETE FROM init_events WHERE at < ?", (before,))
