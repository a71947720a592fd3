"""Diagnostics: configuration (token redacted, the outside alerts' URL without its path and query), the gateway's
limits and view of the instance, the schedule, the recent jobs, the last drill."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.core import HomeAssistant

from .const import CONF_NOTIFY_URL, CONF_TOKEN
from .engine.api import Watch, redact_notify_url
from .models import OffsiteBackupConfigEntry

TO_REDACT = {CONF_TOKEN}


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options, the notify URL without its path and query (an ntfy topic is a password)."""
    shown = dict(options)
    if isinstance(shown.get(CONF_NOTIFY_URL), str):
        shown[CONF_NOTIFY_URL] = redact_notify_url(shown[CONF_NOTIFY_URL])
    return shown


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
            "options": _options(entry.options),
        },
        "gateway": {
            "reachable": data.coordinator.last_update_success,
            "instance_id": instance.id if instance else None,
            "limits": asdict(instance.limits) if instance else None,
            "watch": _watch(instance.watch) if instance and instance.watch else None,
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


def _watch(watch: Watch) -> dict[str, Any]:
    """The gateway's view of the instance (its notify URL already without its path and query)."""
    return {
        "state": watch.state,
        "expect_every": watch.expect_every,
        "last_success_at": watch.last_success_at.isoformat() if watch.last_success_at else None,
        "due_at": watch.due_at.isoformat() if watch.due_at else None,
        "notify": asdict(watch.notify) if watch.notify else None,
        "operator_alerts": watch.operator_alerts,
    }
