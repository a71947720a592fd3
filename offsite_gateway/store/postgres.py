"""The `Store` on PostgreSQL through asyncpg: any number of gateway nodes over one database.

Every rule is the database's: the partial unique index `backups_one_upload` (one upload in progress per
instance), `begin_backup`'s transaction (which holds the instance's row, so the init rate is counted by one node
at a time), conditional updates for every state change, and advisory locks:

- `lock_backup`: a session advisory lock on the backup (key: a 64-bit hash of its id), held on one pooled
  connection, which the store's calls inside the block then use too (a context variable carries it), so a
  request holding a lock never waits for a second connection. Requests of one node for one backup first queue
  on a lock of the process, holding no connection. If the node dies, the server ends its session and its locks.
  Round trips are shared: taking the lock reads the backup (and, to complete it, its instance's completed
  backups), and a complete that succeeds ends the lock in its own statement.
- `lock_sweeper`: `pg_try_advisory_lock`: one node sweeps, the others skip that run.
- migrations run under an advisory lock, each in its own transaction, recorded in `schema_migrations`.

How connections are pooled, timed out and bound to the lock a task holds is `pg_connections`; every request's
token is looked up in the `TokenCache` (`token_cache`: kept fresh by a connection of its own that LISTENs for
changes of instances) first, in the database only when it has nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import cast

import asyncpg

from ..config import PostgresDatabase
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
from .pg_connections import Connections, lock_key
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
from .token_cache import TokenCache

_LOGGER = logging.getLogger(__name__)

_BACKUP_PLACEHOLDERS = ", ".join(f"${n}" for n in range(1, 16))
_NOTICE_PLACEHOLDERS = ", ".join(f"${n}" for n in range(1, 13))

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at double precision NOT NULL
)
"""


MIGRATION_LOCK = lock_key("migrations", "")
SWEEPER_LOCK = lock_key("sweeper", "")

NOTIFYING_VERSION = 7  # the schema version from which the database notifies changes of instances


class PostgresStore:
    """The `Store` on a PostgreSQL database (`postgresql://user:password@host:port/database`)."""

    kind = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 10, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._db = Connections(url, pool_size=pool_size, timeout=timeout)
        self._locks = KeyedLocks()
        self._tokens = TokenCache(url, timeout=timeout)

    def describe(self) -> str:
        return f"PostgreSQL {PostgresDatabase(self.url).redacted}"

    async def open(self, *, migrate: bool = True) -> None:
        await self._db.open()
        try:
            async with self._db.acquire() as conn:
                if migrate:
                    await self._migrate(conn)
                    current = SCHEMA_VERSION
                else:
                    current = await self._version(conn)
                    if current > SCHEMA_VERSION:
                        raise SchemaTooNew(too_new_message(current))  # noqa: TRY301 - the pool is closed below
            if current >= NOTIFYING_VERSION:
                await self._tokens.open()
        except BaseException:
            await self._tokens.close()
            await self._db.close()
            raise

    async def close(self) -> None:
        await self._tokens.close()
        await self._db.close()

    # --- schema ---------------------------------------------------------------------------------------

    @staticmethod
    async def _version(conn: asyncpg.Connection) -> int:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not exists:
            return 0
        version: int = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
        return version

    async def _migrate(self, conn: asyncpg.Connection) -> list[tuple[int, str]]:
        """Under an advisory lock: nodes starting together wait for the first, then find nothing to do."""
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.execute(_MIGRATIONS_TABLE)
            current = await self._version(conn)
            if current > SCHEMA_VERSION:
                raise SchemaTooNew(too_new_message(current))
            applied = []
            for migration in MIGRATIONS[current:]:
                async with conn.transaction():
                    for statement in statements(migration.postgresql):
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.description,
                        time.time(),
                    )
                applied.append((migration.version, migration.description))
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

    async def schema_status(self) -> SchemaStatus:
        async with self._db.conn() as conn:
            current = await self._version(conn)
        return SchemaStatus(current, SCHEMA_VERSION, pending(current))

    async def migrate(self) -> list[tuple[int, str]]:
        async with self._db.conn() as conn:
            return await self._migrate(conn)

    async def ping(self) -> None:
        async with self._db.conn() as conn:
            await conn.fetchval("SELECT 1")

    # --- locks ----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lock_backup(
        self, backup_id: str, *, wait: bool = True, completing: bool = False
    ) -> AsyncIterator[bool]:
        async with self._locks.hold(backup_id, wait=wait) as local:
            if not local:
                yield False
                return
            key = lock_key("backup", backup_id)
            read_ahead = backup_id if wait and not self._db.bound() else None
            async with self._db.advisory(
                key, wait=wait, read_ahead=read_ahead, completing=completing
            ) as held:
                try:
                    yield held
                finally:
                    self._db.forget_ahead()

    @contextlib.asynccontextmanager
    async def lock_sweeper(self) -> AsyncIterator[bool]:
        async with self._locks.hold("\0sweeper", wait=False) as local:
            if not local:
                yield False
                return
            async with self._db.advisory(SWEEPER_LOCK, wait=False) as held:
                yield held

    # --- instances ------------------------------------------------------------------------------------

    # Each write of `instances` also empties this process's token cache at once, not only when its
    # notification arrives; in `finally`, as a failed call may have committed.

    async def create_instance(self, instance: Instance, token_hash: str) -> None:
        try:
            async with self._db.conn() as conn:
                await conn.execute(
                    "INSERT INTO instances (id, name, token_hash, created_at) VALUES ($1, $2, $3, $4)",
                    instance.id,
                    instance.name,
                    token_hash,
                    instance.created_at,
                )
        except asyncpg.UniqueViolationError as err:
            raise DuplicateInstance(instance.name) from err
        finally:
            self._tokens.forget()

    async def restore_instance(self, instance: Instance, token_hash: str) -> bool:
        try:
            async with self._db.conn() as conn:
                status: str = await conn.execute(
                    "INSERT INTO instances (id, name, token_hash, created_at, revoked_at) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                    instance.id,
                    instance.name,
                    token_hash,
                    instance.created_at,
                    instance.revoked_at,
                )
        finally:
            self._tokens.forget()
        return status.endswith(" 1")

    async def list_instances(self) -> list[Instance]:
        async with self._db.conn() as conn:
            rows = await conn.fetch(f"SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY created_at, name")  # noqa: S608
        return [instance_from_row(row) for row in rows]

    async def revoke_instance(self, name: str, now: float) -> Instance | None:
        try:
            async with self._db.conn() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "UPDATE instances SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL "  # noqa: S608
                    f"RETURNING {INSTANCE_COLUMNS}",
                    now,
                    name,
                )
                if row is not None:
                    await conn.execute(
                        "UPDATE backups SET status = 'failed', last_activity = $2, metadata = '{}' "
                        "WHERE instance_id = $1 AND status = 'uploading'",
                        row["id"],
                        now,
                    )
        finally:
            self._tokens.forget()
        return None if row is None else instance_from_row(row)

    async def rotate_token(self, name: str, token_hash: str) -> Instance | None:
        try:
            async with self._db.conn() as conn:
                row = await conn.fetchrow(
                    "UPDATE instances SET token_hash = $1 WHERE name = $2 AND revoked_at IS NULL "  # noqa: S608
                    f"RETURNING {INSTANCE_COLUMNS}",
                    token_hash,
                    name,
                )
        finally:
            self._tokens.forget()
        return None if row is None else instance_from_row(row)

    async def set_policy(
        self, name: str, changes: dict[str, int | None], now: float | None = None
    ) -> Instance | None:
        unknown = set(changes) - set(POLICY_FIELDS)
        if unknown:
            raise ValueError(f"not policy fields: {sorted(unknown)}")
        try:
            async with self._db.conn() as conn:
                if not changes:
                    row = await conn.fetchrow(
                        f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE name = $1 AND revoked_at IS NULL",  # noqa: S608
                        name,
                    )
                else:
                    # Field names checked above; every value a bound parameter.
                    assignments = ", ".join(f"{field} = ${index}" for index, field in enumerate(changes, 3))
                    row = await conn.fetchrow(
                        f"UPDATE instances SET {assignments}, policy_set_at = $2 "  # noqa: S608
                        f"WHERE name = $1 AND revoked_at IS NULL RETURNING {INSTANCE_COLUMNS}",
                        name,
                        time.time() if now is None else now,
                        *changes.values(),
                    )
        finally:
            self._tokens.forget()
        return None if row is None else instance_from_row(row)

    async def restore_policy(self, instance_id: str, policy: PolicyOverrides, set_at: float) -> bool:
        assignments = ", ".join(f"{field} = ${index}" for index, field in enumerate(POLICY_FIELDS, 3))
        try:
            async with self._db.conn() as conn:
                status: str = await conn.execute(
                    f"UPDATE instances SET {assignments}, policy_set_at = $2 WHERE id = $1 "  # noqa: S608
                    "AND (policy_set_at IS NULL OR policy_set_at < $2)",
                    instance_id,
                    set_at,
                    *(getattr(policy, field) for field in POLICY_FIELDS),
                )
        finally:
            self._tokens.forget()
        return status.endswith(" 1")

    async def usage(self, instance_id: str) -> tuple[int, int]:
        async with self._db.conn() as conn:
            row = await conn.fetchrow(
                "SELECT coalesce(sum(size), 0) AS bytes, count(*) FILTER (WHERE status = 'completed') AS count "
                "FROM backups WHERE instance_id = $1 AND status IN ('completed', 'deleting')",
                instance_id,
            )
        assert row is not None
        return int(row["bytes"]), int(row["count"])

    async def instance_by_token_hash(self, token_hash: str) -> Instance | None:
        """From the token cache while it listens (`token_cache`), else from the database."""
        cached = self._tokens.get(token_hash)
        if cached is not None:
            return cached
        generation = self._tokens.generation
        async with self._db.conn() as conn:
            row = await conn.fetchrow(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE token_hash = $1 AND revoked_at IS NULL",  # noqa: S608
                token_hash,
            )
        if row is None:
            return None  # not cached: wrong tokens (throttled by the app) would only crowd out the right ones
        found = instance_from_row(row)
        self._tokens.put(token_hash, found, generation)
        return found

    # --- backups --------------------------------------------------------------------------------------

    async def begin_backup(
        self, backup: Backup, now: float, init_rate: int, quota: int | None = None
    ) -> None:
        # A create's writes (this and `set_upload_id`) commit asynchronously (migration 8): a database crash may
        # forget those of its last moments; their clients get 404 at complete, and the sweeper aborts the storage
        # uploads. Everything after (completes, deletes) commits durably, and flushes these too.
        # One round trip: offsite_begin_backup (migration 9) holds the instance's row, checks the upload in
        # progress, the quota and the init rate, and inserts, in the statement's own transaction.
        async with self._db.conn() as conn:
            row = await conn.fetchrow(
                "SELECT busy, recent, oldest, began, used FROM offsite_begin_backup("
                "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::bigint)",
                backup.id,
                backup.instance_id,
                backup.name,
                backup.size,
                backup.sha256,
                backup.created_at,
                backup.part_size,
                backup.part_count,
                backup.object_key,
                json.dumps(backup.metadata, separators=(",", ":")),
                now,
                init_rate,
                quota,
            )
        assert row is not None
        if row["busy"] is not None:
            raise UploadInProgress(row["busy"])
        used = row["used"]
        if not row["began"] and quota is not None and used is not None and used + backup.size > quota:
            raise QuotaExceeded(int(used))
        if not row["began"]:
            window_start = now - 3600
            raise RateLimited(max(1, int(row["oldest"] - window_start) + 1))

    async def restore_backup(self, backup: Backup) -> bool:
        async with self._db.conn() as conn:
            status: str = await conn.execute(
                f"INSERT INTO backups ({BACKUP_COLUMNS}) VALUES ({_BACKUP_PLACEHOLDERS}) "  # noqa: S608
                "ON CONFLICT (id) DO NOTHING",
                *backup_values(backup),
            )
        return status.endswith(" 1")

    async def promote_backup(self, backup: Backup) -> bool:
        self._db.forget_ahead()
        async with self._db.conn() as conn:
            status: str = await conn.execute(
                "UPDATE backups SET status = 'completed', name = $4, size = $5, sha256 = $6, created_at = $7, "
                "completed_at = $8, part_size = $9, part_count = $10, metadata = $11, upload_id = NULL "
                "WHERE id = $1 AND instance_id = $2 AND object_key = $3 AND status IN ('uploading', 'failed')",
                backup.id,
                backup.instance_id,
                backup.object_key,
                backup.name,
                backup.size,
                backup.sha256,
                backup.created_at,
                backup.completed_at,
                backup.part_size,
                backup.part_count,
                json.dumps(backup.metadata, separators=(",", ":")),
            )
        return status.endswith(" 1")

    async def set_upload_id(self, backup_id: str, upload_id: str) -> bool:
        self._db.forget_ahead()
        async with self._db.conn() as conn:
            # offsite_set_upload_id (migration 8): the update, committed asynchronously (see `begin_backup`).
            recorded: bool = await conn.fetchval("SELECT offsite_set_upload_id($1, $2)", backup_id, upload_id)
        return recorded

    async def get_backup(self, backup_id: str) -> Backup | None:
        found, backup = self._db.ahead("backup", backup_id)
        if found:
            return cast("Backup | None", backup)
        async with self._db.conn() as conn:
            row = await conn.fetchrow(f"SELECT {BACKUP_COLUMNS} FROM backups WHERE id = $1", backup_id)  # noqa: S608
        return None if row is None else backup_from_row(row)

    async def list_backups(self, instance_id: str, status: str) -> list[Backup]:
        found, backups = self._db.ahead(f"list:{status}", instance_id)
        if found:
            return cast("list[Backup]", backups)
        async with self._db.conn() as conn:
            rows = await conn.fetch(
                f"SELECT {BACKUP_COLUMNS} FROM backups WHERE instance_id = $1 AND status = $2 "  # noqa: S608
                "ORDER BY completion_seq DESC NULLS LAST, completed_at DESC NULLS LAST, created_at DESC, id DESC",
                instance_id,
                status,
            )
        return [backup_from_row(row) for row in rows]

    async def complete_backup(
        self, backup_id: str, sha256: str | None, now: float, expired: Sequence[str] = ()
    ) -> bool:
        self._db.forget_ahead()
        # Inside `lock_backup` of this backup, a complete that succeeds also ends the lock, in its own statement:
        # nothing the block does after a complete touches the database (one round trip fewer).
        key = lock_key("backup", backup_id)
        lock = self._db.held_lock(key)
        unlocking = lock is not None
        async with self._db.conn() as conn:
            # One statement, so one transaction: completed, and what retention expires marked `deleting`, at once.
            row = await conn.fetchrow(
                "WITH done AS (UPDATE backups SET status = 'completed', completed_at = $1, "
                "sha256 = coalesce($2, sha256) WHERE id = $3 AND status = 'uploading' RETURNING instance_id), "
                "gone AS (UPDATE backups SET status = 'deleting' WHERE id = ANY($4::text[]) "
                "AND status = 'completed' AND instance_id = (SELECT instance_id FROM done)), "
                "counted AS (SELECT count(*) AS done FROM done) "
                "SELECT done, CASE WHEN $5 AND done > 0 THEN pg_advisory_unlock($6) END AS unlocked FROM counted",
                now,
                sha256,
                backup_id,
                list(expired),
                unlocking,
                key,
            )
        assert row is not None
        if row["unlocked"] and lock is not None:
            lock.released = True
        return bool(row["done"])

    async def fail_backup(self, backup_id: str, now: float) -> Backup | None:
        self._db.forget_ahead()
        async with self._db.conn() as conn:
            row = await conn.fetchrow(
                "UPDATE backups SET status = 'failed', last_activity = $2, metadata = '{}' "  # noqa: S608
                f"WHERE id = $1 AND status = 'uploading' RETURNING {BACKUP_COLUMNS}",
                backup_id,
                now,
            )
        return None if row is None else backup_from_row(row)

    async def touch_backup(self, backup_id: str, now: float) -> None:
        self._db.forget_ahead()
        async with self._db.conn() as conn:
            await conn.execute(
                "UPDATE backups SET last_activity = greatest(last_activity, $2) "
                "WHERE id = $1 AND status = 'uploading'",
                backup_id,
                now,
            )

    async def mark_deleting(self, backup_ids: Sequence[str]) -> None:
        self._db.forget_ahead()
        if not backup_ids:
            return
        async with self._db.conn() as conn:
            await conn.execute(
                "UPDATE backups SET status = 'deleting' WHERE id = ANY($1::text[]) AND status <> 'uploading'",
                list(backup_ids),
            )

    async def delete_backup(self, backup_id: str) -> None:
        self._db.forget_ahead()
        async with self._db.conn() as conn:
            await conn.execute("DELETE FROM backups WHERE id = $1", backup_id)

    async def delete_backups(self, backup_ids: Sequence[str]) -> None:
        self._db.forget_ahead()
        if not backup_ids:
            return
        async with self._db.conn() as conn:
            await conn.execute(
                "DELETE FROM backups WHERE id = ANY($1::text[]) AND status = 'deleting'", list(backup_ids)
            )

    async def stale_uploads(self, active_before: float) -> list[Backup]:
        async with self._db.conn() as conn:
            rows = await conn.fetch(
                f"SELECT {BACKUP_COLUMNS} FROM backups WHERE status = 'uploading' AND last_activity < $1 "  # noqa: S608
                "ORDER BY last_activity",
                active_before,
            )
        return [backup_from_row(row) for row in rows]

    async def prune_failed(self, before: float) -> int:
        async with self._db.conn() as conn:
            status: str = await conn.execute(
                "DELETE FROM backups WHERE status = 'failed' AND last_activity < $1", before
            )
        return int(status.rsplit(maxsplit=1)[-1])

    async def deleting_backups(self) -> list[Backup]:
        async with self._db.conn() as conn:
            rows = await conn.fetch(
                f"SELECT {BACKUP_COLUMNS} FROM backups WHERE status = 'deleting' ORDER BY created_at"  # noqa: S608
            )
        return [backup_from_row(row) for row in rows]

    async def completed_backups(self, after_id: str, limit: int) -> list[Backup]:
        async with self._db.conn() as conn:
            rows = await conn.fetch(
                f"SELECT {BACKUP_COLUMNS} FROM backups WHERE status = 'completed' AND id > $1 "  # noqa: S608
                "ORDER BY id LIMIT $2",
                after_id,
                limit,
            )
        return [backup_from_row(row) for row in rows]

    async def count_uploading(self) -> int:
        async with self._db.conn() as conn:
            count: int = await conn.fetchval("SELECT count(*) FROM backups WHERE status = 'uploading'")
        return count

    async def prune_init_events(self, before: float) -> None:
        async with self._db.conn() as conn:
            await conn.execute("DELETE FROM init_events WHERE at < $1", before)

    # --- the watchdog -------------------------------------------------------------------------------------

    async def set_notify(self, instance_id: str, target: NotifyTarget | None) -> bool:
        try:
            async with self._db.conn() as conn:
                status: str = await conn.execute(
                    "UPDATE instances SET notify_url = $2, notify_format = $3, notify_secret = $4 "
                    "WHERE id = $1 AND revoked_at IS NULL",
                    instance_id,
                    target.url if target else None,
                    target.format if target else None,
                    target.secret if target else None,
                )
        finally:
            self._tokens.forget()
        return status.endswith(" 1")

    async def instance_by_id(self, instance_id: str) -> Instance | None:
        async with self._db.conn() as conn:
            row = await conn.fetchrow(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1", instance_id)  # noqa: S608
        return None if row is None else instance_from_row(row)

    async def last_success(self, instance_id: str) -> float | None:
        async with self._db.conn() as conn:
            value = await conn.fetchval(
                "SELECT max(completed_at) FROM backups WHERE instance_id = $1 AND status = 'completed'",
                instance_id,
            )
        return None if value is None else float(value)

    async def activity(self) -> dict[str, Activity]:
        async with self._db.conn() as conn:
            rows = await conn.fetch(
                "SELECT instance_id, max(completed_at) FILTER (WHERE status = 'completed') AS last_success, "
                "coalesce(sum(size), 0) AS bytes, count(*) FILTER (WHERE status = 'completed') AS backups "
                "FROM backups WHERE status IN ('completed', 'deleting') GROUP BY instance_id"
            )
        return {
            row["instance_id"]: Activity(row["last_success"], int(row["bytes"]), int(row["backups"]))
            for row in rows
        }

    async def watched(self) -> dict[str, Watched]:
        async with self._db.conn() as conn:
            rows = await conn.fetch(f"SELECT {WATCH_COLUMNS} FROM watch")  # noqa: S608
        return {row["instance_id"]: watched_from_row(row) for row in rows}

    async def change_watch(self, expected_version: int, new: Watched, notices: Sequence[Notice]) -> bool:
        async with self._db.conn() as conn, conn.transaction():
            if expected_version == 0:
                status: str = await conn.execute(
                    f"INSERT INTO watch ({WATCH_COLUMNS}) VALUES ($1, $2, $3, $4, 1) "  # noqa: S608
                    "ON CONFLICT (instance_id) DO NOTHING",
                    new.instance_id,
                    new.state,
                    new.since,
                    new.notified_at,
                )
            else:
                # Under READ COMMITTED a second node's update waits for the first's row lock, then finds the
                # version moved on: it changes nothing, and queues nothing.
                status = await conn.execute(
                    "UPDATE watch SET state = $2, since = $3, notified_at = $4, version = version + 1 "
                    "WHERE instance_id = $1 AND version = $5",
                    new.instance_id,
                    new.state,
                    new.since,
                    new.notified_at,
                    expected_version,
                )
            if not status.endswith(" 1"):
                return False
            if notices:
                await conn.executemany(
                    f"INSERT INTO notices ({NOTICE_COLUMNS}) VALUES ({_NOTICE_PLACEHOLDERS})",  # noqa: S608
                    [notice_values(notice) for notice in notices],
                )
        return True

    async def claim_notices(self, now: float, lease_until: float, limit: int) -> list[Notice]:
        async with self._db.conn() as conn:
            # Rows another node is claiming right now are skipped, not waited for; those it claimed already
            # are no longer due (their next_at is its lease).
            rows = await conn.fetch(
                "UPDATE notices SET next_at = $1, attempts = attempts + 1 WHERE id IN ("  # noqa: S608
                "SELECT id FROM notices WHERE status = 'pending' AND next_at <= $2 ORDER BY next_at, id "
                f"LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING {NOTICE_COLUMNS}",
                lease_until,
                now,
                limit,
            )
        return sorted((notice_from_row(row) for row in rows), key=lambda notice: notice.created_at)

    async def retry_notice(self, notice_id: str, next_at: float, error: str) -> None:
        async with self._db.conn() as conn:
            await conn.execute(
                "UPDATE notices SET next_at = $2, error = $3 WHERE id = $1 AND status = $4",
                notice_id,
                next_at,
                error,
                PENDING,
            )

    async def finish_notice(self, notice_id: str, status: str, now: float, error: str | None = None) -> None:
        async with self._db.conn() as conn:
            await conn.execute(
                "UPDATE notices SET status = $2, done_at = $3, error = $4 WHERE id = $1 AND status = $5",
                notice_id,
                status,
                now,
                error,
                PENDING,
            )

    async def pending_notices(self) -> int:
        async with self._db.conn() as conn:
            count: int = await conn.fetchval("SELECT count(*) FROM notices WHERE status = $1", PENDING)
        return count

    async def list_notices(self) -> list[Notice]:
        async with self._db.conn() as conn:
            rows = await conn.fetch(f"SELECT {NOTICE_COLUMNS} FROM notices ORDER BY created_at, id")  # noqa: S608
        return [notice_from_row(row) for row in rows]

    async def prune_notices(self, before: float) -> int:
        async with self._db.conn() as conn:
            status: str = await conn.execute(
                "DELETE FROM notices WHERE status <> $1 AND done_at < $2", PENDING, before
            )
        return int(status.rsplit(maxsplit=1)[-1])
