"""Delivering notifications (issue 22): the formats ntfy and Gotify accept, e-mail through a real SMTP server, the
guard on where a webhook may go (private addresses, DNS resolved once, no redirects, a capped answer, timeouts),
and a receiver that is slow or failing: retried, and the API's latency unchanged."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from offsite_gateway.app import OUTBOX, STORE, WATCHDOG
from offsite_gateway.config import load_settings
from offsite_gateway.messages import Rendered
from offsite_gateway.metrics import Metrics
from offsite_gateway.notify import DeliveryError, WebhookSender
from offsite_gateway.outbox import Outbox
from offsite_gateway.store import StoreUnavailable
from tests.gateway.api import Api
from tests.gateway.watching import (
    HOUR,
    OPERATOR_SECRET,
    Clock,
    add_instance,
    by_path,
    check_signature,
    look,
    metrics_text,
    set_notify,
    watching_gateway,
)
from tests.helpers.gateway import GatewayDatabase
from tests.helpers.receivers import WebhookReceiver, gotify_message, ntfy_message, smtp_server
from tests.helpers.servers import S3Server, free_port

EVERY = 36 * HOUR
LOOPBACK = load_settings({"OFFSITE_GATEWAY_NOTIFY_ALLOWED_NETWORKS": "127.0.0.0/8"}, require_storage=False)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as hooks:
        yield hooks


def _rendered(body: bytes = b"{}") -> Rendered:
    return Rendered(body, {"Content-Type": "application/json"})


# --- formats ---------------------------------------------------------------------------------------------


async def test_what_ntfy_and_gotify_accept(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    database: GatewayDatabase,
    receiver: WebhookReceiver,
    session: aiohttp.ClientSession,
) -> None:
    """The house on ntfy (a topic URL), the operator on Gotify (`/message?token=`); a name that is not ASCII."""
    clock = Clock()
    async with watching_gateway(
        moto_server,
        moto_bucket,
        tmp_path,
        database,
        clock,
        NOTIFY_URL=receiver.url("/message?token=AppT0ken"),
        NOTIFY_FORMAT="gotify",
    ) as gateway:
        _, token = await add_instance(gateway, "Maison Éloïse", clock)
        secret = await set_notify(session, gateway, token, receiver.url("/ntfy/backups-eloise-7f3k"), "ntfy")
        clock.advance(EVERY + 1)
        _, delivered = await look(gateway, clock)
        assert delivered.outcomes == {"sent": 2}
        clock.advance(HOUR)
        await Api(session, gateway.url, token).upload(b"back")
        assert (await look(gateway, clock))[1].outcomes == {"sent": 2}

    got = by_path(receiver.received)
    late, back = (ntfy_message(request) for request in got["/ntfy/backups-eloise-7f3k"])
    assert late["topic"] == "backups-eloise-7f3k"
    assert late["title"] == "Maison Éloïse has never backed up"
    assert "Maison Éloïse" in late["message"]
    assert (late["priority"], late["tags"]) == ("4", "warning")
    assert back["title"] == "Backups of Maison Éloïse are back"
    assert (back["priority"], back["tags"]) == ("3", "white_check_mark")
    request = got["/ntfy/backups-eloise-7f3k"][0]
    check_signature(request, secret)  # over the text body, as over any other
    assert request.headers["X-Offsite-Event"] == "late"

    to_operator = [gotify_message(request) for request in got["/message"]]
    assert [message["token"] for message in to_operator] == ["AppT0ken", "AppT0ken"]
    assert to_operator[0]["title"] == "Maison Éloïse has never backed up"
    assert to_operator[0]["priority"] == 8
    assert to_operator[1]["priority"] == 4
    assert "X-Offsite-Signature" not in got["/message"][0].headers  # no NOTIFY_SECRET: unsigned


async def test_the_operator_gets_the_email(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    database: GatewayDatabase,
) -> None:
    """aiosmtpd on 127.0.0.1, a process of its own: the e-mail arrives, once."""
    clock = Clock()
    with smtp_server(tmp_path) as smtp:
        async with watching_gateway(
            moto_server,
            moto_bucket,
            tmp_path,
            database,
            clock,
            NOTIFY_EMAIL="ops@example.com, oncall@example.com",
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(smtp.port),
            SMTP_SECURITY="none",
            SMTP_FROM="gateway@example.com",
        ) as gateway:
            instance_id, _ = await add_instance(gateway, "grandma", clock)
            clock.advance(EVERY + 60)
            _, delivered = await look(gateway, clock)
            assert delivered.outcomes == {"sent": 1}
            [message] = smtp.wait_for(1)
            assert (await look(gateway, clock))[0].queued == 0
    assert message["Subject"] == "grandma has never backed up"
    assert message["From"] == "gateway@example.com"
    assert message["To"] == "ops@example.com, oncall@example.com"
    assert message["X-Offsite-Event"] == "late"
    assert re.fullmatch(r"<[0-9a-f]{32}@offsite-gateway>", message["Message-ID"])
    text = message.get_payload(decode=True).decode()
    assert "grandma" in text
    assert instance_id in text
    assert "State: never" in text
    assert len(smtp.messages()) == 1


# --- where a webhook may go ------------------------------------------------------------------------------


async def test_private_addresses_are_refused_without_the_operators_permission(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    database: GatewayDatabase,
    receiver: WebhookReceiver,
    session: aiohttp.ClientSession,
) -> None:
    clock = Clock()
    async with watching_gateway(
        moto_server, moto_bucket, tmp_path, database, clock, receiver, NOTIFY_ALLOWED_NETWORKS=""
    ) as gateway:
        _, token = await add_instance(gateway, "home", clock)
        api = Api(session, gateway.url, token)
        port = receiver.port
        for url in (
            f"http://127.0.0.1:{port}/hook",
            f"http://localhost:{port}/hook",  # a name that resolves to loopback
            f"http://[::1]:{port}/hook",
            f"http://[::ffff:127.0.0.1]:{port}/hook",
            f"http://0.0.0.0:{port}/hook",
            "http://10.1.2.3/hook",
            "http://192.168.1.20:8080/hook",
            "http://172.16.0.1/hook",
            "http://100.64.0.1/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00::1]/hook",
            "http://[fe80::1]/hook",
            "http://[64:ff9b::a00:1]/hook",  # NAT64 of 10.0.0.1
            "http://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
        ):
            status, answer = await api.call("PUT", "/v1/instance/notify", {"url": url})
            assert (status, answer["error"]["code"]) == (400, "forbidden_address"), url
            assert "private, loopback or link-local" in answer["error"]["message"]
        assert (await api.ok("GET", "/v1/instance"))["watch"]["notify"] is None

        # The operator's own webhook on 127.0.0.1 is refused too: given up, never sent.
        clock.advance(EVERY + 1)
        _, delivered = await look(gateway, clock)
        assert delivered.outcomes == {"failed": 1}
        [notice] = await gateway.app[STORE].list_notices()
        assert (notice.status, notice.attempts) == ("failed", 1)
        assert notice.error is not None
        assert notice.error.startswith("forbidden_address")
        metrics = await metrics_text(session, gateway)
    assert receiver.received == []
    assert (
        'offsite_gateway_notice_failures_total{channel="webhook",reason="forbidden_address"} 1.0' in metrics
    )
    assert 'offsite_gateway_notices_given_up_total{channel="webhook"} 1.0' in metrics


async def test_the_connection_goes_to_the_address_checked_with_the_names_host(
    receiver: WebhookReceiver,
) -> None:
    """DNS is asked once; the connection goes to the allowed address it gave, with the URL's Host."""
    asked: list[str] = []
    answers = [["10.9.9.9", "127.0.0.1"], ["10.9.9.9"]]  # a second lookup would give only a forbidden one

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return answers[min(len(asked) - 1, 1)]

    sender = WebhookSender(LOOPBACK.notify_allowed_networks, 5, resolve)
    url = f"http://hooks.example:{receiver.port}/deliver?k=v"
    assert await sender.check(url) == ["127.0.0.1"]
    asked.clear()
    assert await sender.post(url, _rendered(b'{"a": 1}')) == 200
    assert asked == ["hooks.example"]
    [request] = receiver.received
    assert request.headers["Host"] == f"hooks.example:{receiver.port}"
    assert (request.path, request.query, request.body) == ("/deliver", "k=v", b'{"a": 1}')

    async def private_only(host: str, port: int) -> list[str]:
        return ["10.9.9.9", "fd00::9"]

    async def broken(host: str, port: int) -> list[str]:
        raise OSError(-2, "Name or service not known")

    with pytest.raises(DeliveryError) as refused:
        await WebhookSender(LOOPBACK.notify_allowed_networks, 5, private_only).post(url, _rendered())
    assert (refused.value.reason, refused.value.retry) == ("forbidden_address", False)
    with pytest.raises(DeliveryError) as unresolved:
        await WebhookSender(LOOPBACK.notify_allowed_networks, 5, broken).post(url, _rendered())
    assert (unresolved.value.reason, unresolved.value.retry) == ("dns", True)
    assert len(receiver.received) == 1


async def test_no_redirect_a_capped_answer_and_a_timeout(receiver: WebhookReceiver) -> None:
    sender = WebhookSender(LOOPBACK.notify_allowed_networks, 2)
    async with WebhookReceiver() as elsewhere:
        receiver.redirect = elsewhere.url("/stolen")
        with pytest.raises(DeliveryError) as redirected:
            await sender.post(receiver.url("/hook"), _rendered())
        assert (redirected.value.reason, redirected.value.retry) == ("redirect", False)
        assert elsewhere.received == []

    # An answer that would never end: 64 KiB of it are read, then the connection is closed.
    sent = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
        try:
            while True:
                writer.write(b"x" * 65536)
                sent += 65536
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):  # never answers; ends when the client hangs up
            pass
        writer.close()

    for handler in (endless, silent):
        port = free_port()
        server = await asyncio.start_server(handler, "127.0.0.1", port)
        try:
            started = time.monotonic()
            if handler is endless:
                assert await sender.post(f"http://127.0.0.1:{port}/hook", _rendered()) == 200
                assert time.monotonic() - started < 1.5
            else:
                with pytest.raises(DeliveryError) as late:
                    await sender.post(f"http://127.0.0.1:{port}/hook", _rendered())
                assert (late.value.reason, late.value.retry) == ("timeout", True)
                assert 1.5 < time.monotonic() - started < 4
        finally:
            server.close()
            await server.wait_closed()
    assert sent > 0


# --- a receiver in trouble --------------------------------------------------------------------------------


async def _latencies(api: Api, count: int) -> list[float]:
    found = []
    for _ in range(count):
        started = time.perf_counter()
        await api.ok("GET", "/v1/instance")
        found.append(time.perf_counter() - started)
    return found


@pytest.mark.parametrize("trouble", ["slow", "error"])
async def test_a_slow_or_failing_receiver_never_slows_the_api_and_is_retried(
    trouble: str,
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    database: GatewayDatabase,
    receiver: WebhookReceiver,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    houses = 24
    async with watching_gateway(
        moto_server, moto_bucket, tmp_path, database, clock, receiver, NOTIFY_TIMEOUT="1"
    ) as gateway:
        tokens = []
        for number in range(houses):
            _, token = await add_instance(gateway, f"home-{number}", clock)
            await set_notify(session, gateway, token, receiver.url(f"/house/{number}/topic-secret-{number}"))
            tokens.append(token)
        api = Api(session, gateway.url, tokens[0])
        await _latencies(api, 5)  # warm
        baseline = await _latencies(api, 60)

        receiver.delay = 3.0 if trouble == "slow" else 0.4  # slow: past the 1 s timeout
        receiver.answer = 200 if trouble == "slow" else 500
        clock.advance(EVERY + 1)
        assert (await gateway.app[WATCHDOG].run_once(clock())).queued == 2 * houses
        delivery = asyncio.create_task(gateway.app[OUTBOX].run_once(clock()))
        await receiver.wait_for(8)  # sends in flight
        during = await _latencies(api, 60)
        assert not delivery.done()  # measured while the outbox was sending
        report = await delivery
        assert report.outcomes == {"retry": 2 * houses}
        assert report.pending == 2 * houses

        before, meanwhile = statistics.median(baseline), statistics.median(during)
        print(
            f"\n{trouble} receiver: GET /v1/instance median {before * 1000:.2f} ms before, "
            f"{meanwhile * 1000:.2f} ms while {2 * houses} notifications failed ({meanwhile / before:.2f}x); "
            f"p90 {statistics.quantiles(baseline, n=10)[-1] * 1000:.2f} / "
            f"{statistics.quantiles(during, n=10)[-1] * 1000:.2f} ms"
        )
        assert meanwhile < max(2 * before, before + 0.010)
        assert max(during) < 0.5  # never a notification's wait (0.4 s to 1 s each)

        notices = await gateway.app[STORE].list_notices()
        reason = "timeout" if trouble == "slow" else "http_5xx"
        assert {(n.status, n.attempts) for n in notices} == {("pending", 1)}
        assert all(n.error is not None and n.error.startswith(reason) for n in notices)
        metrics = await metrics_text(session, gateway)
        assert (
            f'offsite_gateway_notice_failures_total{{channel="webhook",reason="{reason}"}} {2 * houses}.0'
            in metrics
        )
        assert f"offsite_gateway_notices_pending {2 * houses}.0" in metrics

        # Retried after the backoff (30 s), not before; then delivered, each once more.
        receiver.delay, receiver.answer = 0.0, 200
        tried = len(receiver.received)
        clock.advance(29)
        assert (await gateway.app[OUTBOX].run_once(clock())).outcomes == {}
        clock.advance(2)
        assert (await gateway.app[OUTBOX].run_once(clock())).outcomes == {"sent": 2 * houses}
        assert len(receiver.received) == tried + 2 * houses
        assert {(n.status, n.attempts) for n in await gateway.app[STORE].list_notices()} == {("sent", 2)}
        # A retry is the same notification: the same id (a receiver may drop a copy it already has).
        ids = [request.headers["X-Offsite-Notice"] for request in receiver.received]
        assert set(ids[:tried]) <= set(ids[tried:])
    # What the gateway logged (the receiver's own access log names the paths it was sent to, of course).
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("offsite_gateway"))
    assert "topic-secret" not in logged
    assert OPERATOR_SECRET not in logged
    assert "/operator" not in logged


async def test_given_up_after_the_attempts(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    database: GatewayDatabase,
    receiver: WebhookReceiver,
) -> None:
    clock = Clock()
    receiver.answer = 503
    async with watching_gateway(
        moto_server, moto_bucket, tmp_path, database, clock, receiver, NOTIFY_ATTEMPTS="3"
    ) as gateway:
        await add_instance(gateway, "home", clock)
        clock.advance(EVERY + 1)
        outcomes = [(await look(gateway, clock))[1].outcomes]
        for delay in (30, 60):
            clock.advance(delay)
            outcomes.append((await gateway.app[OUTBOX].run_once(clock())).outcomes)
        clock.advance(HOUR)
        outcomes.append((await gateway.app[OUTBOX].run_once(clock())).outcomes)
        [notice] = await gateway.app[STORE].list_notices()
    assert outcomes == [{"retry": 1}, {"retry": 1}, {"failed": 1}, {}]
    assert (notice.status, notice.attempts) == ("failed", 3)
    assert len(receiver.received) == 3
    assert re.match(r"^http_5xx: answered 503$", notice.error or "")
    assert json.loads(receiver.received[0].body)["event"] == "late"


class _DownStore:
    """A database that does not answer (a stand-in: an outage cannot be staged on the session's cluster)."""

    calls = 0

    async def claim_notices(self, now: float, lease_until: float, limit: int) -> list[object]:
        self.calls += 1
        raise StoreUnavailable("OSError: connection refused")


async def test_an_outbox_without_its_database_logs_a_line_now_and_then(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _DownStore()
    outbox = Outbox(load_settings({}, require_storage=False), store, Metrics(), poll=0.01)  # type: ignore[arg-type]
    outbox.start()
    try:
        async with asyncio.timeout(5):
            while store.calls < 20:
                await asyncio.sleep(0.01)
    finally:
        await outbox.stop()
    lines = [r for r in caplog.records if r.name == "offsite_gateway.outbox"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert "the database is unavailable" in lines[0].getMessage()
    assert lines[0].exc_info is None  # no traceback every few seconds
