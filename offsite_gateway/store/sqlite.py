"""The `Store` on one SQLite file (WAL), for one gateway node.

Its queries are short and local, so they run synchronously on the event loop: no thread pool, nothing to clean
up but the connection. Rules across requests are kept by the database (the partial unique index on uploads in
progress, `BEGIN IMMEDIATE` transactions, conditional updates); the one thing held in the process is the
per-backup lock, which is enough because one SQLite file serves one node.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

from .base import (
    PENDING,
    POLICY_FIELDS,
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
    UploadInProgress,
    Watched,
)
from .locks import KeyedLocks
from .migrations import MIGRATIONS, SCHEMA_VERSION, pending, statements, too_new_message
from .rows import (
    BACKUP_COLUMNS,
    INSTANCE_COLUMNS,
    NOTICE_COLUMNS,
    WATCH_COLUMNS,
    backup_from_row,
    backup_values,
    instance_from_row,
    notice_from_row,
    notice_values,
    watched_from_row,
)

_BACKUP_PLACEHOLDERS = ", ".join("?" * 15)
_NOTICE_PLACEHOLDERS = ", ".join("?" * 12)


@contextlib.contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A `BEGIN IMMEDIATE` transaction (the write lock taken at once): committed if the block ends well, else
    rolled back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SQLiteStore:
    """The `Store` on one SQLite file (WAL)."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._locks = KeyedLocks()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the store is not open")
        return self._conn

    def describe(self) -> str:
        return f"SQLite {self.path}"

    async def open(self, *, migrate: bool = True) -> None:
        self.open_sync(migrate=migrate)

    def open_sync(self, *, migrate: bool = True) -> None:
        """Open the database and (with `migrate`) bring its schema up to date.

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
            version = self._version(conn)
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(too_new_message(version))  # noqa: TRY301 - the connection is closed below
            if migrate:
                self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        return version

    @classmethod
    def _migrate(cls, conn: sqlite3.Connection) -> list[tuple[int, str]]:
        """Every pending migration in one `BEGIN IMMEDIATE` transaction: the version is read under the write
        lock, so two processes opening one new file migrate it once."""
        with _write_transaction(conn):
            version = cls._version(conn)
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(too_new_message(version))
            applied = []
            for migration in MIGRATIONS[version:]:
                for statement in statements(migration.sqlite):
                    conn.execute(statement)
                applied.append((migration.version, migration.description))
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return applied

    async def schema_status(self) -> SchemaStatus:
        current = self._version(self.conn)
        return SchemaStatus(current, SCHEMA_VERSION, pending(current))

    async def migrate(self) -> list[tuple[int, str]]:
        return self._migrate(self.conn)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def ping(self) -> None:
        self.conn.execute("SELECT 1").fetchone()

    @contextlib.asynccontextmanager
    async def lock_backup(
        self, backup_id: str, *, wait: bool = True, completing: bool = False
    ) -> AsyncIterator[bool]:
        async with self._locks.hold(backup_id, wait=wait) as held:
            yield held

    @contextlib.asynccontextmanager
    async def lock_sweeper(self) -> AsyncIterator[bool]:
        async with self._locks.hold("\0sweeper", wait=False) as held:
            yield held

    async def create_instance(self, instance: Instance, token_hash: str) -> None:
        try:
            self.conn.execute(
                "INSERT INTO instances (id, name, token_hash, created_at) VALUES (?, ?, ?, ?)",
                (instance.id, instance.name, token_hash, instance.created_at),
            )
        except sqlite3.IntegrityError as err:
            raise DuplicateInstance(instance.name) from err

    async def restore_instance(self, instance: Instance, token_hash: str) -> bool:
        cursor = self.conn.execute(
            "INSERT INTO instances (id, name, token_hash, created_at, revoked_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO NOTHING",
            (instance.id, instance.name, token_hash, instance.created_at, instance.revoked_at),
        )
        return cursor.rowcount > 0

    async def list_instances(self) -> list[Instance]:
        rows = self.conn.execute(
            f"SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY created_at, name"  # noqa: S608
        ).fetchall()
        return [instance_from_row(row) for row in rows]

    async def revoke_instance(self, name: str, now: float) -> Instance | None:
        conn = self.conn
        with _write_transaction(conn):
            rows = conn.execute(
                "UPDATE instances SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL "  # noqa: S608
                f"RETURNING {INSTANCE_COLUMNS}",
                (now, name),
            ).fetchall()
            if rows:
                conn.execute(
                    "UPDATE backups SET status = 'failed', last_activity = ?, metadata = '{}' "
                    "WHERE instance_id = ? AND status = 'uploading'",
                    (now, rows[0]["id"]),
                )
        return instance_from_row(rows[0]) if rows else None

    async def rotate_token(self, name: str, token_hash: str) -> Instance | None:
        rows = self.conn.execute(
            "UPDATE instances SET token_hash = ? WHERE name = ? AND revoked_at IS NULL "  # noqa: S608
            f"RETURNING {INSTANCE_COLUMNS}",
            (token_hash, name),
        ).fetchall()
        return instance_from_row(rows[0]) if rows else None

    async def set_policy(
        self, name: str, changes: dict[str, int | None], now: float | None = None
    ) -> Instance | None:
        unknown = set(changes) - set(POLICY_FIELDS)
        if unknown:
            raise ValueError(f"not policy fields: {sorted(unknown)}")
        if not changes:
            row = self.conn.execute(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE name = ? AND revoked_at IS NULL",  # noqa: S608
                (name,),
            ).fetchone()
            return None if row is None else instance_from_row(row)
        assignments = ", ".join(f"{field} = ?" for field in changes)  # names checked above
        rows = self.conn.execute(
            f"UPDATE instances SET {assignments}, policy_set_at = ? WHERE name = ? AND revoked_at IS NULL "  # noqa: S608
            f"RETURNING {INSTANCE_COLUMNS}",
            (*changes.values(), time.time() if now is None else now, name),
        ).fetchall()
        return instance_from_row(rows[0]) if rows else None

    async def restore_policy(self, instance_id: str, policy: PolicyOverrides, set_at: float) -> bool:
        assignments = ", ".join(f"{field} = ?" for field in POLICY_FIELDS)
        cursor = self.conn.execute(
            f"UPDATE instances SET {assignments}, policy_set_at = ? WHERE id = ? "  # noqa: S608
            "AND (policy_set_at IS NULL OR policy_set_at < ?)",
            (*(getattr(policy, field) for field in POLICY_FIELDS), set_at, instance_id, set_at),
        )
        return cursor.rowcount > 0

    async def usage(self, instance_id: str) -> tuple[int, int]:
        row = self.conn.execute(
            "SELECT coalesce(sum(size), 0), count(*) FILTER (WHERE status = 'completed') FROM backups "
            "WHERE instance_id = ? AND status IN ('completed', 'deleting')",
            (instance_id,),
        ).fetchone()
        return int(row[0]), int(row[1])

    async def instance_by_token_hash(self, token_hash: str) -> Instance | None:
        row = self.conn.execute(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE token_hash = ? AND revoked_at IS NULL",  # noqa: S608
            (token_hash,),
        ).fetchone()
        return None if row is None else instance_from_row(row)

    async def begin_backup(
        self, backup: Backup, now: float, init_rate: int, quota: int | None = None
    ) -> None:
        conn = self.conn
        with _write_transaction(conn):
            busy = conn.execute(
                "SELECT id FROM backups WHERE instance_id = ? AND status = 'uploading'", (backup.instance_id,)
            ).fetchone()
            if busy is not None:
                raise UploadInProgress(busy["id"])
            if quota is not None:
                used = int(
                    conn.execute(
                        "SELECT coalesce(sum(size), 0) FROM backups WHERE instance_id = ? "
                        "AND status IN ('completed', 'deleting', 'uploading')",
                        (backup.instance_id,),
                    ).fetchone()[0]
                )
                if used + backup.size > quota:
                    raise QuotaExceeded(used)
            window_start = now - 3600
            recent = conn.execute(
                "SELECT count(*), min(at) FROM init_events WHERE instance_id = ? AND at > ?",
                (backup.instance_id, window_start),
            ).fetchone()
            if recent[0] >= init_rate:
                raise RateLimited(max(1, int(recent[1] - window_start) + 1))
            conn.execute(
                f"INSERT INTO backups ({BACKUP_COLUMNS}) VALUES ({_BACKUP_PLACEHOLDERS})",  # noqa: S608
                backup_values(backup),
            )
            conn.execute("INSERT INTO init_events (instance_id, at) VALUES (?, ?)", (backup.instance_id, now))

    async def restore_backup(self, backup: Backup) -> bool:
        cursor = self.conn.execute(
            f"INSERT INTO backups ({BACKUP_COLUMNS}) VALUES ({_BACKUP_PLACEHOLDERS}) "  # noqa: S608
            "ON CONFLICT (id) DO NOTHING",
            backup_values(backup),
        )
        return cursor.rowcount > 0

    async def promote_backup(self, backup: Backup) -> bool:
        cursor = self.conn.execute(
            "UPDATE backups SET status = 'completed', name = ?, size = ?, sha256 = ?, created_at = ?, "
            "completed_at = ?, part_size = ?, part_count = ?, metadata = ?, upload_id = NULL "
            "WHERE id = ? AND instance_id = ? AND object_key = ? AND status IN ('uploading', 'failed')",
            (
                backup.name,
                backup.size,
                backup.sha256,
                backup.created_at,
                backup.completed_at,
                backup.part_size,
                backup.part_count,
                json.dumps(backup.metadata, separators=(",", ":")),
                backup.id,
                backup.instance_id,
                backup.object_key,
            ),
        )
        return cursor.rowcount > 0

    async def set_upload_id(self, backup_id: str, upload_id: str) -> bool:
        cursor = self.conn.execute(
            "UPDATE backups SET upload_id = ? WHERE id = ? AND status = 'uploading'", (upload_id, backup_id)
        )
        return cursor.rowcount > 0

    async def get_backup(self, backup_id: str) -> Backup | None:
        row = self.conn.execute(
            f"SELECT {BACKUP_COLUMNS} FROM backups WHERE id = ?",  # noqa: S608
            (backup_id,),
        ).fetchone()
        return None if row is None else backup_from_row(row)

    async def list_backups(self, instance_id: str, status: str) -> list[Backup]:
        rows = self.conn.execute(
            f"SELECT {BACKUP_COLUMNS} FROM backups WHERE instance_id = ? AND status = ? "  # noqa: S608
            "ORDER BY completion_seq DESC, completed_at DESC, created_at DESC, id DESC",
            (instance_id, status),
        ).fetchall()
        return [backup_from_row(row) for row in rows]

    async def complete_backup(
        self, backup_id: str, sha256: str | None, now: float, expired: Sequence[str] = ()
    ) -> bool:
        conn = self.conn
        with _write_transaction(conn):
            cursor = conn.execute(
                "UPDATE backups SET status = 'completed', completed_at = ?, sha256 = coalesce(?, sha256) "
                "WHERE id = ? AND status = 'uploading'",
                (now, sha256, backup_id),
            )
            done = cursor.rowcount > 0
            if done:
                conn.executemany(
                    "UPDATE backups SET status = 'deleting' WHERE id = ? AND status = 'completed' "
                    "AND instance_id = (SELECT instance_id FROM backups WHERE id = ?)",
                    [(expired_id, backup_id) for expired_id in expired],
                )
        return done

    async def fail_backup(self, backup_id: str, now: float) -> Backup | None:
        row = self.conn.execute(
            "UPDATE backups SET status = 'failed', last_activity = ?, metadata = '{}' "  # noqa: S608
            "WHERE id = ? AND status = 'uploading' "
            f"RETURNING {BACKUP_COLUMNS}",
            (now, backup_id),
        ).fetchone()
        return None if row is None else backup_from_row(row)

    async def touch_backup(self, backup_id: str, now: float) -> None:
        self.conn.execute(
            "UPDATE backups SET last_activity = max(coalesce(last_activity, 0), ?) WHERE id = ? AND status = 'uploading'",
            (now, backup_id),
        )

    async def mark_deleting(self, backup_ids: Sequence[str]) -> None:
        self.conn.executemany(
            "UPDATE backups SET status = 'deleting' WHERE id = ? AND status <> 'uploading'",
            [(backup_id,) for backup_id in backup_ids],
        )

    async def delete_backup(self, backup_id: str) -> None:
        self.conn.execute("DELETE FROM backups WHERE id = ?", (backup_id,))

    async def delete_backups(self, backup_ids: Sequence[str]) -> None:
        self.conn.executemany(
            "DELETE FROM backups WHERE id = ? AND status = 'deleting'",
            [(backup_id,) for backup_id in backup_ids],
        )

    async def stale_uploads(self, active_before: float) -> list[Backup]:
        rows = self.conn.execute(
            f"SELECT {BACKUP_COLUMNS} FROM backups WHERE status = 'uploading' AND last_activity < ? "  # noqa: S608
            "ORDER BY last_activity",
            (active_before,),
        ).fetchall()
        return [backup_from_row(row) for row in rows]

    async def prune_failed(self, before: float) -> int:
        cursor = self.conn.execute(
            "DELETE FROM backups WHERE status = 'failed' AND last_activity < ?", (before,)
        )
        return cursor.rowcount

    async def deleting_backups(self) -> list[Backup]:
        rows = self.conn.execute(
            f"SELECT {BACKUP_COLUMNS} FROM backups WHERE status = 'deleting' ORDER BY created_at"  # noqa: S608
        ).fetchall()
        return [backup_from_row(row) for row in rows]

    async def completed_backups(self, after_id: str, limit: int) -> list[Backup]:
        rows = self.conn.execute(
            f"SELECT {BACKUP_COLUMNS} FROM backups WHERE status = 'completed' AND id > ? "  # noqa: S608
            "ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [backup_from_row(row) for row in rows]

    async def count_uploading(self) -> int:
        count: int = self.conn.execute("SELECT count(*) FROM backups WHERE status = 'uploading'").fetchone()[
            0
        ]
        return count

    async def prune_init_events(self, before: float) -> None:
        self.conn.execute("DELETE FROM init_events WHERE at < ?", (before,))

    # --- the watchdog -------------------------------------------------------------------------------------

    async def set_notify(self, instance_id: str, target: NotifyTarget | None) -> bool:
        cursor = self.conn.execute(
            "UPDATE instances SET notify_url = ?, notify_format = ?, notify_secret = ? "
            "WHERE id = ? AND revoked_at IS NULL",
            (
                target.url if target else None,
                target.format if target else None,
                target.secret if target else None,
                instance_id,
            ),
        )
        return cursor.rowcount > 0

    async def instance_by_id(self, instance_id: str) -> Instance | None:
        row = self.conn.execute(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?",  # noqa: S608
            (instance_id,),
        ).fetchone()
        return None if row is None else instance_from_row(row)

    async def last_success(self, instance_id: str) -> float | None:
        row = self.conn.execute(
            "SELECT max(completed_at) FROM backups WHERE instance_id = ? AND status = 'completed'",
            (instance_id,),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    async def activity(self) -> dict[str, Activity]:
        rows = self.conn.execute(
            "SELECT instance_id, max(completed_at) FILTER (WHERE status = 'completed') AS last_success, "
            "coalesce(sum(size), 0) AS bytes, count(*) FILTER (WHERE status = 'completed') AS backups "
            "FROM backups WHERE status IN ('completed', 'deleting') GROUP BY instance_id"
        ).fetchall()
        return {
            row["instance_id"]: Activity(row["last_success"], int(row["bytes"]), int(row["backups"]))
            for row in rows
        }

    async def watched(self) -> dict[str, Watched]:
        rows = self.conn.execute(f"SELECT {WATCH_COLUMNS} FROM watch").fetchall()  # noqa: S608
        return {row["instance_id"]: watched_from_row(row) for row in rows}

    async def change_watch(self, expected_version: int, new: Watched, notices: Sequence[Notice]) -> bool:
        conn = self.conn
        with _write_transaction(conn):
            if expected_version == 0:
                cursor = conn.execute(
                    f"INSERT INTO watch ({WATCH_COLUMNS}) VALUES (?, ?, ?, ?, 1) "  # noqa: S608
                    "ON CONFLICT (instance_id) DO NOTHING",
                    (new.instance_id, new.state, new.since, new.notified_at),
                )
            else:
                cursor = conn.execute(
                    "UPDATE watch SET state = ?, since = ?, notified_at = ?, version = version + 1 "
                    "WHERE instance_id = ? AND version = ?",
                    (new.state, new.since, new.notified_at, new.instance_id, expected_version),
                )
            if cursor.rowcount == 0:
                return False
            conn.executemany(
                f"INSERT INTO notices ({NOTICE_COLUMNS}) VALUES ({_NOTICE_PLACEHOLDERS})",  # noqa: S608
                [notice_values(notice) for notice in notices],
            )
        return True

    async def claim_notices(self, now: float, lease_until: float, limit: int) -> list[Notice]:
        # One node serves a SQLite file: the statement's own write lock is the whole claim.
        rows = self.conn.execute(
            "UPDATE notices SET next_at = ?, attempts = attempts + 1 WHERE id IN ("  # noqa: S608
            "SELECT id FROM notices WHERE status = 'pending' AND next_at <= ? ORDER BY next_at, id LIMIT ?) "
            f"RETURNING {NOTICE_COLUMNS}",
            (lease_until, now, limit),
        ).fetchall()
        return sorted((notice_from_row(row) for row in rows), key=lambda notice: notice.created_at)

    async def retry_notice(self, notice_id: str, next_at: float, error: str) -> None:
        self.conn.execute(
            "UPDATE notices SET next_at = ?, error = ? WHERE id = ? AND status = ?",
            (next_at, error, notice_id, PENDING),
        )

    async def finish_notice(self, notice_id: str, status: str, now: float, error: str | None = None) -> None:
        self.conn.execute(
            "UPDATE notices SET status = ?, done_at = ?, error = ? WHERE id = ? AND status = ?",
            (status, now, error, notice_id, PENDING),
        )

    async def pending_notices(self) -> int:
        count: int = self.conn.execute(
            "SELECT count(*) FROM notices WHERE status = ?", (PENDING,)
        ).fetchone()[0]
        return count

    async def list_notices(self) -> list[Notice]:
        rows = self.conn.execute(
            f"SELECT {NOTICE_COLUMNS} FROM notices ORDER BY created_at, id"  # noqa: S608
        ).fetchall()
        return [notice_from_row(row) for row in rows]

    async def prune_notices(self, before: float) -> int:
        cursor = self.conn.execute("DELETE FROM notices WHERE status <> ? AND done_at < ?", (PENDING, before))
        return cursor.rowcount
