"""The stores: versioned migrations under a lock (and `db status` / `db upgrade`), rules the database itself keeps,
and the locks that stand in for one process's memory across nodes."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import closing
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from offsite_gateway.config import load_settings
from offsite_gateway.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    UPLOADING,
    Backup,
    DuplicateInstance,
    Instance,
    SchemaTooNew,
    Store,
    create_store,
)
from offsite_gateway.store.migrations import statements
from tests.gateway.api import Api, put
from tests.helpers.gateway import GatewayDatabase, RunningGateway, run_gateway
from tests.helpers.servers import S3Server

COMMAND = [sys.executable, "-m", "offsite_gateway"]


def _store(database: GatewayDatabase, **more: str) -> Store:
    env = {"OFFSITE_GATEWAY_DB": database.setting, **{f"OFFSITE_GATEWAY_{k}": v for k, v in more.items()}}
    return create_store(load_settings(env, require_storage=False))


def _cli(database: GatewayDatabase, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "OFFSITE_GATEWAY_DB": database.setting}
    return subprocess.run([*COMMAND, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


async def _make_version_1(database: GatewayDatabase) -> None:
    """A database as the gateway before migration 2 left it."""
    if database.path is not None:
        with closing(sqlite3.connect(database.path)) as conn, conn:
            for statement in statements(MIGRATIONS[0].sqlite):
                conn.execute(statement)
            conn.execute("PRAGMA user_version = 1")
        return
    conn = await asyncpg.connect(database.setting)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, description text NOT NULL, "
            "applied_at double precision NOT NULL)"
        )
        for statement in statements(MIGRATIONS[0].postgresql):
            await conn.execute(statement)
        await conn.execute(
            "INSERT INTO schema_migrations VALUES (1, $1, $2)", MIGRATIONS[0].description, time.time()
        )
    finally:
        await conn.close()


async def _set_version(database: GatewayDatabase, version: int) -> None:
    if database.path is not None:
        with closing(sqlite3.connect(database.path)) as conn, conn:
            conn.execute(f"PRAGMA user_version = {version}")
        return
    conn = await asyncpg.connect(database.setting)
    try:
        await conn.execute("INSERT INTO schema_migrations VALUES ($1, 'from the future', 0)", version)
    finally:
        await conn.close()


async def test_migrations_at_open(database: GatewayDatabase) -> None:
    store = _store(database)
    await store.open()
    status = await store.schema_status()
    assert (status.current, status.latest, status.pending) == (SCHEMA_VERSION, SCHEMA_VERSION, ())
    assert await store.migrate() == []  # nothing left
    await store.close()
    await store.open()  # again: nothing to migrate
    await store.close()

    await _set_version(database, SCHEMA_VERSION + 1)
    with pytest.raises(SchemaTooNew, match="newer than this gateway"):
        await store.open()
    with pytest.raises(SchemaTooNew):
        await store.open(migrate=False)
    with pytest.raises(RuntimeError, match="not open"):
        await store.ping()
    refused = await asyncio.to_thread(_cli, database, "db", "status")
    assert refused.returncode == 1
    assert "newer than this gateway" in refused.stderr


async def test_db_status_and_upgrade_from_version_1(database: GatewayDatabase) -> None:
    await _make_version_1(database)
    status = await asyncio.to_thread(_cli, database, "db", "status")
    assert status.returncode == 0, status.stderr
    assert f"Schema version 1 of {SCHEMA_VERSION}" in status.stdout
    assert f"  2  {MIGRATIONS[1].description}" in status.stdout
    if database.store == "postgresql":
        assert "PostgreSQL postgresql://gateway:***@127.0.0.1" in status.stdout
        assert database.setting.split(":")[2].split("@")[0] not in status.stdout + status.stderr

    upgrade = await asyncio.to_thread(_cli, database, "db", "upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"Applied migration 2: {MIGRATIONS[1].description}" in upgrade.stdout
    assert f"schema version {SCHEMA_VERSION}, up to date" in upgrade.stdout
    status = await asyncio.to_thread(_cli, database, "db", "status")
    assert f"Schema version {SCHEMA_VERSION}: up to date." in status.stdout
    again = await asyncio.to_thread(_cli, database, "db", "upgrade")
    assert "Applied" not in again.stdout

    store = _store(database)
    await store.open(migrate=False)
    try:
        await store.create_instance(Instance("a" * 32, "home", 1.0), "h")  # the version 1 tables still work
        assert [i.name for i in await store.list_instances()] == ["home"]
    finally:
        await store.close()


async def test_nodes_starting_together_migrate_once(database: GatewayDatabase) -> None:
    """Three `db upgrade` processes on one new database: one migrates, the others find it done."""
    results = await asyncio.gather(*(asyncio.to_thread(_cli, database, "db", "upgrade") for _ in range(3)))
    assert [result.returncode for result in results] == [0, 0, 0], [r.stderr for r in results]
    applied = [
        line for result in results for line in result.stdout.splitlines() if line.startswith("Applied")
    ]
    assert len(applied) == SCHEMA_VERSION  # each migration once, all told
    if database.store == "postgresql":
        conn = await asyncpg.connect(database.setting)
        try:
            versions = [
                row[0] for row in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
            ]
        finally:
            await conn.close()
        assert versions == list(range(1, SCHEMA_VERSION + 1))


def _backup(instance_id: str, status: str = UPLOADING) -> Backup:
    backup_id = uuid.uuid4().hex
    return Backup(backup_id, instance_id, "n", 1, None, status, 1.0, None, 1, 1, f"{instance_id}/{backup_id}")


async def test_the_database_refuses_a_second_upload_in_progress(database: GatewayDatabase) -> None:
    """Not only `begin_backup`'s check: the partial unique index refuses it, whoever writes the row."""
    store = _store(database)
    await store.open()
    try:
        await store.create_instance(Instance("b" * 32, "home", 1.0), "hash")
        assert await store.restore_backup(_backup("b" * 32))
        with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
            await store.restore_backup(_backup("b" * 32))
        assert await store.restore_backup(_backup("b" * 32, "failed"))  # any number of others
    finally:
        await store.close()


async def test_backup_lock_is_held_across_nodes(database: GatewayDatabase) -> None:
    """Two stores on one database are two nodes: one's lock on a backup holds the other off until released."""
    if database.store == "sqlite":
        pytest.skip(
            "a SQLite file serves one node: its lock is the process's (the same store is tested below)"
        )
    node_a, node_b = _store(database), _store(database)
    await node_a.open()
    await node_b.open()
    try:
        released = asyncio.Event()
        async with node_a.lock_backup("x"):
            async with node_b.lock_backup("x", wait=False) as held:
                assert held is False
            async with node_b.lock_backup("y", wait=False) as held:
                assert held is True  # another backup is free

            async def wait_for_it() -> float:
                async with node_b.lock_backup("x"):
                    assert released.is_set()
                    return time.monotonic()

            waiter = asyncio.create_task(wait_for_it())
            await asyncio.sleep(0.3)
            assert not waiter.done()
            released.set()
        await asyncio.wait_for(waiter, 10)
        # The sweeper: one node at a time.
        async with node_a.lock_sweeper() as first:
            assert first is True
            async with node_b.lock_sweeper() as second:
                assert second is False
        async with node_b.lock_sweeper() as second:
            assert second is True
    finally:
        await node_a.close()
        await node_b.close()


async def test_a_complete_reads_with_the_lock_and_records_retention_at_once(
    database: GatewayDatabase,
) -> None:
    """Completing: the lock reads the backup and its instance's completed backups (PostgreSQL: one round trip),
    and the complete marks what retention expires `deleting` in the same transaction. On PostgreSQL a complete
    that succeeds also ends the lock in its statement: the other node may take it at once; one that does not
    (not uploading any more) leaves it held to the end of the block."""
    node_a, node_b = _store(database), _store(database)
    await node_a.open()
    await node_b.open()
    try:
        await node_a.create_instance(Instance("c" * 32, "home", 1.0), "hash")
        older = [dataclasses.replace(_backup("c" * 32, "completed"), completed_at=float(n)) for n in (2, 3)]
        for backup in older:
            assert await node_a.restore_backup(backup)
        current = _backup("c" * 32)
        assert await node_a.restore_backup(current)
        two_nodes = database.store == "postgresql"
        async with node_a.lock_backup(current.id, completing=True):
            assert (await node_a.get_backup(current.id)).status == "uploading"  # type: ignore[union-attr]
            listed = await node_a.list_backups("c" * 32, "completed")
            assert [backup.id for backup in listed] == [older[1].id, older[0].id]  # newest first
            if two_nodes:
                async with node_b.lock_backup(current.id, wait=False) as held:
                    assert held is False
            assert await node_a.complete_backup(current.id, None, 10.0, [older[0].id]) is True
            if two_nodes:
                async with node_b.lock_backup(current.id, wait=False) as held:
                    assert held is True  # ended by the complete's statement
        statuses = {b.id: b.status for b in [await node_a.get_backup(b.id) for b in [*older, current]] if b}
        assert statuses == {older[0].id: "deleting", older[1].id: "completed", current.id: "completed"}
        async with node_a.lock_backup(current.id, completing=True):
            assert await node_a.complete_backup(current.id, None, 11.0, [older[1].id]) is False
            if two_nodes:
                async with node_b.lock_backup(current.id, wait=False) as held:
                    assert held is False  # nothing changed: still held
        assert (await node_a.get_backup(older[1].id)).status == "completed"  # type: ignore[union-attr]
        async with node_b.lock_backup(current.id, wait=False) as held:
            assert held is True
    finally:
        await node_a.close()
        await node_b.close()


async def test_a_creates_writes_commit_asynchronously_and_only_they(database: GatewayDatabase) -> None:
    """PostgreSQL: the create's two functions turn synchronous_commit off for their own transaction (a crash may
    forget a create of its last moments, never a complete); the session, given back to the pool, keeps it on."""
    if database.store == "sqlite":
        pytest.skip("SQLite commits with synchronous=NORMAL (WAL) for every write")
    store = _store(database)
    await store.open()
    store_closed = False
    try:
        await store.create_instance(Instance("d" * 32, "home", 1.0), "hash")
        backup = _backup("d" * 32)
        await store.begin_backup(backup, 5.0, 10)
        await store.close()
        store_closed = True
        conn = await asyncpg.connect(database.setting)
        try:
            # The session's own setting (the tests' cluster runs with it off).
            await conn.execute("SET synchronous_commit = on")
            for call in (
                "SELECT began FROM offsite_begin_backup('e', $1, 'n', 1, NULL, 1, 1, 1, 'k', '{}', 5, 10)",
                "SELECT offsite_set_upload_id($1, 'upload')",
            ):
                argument = "d" * 32 if "begin" in call else backup.id
                async with conn.transaction():
                    await conn.fetchval(call, argument)
                    assert await conn.fetchval("SHOW synchronous_commit") == "off"
                assert await conn.fetchval("SHOW synchronous_commit") == "on"
                await conn.fetchval(call, argument)  # a statement of its own
                assert await conn.fetchval("SHOW synchronous_commit") == "on"
            assert await conn.fetchval("SELECT upload_id FROM backups WHERE id = $1", backup.id) == "upload"
        finally:
            await conn.close()
    finally:
        if not store_closed:
            await store.close()


async def test_pooled_connections_of_cancelled_calls_are_discarded(database: GatewayDatabase) -> None:
    """asyncpg's pool, as the store uses it: a connection whose call was cancelled (here, a lock wait) is ended,
    so it can never go back to the pool holding a lock nobody knows of; one that got an error from PostgreSQL
    (a unique violation) is kept."""
    if database.store == "sqlite":
        pytest.skip("PostgreSQL's pool")
    from offsite_gateway.store.postgres import PostgresStore  # noqa: PLC0415

    node_a, node_b = _store(database, DB_POOL_SIZE="1"), _store(database)
    assert isinstance(node_a, PostgresStore)
    await node_a.open()
    await node_b.open()

    async def backend() -> int:
        async with node_a._db.conn() as conn:
            pid: int = await conn.fetchval("SELECT pg_backend_pid()")
            return pid

    try:
        first = await backend()
        await node_a.create_instance(Instance("c" * 32, "home", 1.0), "hash")
        with pytest.raises(DuplicateInstance):
            await node_a.create_instance(Instance("d" * 32, "home", 1.0), "hash2")
        assert await backend() == first  # an error PostgreSQL answered: the connection is fine

        async def wait_for_lock() -> None:
            async with node_a.lock_backup("x"):
                pass

        async with node_b.lock_backup("x"):
            waiter = asyncio.create_task(wait_for_lock())
            await asyncio.sleep(0.3)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        assert await backend() != first  # ended, and replaced by the pool
        async with node_b.lock_backup("x", wait=False) as held:
            assert held is True  # nobody holds it behind our back
    finally:
        await node_a.close()
        await node_b.close()


async def test_lock_of_one_store(database: GatewayDatabase) -> None:
    store = _store(database)
    await store.open()
    try:
        async with store.lock_backup("x"):
            async with store.lock_backup("x", wait=False) as held:
                assert held is False
            await store.ping()  # the store's calls go on while it is held
        async with store.lock_backup("x", wait=False) as held:
            assert held is True
        async with store.lock_sweeper() as first, store.lock_sweeper() as second:
            assert (first, second) == (True, False)
    finally:
        await store.close()


async def test_a_lock_wait_past_the_timeout_answers_503(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """Another node holds the backup too long: the request gets a JSON 503 to retry, never a 500."""
    if database.store == "sqlite":
        pytest.skip("a lock wait on PostgreSQL (another node); SQLite's lock is the process's")
    other_node = _store(database)
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database, DB_TIMEOUT="1") as gateway:
        await other_node.open()
        try:
            _, token = await gateway.add_instance("home")
            api = Api(session, gateway.url, token)
            init = await api.init(10)
            etag = await put(session, (await api.sign(init["id"], [1]))[0]["url"], b"0123456789")
            body = {"parts": [{"part_number": 1, "etag": etag}]}
            async with other_node.lock_backup(init["id"]):
                started = time.monotonic()
                status, answer = await api.call("POST", f"/v1/backups/{init['id']}/complete", body)
                assert (status, answer["error"]["code"]) == (503, "unavailable")
                assert 0.8 < time.monotonic() - started < 8
                status, answer = await api.call("DELETE", f"/v1/backups/{init['id']}/upload")
                assert status == 503
            # Released: it goes through.
            await api.ok("POST", f"/v1/backups/{init['id']}/complete", body)
        finally:
            await other_node.close()


@pytest.mark.parametrize("name", ["a\x00b", "tab\there", "bell\x07", "line\nbreak"])
async def test_names_the_database_could_not_hold_are_refused(
    gateway: RunningGateway, session: aiohttp.ClientSession, name: str
) -> None:
    """A NUL cannot be stored in PostgreSQL's text: refused as invalid (400), like every control character."""
    _, token = await gateway.add_instance("home")
    api = Api(session, gateway.url, token)
    status, body = await api.call("POST", "/v1/backups", {"name": name, "size": 10})
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    assert "name" in body["error"]["message"]
    # Control characters elsewhere in the request are stored escaped and given back as they were.
    init = await api.init(10, "fine", metadata={"note": "a\x00b\n"})
    assert (await api.ok("GET", f"/v1/backups/{init['id']}"))["backup"]["metadata"] == {"note": "a\x00b\n"}


async def _make_version(database: GatewayDatabase, version: int) -> None:
    """A database as the gateway of schema `version` left it."""
    if database.path is not None:
        with closing(sqlite3.connect(database.path)) as conn, conn:
            for migration in MIGRATIONS[:version]:
                for statement in statements(migration.sqlite):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
        return
    conn = await asyncpg.connect(database.setting)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, description text NOT NULL, "
            "applied_at double precision NOT NULL)"
        )
        for migration in MIGRATIONS[:version]:
            for statement in statements(migration.postgresql):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                migration.version,
                migration.description,
                time.time(),
            )
    finally:
        await conn.close()


async def _execute(database: GatewayDatabase, sql: str, *values: object) -> None:
    """One statement on the database, `?` for each value (`$n` on PostgreSQL)."""
    if database.path is not None:
        with closing(sqlite3.connect(database.path)) as conn, conn:
            conn.execute(sql, values)
        return
    for number in range(1, len(values) + 1):
        sql = sql.replace("?", f"${number}", 1)
    conn = await asyncpg.connect(database.setting)
    try:
        await conn.execute(sql, *values)
    finally:
        await conn.close()


async def test_migration_9_orders_completions_and_drops_failed_uploads_metadata(
    database: GatewayDatabase,
) -> None:
    """Existing backups get their completion order from their times; from then on the database gives each backup
    that completes the next one, whatever time it is recorded with; failed uploads lose their metadata."""
    await _make_version(database, 8)
    instance = "d" * 32
    await _execute(
        database,
        "INSERT INTO instances (id, name, token_hash, created_at) VALUES (?, 'home', 'h', 1)",
        instance,
    )
    insert = (
        "INSERT INTO backups (id, instance_id, name, size, sha256, status, created_at, completed_at, part_size, "
        "part_count, object_key, upload_id, metadata, last_activity) VALUES (?, ?, 'n', 1, NULL, ?, 1, ?, 1, 1, "
        "?, NULL, ?, 1)"
    )
    for backup_id, status, completed_at, metadata in (
        ("b" * 32, "completed", 30.0, "{}"),
        ("a" * 32, "completed", 10.0, "{}"),
        ("c" * 32, "deleting", 20.0, "{}"),
        ("e" * 32, "failed", None, '{"big": "' + "x" * 60_000 + '"}'),
    ):
        await _execute(
            database, insert, backup_id, instance, status, completed_at, f"{instance}/{backup_id}", metadata
        )
    store = _store(database)
    await store.open()
    try:
        assert (await store.schema_status()).current == SCHEMA_VERSION
        seq = {b.id[0]: b.completion_seq for b in [await store.get_backup(c * 32) for c in "abce"] if b}
        assert seq == {"a": 1, "c": 2, "b": 3, "e": None}
        failed = await store.get_backup("e" * 32)
        assert failed is not None
        assert failed.metadata == {}
        # A backup completed with a time before every other one is the newest all the same.
        current = _backup(instance)
        await store.begin_backup(current, 40.0, 60)
        assert await store.complete_backup(current.id, None, 5.0)
        listed = await store.list_backups(instance, "completed")
        assert [backup.id for backup in listed] == [current.id, "b" * 32, "a" * 32]
        assert listed[0].completion_seq == 4
        # Restored (reindex) and promoted rows get theirs as they become completed.
        restored = dataclasses.replace(_backup(instance, "completed"), completed_at=1.0)
        assert await store.restore_backup(restored)
        assert (await store.get_backup(restored.id)).completion_seq == 5  # type: ignore[union-attr]
    finally:
        await store.close()
