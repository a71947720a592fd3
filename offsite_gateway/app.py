"""The gateway's application: the API (`offsite_gateway.api`) with its parts (the store, storage, the sweeper, the
purger, the watchdog, the outbox), opened on startup and closed on cleanup; the metrics listener's application; the
runner that serves either."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from .api.bodies import MAX_BODY, MAX_COMPLETE_BODY
from .api.keys import (
    AUTH_FAILURES,
    BACKUPS,
    BODY_READS,
    CLOCK,
    METRICS,
    METRICS_ONLY,
    OUTBOX,
    PURGER,
    READINESS,
    SETTINGS,
    STORAGE,
    STORE,
    SWEEPER,
    WATCHDOG,
)
from .api.middlewares import ACCESS_LOGGER, AccessLogger, bearer_auth, errors_and_metrics
from .api.routes import ROUTES
from .api.service import healthz, metrics
from .config import Settings
from .domain import Context
from .health import Readiness
from .metrics import Metrics
from .outbox import Outbox
from .purger import Purger
from .server import GatewayRunner
from .storage import Storage
from .store import Store, create_store
from .store.locks import KeyedLocks
from .sweeper import Sweeper
from .throttle import AuthFailures
from .watchdog import Watchdog

__all__ = [
    "AUTH_FAILURES",
    "BACKUPS",
    "CLOCK",
    "METRICS",
    "METRICS_CONNECTIONS",
    "OUTBOX",
    "PURGER",
    "READINESS",
    "ROUTES",
    "SETTINGS",
    "STORAGE",
    "STORE",
    "SWEEPER",
    "WATCHDOG",
    "create_app",
    "create_metrics_app",
    "make_runner",
]


def make_runner(
    app: web.Application, shutdown_timeout: float = 10.0, *, max_connections: int | None = None
) -> web.AppRunner:
    """The runner to serve `app` with: our access log (no headers, no query strings), and the connection limits
    of its settings (`max_connections` lower still, to fit the open-file limit: see `limits`)."""
    settings = app[SETTINGS]
    return GatewayRunner(
        app,
        max_connections=min(settings.max_connections, max_connections or settings.max_connections),
        header_timeout=settings.header_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        write_timeout=settings.write_timeout,
        shutdown_timeout=shutdown_timeout,
        access_log_class=AccessLogger,
        access_log=ACCESS_LOGGER,
    )


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The gateway application; its store, storage client and sweeper open on startup and close on cleanup."""
    app = web.Application(middlewares=[errors_and_metrics, bearer_auth], client_max_size=MAX_COMPLETE_BODY)
    app[SETTINGS] = settings
    app[STORE] = store if store is not None else create_store(settings)
    app[STORAGE] = Storage(settings)
    app[METRICS] = Metrics()
    app[CLOCK] = clock
    app[SWEEPER] = Sweeper(settings, app[STORE], app[STORAGE], app[METRICS], clock)
    app[PURGER] = Purger(app[STORE], app[STORAGE], app[METRICS])
    app[READINESS] = Readiness(app[STORE], app[STORAGE], clock)
    app[AUTH_FAILURES] = AuthFailures(settings.auth_failures_per_minute, app[METRICS])
    app[OUTBOX] = Outbox(settings, app[STORE], app[METRICS], clock)
    app[WATCHDOG] = Watchdog(settings, app[STORE], app[METRICS], clock, on_queued=app[OUTBOX].wake)
    app[BODY_READS] = KeyedLocks()
    app[BACKUPS] = Context(settings, app[STORE], app[STORAGE], app[METRICS], clock, app[PURGER])
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    store, storage, sweeper, purger = app[STORE], app[STORAGE], app[SWEEPER], app[PURGER]
    watchdog, outbox = app[WATCHDOG], app[OUTBOX]
    await store.open()
    try:
        await storage.open()
        try:
            sweeper.start()
            purger.start()
            watchdog.start()
            outbox.start()
            try:
                yield
            finally:
                await outbox.stop()
                await watchdog.stop()
                await purger.stop()
                await sweeper.stop()
        finally:
            await storage.close()
    finally:
        await store.close()


METRICS_CONNECTIONS = 64  # what the metrics listener holds at most: a few scrapers


def create_metrics_app(app: web.Application) -> web.Application:
    """The application of the metrics listener (`METRICS_LISTEN`): `/metrics` (and `/healthz`) of `app`, whose
    store and metrics it uses; `app` opens and closes them. Serve it with `make_runner(..., max_connections=
    METRICS_CONNECTIONS)`, set up after `app`'s runner and cleaned up before it."""
    metrics_app = web.Application(middlewares=[errors_and_metrics], client_max_size=MAX_BODY)
    metrics_app[SETTINGS] = app[SETTINGS]
    metrics_app[STORE] = app[STORE]
    metrics_app[METRICS] = app[METRICS]
    metrics_app[CLOCK] = app[CLOCK]
    metrics_app[AUTH_FAILURES] = app[AUTH_FAILURES]
    metrics_app[READINESS] = app[READINESS]  # the check_up gauges
    metrics_app[METRICS_ONLY] = True
    metrics_app.router.add_route("GET", "/metrics", metrics)
    metrics_app.router.add_route("GET", "/healthz", healthz)
    return metrics_app
