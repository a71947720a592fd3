"""What differs between the Home Assistant versions we support (2025.4.4 to the current release), in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeassistant.components import backup
from homeassistant.components.backup.const import DATA_MANAGER
from homeassistant.core import HomeAssistant

if TYPE_CHECKING:
    import probatio as vol
    from homeassistant.components.backup.manager import BackupManager
else:
    try:  # Home Assistant's schema library in 2026.x: voluptuous's API, maintained under a new name
        import probatio as vol
    except ImportError:  # earlier versions: voluptuous itself
        import voluptuous as vol

__all__ = ["backup_manager", "failed_parts", "vol"]


def backup_manager(hass: HomeAssistant) -> BackupManager:
    """Home Assistant's backup manager: from its public accessor where it exists (not in 2025.4), else hass.data."""
    get_manager = getattr(backup, "async_get_manager", None)
    if get_manager is not None:
        manager: BackupManager = get_manager(hass)
        return manager
    return hass.data[DATA_MANAGER]


def failed_parts(manager: BackupManager, backup_id: str) -> tuple[list[str], list[str]]:
    """The add-ons (names) and folders Home Assistant could not put in a backup it made (2025.5+ records them)."""
    known = manager.known_backups.get(backup_id)
    addons = getattr(known, "failed_addons", None) or []
    folders = getattr(known, "failed_folders", None) or []
    return [addon.name or addon.slug for addon in addons], [str(folder) for folder in folders]
