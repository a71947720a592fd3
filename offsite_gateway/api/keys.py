"""What the API's application holds (its parts, under these keys) and what each request carries once through the
middlewares (the client's address, the authenticated instance)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ..config import Settings
from ..domain import Context
from ..health import Readiness
from ..metrics import Metrics
from ..outbox import Outbox
from ..purger import Purger
from ..storage import Storage
from ..store import Instance, Store
from ..store.locks import KeyedLocks
from ..sweeper import Sweeper
from ..throttle import AuthFailures
from ..watchdog import Watchdog

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
STORAGE = web.AppKey("storage", Storage)
METRICS = web.AppKey("metrics", Metrics)
SWEEPER = web.AppKey("sweeper", Sweeper)
PURGER = web.AppKey("purger", Purger)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
READINESS = web.AppKey("readiness", Readiness)
AUTH_FAILURES = web.AppKey("auth_failures", AuthFailures)
WATCHDOG = web.AppKey("watchdog", Watchdog)
OUTBOX = web.AppKey("outbox", Outbox)
BODY_READS = web.AppKey("body_reads", KeyedLocks)  # one complete body of an upload read at a time, per node
BACKUPS = web.AppKey("backups", Context)  # what begins, completes, aborts and deletes backups (`domain`)
METRICS_ONLY = web.AppKey("metrics_only", bool)  # the app of the metrics listener (`create_metrics_app`)

INSTANCE = "offsite_gateway.instance"  # request key: the authenticated instance
CLIENT = "offsite_gateway.client"  # request key: the client's address (behind a trusted proxy, the real one)


def instance_of(request: web.Request) -> Instance:
    """The instance the request's token authenticated (`middlewares.bearer_auth`)."""
    instance: Instance = request[INSTANCE]
    return instance
