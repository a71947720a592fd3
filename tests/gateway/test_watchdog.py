"""The watchdog (issue 22): each instance's state from the database, one signed notification when it turns late,
none while it is ok, one when a backup lands again, reminders at a slow cadence; on both stores, the clock moved
by the test. Several nodes: test_watchdog_nodes.py; delivery's failures and guard: test_notify.py."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from offsite_gateway.app import OUTBOX, STORE, WATCHDOG
from offsite_gateway.config import Settings
from offsite_gateway.store import LATE, NEVER, OK, PAUSED, Instance, PolicyOverrides, Watched
from offsite_gateway.watchdog import Expectation, decide, expectation
from tests.gateway.api import Api
from tests.gateway.watching import (
    DAY,
    HOUR,
    OPERATOR_SECRET,
    Clock,
    add_instance,
    by_path,
    look,
    metrics_text,
    set_notify,
    verify,
    watching_gateway,
)
from tests.helpers.gateway import GatewayDatabase
from tests.helpers.receivers import WebhookReceiver
from tests.helpers.servers import S3Server

EVERY = 36 * HOUR


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as hooks:
        yield hooks


# --- the rules, as functions of the data ----------------------------------------------------------------


def _instance(created_at: float = 0.0, expect_every: int | None = None) -> Instance:
    return Instance("i" * 32, "home", created_at, policy=PolicyOverrides(expect_every=expect_every))


def test_the_state_follows_the_newest_backup_and_the_interval() -> None:
    settings = Settings()  # 36 h
    assert settings.expect_every == EVERY
    fresh = _instance(created_at=1000.0)
    assert expectation(fresh, None, settings, 1000.0 + EVERY) == Expectation(OK, EVERY, None, 1000.0 + EVERY)
    assert expectation(fresh, None, settings, 1001.0 + EVERY).state == NEVER
    assert expectation(fresh, 5000.0, settings, 5000.0 + EVERY).state == OK
    late = expectation(fresh, 5000.0, settings, 5001.0 + EVERY)
    assert late == Expectation(LATE, EVERY, 5000.0, 5000.0 + EVERY)
    # The instance's own interval, and `off`.
    assert expectation(_instance(1000.0, 2 * DAY), 5000.0, settings, 5001.0 + EVERY).state == OK
    assert expectation(_instance(1000.0, 0), None, settings, 10**10) == Expectation(PAUSED, None, None, None)


def test_what_a_change_of_state_tells() -> None:
    due = Expectation(LATE, EVERY, 100.0, 100.0 + EVERY)
    now = 200.0 + EVERY
    first = decide("x", None, due, now, DAY)
    assert first is not None
    assert first.event == "late"
    assert first.record == Watched("x", LATE, 100.0 + EVERY, now)
    told = Watched("x", LATE, 100.0 + EVERY, now, version=1)
    assert decide("x", told, due, now + DAY - 1, DAY) is None  # not yet a day
    reminder = decide("x", told, due, now + DAY, DAY)
    assert reminder is not None
    assert reminder.event == "reminder"
    assert reminder.record.notified_at == now + DAY
    assert reminder.record.since == told.since
    assert decide("x", told, due, now + 10 * DAY, 0) is None  # REMIND_EVERY=off
    back = decide("x", told, Expectation(OK, EVERY, now, now + EVERY), now + 5, DAY)
    assert back is not None
    assert back.event == "recovered"
    assert back.record.state == OK
    # Pausing and resuming tell nobody; an ok instance seen for the first time needs no record.
    paused = decide("x", told, Expectation(PAUSED, None, 100.0, None), now, DAY)
    assert paused is not None
    assert paused.event is None
    assert decide("x", None, Expectation(OK, EVERY, None, EVERY), 1.0, DAY) is None


# --- with the real gateway -------------------------------------------------------------------------------


async def _backup(session: aiohttp.ClientSession, url: str, token: str) -> None:
    await Api(session, url, token).upload(b"a backup's bytes")


async def test_one_signed_notification_when_late_none_while_ok_one_at_recovery(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    database: GatewayDatabase,
    receiver: WebhookReceiver,
    session: aiohttp.ClientSession,
) -> None:
    clock = Clock()
    async with watching_gateway(moto_server, moto_bucket, tmp_path, database, clock, receiver) as gateway:
        instance_id, token = await add_instance(gateway, "home", clock)
        owner_secret = await set_notify(session, gateway, token, receiver.url("/house/topic-s3cret?auth=k3y"))
        await _backup(session, gateway.url, token)
        api = Api(session, gateway.url, token)

        landed = await gateway.app[STORE].last_success(instance_id)
        assert landed == clock.now
        for seconds in (HOUR, 12 * HOUR, EVERY - 60, EVERY):  # ok: nobody is told
            clock.now = landed + seconds
            watched, delivered = await look(gateway, clock)
            assert (watched.states[OK], watched.queued) == (1, 0)
        assert receiver.received == []
        assert (await api.ok("GET", "/v1/instance"))["watch"]["state"] == "ok"

        clock.advance(60)  # past its interval
        watched, delivered = await look(gateway, clock)
        assert (watched.states[LATE], watched.changes, watched.queued) == (1, 1, 2)
        assert delivered.outcomes["sent"] == 2
        for _ in range(3):  # looked at again (and again): nothing more
            clock.advance(10 * 60)
            watched, delivered = await look(gateway, clock)
            assert watched.queued == 0
        got = by_path(receiver.received)
        assert sorted(got) == ["/house/topic-s3cret", "/operator"]
        [to_house], [to_operator] = got["/house/topic-s3cret"], got["/operator"]
        assert to_house.query == "auth=k3y"
        house, operator = verify(to_house, owner_secret), verify(to_operator, OPERATOR_SECRET)
        for body, recipient in ((house, "owner"), (operator, "operator")):
            assert body["event"] == "late"
            assert body["state"] == "late"
            assert body["recipient"] == recipient
            assert body["instance"] == {"id": instance_id, "name": "home"}
            assert body["expect_every"] == EVERY
            assert body["version"] == 1
            assert "home" in body["title"]
        assert to_house.headers["X-Offsite-Notice"] == house["id"] != operator["id"]
        assert to_house.headers["Content-Type"] == "application/json"
        watch = (await api.ok("GET", "/v1/instance"))["watch"]
        assert watch["state"] == "late"
        assert watch["due_at"] == house["due_at"]
        assert watch["notify"] == {"url": f"http://127.0.0.1:{receiver.port}/…", "format": "json"}
        assert watch["operator_alerts"] is True

        clock.advance(HOUR)
        await _backup(session, gateway.url, token)  # a backup lands again
        watched, delivered = await look(gateway, clock)
        assert (watched.states[OK], watched.queued, delivered.outcomes["sent"]) == (1, 2, 2)
        clock.advance(HOUR)
        assert (await look(gateway, clock))[0].queued == 0
        got = by_path(receiver.received)
        assert [len(got[path]) for path in sorted(got)] == [2, 2]
        recovered = verify(got["/house/topic-s3cret"][1], owner_secret)
        assert recovered["event"] == "recovered"
        assert recovered["state"] == "ok"
        assert recovered["late_since"] == house["due_at"]
        assert (await api.ok("GET", "/v1/instance"))["watch"]["state"] == "ok"
        notices = await gateway.app[STORE].list_notices()
        assert [(n.event, n.status, n.attempts) for n in notices].count(("late", "sent", 1)) == 2


async def test_reminders_at_the_operators_cadence_and_never_paused(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    database: GatewayDatabase,
    receiver: WebhookReceiver,
    session: aiohttp.ClientSession,
) -> None:
    """`never` one interval after creation; a reminder each REMIND_EVERY; a paused instance tells nobody."""
    clock = Clock()
    async with watching_gateway(
        moto_server, moto_bucket, tmp_path, database, clock, receiver, REMIND_EVERY="12h"
    ) as gateway:
        await add_instance(gateway, "new-house", clock)
        await add_instance(gateway, "cabin", clock)
        await gateway.app[STORE].set_policy(
            "cabin", {"expect_every": 0}
        )  # `instance set cabin --expect-every off`

        clock.advance(EVERY - 1)
        assert (await look(gateway, clock))[0].queued == 0
        clock.advance(2)
        watched, _ = await look(gateway, clock)
        assert (watched.states[NEVER], watched.states[PAUSED], watched.queued) == (1, 1, 1)
        [first] = receiver.received
        body = verify(first, OPERATOR_SECRET)
        assert (body["event"], body["state"], body["last_success_at"]) == ("late", "never", None)
        assert body["instance"]["name"] == "new-house"

        clock.advance(12 * HOUR - 1)
        assert (await look(gateway, clock))[0].queued == 0
        clock.advance(1)
        assert (await look(gateway, clock))[0].queued == 1
        clock.advance(12 * HOUR)
        assert (await look(gateway, clock))[0].queued == 1
        events = [verify(request, OPERATOR_SECRET)["event"] for request in receiver.received]
        assert events == ["late", "reminder", "reminder"]
        assert "still" in verify(receiver.received[-1], OPERATOR_SECRET)["title"]

        # Watched again (its interval back to the default): the cabin has never backed up either.
        await gateway.app[STORE].set_policy("cabin", {"expect_every": None})
        watched, _ = await look(gateway, clock)
        assert (watched.states[NEVER], watched.queued) == (2, 1)
        assert verify(receiver.received[-1], OPERATOR_SECRET)["instance"]["name"] == "cabin"


async def test_the_gauges_follow_the_states(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    database: GatewayDatabase,
    session: aiohttp.ClientSession,
) -> None:
    clock = Clock()
    async with watching_gateway(moto_server, moto_bucket, tmp_path, database, clock) as gateway:
        _, token = await add_instance(gateway, "home", clock)
        await add_instance(gateway, "late-house", clock)
        await gateway.app[STORE].set_policy("home", {"quota_bytes": 17})
        clock.advance(EVERY + 3 * HOUR)
        await _backup(session, gateway.url, token)  # 16 bytes of a quota of 17: near it
        await look(gateway, clock)
        text = await metrics_text(session, gateway)

    def gauge(name: str) -> float:
        match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
        assert match is not None, name
        return float(match.group(1))

    assert gauge('offsite_gateway_instances{state="ok"}') == 1
    assert gauge('offsite_gateway_instances{state="never"}') == 1
    assert gauge('offsite_gateway_instances{state="late"}') == 0
    assert gauge("offsite_gateway_oldest_late_seconds") == pytest.approx(3 * HOUR, abs=2)
    assert gauge("offsite_gateway_instances_near_quota") == 1
    assert gauge('offsite_gateway_check_up{check="storage"}') == 1
    assert gauge('offsite_gateway_check_up{check="database"}') == 1
    assert gauge("offsite_gateway_notices_pending") == 0


async def test_the_house_sets_and_clears_its_notify_url(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    database: GatewayDatabase,
    receiver: WebhookReceiver,
    session: aiohttp.ClientSession,
) -> None:
    """Checked at once; shown without its path and query; cleared, a pending notice to it is dropped."""
    clock = Clock()
    async with watching_gateway(moto_server, moto_bucket, tmp_path, database, clock) as gateway:
        instance_id, token = await add_instance(gateway, "home", clock)
        api = Api(session, gateway.url, token)
        assert (await api.ok("GET", "/v1/instance"))["watch"]["notify"] is None
        assert (await api.ok("GET", "/v1/instance"))["watch"]["operator_alerts"] is False
        secret = await set_notify(session, gateway, token, receiver.url("/t/very-secret-topic"), "ntfy")
        again = await set_notify(session, gateway, token, receiver.url("/t/very-secret-topic"), "ntfy")
        assert secret != again  # a new key each time
        stored = await gateway.app[STORE].instance_by_id(instance_id)
        assert stored is not None
        assert stored.notify is not None
        assert (stored.notify.url, stored.notify.format, stored.notify.secret) == (
            receiver.url("/t/very-secret-topic"),
            "ntfy",
            again,
        )
        assert "very-secret-topic" not in repr(stored)
        for bad in (
            {"url": "ftp://example.com/x"},
            {"url": "https://user:pw@example.com/x"},
            {"url": "https://example.com/x#frag"},
            {"url": "https://exämple.com/x"},
            {"url": "https://example.com/" + "x" * 2100},
            {"url": 12},
            {"url": "https://93.184.215.14/x", "format": "xml"},
            {},
        ):
            status, answer = await api.call("PUT", "/v1/instance/notify", bad)
            assert (status, answer["error"]["code"]) == (400, "invalid_request"), bad
        status, _ = await api.call("PUT", "/v1/instance/notify", {"url": "https://93.184.215.14/topic"})
        assert status == 200  # a public address, taken without a connection being made
        await set_notify(session, gateway, token, receiver.url("/t/very-secret-topic"))

        clock.advance(EVERY + 1)
        await gateway.app[WATCHDOG].run_once(clock())  # queued for the house...
        assert await api.call("DELETE", "/v1/instance/notify") == (204, None)
        assert (await api.ok("GET", "/v1/instance"))["watch"]["notify"] is None
        delivered = await gateway.app[OUTBOX].run_once(clock())  # ...which cleared its URL meanwhile
        assert delivered.outcomes == {"dropped": 1}
        assert receiver.received == []
        [notice] = await gateway.app[STORE].list_notices()
        assert (notice.status, notice.recipient) == ("dropped", "owner")
        assert "very-secret-topic" not in json.dumps(notice.payload)
