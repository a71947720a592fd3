"""Versioned, forward-only schema migrations, one list for both stores.

Migration N moves a database from version N - 1 to N. SQLite keeps its version in `PRAGMA user_version` (as
every gateway before PostgreSQL did), PostgreSQL in the table `schema_migrations` (one row per migration
applied, with its description and when). Each store applies the pending ones at start, under a lock, and
`offsite-gateway db upgrade` / `db status` run or show them on their own. A database whose version is newer
than the gateway's is refused: a newer gateway migrated it, and this one would not know its rules.

A new migration is appended, never edited once released: give both dialects, keep it idempotent where the
dialect allows (the lock already makes it run once).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One step of the schema, in each store's dialect (statements separated by `;`)."""

    version: int
    description: str
    sqlite: str
    postgresql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "instances, backups (one upload in progress per instance) and init events",
        sqlite="""
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
        postgresql="""
        CREATE TABLE instances (
            id text PRIMARY KEY,
            name text NOT NULL,
            token_hash text NOT NULL UNIQUE,
            created_at double precision NOT NULL,
            revoked_at double precision
        );
        CREATE UNIQUE INDEX instances_active_name ON instances(name) WHERE revoked_at IS NULL;
        CREATE TABLE backups (
            id text PRIMARY KEY,
            instance_id text NOT NULL REFERENCES instances(id),
            name text NOT NULL,
            size bigint NOT NULL,
            sha256 text,
            status text NOT NULL CHECK (status IN ('uploading', 'completed', 'failed', 'deleting')),
            created_at double precision NOT NULL,
            completed_at double precision,
            part_size bigint NOT NULL,
            part_count integer NOT NULL,
            object_key text NOT NULL,
            upload_id text,
            metadata text NOT NULL
        );
        CREATE UNIQUE INDEX backups_one_upload ON backups(instance_id) WHERE status = 'uploading';
        CREATE INDEX backups_by_instance ON backups(instance_id, status, completed_at);
        CREATE INDEX backups_by_status ON backups(status, created_at);
        CREATE TABLE init_events (
            instance_id text NOT NULL,
            at double precision NOT NULL
        );
        CREATE INDEX init_events_by_instance ON init_events(instance_id, at);
        """,
    ),
    Migration(
        2,
        "index init events by time, for the sweeper's pruning",
        sqlite="CREATE INDEX IF NOT EXISTS init_events_by_time ON init_events(at)",
        postgresql="CREATE INDEX IF NOT EXISTS init_events_by_time ON init_events(at)",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)
assert all(migration.version == index + 1 for index, migration in enumerate(MIGRATIONS))


def pending(current: int) -> tuple[tuple[int, str], ...]:
    """(version, description) of the migrations a database at `current` still needs."""
    return tuple((m.version, m.description) for m in MIGRATIONS if m.version > current)


def statements(sql: str) -> list[str]:
    """The statements of a migration (none of ours holds a `;` inside a literal)."""
    return [statement.strip() for statement in sql.split(";") if statement.strip()]


def too_new_message(current: int) -> str:
    return (
        f"the database schema is version {current}, newer than this gateway's {SCHEMA_VERSION}: "
        "a newer gateway migrated it; run that version (migrations only go forward)"
    )
