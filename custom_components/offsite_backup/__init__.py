"""The Offsite Backup integration: nightly off-site backups through a signing gateway.

Thin glue: the engine (``engine/``: the gateway client, the upload, the drill's checks, the window math) knows
nothing of Home Assistant; this module builds the services over it for a config entry, and wires them together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from homeassistant.const import EVENT_HOMEASSISTANT_STOP, Platform
from homeassistant.core import Event, HomeAssistant, callback
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers import instance_id
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.event import async_track_time_interval
from homeassistant.helpers.start import async_at_started
from homeassistant.helpers.storage import Store
from homeassistant.helpers.typing import ConfigType
from homeassistant.util import dt as dt_util

from .backup import OffsiteBackupAgent, agent_id_for
from .const import (
    CLOCK_CHECK_INTERVAL,
    CONF_TOKEN,
    CONF_URL,
    DATA_BACKUP_AGENT_LISTENERS,
    DOMAIN,
    EVENT_FAILED,
    EVENT_SUCCEEDED,
    LEFTOVER_CHECK_INTERVAL,
    LOGGER,
    STORES,
    JobTrigger,
    store_key,
)
from .coordinator import GatewayCoordinator
from .drill_runner import DrillStopped, RestoreDrill
from .engine.api import GatewayClient, GatewayError
from .engine.outside_alerts import sync as sync_outside_alerts
from .engine.privacy import MetadataPrivacy
from .engine.uploader import UploadOptions
from .models import OffsiteBackupConfigEntry, OffsiteBackupData
from .repair_issues import clear_all
from .runner import BackupRunner, JobError, RunnerOptions
from .scheduler import NightlyScheduler
from .services import async_setup_services
from .settings import Settings

PLATFORMS: list[Platform] = [Platform.BINARY_SENSOR, Platform.BUTTON, Platform.SENSOR]

CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Register the integration's actions (they check the entry they are given)."""
    async_setup_services(hass)
    return True


async def _keep_outside_alerts(
    hass: HomeAssistant,
    entry: OffsiteBackupConfigEntry,
    coordinator: GatewayCoordinator,
    client: GatewayClient,
    settings: Settings,
) -> None:
    """ "Alert me from outside": the gateway holds the URL the options name (it may have lost it). Checked once
    per setup, as soon as the gateway answers: at setup, or at its first answer when it was away then."""
    done = False

    async def sync_once() -> None:
        nonlocal done
        if done or not coordinator.last_update_success or coordinator.data is None:
            return
        done = True
        try:
            if await sync_outside_alerts(
                client, coordinator.data, settings.outside_alerts, settings.notify_url, settings.notify_format
            ):
                LOGGER.info("%s: the gateway had lost the outside alerts' URL; it has it again", entry.title)
                await coordinator.async_refresh()
        except GatewayError as err:
            LOGGER.warning(
                "%s: cannot give the gateway the outside alerts' URL: %s", entry.title, err.message
            )

    if coordinator.last_update_success:
        await sync_once()
        return

    @callback
    def on_update() -> None:
        if not done and coordinator.last_update_success:
            entry.async_create_task(hass, sync_once(), f"{DOMAIN} outside alerts")

    entry.async_on_unload(coordinator.async_add_listener(on_update))


async def async_setup_entry(hass: HomeAssistant, entry: OffsiteBackupConfigEntry) -> bool:
    """Ask the gateway (reachable or not), then start the job runner and the nightly schedule."""
    client = GatewayClient(async_get_clientsession(hass), entry.data[CONF_URL], entry.data[CONF_TOKEN])
    coordinator = GatewayCoordinator(hass, entry, client)
    # Raises ConfigEntryAuthFailed (reauth) when the gateway refuses the token; an unreachable gateway does not
    # hold the entry back: what needs the gateway is unavailable until the next poll reaches it.
    await coordinator.async_first_contact()

    settings = Settings.from_options(dict(entry.options))
    await _keep_outside_alerts(hass, entry, coordinator, client, settings)
    assert entry.unique_id is not None
    privacy = MetadataPrivacy(await instance_id.async_get(hass), entry.unique_id)
    runner = BackupRunner(
        hass,
        entry,
        client,
        RunnerOptions(
            agent_id=agent_id_for(entry),
            contents=settings.contents,
            allow_unencrypted=settings.allow_unencrypted,
            failures_before_repair=settings.failures_before_repair,
            upload=UploadOptions(parallel=settings.parts_in_flight, bandwidth_limit=settings.bandwidth_limit),
            keep_local=settings.keep_local,
        ),
        privacy,
    )
    await runner.async_load()

    async def download(backup_id: str) -> AsyncIterator[bytes]:
        """The drill's download: through the backup location, as Home Assistant's own download does."""
        return await OffsiteBackupAgent(hass, entry).async_download_backup(backup_id)

    drill = RestoreDrill(
        hass, entry, client, runner, privacy, download=download, schedule=settings.restore_drill
    )
    await drill.async_load()

    @callback
    def start_nightly_job(window_end: datetime) -> None:
        entry.async_create_background_task(
            hass, _run_quietly(runner, window_end, drill), f"{DOMAIN} nightly backup", eager_start=True
        )

    scheduler = NightlyScheduler(
        hass,
        entry.entry_id,
        settings.window,
        enabled=settings.nightly,
        is_busy=lambda: runner.busy,
        start_job=start_nightly_job,
    )
    entry.runtime_data = OffsiteBackupData(
        client=client,
        coordinator=coordinator,
        runner=runner,
        scheduler=scheduler,
        settings=settings,
        privacy=privacy,
        drill=drill,
    )

    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    await scheduler.async_start()
    entry.async_on_unload(scheduler.async_stop)

    @callback
    def check_clock(_now: datetime) -> None:
        runner.check_clock(dt_util.utcnow())

    entry.async_on_unload(async_track_time_interval(hass, check_clock, CLOCK_CHECK_INTERVAL))

    @callback
    def remove_leftovers(_now: datetime) -> None:
        """What a stop left on this machine (the Supervisor may finish writing it after the restart)."""
        if runner.leftovers and not runner.busy:
            entry.async_create_background_task(
                hass, runner.async_remove_leftovers(), f"{DOMAIN} remove a backup left by a stop"
            )

    entry.async_on_unload(async_track_time_interval(hass, remove_leftovers, LEFTOVER_CHECK_INTERVAL))

    @callback
    def resume(_hass: HomeAssistant) -> None:
        entry.async_create_background_task(hass, runner.async_resume_interrupted(), f"{DOMAIN} resume upload")

    entry.async_on_unload(async_at_started(hass, resume))

    async def suspend_upload(_event: Event) -> None:
        await runner.async_shutdown()

    # async_listen, not async_listen_once: the entry may unload after the stop event, removing the listener.
    entry.async_on_unload(hass.bus.async_listen(EVENT_HOMEASSISTANT_STOP, suspend_upload))
    entry.async_on_unload(entry.add_update_listener(_async_reload))

    @callback
    def notify_backup_agent_listeners() -> None:
        for listener in hass.data.get(DATA_BACKUP_AGENT_LISTENERS, []):
            listener()

    entry.async_on_unload(entry.async_on_state_change(notify_backup_agent_listeners))

    @callback
    def refresh_usage(event: Event) -> None:
        """After each job of this entry, the gateway's usage report again (storage used, backups stored)."""
        if event.data.get("config_entry_id") == entry.entry_id:
            entry.async_create_background_task(
                hass, coordinator.async_refresh(), f"{DOMAIN} usage after a backup"
            )

    for event_type in (EVENT_SUCCEEDED, EVENT_FAILED):
        entry.async_on_unload(hass.bus.async_listen(event_type, refresh_usage))
    return True


async def _run_quietly(runner: BackupRunner, window_end: datetime, drill: RestoreDrill) -> None:
    """The nightly job, then (after a success) the restore drill the options ask for: their outcomes go to the
    sensors, events and Repairs, not to a caller."""
    try:
        await runner.async_run(JobTrigger.SCHEDULE, retry_until=window_end)
    except JobError:
        return  # already recorded and logged by the runner
    except Exception:
        LOGGER.exception("Unexpected error in the nightly backup")
        return
    try:
        await drill.async_after_nightly_backup(window_end)
    except DrillStopped:
        pass  # Home Assistant stops or the entry unloads: no outcome
    except Exception:
        LOGGER.exception("Unexpected error in the restore drill")


async def async_unload_entry(hass: HomeAssistant, entry: OffsiteBackupConfigEntry) -> bool:
    """Stop the schedule; an upload in progress is suspended, to resume at the next setup."""
    await entry.runtime_data.drill.async_stop()
    await entry.runtime_data.runner.async_shutdown()
    await entry.runtime_data.scheduler.async_flush()
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)


async def _async_reload(hass: HomeAssistant, entry: OffsiteBackupConfigEntry) -> None:
    """Apply changed options, once the backup in progress (if any) is done: a reload would interrupt it."""
    runner = entry.runtime_data.runner
    if runner.busy:
        LOGGER.info("Options changed during a backup: they apply when it ends")
        await runner.async_wait_idle()
    await hass.config_entries.async_reload(entry.entry_id)


async def async_remove_entry(hass: HomeAssistant, entry: OffsiteBackupConfigEntry) -> None:
    """Forget the entry's stored history and schedule, and its Repairs issues (they are kept across restarts)."""
    clear_all(hass, entry)
    for name in STORES:
        await Store[dict[str, object]](hass, 1, store_key(entry.entry_id, name)).async_remove()
