"""An outage inside the window does not cost the night: storage or the gateway away for minutes, waited out.

Home Assistant's clock is the freezer's and moves only when the test moves it, so outages of minutes and hours pass
in seconds of real time: each test prints the simulated and the real time it took and the parts sent again.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun.api import FrozenDateTimeFactory
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.core import Event, HomeAssistant
from homeassistant.helpers import issue_registry as ir
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_capture_events

from custom_components.offsite_backup.const import (
    CONF_RESTORE_DRILL,
    CONF_TOKEN,
    CONF_URL,
    DOMAIN,
    EVENT_FAILED,
    EVENT_SUCCEEDED,
    EVENT_WAITING,
    ISSUE_BACKUP_FAILING,
    JobStatus,
)
from tests.engine.proxy import FaultProxy, Outage, gate, status
from tests.helpers.servers import S3Server
from tests.integration.clock import real_time, ride_out, tonight, until
from tests.integration.common import backup_now, multipart_uploads, objects, state
from tests.integration.gateway_process import Gateway, add_instance

NOON = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MIB = 1024 * 1024


def _now() -> float:
    return dt_util.utcnow().timestamp()


def _report(what: str, simulated: timedelta, real_started: float, **figures: object) -> None:
    extra = "".join(f", {key} {value}" for key, value in figures.items())
    print(
        f"\n{what}: simulated {simulated.total_seconds():.0f} s, real {real_time() - real_started:.1f} s"
        f"{extra}"
    )


def _no_timeout_runs_out(entry: MockConfigEntry) -> None:
    """The test moves the clock by minutes at a time; a part's PUT in flight meanwhile must not run out its
    timeout (in a real outage, time does not jump while a request is under way)."""
    runner = entry.runtime_data.runner
    runner.options = replace(runner.options, upload=replace(runner.options.upload, timeout_base=10**7))


def _resent(proxy: FaultProxy) -> int:
    """Parts storage acknowledged more than once."""
    return sum(count - 1 for count in proxy.stored.values() if count > 1)


@asynccontextmanager
async def _entry_on_a_gateway_process(
    hass: HomeAssistant, s3: S3Server, bucket: str, path: Path
) -> AsyncIterator[tuple[MockConfigEntry, FaultProxy, Gateway]]:
    """An entry on the gateway as a process (its own clock: the freezer moves only Home Assistant's), whose part
    URLs go through a fault proxy in front of ``s3``; no restore drill, no request timeout run out by the moves."""
    async with FaultProxy(s3.endpoint) as proxy:
        gateway = Gateway(
            s3, bucket, path, PART_SIZE=str(5 * MIB), S3_PUBLIC_ENDPOINT=proxy.url, SWEEP_INTERVAL="3600"
        )
        try:
            gateway.start()
            instance_id, token = await add_instance(gateway)
            entry = MockConfigEntry(
                domain=DOMAIN,
                title="home",
                unique_id=instance_id,
                data={CONF_URL: gateway.url, CONF_TOKEN: token},
                options={CONF_RESTORE_DRILL: "off"},
            )
            entry.add_to_hass(hass)
            assert await hass.config_entries.async_setup(entry.entry_id)
            await hass.async_block_till_done()
            _no_timeout_runs_out(entry)
            yield entry, proxy, gateway
            assert await hass.config_entries.async_unload(entry.entry_id)
        finally:
            gateway.stop()


@pytest.fixture
async def nightly(
    hass: HomeAssistant,
    backup_manager: object,
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    config_dir: Path,
    freezer: FrozenDateTimeFactory,
) -> AsyncIterator[tuple[MockConfigEntry, FaultProxy]]:
    """Noon on 1 June: an entry behind a fault proxy (5 MiB parts), a 22 MiB backup (5 parts), no drill."""
    freezer.move_to(NOON)
    (config_dir / "big.bin").write_bytes(os.urandom(22 * MIB))
    async with _entry_on_a_gateway_process(hass, moto_server, moto_bucket, tmp_path / "gateway") as made:
        entry, proxy, _ = made
        yield entry, proxy


async def test_storage_refusing_every_part_for_five_minutes_lands_that_night(
    hass: HomeAssistant,
    nightly: tuple[MockConfigEntry, FaultProxy],
    freezer: FrozenDateTimeFactory,
    moto_server: S3Server,
    moto_bucket: str,
) -> None:
    entry, proxy = nightly
    runner = entry.runtime_data.runner
    waiting = async_capture_events(hass, EVENT_WAITING)
    succeeded = async_capture_events(hass, EVENT_SUCCEEDED)
    outage = Outage(
        _now,
        300,
        status(503, "ServiceUnavailable", "Please try again"),
        covers=lambda part: part is not None and part >= 3,
    )
    proxy.outage = outage
    real_started = real_time()
    started, window_end = await tonight(hass, entry, freezer)

    await until(hass, lambda: runner.waiting is not None)
    # Waiting, and saying so: the status, its attributes, the last error, the event.
    assert state(hass, entry, "status") == "waiting"
    attributes = hass.states.get(f"sensor.{entry.title}_status").attributes  # type: ignore[union-attr]
    assert attributes["error"].startswith("storage did not take part")
    assert dt_util.parse_datetime(attributes["next_try"]) > dt_util.utcnow()
    assert dt_util.parse_datetime(attributes["retry_until"]) == window_end + timedelta(hours=1)
    last_error = state(hass, entry, "last_error")
    assert last_error.startswith("Waiting to try again at "), last_error
    assert "HTTP 503 ServiceUnavailable" in last_error
    (event,) = waiting
    assert event.data["trigger"] == "schedule"
    assert "HTTP 503 ServiceUnavailable" in event.data["error"]
    # Suspended, not aborted: storage still holds the parts it took, the local copy is still on disk.
    (held,) = multipart_uploads(moto_server, moto_bucket)
    assert held["UploadId"]
    local = hass.data[DATA_MANAGER].backup_agents["backup.local"]
    assert len(await local.async_list_backups()) == 1

    moves = await ride_out(hass, freezer, runner, lambda: not runner.busy, quiet=lambda: proxy.in_flight == 0)

    job = runner.history[0]
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert outage.began is not None
    assert dt_util.utcnow().timestamp() >= outage.began + 300, "it waited the outage out"
    assert dict(proxy.stored) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}, "the held parts were not sent again"
    assert proxy.puts[3] > 1
    assert len(succeeded) == 1
    assert len(waiting) == 1, "one event per outage, not per try"
    assert state(hass, entry, "status") == "succeeded"
    assert state(hass, entry, "last_error") == "none"
    assert len(objects(moto_server, moto_bucket)) == 1
    assert await local.async_list_backups() == [], "the local copy went once the job had its outcome"
    _report(
        "storage refusing parts 3+ for 5 min",
        dt_util.utcnow() - started,
        real_started,
        clock_moves=moves,
        refused=outage.refused,
        resent=_resent(proxy),
    )


async def test_the_gateway_down_for_three_minutes_mid_upload(
    hass: HomeAssistant,
    backup_manager: object,
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    config_dir: Path,
    freezer: FrozenDateTimeFactory,
) -> None:
    freezer.move_to(NOON)
    (config_dir / "big.bin").write_bytes(os.urandom(22 * MIB))
    async with _entry_on_a_gateway_process(hass, moto_server, moto_bucket, tmp_path / "gateway") as made:
        entry, proxy, gateway = made
        runner = entry.runtime_data.runner
        waiting = async_capture_events(hass, EVENT_WAITING)
        proxy.fail(3, gate())  # part 3 waits at the proxy while the gateway goes down
        real_started = real_time()
        started = dt_util.utcnow()
        action = hass.async_create_task(backup_now(hass, entry))
        await until(hass, lambda: proxy.arrived[3].is_set() and proxy.stored[1] == 1)

        await hass.async_add_executor_job(gateway.kill)
        down_at = dt_util.utcnow()
        proxy.open_gate()  # the parts whose URLs it holds go on; the next URLs need the gateway
        await until(hass, lambda: runner.waiting is not None)
        assert state(hass, entry, "status") == "waiting"
        moves = await ride_out(
            hass,
            freezer,
            runner,
            lambda: dt_util.utcnow() >= down_at + timedelta(minutes=3),
            quiet=lambda: proxy.in_flight == 0,
        )
        await hass.async_add_executor_job(gateway.start)  # back, three minutes later
        moves += await ride_out(hass, freezer, runner, action.done, quiet=lambda: proxy.in_flight == 0)

        backup_id = await action
        job = runner.history[0]
        assert job.status is JobStatus.SUCCEEDED
        assert job.backup_id == backup_id
        assert dict(proxy.stored) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}, "no part was sent twice"
        assert "Cannot reach the gateway" in waiting[0].data["error"]
        assert len(objects(moto_server, moto_bucket)) == 1
        _report(
            "gateway down 3 min mid-upload",
            dt_util.utcnow() - started,
            real_started,
            clock_moves=moves,
            resent=_resent(proxy),
        )


async def test_an_outage_past_the_deadline_fails_with_the_real_reason_and_a_repair(
    hass: HomeAssistant,
    nightly: tuple[MockConfigEntry, FaultProxy],
    freezer: FrozenDateTimeFactory,
    moto_server: S3Server,
    moto_bucket: str,
    issue_registry: ir.IssueRegistry,
) -> None:
    """Storage refuses every part but the first, for good: each night waits until the end of the window plus an
    hour, then fails saying what storage answered; the second night in a row raises the Repairs issue."""
    entry, proxy = nightly
    runner = entry.runtime_data.runner
    failed: list[Event[Any]] = async_capture_events(hass, EVENT_FAILED)
    proxy.outage = Outage(
        _now,
        10**9,
        status(503, "SlowDown", "Please reduce your request rate."),
        covers=lambda part: part is not None and part >= 2,
    )
    local = hass.data[DATA_MANAGER].backup_agents["backup.local"]
    issue_id = f"{ISSUE_BACKUP_FAILING}_{entry.entry_id}"
    for night in (1, 2):
        real_started = real_time()
        started, window_end = await tonight(hass, entry, freezer)
        moves = await ride_out(
            hass,
            freezer,
            runner,
            lambda: not runner.busy,
            quiet=lambda: proxy.in_flight == 0,
            real_seconds=300,
        )

        job = runner.history[0]
        assert job.status is JobStatus.FAILED
        error = job.error or ""
        assert "HTTP 503 SlowDown (Please reduce your request rate.)" in error, error
        assert "tries in" in error
        assert job.ended is not None
        deadline = window_end + timedelta(hours=1)
        assert deadline <= job.ended < deadline + timedelta(minutes=5), "given up at the deadline"
        assert failed[-1].data["error"] == error
        assert state(hass, entry, "status") == "failed"
        assert state(hass, entry, "last_error") == error[:255]
        assert multipart_uploads(moto_server, moto_bucket) == [], "aborted once it gave up"
        assert await local.async_list_backups() == [], "the local copy went with the outcome"
        issue = issue_registry.async_get_issue(DOMAIN, issue_id)
        if night == 1:
            assert issue is None, "one failed night is not yet an issue"
        else:
            assert issue is not None
            assert issue.translation_placeholders == {"title": "home", "failures": "2", "error": error}
        _report(
            f"night {night}: storage refusing for good",
            job.ended - started,
            real_started,
            clock_moves=moves,
            resent=_resent(proxy),
        )
        proxy.reset_counts()
    assert objects(moto_server, moto_bucket) == {}
