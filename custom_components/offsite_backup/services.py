"""The integration's actions: ``offsite_backup.create_backup``, ``cancel_backup`` and ``verify_backup``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant, ServiceCall, ServiceResponse, SupportsResponse, callback
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import config_validation as cv

from .compat import vol
from .const import (
    ATTR_BACKUP_ID,
    ATTR_CONFIG_ENTRY_ID,
    DOMAIN,
    SERVICE_CANCEL_BACKUP,
    SERVICE_CREATE_BACKUP,
    SERVICE_VERIFY_BACKUP,
    JobTrigger,
)
from .drill_runner import DrillRefused
from .runner import JobError

if TYPE_CHECKING:
    from .models import OffsiteBackupConfigEntry

SERVICE_SCHEMA = vol.Schema({vol.Required(ATTR_CONFIG_ENTRY_ID): cv.string})
VERIFY_SCHEMA = vol.Schema(
    {vol.Required(ATTR_CONFIG_ENTRY_ID): cv.string, vol.Optional(ATTR_BACKUP_ID): cv.string}
)


def _entry(hass: HomeAssistant, call: ServiceCall) -> OffsiteBackupConfigEntry:
    """The loaded config entry the call names; ServiceValidationError otherwise."""
    entry_id: str = call.data[ATTR_CONFIG_ENTRY_ID]
    entry = hass.config_entries.async_get_entry(entry_id)
    if entry is None or entry.domain != DOMAIN:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="entry_not_found",
            translation_placeholders={"config_entry_id": entry_id},
        )
    if entry.state is not ConfigEntryState.LOADED:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="entry_not_loaded",
            translation_placeholders={"title": entry.title},
        )
    return entry


async def _create_backup(call: ServiceCall) -> ServiceResponse:
    """Make a backup now and send it off-site; waits until it is there (or failed)."""
    runner = _entry(call.hass, call).runtime_data.runner
    if runner.busy:
        raise ServiceValidationError(translation_domain=DOMAIN, translation_key="already_running")
    try:
        job = await runner.async_run(JobTrigger.MANUAL)
    except JobError as err:
        raise HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="backup_failed",
            translation_placeholders={"error": str(err)},
        ) from err
    if not call.return_response:
        return None
    return {"backup_id": job.backup_id, "size": job.size}


async def _cancel_backup(call: ServiceCall) -> None:
    """Cancel the backup in progress."""
    runner = _entry(call.hass, call).runtime_data.runner
    if not await runner.async_cancel():
        raise ServiceValidationError(translation_domain=DOMAIN, translation_key="nothing_to_cancel")


async def _verify_backup(call: ServiceCall) -> ServiceResponse:
    """Run a restore drill now (the newest backup unless one is named); a failed check is ``ok: false``."""
    drill = _entry(call.hass, call).runtime_data.drill
    try:
        result = await drill.async_verify(call.data.get(ATTR_BACKUP_ID))
    except DrillRefused as err:
        raise ServiceValidationError(
            translation_domain=err.translation_domain,
            translation_key=err.translation_key,
            translation_placeholders=err.translation_placeholders,
        ) from err
    if not call.return_response:
        return None
    return {"backup_id": result.backup_id, "ok": result.ok, "error": result.error}


@callback
def async_setup_services(hass: HomeAssistant) -> None:
    """Register the actions (once, in ``async_setup``)."""
    hass.services.async_register(
        DOMAIN,
        SERVICE_CREATE_BACKUP,
        _create_backup,
        schema=SERVICE_SCHEMA,
        supports_response=SupportsResponse.OPTIONAL,
    )
    hass.services.async_register(DOMAIN, SERVICE_CANCEL_BACKUP, _cancel_backup, schema=SERVICE_SCHEMA)
    hass.services.async_register(
        DOMAIN,
        SERVICE_VERIFY_BACKUP,
        _verify_backup,
        schema=VERIFY_SCHEMA,
        supports_response=SupportsResponse.OPTIONAL,
    )
