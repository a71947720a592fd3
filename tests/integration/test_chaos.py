"""A chaos run: 30 backups in a row through Home Assistant's harness while everything on the way misbehaves.

The gateway is a real process (killed and restarted mid-upload), storage is moto behind the fault proxy (errors,
stalls, resets, expired URLs, corrupted bytes), the entry is reloaded mid-upload and one backup is cancelled. After
every backup: the runner is idle, the status and last-error sensors tell the truth, storage holds no multipart
upload, and the backup after any that did not succeed succeeds.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.offsite_backup.const import CONF_TOKEN, CONF_URL, DOMAIN, JobStatus
from custom_components.offsite_backup.engine.uploader import UploadOptions
from custom_components.offsite_backup.runner import CALLER_STOPPED
from tests.engine.proxy import Fault, FaultProxy, corrupt, expired, gate, reset, stall, status
from tests.helpers.servers import S3Server
from tests.integration.common import let_upload_progress_settle, multipart_uploads, objects, state
from tests.integration.gateway_process import Gateway, add_instance

CHAOS = UploadOptions(
    retry_base=0.05, retry_cap=0.5, retry_after_cap=0.5, timeout_base=2.0, timeout_min_rate=1 << 30
)


@dataclass(frozen=True)
class Step:
    """One backup of the run: what goes wrong, and how the backup must end."""

    name: str
    faults: dict[int, list[Fault]]
    outcome: JobStatus = JobStatus.SUCCEEDED


def _plan() -> list[Step]:
    transient = [
        Step("storage 500, then fine", {1: [status(500, "InternalError")]}),
        Step("storage 503 SlowDown with Retry-After", {2: [status(503, "SlowDown", retry_after="0")]}),
        Step("connection reset", {3: [reset()]}),
        Step("storage stalls past the part's timeout", {2: [stall(30)]}),
        Step("URL expired on the way (403)", {1: [expired()]}),
        Step("bytes corrupted on the way", {3: [corrupt()]}),
        Step("two faults on one part", {1: [reset(), status(500, "InternalError")]}),
    ]
    special = [
        Step("the gateway process killed and restarted mid-upload", {2: [gate()]}),
        Step("the entry reloaded mid-upload (resumed from its local copy)", {2: [gate()]}),
        Step("cancelled by the user mid-upload", {2: [gate()]}, JobStatus.CANCELLED),
        Step(
            "storage refuses a part for good", {1: [status(400, "InvalidArgument", "no")]}, JobStatus.FAILED
        ),
    ]
    clean = Step("nothing goes wrong", {})
    # A clean backup first; a special one after every third faulty-but-recovering one, so that the backup after
    # each cancel or failure is one that must succeed; clean ones to make 30.
    steps = [clean]
    specials = [*special, *special[:2]]
    for index, step in enumerate(transient * 3):
        steps.append(step)
        if index % 3 == 2 and specials:
            steps.append(specials.pop(0))
    return steps + [clean] * (30 - len(steps))


@pytest.fixture
def gateway_process(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path
) -> Iterator[Callable[[str], Gateway]]:
    started: list[Gateway] = []

    def start(public_endpoint: str) -> Gateway:
        gateway = Gateway(
            moto_server,
            moto_bucket,
            tmp_path / "gateway",
            PART_SIZE=str(5 * 1024 * 1024),
            S3_PUBLIC_ENDPOINT=public_endpoint,
            SWEEP_INTERVAL="3600",
        )
        (tmp_path / "gateway").mkdir(exist_ok=True)
        gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


async def _until(predicate: Callable[[], bool], seconds: float = 60) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.02)


@pytest.mark.timeout(900)
async def test_thirty_backups_through_chaos(
    hass: HomeAssistant,
    backup_manager: object,
    moto_server: S3Server,
    moto_bucket: str,
    config_dir: Path,
    gateway_process: Callable[[str], Gateway],
) -> None:
    (config_dir / "big.bin").write_bytes(os.urandom(11 * 1024 * 1024))  # three 5 MiB parts
    async with FaultProxy(moto_server.endpoint) as proxy:
        gateway = gateway_process(proxy.url)
        instance_id, token = await add_instance(gateway)
        entry = MockConfigEntry(
            domain=DOMAIN,
            title="home",
            unique_id=instance_id,
            data={CONF_URL: gateway.url, CONF_TOKEN: token},
        )
        entry.add_to_hass(hass)
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()

        plan = _plan()
        assert len(plan) == 30
        outcomes: Counter[str] = Counter()
        faults_met: Counter[str] = Counter()
        previous_ok = True
        for number, step in enumerate(plan, start=1):
            runner = entry.runtime_data.runner
            runner.options = replace(
                runner.options, upload=replace(CHAOS, parallel=runner.options.upload.parallel)
            )
            proxy.plan.clear()
            proxy.close_gate()
            proxy.reset_counts()
            for part, faults in step.faults.items():
                proxy.fail(part, *faults)
            where = f"backup {number} ({step.name})"

            call = hass.async_create_task(
                hass.services.async_call(
                    DOMAIN, "create_backup", {"config_entry_id": entry.entry_id}, blocking=True
                )
            )
            expect_error: str | None = {
                JobStatus.CANCELLED: "cancelled",
                JobStatus.FAILED: "InvalidArgument",
            }.get(step.outcome)
            if any(fault.kind == "gate" for faults in step.faults.values() for fault in faults):
                await _until(lambda: proxy.arrived[2].is_set() and proxy.stored[1] == 1)
                if "gateway" in step.name:
                    await hass.async_add_executor_job(gateway.kill_and_restart)
                elif "reloaded" in step.name:
                    # The action's backup is suspended by the unload, then resumed by the next setup.
                    expect_error = "suspended"
                    assert await hass.config_entries.async_reload(entry.entry_id)
                else:
                    await hass.services.async_call(
                        DOMAIN, "cancel_backup", {"config_entry_id": entry.entry_id}, blocking=True
                    )
                proxy.open_gate()
            if expect_error is None:
                await call
            else:
                with pytest.raises(HomeAssistantError, match=expect_error):
                    await call
            await hass.async_block_till_done(wait_background_tasks=True)  # a resume at setup
            await let_upload_progress_settle(hass)

            runner = entry.runtime_data.runner
            job = runner.history[0]
            assert not runner.busy, where
            assert job.status is step.outcome, f"{where}: {job.status} {job.error}"
            assert state(hass, entry, "status") == step.outcome.value, where
            last_error = state(hass, entry, "last_error")
            if step.outcome is JobStatus.FAILED:
                assert job.error, where
                assert last_error == job.error[:255], where
            elif step.outcome is JobStatus.SUCCEEDED:
                assert last_error == "none", f"{where}: a success clears the last error ({last_error})"
            else:
                assert job.error in (None, CALLER_STOPPED), where
            assert runner.pending_summary() is None, where
            assert multipart_uploads(moto_server, moto_bucket) == [], f"{where}: a multipart upload was left"
            if not previous_ok:
                assert step.outcome is JobStatus.SUCCEEDED, (
                    f"{where}: the backup after a failure must succeed"
                )
            previous_ok = job.status is JobStatus.SUCCEEDED
            outcomes[job.status.value] += 1
            faults_met.update(proxy.faults_met)

        stored = objects(moto_server, moto_bucket)
        print(
            f"\nchaos: {len(plan)} backups, outcomes {dict(outcomes)}, faults met {dict(faults_met)}, "
            f"gateway restarts {gateway.restarts}, objects in storage {len(stored)}"
        )
        assert outcomes == {"succeeded": 28, "cancelled": 1, "failed": 1}
        assert gateway.restarts == 2
        assert await hass.config_entries.async_unload(entry.entry_id)
