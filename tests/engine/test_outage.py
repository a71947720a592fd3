"""Outages inside the window: transient failures are waited out until a deadline, without losing held parts.

Time is simulated (``VirtualClock``): minutes and hours of outage pass in a moment; the real time each test takes
is printed beside the simulated one.
"""

from __future__ import annotations

import time

import pytest

from custom_components.offsite_backup.engine.api import (
    GatewayClient,
    GatewayQuotaError,
    GatewayUnavailableError,
)
from custom_components.offsite_backup.engine.uploader import UploadError, UploadOptions, Waiting, upload
from offsite_gateway.app import STORE
from tests.engine.proxy import FaultProxy, Outage, reset, status
from tests.engine.rig import PART, Rig, Source, VirtualClock, make_data

OPTIONS = UploadOptions(parallel=2, timeout_base=20)


def _report(what: str, clock: VirtualClock, started: float, **figures: object) -> None:
    extra = "".join(f", {key} {value}" for key, value in figures.items())
    print(f"\n{what}: simulated {clock.elapsed:.0f} s, real {time.monotonic() - started:.2f} s{extra}")


async def test_storage_refusing_every_part_for_five_minutes_after_two_parts(rig: Rig) -> None:
    size = 5 * PART - 1000  # 5 parts
    source = Source(make_data(size, seed=31))
    clock = VirtualClock()
    outage = Outage(
        clock.now,
        300,
        status(503, "ServiceUnavailable", "Please try again"),
        covers=lambda part: part is not None and part >= 3,
    )
    rig.proxy.outage = outage
    waits: list[Waiting | None] = []
    started = time.monotonic()

    backup = await upload(
        client=rig.client,
        open_stream=source.open,
        size=size,
        name="b",
        metadata={},
        options=OPTIONS,
        clock=clock.clock,
        on_wait=waits.append,
    )

    assert await rig.downloaded_sha256(backup.id) == source.sha256
    assert dict(rig.proxy.stored) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}, "nothing storage held was sent again"
    assert outage.began is not None
    assert clock.now() >= outage.began + 300, "it waited the outage out"
    assert source.opens == 1, "the same upload went on: the stream was never read again"
    # Told while it waited: what failed, the next try, until when; and that it went on afterwards.
    shown = [wait for wait in waits if wait is not None]
    assert shown, waits
    assert waits[-1] is None
    assert "storage did not take part" in shown[0].error
    assert "HTTP 503 ServiceUnavailable" in shown[0].error
    for wait in shown:
        assert wait.since <= wait.next_try <= wait.give_up_at
    _report("storage outage", clock, started, refused=outage.refused, resent=0)


async def test_the_gateway_down_for_three_minutes_mid_upload(rig: Rig) -> None:
    size = (
        4 * PART
    )  # 4 parts; with one part in flight the create signs parts 1 and 2, the rest is asked later
    source = Source(make_data(size, seed=32))
    clock = VirtualClock()
    async with FaultProxy(rig.gateway.url) as front:  # the gateway as Home Assistant reaches it
        outage = Outage(
            clock.now, 180, reset(), covers=lambda part: part is None and rig.proxy.stored[2] >= 1
        )
        front.outage = outage
        client = GatewayClient(rig.http, front.url, rig.token)
        waits: list[Waiting | None] = []
        started = time.monotonic()
        backup = await upload(
            client=client,
            open_stream=source.open,
            size=size,
            name="b",
            metadata={},
            options=UploadOptions(parallel=1, timeout_base=20),
            clock=clock.clock,
            on_wait=waits.append,
        )
    assert await rig.downloaded_sha256(backup.id) == source.sha256
    assert dict(rig.proxy.stored) == {1: 1, 2: 1, 3: 1, 4: 1}, "no part was sent twice"
    assert outage.refused > 1
    assert outage.began is not None
    assert clock.now() >= outage.began + 180
    assert any(wait is not None and "Cannot reach the gateway" in wait.error for wait in waits), waits
    assert waits[-1] is None
    _report("gateway outage", clock, started, refused=outage.refused, resent=0)


async def test_an_outage_past_the_deadline_fails_with_the_real_reason(rig: Rig) -> None:
    size = 3 * PART - 10
    clock = VirtualClock()
    rig.proxy.outage = Outage(
        clock.now,
        10**9,
        status(503, "SlowDown", "Please reduce your request rate."),
        covers=lambda part: part is not None and part >= 2,
    )
    deadline = clock.now() + 3600
    started = time.monotonic()
    with pytest.raises(UploadError) as caught:
        await upload(
            client=rig.client,
            open_stream=Source(make_data(size, seed=33)).open,
            size=size,
            name="b",
            metadata={},
            options=UploadOptions(parallel=1, timeout_base=20, deadline=deadline),
            clock=clock.clock,
        )
    err = caught.value
    assert err.part_number == 2
    assert err.status == 503
    assert err.tries == rig.proxy.puts[2]
    assert "HTTP 503 SlowDown (Please reduce your request rate.)" in err.message
    assert f"after {err.tries} tries in 1 h 0 min" in err.message, err.message
    assert deadline <= clock.now() < deadline + 1, "it gave up at the deadline, not before nor much after"
    # Aborted: storage holds no multipart upload, the gateway marked the backup failed.
    assert rig.multipart_uploads() == []
    assert err.backup_id is not None
    assert (await rig.client.get_backup(err.backup_id)).status == "failed"
    _report("outage past the deadline", clock, started, tries=err.tries)


async def test_a_failure_that_begins_after_the_deadline_still_gets_the_patience(rig: Rig) -> None:
    size = 2 * PART
    source = Source(make_data(size, seed=34))
    clock = VirtualClock()
    outage = Outage(clock.now, 400, status(500, "InternalError"), covers=lambda part: part == 2)
    rig.proxy.outage = outage
    backup = await upload(
        client=rig.client,
        open_stream=source.open,
        size=size,
        name="b",
        metadata={},
        options=UploadOptions(parallel=1, timeout_base=20, deadline=clock.now() - 1, patience=600),
        clock=clock.clock,
    )
    assert backup.sha256 == source.sha256
    assert outage.refused > 1


async def test_retry_after_is_honoured_and_capped(rig: Rig) -> None:
    size = PART
    clock = VirtualClock()
    rig.proxy.fail(1, status(429, "SlowDown", retry_after="90"), status(503, "SlowDown", retry_after="3600"))
    await upload(
        client=rig.client,
        open_stream=Source(make_data(size, seed=35)).open,
        size=size,
        name="b",
        metadata={},
        options=UploadOptions(timeout_base=20, retry_after_cap=600, patience=3600),
        clock=clock.clock,
    )
    assert clock.sleeps == [90, 600], "Retry-After as asked, then capped"


async def test_backoff_is_jittered_and_capped(rig: Rig) -> None:
    size = PART
    clock = VirtualClock()
    rig.proxy.fail(1, *[status(500, "InternalError")] * 12)
    await upload(
        client=rig.client,
        open_stream=Source(make_data(size, seed=36)).open,
        size=size,
        name="b",
        metadata={},
        options=UploadOptions(timeout_base=20, retry_base=1, retry_cap=120, patience=3600),
        clock=clock.clock,
    )
    assert len(clock.sleeps) == 12
    assert all(0 <= delay <= 120 for delay in clock.sleeps)
    assert all(delay <= 2**index for index, delay in enumerate(clock.sleeps)), "full jitter below the ceiling"
    assert len(set(clock.sleeps)) == 12, "jittered: no two the same"


async def test_permanent_errors_end_it_at_once_even_before_the_deadline(rig: Rig) -> None:
    clock = VirtualClock()
    rig.proxy.fail(1, status(400, "InvalidArgument", "no"))
    options = UploadOptions(timeout_base=20, deadline=clock.now() + 7200)
    with pytest.raises(UploadError, match="will not pass by retrying"):
        await upload(
            client=rig.client,
            open_stream=Source(make_data(PART, seed=37)).open,
            size=PART,
            name="b",
            metadata={},
            options=options,
            clock=clock.clock,
        )
    assert clock.sleeps == []
    await rig.gateway.app[STORE].set_policy("home", {"quota_bytes": PART // 2})
    with pytest.raises(GatewayQuotaError):
        await upload(
            client=rig.client,
            open_stream=Source(make_data(PART, seed=38)).open,
            size=PART,
            name="b",
            metadata={},
            options=options,
            clock=clock.clock,
        )
    assert clock.sleeps == []


async def test_an_unreachable_gateway_is_given_up_at_the_deadline_saying_how_long(rig: Rig) -> None:
    clock = VirtualClock()
    async with FaultProxy(rig.gateway.url) as front:
        front.outage = lambda part: reset()
        client = GatewayClient(rig.http, front.url, rig.token)
        with pytest.raises(GatewayUnavailableError) as caught:
            await upload(
                client=client,
                open_stream=Source(make_data(PART, seed=39)).open,
                size=PART,
                name="b",
                metadata={},
                options=UploadOptions(deadline=clock.now() + 1800),
                clock=clock.clock,
            )
    assert "Cannot reach the gateway" in caught.value.message
    assert "times in 30 min)" in caught.value.message, caught.value.message
