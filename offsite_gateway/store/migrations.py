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
    """One step of the schema, in each store's dialect: statements separated by `;`, or a tuple of statements
    (for a statement with `;` inside, such as a function's body)."""

    version: int
    description: str
    sqlite: str | tuple[str, ...]
    postgresql: str | tuple[str, ...]


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
    Migration(
        3,
        "begin_backup in one round trip on PostgreSQL (a function holding the instance's row)",
        sqlite="SELECT 1",  # SQLite runs the same steps in a BEGIN IMMEDIATE transaction of its own process
        postgresql=(
            """
            CREATE OR REPLACE FUNCTION offsite_begin_backup(
                p_id text, p_instance_id text, p_name text, p_size bigint, p_sha256 text,
                p_created_at double precision, p_part_size bigint, p_part_count integer, p_object_key text,
                p_metadata text, p_now double precision, p_init_rate integer,
                OUT busy text, OUT recent bigint, OUT oldest double precision, OUT began boolean)
            LANGUAGE plpgsql AS $$
            BEGIN
                began := false;
                -- Holding the instance's row: its creates are counted one at a time, whichever node runs them.
                PERFORM 1 FROM instances WHERE id = p_instance_id FOR UPDATE;
                SELECT b.id INTO busy FROM backups b
                    WHERE b.instance_id = p_instance_id AND b.status = 'uploading' LIMIT 1;
                IF busy IS NOT NULL THEN
                    RETURN;
                END IF;
                SELECT count(*), min(e.at) INTO recent, oldest FROM init_events e
                    WHERE e.instance_id = p_instance_id AND e.at > p_now - 3600;
                IF recent >= p_init_rate THEN
                    RETURN;
                END IF;
                INSERT INTO backups (id, instance_id, name, size, sha256, status, created_at, completed_at,
                                     part_size, part_count, object_key, upload_id, metadata)
                    VALUES (p_id, p_instance_id, p_name, p_size, p_sha256, 'uploading', p_created_at, NULL,
                            p_part_size, p_part_count, p_object_key, NULL, p_metadata);
                INSERT INTO init_events (instance_id, at) VALUES (p_instance_id, p_now);
                began := true;
            END
            $$
            """,
        ),
    ),
)

MIGRATIONS += (
    Migration(
        4,
        "lock a backup and read it in one round trip on PostgreSQL",
        sqlite="SELECT 1",  # SQLite's lock is the process's
        postgresql=(
            """
            CREATE OR REPLACE FUNCTION offsite_lock_backup(p_key bigint, p_id text)
            RETURNS SETOF backups
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_advisory_lock(p_key);
                -- A statement of its own, so a snapshot taken once the lock is held: what the last holder wrote.
                RETURN QUERY SELECT * FROM backups WHERE id = p_id;
            END
            $$
            """,
        ),
    ),
)

MIGRATIONS += (
    Migration(
        5,
        "uploads' last activity (staleness, pruning failed rows); per-instance policy (quota, retention, protection)",
        sqlite="""
        ALTER TABLE backups ADD COLUMN last_activity REAL;
        UPDATE backups SET last_activity = created_at;
        CREATE INDEX backups_by_activity ON backups(status, last_activity);
        ALTER TABLE instances ADD COLUMN quota_bytes INTEGER;
        ALTER TABLE instances ADD COLUMN keep_last INTEGER;
        ALTER TABLE instances ADD COLUMN keep_daily INTEGER;
        ALTER TABLE instances ADD COLUMN keep_weekly INTEGER;
        ALTER TABLE instances ADD COLUMN keep_monthly INTEGER;
        ALTER TABLE instances ADD COLUMN protect_days INTEGER
        """,
        postgresql=(
            "ALTER TABLE backups ADD COLUMN IF NOT EXISTS last_activity double precision",
            "UPDATE backups SET last_activity = created_at WHERE last_activity IS NULL",
            "CREATE INDEX IF NOT EXISTS backups_by_activity ON backups(status, last_activity)",
            "ALTER TABLE instances ADD COLUMN IF NOT EXISTS quota_bytes bigint",
            "ALTER TABLE instances ADD COLUMN IF NOT EXISTS keep_last integer",
            "ALTER TABLE instances ADD COLUMN IF NOT EXISTS keep_daily integer",
            "ALTER TABLE instances ADD COLUMN IF NOT EXISTS keep_weekly integer",
            "ALTER TABLE instances ADD COLUMN IF NOT EXISTS keep_monthly integer",
            "ALTER TABLE instances ADD COLUMN IF NOT EXISTS protect_days integer",
            # The create's function, now recording the new upload's last activity (its creation).
            """
            CREATE OR REPLACE FUNCTION offsite_begin_backup(
                p_id text, p_instance_id text, p_name text, p_size bigint, p_sha256 text,
                p_created_at double precision, p_part_size bigint, p_part_count integer, p_object_key text,
                p_metadata text, p_now double precision, p_init_rate integer,
                OUT busy text, OUT recent bigint, OUT oldest double precision, OUT began boolean)
            LANGUAGE plpgsql AS $$
            BEGIN
                began := false;
                -- Holding the instance's row: its creates are counted one at a time, whichever node runs them.
                PERFORM 1 FROM instances WHERE id = p_instance_id FOR UPDATE;
                SELECT b.id INTO busy FROM backups b
                    WHERE b.instance_id = p_instance_id AND b.status = 'uploading' LIMIT 1;
                IF busy IS NOT NULL THEN
                    RETURN;
                END IF;
                SELECT count(*), min(e.at) INTO recent, oldest FROM init_events e
                    WHERE e.instance_id = p_instance_id AND e.at > p_now - 3600;
                IF recent >= p_init_rate THEN
                    RETURN;
                END IF;
                INSERT INTO backups (id, instance_id, name, size, sha256, status, created_at, completed_at,
                                     part_size, part_count, object_key, upload_id, metadata, last_activity)
                    VALUES (p_id, p_instance_id, p_name, p_size, p_sha256, 'uploading', p_created_at, NULL,
                            p_part_size, p_part_count, p_object_key, NULL, p_metadata, p_created_at);
                INSERT INTO init_events (instance_id, at) VALUES (p_instance_id, p_now);
                began := true;
            END
            $$
            """,
        ),
    ),
)

MIGRATIONS += (
    Migration(
        6,
        "lock a backup and read it with its instance's completed backups (for retention) in one round trip",
        sqlite="SELECT 1",  # SQLite's lock is the process's
        postgresql=(
            """
            CREATE OR REPLACE FUNCTION offsite_lock_backup_for_complete(p_key bigint, p_id text)
            RETURNS SETOF backups
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_advisory_lock(p_key);
                -- Statements of their own, so snapshots taken once the lock is held: what the last holder wrote.
                RETURN QUERY SELECT * FROM backups WHERE id = p_id;
                RETURN QUERY SELECT * FROM backups WHERE status = 'completed'
                    AND instance_id = (SELECT instance_id FROM backups WHERE id = p_id);
            END
            $$
            """,
        ),
    ),
    Migration(
        7,
        "PostgreSQL: notify the gateway nodes when instances change (their token caches)",
        sqlite="SELECT 1",  # SQLite's store caches nothing: the CLI changes its file from another process
        postgresql=(
            """
            CREATE OR REPLACE FUNCTION offsite_instances_changed() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                -- Sent at commit, once per transaction (same channel, same payload): every node's
                -- PostgresStore listens, and forgets the instances it cached by token.
                PERFORM pg_notify('offsite_gateway_instances', '');
                RETURN NULL;
            END
            $$
            """,
            "DROP TRIGGER IF EXISTS offsite_instances_changed ON instances",
            "CREATE TRIGGER offsite_instances_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON instances "
            "FOR EACH STATEMENT EXECUTE FUNCTION offsite_instances_changed()",
        ),
    ),
)

MIGRATIONS += (
    Migration(
        8,
        "a create's two writes commit asynchronously on PostgreSQL; one index less to keep up on every write",
        # SQLite commits with synchronous=NORMAL already (WAL). backups_by_activity (status, last_activity) serves
        # every lookup by status that backups_by_status (status, created_at) served.
        sqlite="DROP INDEX IF EXISTS backups_by_status",
        postgresql=(
            "DROP INDEX IF EXISTS backups_by_status",
            """
            CREATE OR REPLACE FUNCTION offsite_begin_backup(
                p_id text, p_instance_id text, p_name text, p_size bigint, p_sha256 text,
                p_created_at double precision, p_part_size bigint, p_part_count integer, p_object_key text,
                p_metadata text, p_now double precision, p_init_rate integer,
                OUT busy text, OUT recent bigint, OUT oldest double precision, OUT began boolean)
            LANGUAGE plpgsql AS $$
            BEGIN
                -- Committed asynchronously (migration 8): a database crash may forget a create of its last
                -- moments, whose client then starts again; completes and deletes stay durable.
                PERFORM set_config('synchronous_commit', 'off', true);
                began := false;
                -- Holding the instance's row: its creates are counted one at a time, whichever node runs them.
                PERFORM 1 FROM instances WHERE id = p_instance_id FOR UPDATE;
                SELECT b.id INTO busy FROM backups b
                    WHERE b.instance_id = p_instance_id AND b.status = 'uploading' LIMIT 1;
                IF busy IS NOT NULL THEN
                    RETURN;
                END IF;
                SELECT count(*), min(e.at) INTO recent, oldest FROM init_events e
                    WHERE e.instance_id = p_instance_id AND e.at > p_now - 3600;
                IF recent >= p_init_rate THEN
                    RETURN;
                END IF;
                INSERT INTO backups (id, instance_id, name, size, sha256, status, created_at, completed_at,
                                     part_size, part_count, object_key, upload_id, metadata, last_activity)
                    VALUES (p_id, p_instance_id, p_name, p_size, p_sha256, 'uploading', p_created_at, NULL,
                            p_part_size, p_part_count, p_object_key, NULL, p_metadata, p_created_at);
                INSERT INTO init_events (instance_id, at) VALUES (p_instance_id, p_now);
                began := true;
            END
            $$
            """,
            """
            CREATE OR REPLACE FUNCTION offsite_set_upload_id(p_id text, p_upload_id text) RETURNS boolean
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM set_config('synchronous_commit', 'off', true);
                UPDATE backups SET upload_id = p_upload_id WHERE id = p_id AND status = 'uploading';
                RETURN FOUND;
            END
            $$
            """,
        ),
    ),
)

MIGRATIONS += (
    Migration(
        9,
        "backups' completion order (a trigger assigns it: retention never trusts a clock); when each instance's "
        "policy was set; the quota checked with the create; failed uploads keep no metadata",
        sqlite=(
            "ALTER TABLE backups ADD COLUMN completion_seq INTEGER",
            # Existing backups in the order their clocks gave, the best there is for them.
            "UPDATE backups SET completion_seq = o.n FROM (SELECT id, row_number() OVER "
            "(ORDER BY completed_at, created_at, id) AS n FROM backups WHERE completed_at IS NOT NULL) AS o "
            "WHERE o.id = backups.id",
            "CREATE INDEX backups_by_completion ON backups(completion_seq)",
            # SQLite's BEFORE triggers cannot change the row: AFTER, an update of the row just written.
            """
            CREATE TRIGGER backups_completion_seq_on_update AFTER UPDATE OF status ON backups FOR EACH ROW
            WHEN NEW.status = 'completed' AND NEW.completion_seq IS NULL
            BEGIN
                UPDATE backups SET completion_seq = (SELECT coalesce(max(completion_seq), 0) + 1 FROM backups)
                    WHERE id = NEW.id;
            END
            """,
            """
            CREATE TRIGGER backups_completion_seq_on_insert AFTER INSERT ON backups FOR EACH ROW
            WHEN NEW.status = 'completed' AND NEW.completion_seq IS NULL
            BEGIN
                UPDATE backups SET completion_seq = (SELECT coalesce(max(completion_seq), 0) + 1 FROM backups)
                    WHERE id = NEW.id;
            END
            """,
            "ALTER TABLE instances ADD COLUMN policy_set_at REAL",
            "UPDATE backups SET metadata = '{}' WHERE status = 'failed'",
        ),
        postgresql=(
            "ALTER TABLE backups ADD COLUMN IF NOT EXISTS completion_seq bigint",
            "CREATE SEQUENCE IF NOT EXISTS backups_completion_seq",
            "UPDATE backups b SET completion_seq = o.n FROM (SELECT id, row_number() OVER "
            "(ORDER BY completed_at, created_at, id) AS n FROM backups WHERE completed_at IS NOT NULL) o "
            "WHERE b.id = o.id",
            "SELECT setval('backups_completion_seq', (SELECT coalesce(max(completion_seq), 0) + 1 FROM backups), "
            "false)",
            """
            CREATE OR REPLACE FUNCTION offsite_completion_seq() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                -- One sequence for all: increasing in the order backups complete, on every node (and per
                -- instance, whose completes come one at a time), whatever their clocks say.
                NEW.completion_seq := nextval('backups_completion_seq');
                RETURN NEW;
            END
            $$
            """,
            "DROP TRIGGER IF EXISTS offsite_completion_seq ON backups",
            "CREATE TRIGGER offsite_completion_seq BEFORE INSERT OR UPDATE OF status ON backups FOR EACH ROW "
            "WHEN (NEW.status = 'completed' AND NEW.completion_seq IS NULL) "
            "EXECUTE FUNCTION offsite_completion_seq()",
            "ALTER TABLE instances ADD COLUMN IF NOT EXISTS policy_set_at double precision",
            "UPDATE backups SET metadata = '{}' WHERE status = 'failed'",
            # The create with the instance's quota, checked while its row is held (a new overload: the function
            # without `p_quota` stays for nodes of the previous version during a rolling upgrade).
            """
            CREATE OR REPLACE FUNCTION offsite_begin_backup(
                p_id text, p_instance_id text, p_name text, p_size bigint, p_sha256 text,
                p_created_at double precision, p_part_size bigint, p_part_count integer, p_object_key text,
                p_metadata text, p_now double precision, p_init_rate integer, p_quota bigint,
                OUT busy text, OUT recent bigint, OUT oldest double precision, OUT began boolean,
                OUT used bigint)
            LANGUAGE plpgsql AS $$
            BEGIN
                -- Committed asynchronously (migration 8): a database crash may forget a create of its last
                -- moments, whose client then starts again; completes and deletes stay durable.
                PERFORM set_config('synchronous_commit', 'off', true);
                began := false;
                -- Holding the instance's row: its creates are counted one at a time, whichever node runs them.
                PERFORM 1 FROM instances WHERE id = p_instance_id FOR UPDATE;
                SELECT b.id INTO busy FROM backups b
                    WHERE b.instance_id = p_instance_id AND b.status = 'uploading' LIMIT 1;
                IF busy IS NOT NULL THEN
                    RETURN;
                END IF;
                IF p_quota IS NOT NULL THEN
                    -- What storage holds or will: completed backups, those being deleted, and an upload in
                    -- progress by its declared size (none here, but a complete racing this one counts as one).
                    SELECT coalesce(sum(b.size), 0) INTO used FROM backups b
                        WHERE b.instance_id = p_instance_id AND b.status IN ('completed', 'deleting', 'uploading');
                    IF used + p_size > p_quota THEN
                        RETURN;
                    END IF;
                END IF;
                SELECT count(*), min(e.at) INTO recent, oldest FROM init_events e
                    WHERE e.instance_id = p_instance_id AND e.at > p_now - 3600;
                IF recent >= p_init_rate THEN
                    RETURN;
                END IF;
                INSERT INTO backups (id, instance_id, name, size, sha256, status, created_at, completed_at,
                                     part_size, part_count, object_key, upload_id, metadata, last_activity)
                    VALUES (p_id, p_instance_id, p_name, p_size, p_sha256, 'uploading', p_created_at, NULL,
                            p_part_size, p_part_count, p_object_key, NULL, p_metadata, p_created_at);
                INSERT INTO init_events (instance_id, at) VALUES (p_instance_id, p_now);
                began := true;
            END
            $$
            """,
        ),
    ),
)

MIGRATIONS += (
    Migration(
        10,
        "the watchdog: each instance's expected interval and notify URL, its watched state, the notices to send",
        # `watch`: the state each instance was last seen in, changed only by a compare-and-set on `version`, so
        # that of several nodes looking at once one makes each change (and queues its notices, in the same
        # transaction). `notices`: the outbox; a node claims the ones due (FOR UPDATE SKIP LOCKED on PostgreSQL),
        # holding each `next_at` ahead of now while it sends.
        sqlite="""
        ALTER TABLE instances ADD COLUMN expect_every INTEGER;
        ALTER TABLE instances ADD COLUMN notify_url TEXT;
        ALTER TABLE instances ADD COLUMN notify_format TEXT;
        ALTER TABLE instances ADD COLUMN notify_secret TEXT;
        CREATE TABLE IF NOT EXISTS watch (
            instance_id TEXT PRIMARY KEY REFERENCES instances(id),
            state TEXT NOT NULL CHECK (state IN ('ok', 'late', 'never', 'paused')),
            since REAL NOT NULL,
            notified_at REAL,
            version INTEGER NOT NULL
        );
        CREATE TABLE IF NOT EXISTS notices (
            id TEXT PRIMARY KEY,
            instance_id TEXT NOT NULL,
            event TEXT NOT NULL,
            recipient TEXT NOT NULL,
            channel TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at REAL NOT NULL,
            next_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'sent', 'failed', 'dropped')),
            done_at REAL,
            error TEXT
        );
        CREATE INDEX IF NOT EXISTS notices_due ON notices(next_at) WHERE status = 'pending';
        CREATE INDEX IF NOT EXISTS notices_done ON notices(done_at) WHERE status <> 'pending'
        """,
        postgresql=(
            "ALTER TABLE instances ADD COLUMN IF NOT EXISTS expect_every integer",
            "ALTER TABLE instances ADD COLUMN IF NOT EXISTS notify_url text",
            "ALTER TABLE instances ADD COLUMN IF NOT EXISTS notify_format text",
            "ALTER TABLE instances ADD COLUMN IF NOT EXISTS notify_secret text",
            """
            CREATE TABLE IF NOT EXISTS watch (
                instance_id text PRIMARY KEY REFERENCES instances(id),
                state text NOT NULL CHECK (state IN ('ok', 'late', 'never', 'paused')),
                since double precision NOT NULL,
                notified_at double precision,
                version integer NOT NULL
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS notices (
                id text PRIMARY KEY,
                instance_id text NOT NULL,
                event text NOT NULL,
                recipient text NOT NULL,
                channel text NOT NULL,
                payload text NOT NULL,
                created_at double precision NOT NULL,
                next_at double precision NOT NULL,
                attempts integer NOT NULL DEFAULT 0,
                status text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sent', 'failed', 'dropped')),
                done_at double precision,
                error text
            )
            """,
            "CREATE INDEX IF NOT EXISTS notices_due ON notices(next_at) WHERE status = 'pending'",
            "CREATE INDEX IF NOT EXISTS notices_done ON notices(done_at) WHERE status <> 'pending'",
        ),
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)
assert all(migration.version == index + 1 for index, migration in enumerate(MIGRATIONS))


def pending(current: int) -> tuple[tuple[int, str], ...]:
    """(version, description) of the migrations a database at `current` still needs."""
    return tuple((m.version, m.description) for m in MIGRATIONS if m.version > current)


def statements(sql: str | tuple[str, ...]) -> list[str]:
    """The statements of a migration: a tuple as it is, a string split at `;` (none holds one in a literal)."""
    if isinstance(sql, tuple):
        return [statement.strip() for statement in sql]
    return [statement.strip() for statement in sql.split(";") if statement.strip()]


def too_new_message(current: int) -> str:
    return (
        f"the database schema is version {current}, newer than this gateway's {SCHEMA_VERSION}: "
        "a newer gateway migrated it; run that version (migrations only go forward)"
    )
