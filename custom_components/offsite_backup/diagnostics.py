"""Diagnostics: configuration (token redacted), the gateway's limits, the schedule, the recent jobs, the last drill."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.core import HomeAssistant

from .const import CONF_TOKEN
from .models import OffsiteBackupConfigEntry

TO_REDACT = {CONF_TOKEN}


async def async_get_config_entry_diagnostics(
    hass: HomeAssistant, entry: OffsiteBackupConfigEntry
) -> dict[str, Any]:
    """What a bug report needs, without secrets (the token; part URLs are never kept)."""
    data = entry.runtime_data
    runner = data.runner
    instance = data.coordinator.data
    return {
        "entry": {
            "title": entry.title,
            "data": async_redact_data(dict(entry.data), TO_REDACT),
            "options": dict(entry.options),
        },
        "gateway": {
            "reachable": data.coordinator.last_update_success,
            "instance_id": instance.id if instance else None,
            "limits": asdict(instance.limits) if instance else None,
        },
        "schedule": {
            "enabled": data.scheduler.enabled,
            "window": [data.settings.window.start.isoformat(), data.settings.window.end.isoformat()],
            "plan": data.scheduler.plan.as_dict() if data.scheduler.plan else None,
        },
        "runner": {
            "status": runner.status.value,
            "current": runner.current.as_dict() if runner.current else None,
            "failures_in_row": runner.failures_in_row,
            "last_success": runner.last_success.isoformat() if runner.last_success else None,
            "upload_to_resume": runner.pending_summary(),
            "waiting": runner.waiting.as_dict() if runner.waiting else None,
            "retention": runner.retention.summary(instance.policy if instance else None),
        },
        "jobs": [job.as_dict() for job in runner.history],
        "restore_drill": {
            "schedule": data.drill.schedule.value,
            "running": data.drill.running,
            "last": data.drill.last.as_dict() if data.drill.last else None,
            "last_verified": data.drill.last_verified.as_dict() if data.drill.last_verified else None,
        },
    }
