"""The watchdog on several gateway nodes over one PostgreSQL database (issue 22): still exactly one notification
per recipient when an instance turns late, and one when it is back.

Two ways: two gateway apps in this process, each with its own store (its own pool of connections), looking and
delivering at once on a clock the test moves, many times over; and two `offsite-gateway serve` processes looking
every second, the time moved by the data (an instance created days ago).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from offsite_gateway import auth
from offsite_gateway.app import OUTBOX, STORE, WATCHDOG
from offsite_gateway.config import load_settings
from offsite_gateway.store import Instance, create_store
from tests.gateway.api import Api
from tests.gateway.test_nodes import two_nodes
from tests.gateway.watching import (
    DAY,
    HOUR,
    OPERATOR_SECRET,
    Clock,
    add_instance,
    set_notify,
    verify,
    watching_gateway,
)
from tests.helpers.gateway import GatewayDatabase, RunningGateway, selected_stores
from tests.helpers.postgres import PostgresCluster
from tests.helpers.receivers import WebhookReceiver
from tests.helpers.servers import S3Server

EVERY = 36 * HOUR
HOUSES = 12


@pytest.fixture
def pg_database(request: pytest.FixtureRequest) -> Iterator[GatewayDatabase]:
    if "postgresql" not in selected_stores():
        pytest.skip("several nodes need PostgreSQL (OFFSITE_TEST_STORES leaves it out)")
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    url = cluster.create_database()
    try:
        yield GatewayDatabase.postgresql(url, cluster)
    finally:
        cluster.drop_database(url)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as hooks:
        yield hooks


async def _all_look(nodes: list[RunningGateway], clock: Clock, rounds: int = 4) -> None:
    """Every node looks, then delivers, at once; `rounds` times."""
    for _ in range(rounds):
        await asyncio.gather(*(node.app[WATCHDOG].run_once(clock()) for node in nodes))
        await asyncio.gather(*(node.app[OUTBOX].run_once(clock()) for node in nodes))


def _events(receiver: WebhookReceiver, secrets: dict[str, str]) -> Counter[tuple[str, str, str]]:
    """(recipient path, instance name, event) of every notification received, each signature checked."""
    counted: Counter[tuple[str, str, str]] = Counter()
    for request in receiver.received:
        body = verify(request, secrets[request.path])
        counted[request.path, body["instance"]["name"], body["event"]] += 1
    return counted


async def test_two_nodes_looking_at_once_notify_each_recipient_once(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    pg_database: GatewayDatabase,
    receiver: WebhookReceiver,
    session: aiohttp.ClientSession,
) -> None:
    clock = Clock()
    async with (
        watching_gateway(moto_server, moto_bucket, tmp_path / "a", pg_database, clock, receiver) as first,
        watching_gateway(moto_server, moto_bucket, tmp_path / "b", pg_database, clock, receiver) as second,
    ):
        nodes = [first, second]
        secrets = {"/operator": OPERATOR_SECRET}
        tokens = {}
        for number in range(HOUSES):
            name = f"home-{number}"
            _, token = await add_instance(first, name, clock)
            path = f"/house/{number}"
            secrets[path] = await set_notify(session, nodes[number % 2], token, receiver.url(path))
            await Api(session, nodes[number % 2].url, token).upload(b"night")
            tokens[name] = token

        await _all_look(nodes, clock)  # all ok
        assert receiver.received == []

        clock.advance(EVERY + 60)
        await _all_look(nodes, clock)
        clock.advance(HOUR)
        await _all_look(nodes, clock)
        late = _events(receiver, secrets)
        assert len(late) == 2 * HOUSES
        assert set(late.values()) == {1}, [key for key, count in late.items() if count != 1]
        assert {event for _, _, event in late} == {"late"}

        clock.advance(DAY)  # a day later, still late: one reminder each
        await _all_look(nodes, clock)
        reminders = _events(receiver, secrets) - late
        assert len(reminders) == 2 * HOUSES
        assert set(reminders.values()) == {1}
        assert {event for _, _, event in reminders} == {"reminder"}

        clock.advance(HOUR)
        for number, token in enumerate(tokens.values()):
            await Api(session, nodes[number % 2].url, token).upload(b"back")
        await _all_look(nodes, clock)
        back = _events(receiver, secrets) - late - reminders
        assert len(back) == 2 * HOUSES
        assert set(back.values()) == {1}
        assert {event for _, _, event in back} == {"recovered"}

        notices = await first.app[STORE].list_notices()
        assert len(notices) == 6 * HOUSES
        assert {(notice.status, notice.attempts) for notice in notices} == {("sent", 1)}


async def test_two_serving_processes_notify_once(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    pg_database: GatewayDatabase,
    receiver: WebhookReceiver,
) -> None:
    """`offsite-gateway serve` twice, each looking every second: an instance created three days ago that never
    backed up is told once; after its first backup, once more."""
    settings = load_settings({"OFFSITE_GATEWAY_DB": pg_database.setting}, require_storage=False)
    store = create_store(settings)
    await store.open()
    try:
        made, token = await auth.add_instance(store, "faraway")
        await store.restore_instance(
            Instance("f" * 32, "old-cabin", time.time() - 3 * DAY), auth.hash_token(auth.new_token())
        )
        assert await store.set_policy("faraway", {"expect_every": 2})  # two seconds: late in a moment
    finally:
        await store.close()

    async with two_nodes(
        moto_server,
        moto_bucket,
        pg_database,
        tmp_path,
        WATCH_INTERVAL="1",
        NOTIFY_URL=receiver.url("/operator"),
        NOTIFY_SECRET=OPERATOR_SECRET,
        NOTIFY_ALLOWED_NETWORKS="127.0.0.0/8",
        SWEEP_INTERVAL="0",
    ) as nodes:
        await receiver.wait_for(2, within=30)
        await asyncio.sleep(4)  # both nodes look about four times more
        told = Counter(
            (body["instance"]["name"], body["event"], body["state"])
            for body in (verify(request, OPERATOR_SECRET) for request in receiver.received)
        )
        assert told == {("old-cabin", "late", "never"): 1, ("faraway", "late", "never"): 1}

        async with aiohttp.ClientSession() as session:
            await Api(session, nodes[0].url, token).upload(b"at last")
        await receiver.wait_for(3, within=30)
        await asyncio.sleep(
            1.5
        )  # a look or two more: "faraway" turns late again two seconds after its backup
        events = [verify(request, OPERATOR_SECRET) for request in receiver.received]
        recovered = [body for body in events if body["event"] == "recovered"]
        assert [body["instance"]["name"] for body in recovered] == ["faraway"]
        assert recovered[0]["instance"]["id"] == made.id
