"""The outbox: delivers the notices the watchdog queued, from every node, each one once.

Every node runs it, in a task of its own (never in a request's: a slow or failing receiver never slows the API),
every few seconds and at once when its own watchdog queued some. A run claims up to `CONCURRENCY` due notices at a
time (`Store.claim_notices`: PostgreSQL's `FOR UPDATE SKIP LOCKED` gives each to one node; SQLite serves one
node), each held for a lease (twice the timeout, and 30 s) during which no node takes it again; sends them at
once; and records each outcome:

- delivered: `sent`;
- a failure a retry may help (a timeout, a refused connection, an answer 5xx, 408 or 429, a DNS failure): due again
  after a backoff (30 s, doubled after each attempt, up to an hour), until `NOTIFY_ATTEMPTS` attempts, then
  `failed`;
- one no retry helps (a forbidden address, a redirect, another 4xx): `failed` at once;
- its recipient is gone (the house cleared its URL, the instance was revoked, the operator unset the setting):
  `dropped`.

A run takes at most `MAX_PER_RUN` notices (the rest wait for the next run), so what one node holds in memory is
bounded. A node that dies while it sends leaves its notices claimed: another sends them once their lease is
over. So each notice is delivered once, unless a node dies between delivering it and recording it: then it is
delivered again, with the same `id` (the body's `id`, the `X-Offsite-Notice` header), by which a receiver may drop
the second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import Settings
from .logs import ThrottledLog, escape
from .messages import EMAIL, OWNER, email_message, render
from .metrics import Metrics
from .notify import DeliveryError, EmailSender, WebhookSender
from .store import DROPPED, GAVE_UP, SENT, Notice, Store, StoreUnavailable
from .tasks import stop_task

_LOGGER = logging.getLogger(__name__)

POLL = 5.0  # seconds between two runs when nothing wakes the outbox
CONCURRENCY = 8  # notices sent at once by one node
MAX_PER_RUN = 200
RETRY_FIRST = 30.0
RETRY_MAX = 3600.0


class _Gone(Exception):
    """The notice's recipient is gone: nothing to send it to."""


@dataclass
class OutboxReport:
    """What one run did: outcomes by kind (sent, retry, failed, dropped)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    pending: int = 0


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt of a notice tried `attempts` times."""
    return float(min(RETRY_MAX, RETRY_FIRST * 2 ** max(0, attempts - 1)))


class Outbox:
    """Delivers due notices (`run_once`), in its own task between `start` and `stop`."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        *,
        webhooks: WebhookSender | None = None,
        poll: float = POLL,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.webhooks = webhooks or WebhookSender(settings.notify_allowed_networks, settings.notify_timeout)
        self.email = EmailSender(settings)
        self.poll = poll
        self.lease = 2 * settings.notify_timeout + 30
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._unavailable = ThrottledLog(_LOGGER, 60.0)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Deliver in a task of its own, unless WATCH_INTERVAL is 0 (the watchdog's timers off; tests)."""
        if self.settings.watch_interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="offsite-gateway-outbox")

    async def stop(self) -> None:
        """Stop; a run under way gets a few seconds to finish its sends (what it cannot finish is sent again by
        a node once its lease is over)."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                async with self._lock:  # the run under way, if any, ends
                    task.cancel()
        await stop_task(task)

    def wake(self) -> None:
        """Notices were queued: run now rather than at the next poll."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except (
                StoreUnavailable
            ) as err:  # every few seconds while the database is down: a line now and then
                self._unavailable.log(
                    logging.WARNING,
                    "Outbox: the database is unavailable (%s); trying again",
                    escape(str(err)),
                )
            except Exception:
                _LOGGER.exception("Outbox: a run failed; trying again in %g s", self.poll)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll):
                    await self._wake.wait()
            self._wake.clear()

    async def run_once(self, now: float | None = None) -> OutboxReport:
        """Deliver what is due; `now` may be given to look into the future (tests)."""
        report = OutboxReport()
        async with self._lock:
            claimed = 0
            while claimed < MAX_PER_RUN:
                at = self.clock() if now is None else now
                batch = await self.store.claim_notices(at, at + self.lease, CONCURRENCY)
                claimed += len(batch)
                outcomes = await asyncio.gather(*(self._deliver(notice, now) for notice in batch))
                report.outcomes.update(outcomes)
                if len(batch) < CONCURRENCY:
                    break
            report.pending = await self.store.pending_notices()
        self.metrics.notices_pending.set(report.pending)
        return report

    async def _deliver(self, notice: Notice, now: float | None) -> str:
        """Send one claimed notice and record how it went; the outcome."""
        store, channel = self.store, notice.channel
        started = time.perf_counter()
        try:
            await self._send(notice, self.clock() if now is None else now)
        except _Gone as err:
            await store.finish_notice(notice.id, DROPPED, self._now(now), str(err))
            _LOGGER.info("Outbox: notice %s dropped: %s", notice.id, err)
            return "dropped"
        except DeliveryError as err:
            self.metrics.notice_failures.labels(channel, err.reason).inc()
            return await self._failed(notice, err, now)
        except Exception as err:  # a bug must not lose the notice: it is retried like a failure
            _LOGGER.exception("Outbox: sending notice %s failed unexpectedly", notice.id)
            self.metrics.notice_failures.labels(channel, "internal").inc()
            return await self._failed(notice, DeliveryError("internal", type(err).__name__, retry=True), now)
        finally:
            self.metrics.notice_seconds.labels(channel).observe(time.perf_counter() - started)
        await store.finish_notice(notice.id, SENT, self._now(now))
        self.metrics.notices_sent.labels(notice.recipient, channel).inc()
        _LOGGER.info(
            "Outbox: notice %s (%s of instance %s) sent to the %s by %s",
            notice.id,
            notice.event,
            notice.instance_id,
            notice.recipient,
            channel,
        )
        return "sent"

    def _now(self, now: float | None) -> float:
        return self.clock() if now is None else now

    async def _failed(self, notice: Notice, err: DeliveryError, now: float | None) -> str:
        at = self._now(now)
        what = (
            f"notice {notice.id} ({notice.event} of instance {notice.instance_id}) to the {notice.recipient}"
        )
        if err.retry and notice.attempts < self.settings.notify_attempts:
            delay = retry_delay(notice.attempts)
            await self.store.retry_notice(notice.id, at + delay, f"{err.reason}: {err}")
            _LOGGER.warning(
                "Outbox: %s by %s failed (%s: %s), attempt %d of %d; again in %.0f s",
                what,
                notice.channel,
                err.reason,
                err,
                notice.attempts,
                self.settings.notify_attempts,
                delay,
            )
            return "retry"
        await self.store.finish_notice(notice.id, GAVE_UP, at, f"{err.reason}: {err}")
        self.metrics.notices_given_up.labels(notice.channel).inc()
        _LOGGER.warning(
            "Outbox: %s by %s given up after %d attempt(s): %s: %s",
            what,
            notice.channel,
            notice.attempts,
            err.reason,
            err,
        )
        return "failed"

    async def _send(self, notice: Notice, now: float) -> None:
        settings = self.settings
        instance = await self.store.instance_by_id(notice.instance_id)
        if instance is None or instance.revoked_at is not None:
            raise _Gone("the instance was revoked")
        secret: str | None
        if notice.recipient == OWNER:
            if instance.notify is None:
                raise _Gone("the house no longer has a notify URL")
            url, fmt, secret = instance.notify.url, instance.notify.format, instance.notify.secret
        elif notice.channel == EMAIL:
            if not (settings.notify_email and settings.smtp_host):
                raise _Gone("NOTIFY_EMAIL or SMTP_HOST is no longer set")
            await self.email.send(email_message(notice.payload, settings.smtp_from, settings.notify_email))
            return
        else:
            if not settings.notify_url:
                raise _Gone("NOTIFY_URL is no longer set")
            url, fmt, secret = settings.notify_url, settings.notify_format, settings.notify_secret
        await self.webhooks.post(url, render(fmt, notice.payload, secret, int(now)))
