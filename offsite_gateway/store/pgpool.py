"""A small pool of asyncpg connections for the PostgreSQL store.

Why not asyncpg's own pool: each acquire and release through it cost about 50 us of CPU (timeouts, holders, a
reset step), measured on the development VM, against about 25 us for the query itself, and the store makes about
ten calls per backup. This one keeps what the store needs:

- at most `size` connections, opened when needed; idle ones reused newest first, closed once idle for
  `idle_for` seconds;
- waiting for a connection, and connecting, within `timeout` seconds (TimeoutError otherwise); each statement
  within `timeout` seconds too (asyncpg's `command_timeout`), and the session's lock waits (`lock_timeout`);
- a connection is given back only if it is open and outside any transaction, and the block using it ended
  without an exception other than a PostgreSQL error answered on it (a unique violation, say); on a cancel, a
  timeout or a connection error it is ended, which also ends its session's advisory locks. Nothing else is reset:
  the store never changes session settings, listens, or keeps cursors.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg


class ConnectionPool:
    """Up to `size` connections to `url`."""

    def __init__(
        self,
        url: str,
        *,
        size: int,
        timeout: float,
        server_settings: Mapping[str, str],
        idle_for: float = 60.0,
    ) -> None:
        self.url = url
        self.size = size
        self.timeout = timeout
        self.idle_for = idle_for
        self._server_settings = dict(server_settings)
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[Any, float]] = []  # (connection, idle since)
        self._in_use: set[Any] = set()
        self._closed = False

    async def _connect(self) -> Any:
        return await asyncpg.connect(
            self.url,
            timeout=self.timeout,
            command_timeout=self.timeout,
            server_settings=self._server_settings,
        )

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        """A connection for the block (see the module's docstring for when it is given back)."""
        if self._closed:
            raise RuntimeError("the store is not open")
        if self._slots.locked():
            async with asyncio.timeout(self.timeout):
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        connection = None
        try:
            connection = self._take()
            if connection is None:
                connection = await self._connect()
            self._in_use.add(connection)
            try:
                yield connection
            except asyncpg.PostgresError as err:
                if isinstance(err, asyncpg.QueryCanceledError | asyncpg.PostgresConnectionError):
                    connection.terminate()
                raise
            except BaseException:
                connection.terminate()
                raise
        finally:
            if connection is not None:
                self._in_use.discard(connection)
                if self._closed or connection.is_closed() or connection.is_in_transaction():
                    connection.terminate()
                else:
                    self._idle.append((connection, time.monotonic()))
            self._slots.release()

    def _take(self) -> Any:
        now = time.monotonic()
        while self._idle:
            connection, since = self._idle.pop()
            if not connection.is_closed() and now - since < self.idle_for:
                return connection
            connection.terminate()
        return None

    async def close(self) -> None:
        """Close the idle connections (gracefully, within the timeout) and end the ones in use."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in self._in_use:
            connection.terminate()
        for connection, _ in idle:
            try:
                await connection.close(timeout=self.timeout)
            except Exception:
                connection.terminate()
