"""The entry's Repairs issues: one per kind (a translation key of ``issues`` in strings.json) and config entry.

They are persistent: Home Assistant keeps them across restarts, until the integration clears them (the next
success, the next good drill) or the entry is removed. At setup the integration also raises again, or clears,
what its stored history says (``OutcomeReporter.restore``, ``RestoreDrill.async_load``).

Not named repairs.py: Home Assistant loads that name as a platform of fixable issues, which these are not.
"""

from __future__ import annotations

from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import issue_registry as ir

from .const import DOMAIN, ISSUE_BACKUP_FAILING, ISSUE_DRILL_FAILED, ISSUE_QUOTA_EXCEEDED

ISSUES = (ISSUE_BACKUP_FAILING, ISSUE_QUOTA_EXCEEDED, ISSUE_DRILL_FAILED)


def issue_id(kind: str, entry: ConfigEntry[Any]) -> str:
    """The id of ``entry``'s issue of this kind."""
    return f"{kind}_{entry.entry_id}"


@callback
def raise_issue(hass: HomeAssistant, entry: ConfigEntry[Any], kind: str, **placeholders: str) -> None:
    """Show (or update) ``entry``'s issue of this kind: an error, not fixable, kept across restarts; its text is the
    translation of ``kind``, with the entry's title as ``{title}`` and ``placeholders``."""
    ir.async_create_issue(
        hass,
        DOMAIN,
        issue_id(kind, entry),
        is_fixable=False,
        is_persistent=True,
        severity=ir.IssueSeverity.ERROR,
        translation_key=kind,
        translation_placeholders={"title": entry.title, **placeholders},
    )


@callback
def clear_issue(hass: HomeAssistant, entry: ConfigEntry[Any], kind: str) -> None:
    """Remove ``entry``'s issue of this kind, if it is shown."""
    ir.async_delete_issue(hass, DOMAIN, issue_id(kind, entry))


@callback
def clear_all(hass: HomeAssistant, entry: ConfigEntry[Any]) -> None:
    """Remove every issue of ``entry`` (it is being removed)."""
    for kind in ISSUES:
        clear_issue(hass, entry, kind)
