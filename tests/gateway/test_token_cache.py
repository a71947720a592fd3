"""PostgreSQL's token cache: a token looked up once costs no round trip until `instances` changes, and every node
forgets what it cached when the database notifies it (migration 7's trigger), or when it loses that channel.

Two `PostgresStore`s on one database are two nodes. A second lookup is shown to cost no round trip by changing the
row behind the cache's back: with the trigger disabled for that one transaction (`_quietly`), nobody is notified,
so a cached lookup still answers what it read before, and a lookup that asks the database answers the change.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from offsite_gateway import auth
from offsite_gateway.auth import hash_token
from offsite_gateway.store import token_cache
from offsite_gateway.store.postgres import PostgresStore
from offsite_gateway.store.token_cache import LISTENER_NAME
from tests.helpers.gateway import GatewayDatabase, database_in, selected_stores

TRIGGER = "offsite_instances_changed"


@pytest.fixture
def pg_database(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[GatewayDatabase]:
    if "postgresql" not in selected_stores():
        pytest.skip("the token cache is PostgreSQL's (OFFSITE_TEST_STORES leaves it out)")
    with database_in("postgresql", tmp_path, request) as database:
        yield database


@pytest.fixture
def admin_url(pg_database: GatewayDatabase) -> str:
    """The test's database, as a superuser: changes behind the stores' backs, their backends."""
    assert pg_database.cluster is not None
    return pg_database.cluster.url(pg_database.setting.rsplit("/", 1)[1], admin=True)


@pytest.fixture
async def admin(admin_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(admin_url)
    try:
        yield conn
    finally:
        await conn.close()


async def _node(database: GatewayDatabase) -> AsyncIterator[PostgresStore]:
    """A gateway node's store on the database, open for the test."""
    store = PostgresStore(database.setting)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def node_a(pg_database: GatewayDatabase) -> AsyncIterator[PostgresStore]:
    async for store in _node(pg_database):
        yield store


@pytest.fixture
async def node_b(pg_database: GatewayDatabase) -> AsyncIterator[PostgresStore]:
    async for store in _node(pg_database):
        yield store


async def _quietly(admin: asyncpg.Connection, sql: str, *args: Any) -> None:
    """Change `instances` without notifying anyone: its trigger is disabled for this transaction only."""
    async with admin.transaction():
        await admin.execute(f"ALTER TABLE instances DISABLE TRIGGER {TRIGGER}")
        await admin.execute(sql, *args)
        await admin.execute(f"ALTER TABLE instances ENABLE TRIGGER {TRIGGER}")


async def _asks_the_database(store: PostgresStore, admin: asyncpg.Connection, token_hash: str) -> bool:
    """Whether a lookup sees a change nobody was notified of (else it answered from the cache)."""
    await _quietly(
        admin, "UPDATE instances SET created_at = created_at + 1 WHERE token_hash = $1", token_hash
    )
    expected = await admin.fetchval("SELECT created_at FROM instances WHERE token_hash = $1", token_hash)
    found = await store.instance_by_token_hash(token_hash)
    assert found is not None
    return bool(found.created_at == expected)


async def _caches(store: PostgresStore, admin: asyncpg.Connection, token_hash: str) -> bool:
    """Whether a token looked up now is answered from the cache next time.

    After a notified change, its notification may still be on its way, and empty the cache between the two
    lookups: tests then wait until it caches (`_eventually`).
    """
    assert await store.instance_by_token_hash(token_hash) is not None
    return not await _asks_the_database(store, admin, token_hash)


async def _eventually(check: Callable[[], Awaitable[bool]], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within} s"
        await asyncio.sleep(0.02)


async def _true(value: bool) -> bool:
    return value


async def _listeners(admin: asyncpg.Connection) -> list[int]:
    """The backends of the stores' listeners on the test's database."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
        LISTENER_NAME,
    )
    return [row["pid"] for row in rows]


async def test_a_token_looked_up_again_costs_no_round_trip(
    node_a: PostgresStore, admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every instance of this test is made quietly: no notification in flight can empty the cache meanwhile.
    token_hash = hash_token(auth.new_token())
    await _quietly(
        admin,
        "INSERT INTO instances (id, name, token_hash, created_at) VALUES ('h', 'home', $1, 1)",
        token_hash,
    )
    instance = await node_a.instance_by_token_hash(token_hash)
    assert instance is not None
    assert instance.name == "home"
    assert not await _asks_the_database(node_a, admin, token_hash)  # answered from the cache
    assert await node_a.instance_by_token_hash(token_hash) == instance

    # A token nobody has is asked for every time (never cached): once it exists, it is found at once.
    unknown = hash_token(auth.new_token())
    assert await node_a.instance_by_token_hash(unknown) is None
    await _quietly(
        admin,
        "INSERT INTO instances (id, name, token_hash, created_at) VALUES ('u', 'other', $1, 1)",
        unknown,
    )
    monkeypatch.setattr(token_cache, "TOKEN_CACHE_TTL", 1.0)  # for what is cached from now on
    assert await node_a.instance_by_token_hash(unknown) is not None

    # An entry is trusted for TOKEN_CACHE_TTL seconds at most, notified or not.
    assert not await _asks_the_database(node_a, admin, unknown)
    await asyncio.sleep(1.1)
    assert await _asks_the_database(node_a, admin, unknown)

    # A full cache is emptied: with room for one entry, a third token looked up evicts the others.
    monkeypatch.setattr(token_cache, "TOKEN_CACHE_SIZE", 1)
    third = hash_token(auth.new_token())
    await _quietly(
        admin, "INSERT INTO instances (id, name, token_hash, created_at) VALUES ('t', 'third', $1, 1)", third
    )
    assert not await _asks_the_database(node_a, admin, token_hash)  # still cached
    assert await node_a.instance_by_token_hash(third) is not None
    assert await _asks_the_database(node_a, admin, token_hash)


async def test_the_store_forgets_its_own_changes_at_once(
    node_a: PostgresStore, admin: asyncpg.Connection
) -> None:
    """Without waiting for the notification: here there is none, the trigger being disabled throughout."""
    instance, token = await auth.add_instance(node_a, "home")
    old_hash = hash_token(token)
    await admin.execute(f"ALTER TABLE instances DISABLE TRIGGER {TRIGGER}")
    try:
        assert await node_a.instance_by_token_hash(old_hash) == instance
        new_token = await auth.rotate_token(node_a, "home")
        assert await node_a.instance_by_token_hash(old_hash) is None
        assert await node_a.instance_by_token_hash(hash_token(new_token)) == instance

        await node_a.set_policy("home", {"keep_last": 3})
        found = await node_a.instance_by_token_hash(hash_token(new_token))
        assert found is not None
        assert found.policy.keep_last == 3

        await auth.revoke_instance(node_a, "home")
        assert await node_a.instance_by_token_hash(hash_token(new_token)) is None
    finally:
        await admin.execute(f"ALTER TABLE instances ENABLE TRIGGER {TRIGGER}")


async def test_changes_made_on_another_node_reach_the_cache(
    node_a: PostgresStore, node_b: PostgresStore, admin: asyncpg.Connection
) -> None:
    """Node B changes the instance; node A, which cached its token, follows within a moment."""
    _, token = await auth.add_instance(node_b, "home")
    old_hash = hash_token(token)
    await _eventually(lambda: _caches(node_a, admin, old_hash))

    async def a_sees_keep_last(value: int) -> bool:
        found = await node_a.instance_by_token_hash(old_hash)
        assert found is not None
        return found.policy.keep_last == value

    await node_b.set_policy("home", {"keep_last": 3})
    await _eventually(lambda: a_sees_keep_last(3))

    await _eventually(lambda: _caches(node_a, admin, old_hash))
    new_token = await auth.rotate_token(node_b, "home")

    async def a_refuses(token_hash: str) -> bool:
        return await node_a.instance_by_token_hash(token_hash) is None

    await _eventually(lambda: a_refuses(old_hash))
    await _eventually(lambda: _caches(node_a, admin, hash_token(new_token)))

    await auth.revoke_instance(node_b, "home")
    await _eventually(lambda: a_refuses(hash_token(new_token)))


async def _lookup_held_while(
    store: PostgresStore,
    admin: asyncpg.Connection,
    admin_url: str,
    token_hash: str,
    meanwhile: Callable[[], Awaitable[None]],
) -> None:
    """A lookup held up by a lock on `instances` (another connection's) while `meanwhile` runs, then let go."""
    blocker = await asyncpg.connect(admin_url)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
            lookup = asyncio.create_task(store.instance_by_token_hash(token_hash))

            async def waiting() -> bool:
                return bool(
                    await admin.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND pid <> $1",
                        blocker.get_server_pid(),
                    )
                )

            await _eventually(waiting)
            await meanwhile()
        assert await lookup is not None
    finally:
        await blocker.close()


async def test_a_lookup_overtaken_by_a_change_is_not_cached(
    node_a: PostgresStore, admin: asyncpg.Connection, admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notification, or the listener coming back, while a lookup runs: what it read may predate the change, or
    predate listening, so it is not cached (the generation changed)."""
    token_hash = hash_token(auth.new_token())
    await _quietly(
        admin,
        "INSERT INTO instances (id, name, token_hash, created_at) VALUES ('h', 'home', $1, 1)",
        token_hash,
    )

    async def notified() -> None:
        generation = node_a._tokens.generation
        await admin.execute("SELECT pg_notify('offsite_gateway_instances', '')")
        await _eventually(lambda: _true(node_a._tokens.generation != generation))

    await _lookup_held_while(node_a, admin, admin_url, token_hash, notified)
    assert await _asks_the_database(node_a, admin, token_hash)

    monkeypatch.setattr(token_cache, "RECONNECT_FIRST", 1.0)
    [listener] = await _listeners(admin)
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", listener)
    await _eventually(lambda: _asks_the_database(node_a, admin, token_hash))  # the loss is noticed

    async def listening_again() -> None:
        generation = node_a._tokens.generation
        await _eventually(lambda: _true(node_a._tokens.generation != generation), within=5)

    await _lookup_held_while(node_a, admin, admin_url, token_hash, listening_again)
    assert await _asks_the_database(node_a, admin, token_hash)
    await _eventually(lambda: _caches(node_a, admin, token_hash))


async def test_a_change_by_a_cli_process_reaches_the_cache(
    pg_database: GatewayDatabase, node_a: PostgresStore, admin: asyncpg.Connection
) -> None:
    """`offsite-gateway instance revoke`, another process: the node refuses the token within a moment."""
    _, token = await auth.add_instance(node_a, "home")
    await _eventually(lambda: _caches(node_a, admin, hash_token(token)))
    env = {"PATH": "/usr/bin:/bin", "OFFSITE_GATEWAY_DB": pg_database.setting}
    revoke = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "offsite_gateway", "instance", "revoke", "home"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert revoke.returncode == 0, revoke.stderr

    async def refused() -> bool:
        return await node_a.instance_by_token_hash(hash_token(token)) is None

    await _eventually(refused)


async def test_without_its_listener_a_node_asks_the_database(
    node_a: PostgresStore, admin: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener's backend is ended: every lookup asks the database until the listener is back, then the
    cache serves again, and notifications reach it again."""
    monkeypatch.setattr(token_cache, "RECONNECT_FIRST", 2.0)  # time to look while it is down
    _, token = await auth.add_instance(node_a, "home")
    token_hash = hash_token(token)
    await _eventually(lambda: _caches(node_a, admin, token_hash))
    [listener] = await _listeners(admin)
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", listener)

    await _eventually(lambda: _asks_the_database(node_a, admin, token_hash))
    for _ in range(3):
        assert await _asks_the_database(node_a, admin, token_hash)

    await _eventually(lambda: _caches(node_a, admin, token_hash), within=10)
    [new_listener] = await _listeners(admin)
    assert new_listener != listener
    await admin.execute("UPDATE instances SET keep_last = 7 WHERE token_hash = $1", token_hash)  # notified

    async def sees_it() -> bool:
        found = await node_a.instance_by_token_hash(token_hash)
        assert found is not None
        return found.policy.keep_last == 7

    await _eventually(sees_it)


async def test_a_node_starts_without_its_listener(
    pg_database: GatewayDatabase,
    admin: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The listener cannot connect at start: the node serves, uncached, with a warning, and listens once it can."""
    monkeypatch.setattr(token_cache, "RECONNECT_FIRST", 0.1)
    monkeypatch.setattr(token_cache, "RECONNECT_MAX", 0.2)
    real_connect = asyncpg.connect
    refusing = True

    async def connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        # Only the listener connects with asyncpg.connect: the pool opens its connections through its own.
        if refusing:
            raise ConnectionRefusedError("refused for the test")
        return await real_connect(*args, **kwargs)

    monkeypatch.setattr(asyncpg, "connect", connect)
    store = PostgresStore(pg_database.setting)
    with caplog.at_level(logging.WARNING, logger="offsite_gateway.store.token_cache"):
        await store.open()
    try:
        assert "Cannot listen for changes of instances (ConnectionRefusedError" in caplog.text
        _, token = await auth.add_instance(store, "home")
        token_hash = hash_token(token)
        await asyncio.sleep(0.5)  # a few tries
        for _ in range(3):
            assert await _asks_the_database(store, admin, token_hash)
        refusing = False
        await _eventually(lambda: _caches(store, admin, token_hash))
        assert len(await _listeners(admin)) == 1
    finally:
        await store.close()


async def test_a_database_that_does_not_notify_yet_is_not_cached(
    pg_database: GatewayDatabase, admin: asyncpg.Connection
) -> None:
    """`open(migrate=False)` on a schema before migration 7: nothing would tell the node of a change."""
    store = PostgresStore(pg_database.setting)
    await store.open()
    _, token = await auth.add_instance(store, "home")
    await store.close()
    await admin.execute(f"DROP TRIGGER {TRIGGER} ON instances")
    await admin.execute("DELETE FROM schema_migrations WHERE version >= 7")

    await store.open(migrate=False)
    try:
        assert await _listeners(admin) == []
        for _ in range(3):
            assert await store.instance_by_token_hash(hash_token(token)) is not None
            await admin.execute("UPDATE instances SET keep_last = coalesce(keep_last, 0) + 1")
            found = await store.instance_by_token_hash(hash_token(token))
            assert found is not None
            assert found.policy.keep_last == await admin.fetchval("SELECT keep_last FROM instances")
    finally:
        await store.close()


async def test_closing_leaves_nothing_behind(pg_database: GatewayDatabase, admin: asyncpg.Connection) -> None:
    """Neither a task nor the listener's connection: listening, or waiting to listen again."""
    before = asyncio.all_tasks()
    store = PostgresStore(pg_database.setting)
    await store.open()
    assert len(await _listeners(admin)) == 1
    await store.close()
    assert asyncio.all_tasks() == before

    async def no_listener() -> bool:
        return await _listeners(admin) == []

    await _eventually(no_listener)

    await store.open()  # again, and its listener ended: it is waiting to listen again when closed
    [listener] = await _listeners(admin)
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", listener)
    await _eventually(no_listener)
    await asyncio.sleep(0.1)
    await store.close()
    assert asyncio.all_tasks() == before
    await asyncio.sleep(token_cache.RECONNECT_FIRST + 0.5)
    assert await _listeners(admin) == []
