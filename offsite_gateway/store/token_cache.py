"""The PostgreSQL store's token cache: token hash -> instance, kept fresh by a connection that LISTENs.

Every request authenticates its token (`instance_by_token_hash`): a round trip each, a quarter of what a backup
costs the database, for rows that change a few times a year. So the store caches token hash -> instance here, and a
connection of its own (not the pool's, `application_name` `offsite-gateway-listener`) LISTENs on
`offsite_gateway_instances`, which a trigger on `instances` notifies at every commit that changes it (migration 7),
whichever node or CLI process made the change: each notification empties the cache, so a revoked or rotated token
is refused on every node within a moment. The cache is used only while that connection listens: losing it empties
the cache and every lookup asks the database until a reconnection (1 s, doubling to 30 s) listens again. A lookup
is cached only if no notification or loss came while it ran (a generation counter), never when nothing was found,
for at most `TOKEN_CACHE_TTL` seconds (a safety net) and `TOKEN_CACHE_SIZE` entries.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from ..tasks import stop_task
from .base import Instance
from .pg_connections import UNAVAILABLE

_LOGGER = logging.getLogger(__name__)

INSTANCES_CHANNEL = "offsite_gateway_instances"  # notified by migration 7's trigger on `instances`
LISTENER_NAME = "offsite-gateway-listener"  # the listening connection's application_name
TOKEN_CACHE_TTL = 60.0  # s: how long a cached instance is trusted, were a notification ever lost
TOKEN_CACHE_SIZE = 100_000  # entries; a full cache is emptied
RECONNECT_FIRST = 1.0  # s: the first wait before listening again, doubled after each failure
RECONNECT_MAX = 30.0


class TokenCache:
    """Instances by token hash, trusted only while its own connection listens for changes of `instances`."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        # token hash -> (monotonic expiry, instance); trusted only while `_listener` listens (module docstring).
        self._tokens: dict[str, tuple[float, Instance]] = {}
        self._generation = 0  # bumped whenever `_tokens` is emptied for a change or a loss of the listener
        self._listener: asyncpg.Connection | None = None
        self._listener_lost = asyncio.Event()
        self._relisten: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Listen (or, failing that, warn and run uncached), and listen again whenever the connection is lost."""
        await self._first_listen()
        self._relisten = asyncio.create_task(self._keep_listening(), name="offsite-gateway-listener")

    async def close(self) -> None:
        task, self._relisten = self._relisten, None
        await stop_task(task)
        if self._listener is not None:
            listener, self._listener = self._listener, None
            self.forget()
            try:
                await listener.close(timeout=self.timeout)
            except UNAVAILABLE:  # the database cannot answer: the listener is terminated
                listener.terminate()

    @property
    def generation(self) -> int:
        """Read before a lookup in the database, given back to `put`: what changed meanwhile is not cached."""
        return self._generation

    def get(self, token_hash: str) -> Instance | None:
        """The instance of this token hash, if cached, fresh, and the cache listens; else None."""
        cached = self._tokens.get(token_hash)
        if cached is None or self._listener is None:
            return None
        expires, instance = cached
        if time.monotonic() < expires:
            return instance
        self._tokens.pop(token_hash, None)
        return None

    def put(self, token_hash: str, instance: Instance, generation: int) -> None:
        """Cache what a lookup found, unless a change or a loss of the listener came since it read `generation`."""
        if self._listener is not None and generation == self._generation:
            if len(self._tokens) >= TOKEN_CACHE_SIZE:
                self._tokens.clear()
            self._tokens[token_hash] = (time.monotonic() + TOKEN_CACHE_TTL, instance)

    async def _listen(self) -> None:
        """Connect the listener and LISTEN; from then on, tokens are cached afresh."""
        conn = await asyncpg.connect(
            self.url,
            timeout=self.timeout,
            command_timeout=self.timeout,
            server_settings={"application_name": LISTENER_NAME},
        )
        try:
            # Before LISTEN: a loss at any moment after it is reported (to `_listener_closed`).
            conn.add_termination_listener(self._listener_closed)
            await conn.add_listener(INSTANCES_CHANNEL, self._instances_changed)
            if conn.is_closed():
                raise asyncpg.InterfaceError("the listener's connection closed as it started listening")  # noqa: TRY301
        except BaseException:
            conn.terminate()
            raise
        self._listener = conn
        self._listener_lost.clear()
        # What a lookup read before this moment was not covered by notifications: not cached (the generation).
        self.forget()

    async def _first_listen(self) -> None:
        """Listen at start; failing that, run uncached (with a warning) while `_keep_listening` retries."""
        try:
            await self._listen()
        except Exception as err:
            self._listener_lost.set()
            _LOGGER.warning(
                "Cannot listen for changes of instances (%s: %s): every request asks the database for its token "
                "until it can",
                type(err).__name__,
                err,
            )

    async def _keep_listening(self) -> None:
        """Listen again whenever the listener is lost: after 1 s, doubling up to 30 s while it fails."""
        while True:
            await self._listener_lost.wait()
            delay = RECONNECT_FIRST
            while self._listener is None:
                await asyncio.sleep(delay)
                try:
                    await self._listen()
                except Exception as err:
                    delay = min(delay * 2, RECONNECT_MAX)
                    _LOGGER.debug(
                        "Cannot listen again yet (%s: %s); next try in %.0f s", type(err).__name__, err, delay
                    )
            _LOGGER.info("Listening for changes of instances again: tokens are cached again")

    def _listener_closed(self, conn: asyncpg.Connection) -> None:
        """asyncpg: the listener's connection is closed (the server ended it, the network failed, or `close`)."""
        if conn is not self._listener:
            return  # closed by `close`, or a connection that never listened
        self._listener = None
        self.forget()
        self._listener_lost.set()
        _LOGGER.warning(
            "Lost the connection listening for changes of instances: every request asks the database for its "
            "token until it is back"
        )

    def _instances_changed(self, conn: asyncpg.Connection, pid: int, channel: str, payload: str) -> None:
        """asyncpg: `instances` changed (a commit on any node or CLI process)."""
        self.forget()

    def forget(self) -> None:
        """Empty the cache; a lookup running now does not store what it read (it may predate the change)."""
        self._tokens.clear()
        self._generation += 1
