"""A real stop: ``hass.async_stop()`` during an upload suspends it, and the next Home Assistant resumes it.

The upload is suspended by the stop listener, before Home Assistant cancels the tasks that remain: a change of that
ordering in Home Assistant shows here. The next start is a second Home Assistant of the harness on the same
configuration folder and the same stores (what the first saved at its final write), as a restart has it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from homeassistant import loader
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.components.button import DOMAIN as BUTTON
from homeassistant.components.button import SERVICE_PRESS
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import CoreState, HomeAssistant
from homeassistant.setup import async_setup_component
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_capture_events,
    async_test_home_assistant,
)

from custom_components.offsite_backup.const import (
    CONF_TOKEN,
    CONF_URL,
    DOMAIN,
    EVENT_FAILED,
    STORE_JOBS,
    store_key,
)
from tests.engine.proxy import FaultProxy, gate
from tests.helpers.gateway import RunningGateway, run_gateway
from tests.helpers.servers import S3Server
from tests.integration.common import (
    entity_id,
    let_upload_progress_settle,
    multipart_uploads,
    objects,
    sha256,
)
from tests.integration.conftest import BACKUP_PASSWORD


@asynccontextmanager
async def _home_assistant_again(config_dir: Path, entry: MockConfigEntry) -> AsyncIterator[MockConfigEntry]:
    """The next start: another Home Assistant on the same configuration and stores, with the same entry."""
    async with async_test_home_assistant(config_dir=str(config_dir)) as hass:
        hass.data.pop(loader.DATA_CUSTOM_COMPONENTS)  # custom integrations, as the first one had
        try:  # up to 2026.2, what the bootstrap does before any integration (conftest.py's backup_helper)
            from homeassistant.helpers.backup import async_initialize_backup  # noqa: PLC0415
        except ImportError:
            pass
        else:
            async_initialize_backup(hass)
        assert await async_setup_component(hass, "backup", {})
        await hass.async_block_till_done()
        hass.data[DATA_MANAGER].config.data.create_backup.password = BACKUP_PASSWORD
        again = MockConfigEntry(
            domain=DOMAIN,
            entry_id=entry.entry_id,
            title=entry.title,
            unique_id=entry.unique_id,
            data=dict(entry.data),
            options=dict(entry.options),
        )
        again.add_to_hass(hass)
        assert await hass.config_entries.async_setup(again.entry_id)
        await hass.async_block_till_done(wait_background_tasks=True)  # started: the resume runs
        yield again
        await let_upload_progress_settle(hass)
        assert await hass.config_entries.async_unload(again.entry_id)
        await hass.async_block_till_done()
        await hass.async_stop(force=True)  # as the harness's own instance is stopped


@pytest.fixture
async def proxied_gateway(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path
) -> AsyncIterator[tuple[RunningGateway, FaultProxy]]:
    async with (
        FaultProxy(moto_server.endpoint) as proxy,
        run_gateway(
            moto_server,
            moto_bucket,
            tmp_path / "gw",
            PART_SIZE=str(5 * 1024 * 1024),
            S3_PUBLIC_ENDPOINT=proxy.url,
        ) as gateway,
    ):
        yield gateway, proxy


def _press(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    hass.async_create_task(
        hass.services.async_call(
            BUTTON, SERVICE_PRESS, {"entity_id": entity_id(hass, entry, "backup_now")}, blocking=True
        )
    )


def _tonight(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    # What the nightly timer calls: the job as a task of the entry, with tonight's window end.
    entry.runtime_data.scheduler._start_job(dt_util.utcnow() + timedelta(hours=1))


@pytest.mark.parametrize(("trigger", "start"), [("manual", _press), ("schedule", _tonight)])
async def test_a_real_stop_during_an_upload_suspends_it_and_the_next_start_resumes_it(
    hass: HomeAssistant,
    backup_manager: Any,
    proxied_gateway: tuple[RunningGateway, FaultProxy],
    config_dir: Path,
    moto_server: S3Server,
    moto_bucket: str,
    hass_storage: dict[str, Any],
    trigger: str,
    start: Callable[[HomeAssistant, MockConfigEntry], None],
) -> None:
    gateway, proxy = proxied_gateway
    (config_dir / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))  # three 5 MiB parts
    instance_id, token = await gateway.add_instance("home")
    entry = MockConfigEntry(
        domain=DOMAIN, title="home", unique_id=instance_id, data={CONF_URL: gateway.url, CONF_TOKEN: token}
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    failed = async_capture_events(hass, EVENT_FAILED)
    runner = entry.runtime_data.runner
    proxy.fail(3, gate())  # part 3 waits: Home Assistant stops meanwhile
    start(hass, entry)
    async with asyncio.timeout(60):
        while not (
            proxy.arrived[3].is_set()
            and (pending := runner.pending_summary())
            and pending["parts_acknowledged"] == 2
        ):
            await asyncio.sleep(0.02)

    await hass.async_stop()
    await let_upload_progress_settle(hass)  # Home Assistant's progress timer of the upload it was told failed

    assert hass.state is CoreState.stopped
    assert runner.history == [], "suspended: no outcome recorded"
    assert failed == []
    stored = hass_storage[store_key(entry.entry_id, STORE_JOBS)]["data"]
    assert stored["pending"]["job"]["trigger"] == trigger
    assert len(stored["pending"]["state"]["parts"]) == 2, "the parts storage holds, saved at the final write"
    (held,) = multipart_uploads(moto_server, moto_bucket)
    assert held["UploadId"], "suspended, not aborted"
    local = backup_manager.backup_agents["backup.local"]
    (on_disk,) = await local.async_list_backups()
    archive = (
        backup_manager.local_backup_agents["backup.local"].get_backup_path(on_disk.backup_id).read_bytes()
    )
    proxy.open_gate()
    proxy.plan.clear()
    proxy.reset_counts()

    async with _home_assistant_again(config_dir, entry) as again:
        assert again.state is ConfigEntryState.LOADED
        history = again.runtime_data.runner.history
        assert [(job.trigger.value, job.status.value) for job in history] == [(trigger, "succeeded")], (
            history[0].error if history else None
        )
        assert dict(proxy.stored) == {3: 1}, "parts 1 and 2 were not sent again"
        (sent,) = objects(moto_server, moto_bucket).values()
        assert sha256(sent) == sha256(archive), "byte-identical to the copy it resumed from"
        manager = again.runtime_data.runner.hass.data[DATA_MANAGER]
        assert await manager.backup_agents["backup.local"].async_list_backups() == [], "that copy went after"
    assert multipart_uploads(moto_server, moto_bucket) == []
