"""The PostgreSQL store's connections: asyncpg's pool, the connection a task holds a lock on, advisory locks.

Connections come from asyncpg's pool (`asyncpg.create_pool`), given back without asyncpg's reset query (see
`_reset`). A connection whose state is uncertain, because the block using it was cancelled or failed on something
else than an error PostgreSQL answered on it (a unique violation, say), is terminated before asyncpg's pool takes
it back: the pool then opens a new one, and the server drops whatever the old session held (its advisory locks).
Every call has a deadline: connecting and waiting for a connection, each statement, and a lock wait
(`lock_timeout`), all `OFFSITE_GATEWAY_DB_TIMEOUT` seconds.

A session advisory lock (`advisory`) is held on one pooled connection, which the store's calls inside the block
then use too (`conn`: a context variable carries it), so a task holding a lock never waits for a second
connection. A backup's lock reads the backup (and, to complete it, its instance's completed backups) in the same
round trip: kept for the block's next call that asks for it (`ahead`), dropped at any write (`forget_ahead`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from .base import Backup, StoreUnavailable
from .rows import BACKUP_COLUMNS, backup_from_row, newest_first

# The database cannot answer now (down, unreachable, overloaded, a lock or statement timed out): 503, not 500.
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.LockNotAvailableError,
    asyncpg.QueryCanceledError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


def lock_key(kind: str, name: str) -> int:
    """A signed 64-bit advisory lock key for (kind, name); a collision only serialises more, never less."""
    digest = hashlib.blake2b(f"offsite-gateway:{kind}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclasses.dataclass
class _HeldLock:
    """A session advisory lock held for a block; `released` once a statement of the block released it."""

    key: int
    released: bool = False


def _read_ahead(backup_id: str, rows: list[Backup], completing: bool) -> dict[str, Any]:
    """What `offsite_lock_backup[_for_complete]` read: the backup (first, if it exists) and, when completing, its
    instance's completed backups, newest first (as `list_backups` orders them)."""
    backup = rows[0] if rows and rows[0].id == backup_id else None
    ahead: dict[str, Any] = {f"backup:{backup_id}": backup}
    if completing and backup is not None:
        ahead[f"list:completed:{backup.instance_id}"] = newest_first(rows[1:])
    return ahead


def _terminate(conn: asyncpg.Connection) -> None:
    """End a pooled connection (its session and locks with it); the pool opens a new one when needed.

    Once terminated, asyncpg's pool takes it back at once: a second call finds it released, and does nothing.
    """
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


class Connections:
    """The pool of a PostgreSQL store (`open`, `close`), and the connection each task uses (`conn`)."""

    def __init__(self, url: str, *, pool_size: int, timeout: float) -> None:
        self.url = url
        self.pool_size = pool_size
        self.timeout = timeout
        self._pool: asyncpg.Pool | None = None
        # The connection holding this task's advisory lock, used by every call inside `lock_backup`.
        self._bound: contextvars.ContextVar[asyncpg.Connection | None] = contextvars.ContextVar(
            f"offsite_gateway_pg_{id(self)}", default=None
        )
        # The advisory lock this task holds (innermost), which a statement inside the block may release itself.
        self._held: contextvars.ContextVar[_HeldLock | None] = contextvars.ContextVar(
            f"offsite_gateway_pg_held_{id(self)}", default=None
        )
        # Read in the same round trip as the lock, for this task's next call that asks for it (once each): the
        # backup `lock_backup` locked, and (`completing`) the completed backups of its instance.
        self._read_ahead: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
            f"offsite_gateway_pg_ahead_{id(self)}", default=None
        )

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    async def open(self) -> None:
        pool = await asyncpg.create_pool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            timeout=self.timeout,  # connecting
            command_timeout=self.timeout,  # each statement
            max_inactive_connection_lifetime=60,
            reset=self._reset,
            server_settings={
                "application_name": "offsite-gateway",
                # A lock wait (row or advisory) longer than this fails rather than piling up requests.
                "lock_timeout": str(int(self.timeout * 1000)),
                "idle_in_transaction_session_timeout": str(int(self.timeout * 3000)),
            },
        )
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                async with asyncio.timeout(self.timeout):
                    await pool.close()
            except TimeoutError:
                pool.terminate()

    @staticmethod
    async def _reset(conn: asyncpg.Connection) -> None:
        """Nothing more than asyncpg's own rollback of an open transaction, when a connection goes back.

        Not asyncpg's default reset query (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`: a
        second round trip after every call): the store never sets, listens or keeps cursors on the pool's
        connections (its listener is a connection of its own), and `advisory` unlocks what it locked, or
        terminates the connection (and so its session's locks) when it cannot be sure.
        """

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection of asyncpg's pool for the block, waited for at most `timeout` seconds; terminated (the
        pool then replaces it) unless the block ended well or on an error PostgreSQL answered on it."""
        async with self.pool.acquire(timeout=self.timeout) as conn:
            try:
                yield conn
            except asyncpg.PostgresError as err:
                if isinstance(err, asyncpg.QueryCanceledError | asyncpg.PostgresConnectionError):
                    _terminate(conn)
                raise
            except BaseException:
                _terminate(conn)
                raise

    @contextlib.asynccontextmanager
    async def conn(self) -> AsyncIterator[asyncpg.Connection]:
        """The connection this task holds a lock on, else one from the pool for the call."""
        try:
            bound = self._bound.get()
            if bound is not None:
                yield bound
                return
            async with self.acquire() as conn:
                yield conn
        except UNAVAILABLE as err:
            raise StoreUnavailable(f"{type(err).__name__}: {err}") from err

    def bound(self) -> bool:
        """Whether this task holds a lock (its calls then use the lock's connection)."""
        return self._bound.get() is not None

    def held_lock(self, key: int) -> _HeldLock | None:
        """The lock `key` if it is the one this task holds innermost, on its bound connection: a statement of the
        block may release it itself (then marking it `released`)."""
        lock = self._held.get()
        return lock if lock is not None and lock.key == key and self._bound.get() is not None else None

    @contextlib.asynccontextmanager
    async def advisory(
        self, key: int, *, wait: bool, read_ahead: str | None = None, completing: bool = False
    ) -> AsyncIterator[bool]:
        """A session advisory lock on the task's bound connection, or on a pooled one bound for the block.

        A pooled connection whose lock state is uncertain (the wait was cancelled or failed, the unlock failed)
        is ended rather than given back: the server then drops every lock its session held.
        """
        async with contextlib.AsyncExitStack() as stack:
            bound = self._bound.get()
            conn: asyncpg.Connection | None = bound
            try:
                if conn is None:
                    conn = await stack.enter_async_context(self.acquire())
                assert conn is not None
                if read_ahead is not None:
                    # Locked and read in one round trip (offsite_lock_backup, migration 4; with the instance's
                    # completed backups, offsite_lock_backup_for_complete, migration 6).
                    function = "offsite_lock_backup_for_complete" if completing else "offsite_lock_backup"
                    rows = await conn.fetch(
                        f"SELECT {BACKUP_COLUMNS} FROM {function}($1, $2)",  # noqa: S608
                        key,
                        read_ahead,
                    )
                    self._read_ahead.set(
                        _read_ahead(read_ahead, [backup_from_row(row) for row in rows], completing)
                    )
                    held = True
                elif wait:
                    await conn.execute("SELECT pg_advisory_lock($1)", key)
                    held = True
                else:
                    held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
            except BaseException as err:
                if bound is None and conn is not None:
                    _terminate(conn)
                if isinstance(err, UNAVAILABLE):
                    raise StoreUnavailable(f"{type(err).__name__}: {err}") from err
                raise
            if not held:
                yield False
                return
            token = self._bound.set(conn)
            lock = _HeldLock(key)
            lock_token = self._held.set(lock)
            try:
                yield True
            finally:
                self._bound.reset(token)
                self._held.reset(lock_token)
                try:
                    if not lock.released:
                        await conn.execute("SELECT pg_advisory_unlock($1)", key)
                except UNAVAILABLE as err:
                    if bound is not None:
                        raise StoreUnavailable(f"{type(err).__name__}: {err}") from err
                    _terminate(conn)  # the lock ends with the session; what the block did stands
                except BaseException:
                    if bound is None:
                        _terminate(conn)
                    raise

    def ahead(self, kind: str, name: str) -> tuple[bool, Any]:
        """What was read ahead for (kind, name), once: (True, it), else (False, None)."""
        ahead = self._read_ahead.get()
        wanted = f"{kind}:{name}"
        if ahead is None or wanted not in ahead:
            return False, None
        rest = dict(ahead)
        found = rest.pop(wanted)
        self._read_ahead.set(rest or None)
        return True, found

    def forget_ahead(self) -> None:
        """A write: nothing read before it may stand in for a read after it."""
        if self._read_ahead.get() is not None:
            self._read_ahead.set(None)
