"""What the integration's backups hold, by install type and by the "Backup contents" option.

==============  ===================================================  =============================================
contents        Home Assistant OS / Supervised (a Supervisor)        Core / Container (no Supervisor)
==============  ===================================================  =============================================
full (default)  Home Assistant, its database (option), every add-on  Home Assistant and its database (option)
                and every folder (share, ssl, media, local add-ons)
automatic       what Home Assistant's automatic backups hold (Settings > System > Backups), on either
custom          Home Assistant, its database (option), the add-ons   as full
                and folders chosen in the options
==============  ===================================================  =============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeassistant.components.backup import Folder

from .const import CONTENTS_AUTOMATIC, CONTENTS_CUSTOM

FOLDERS: dict[str, Folder] = {
    "share": Folder.SHARE,
    "ssl": Folder.SSL,
    "media": Folder.MEDIA,
    "addons": Folder.ADDONS,  # addons/local: the add-ons made locally
}
"""The folders a backup can hold, by the keys the options store (translation keys cannot hold a slash)."""


@dataclass(frozen=True, slots=True)
class ContentsChoice:
    """The entry's options about contents."""

    contents: str
    include_database: bool
    addons: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Contents:
    """The arguments of Home Assistant's ``async_create_backup`` that say what a backup holds."""

    include_database: bool
    include_all_addons: bool = False
    include_addons: list[str] | None = None
    include_folders: list[Folder] | None = None
    include_homeassistant: bool = True

    def as_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``BackupManager.async_create_backup``."""
        return {
            "include_database": self.include_database,
            "include_all_addons": self.include_all_addons,
            "include_addons": self.include_addons,
            "include_folders": self.include_folders,
            "include_homeassistant": self.include_homeassistant,
        }


def resolve_contents(choice: ContentsChoice, *, supervised: bool, automatic: Any) -> Contents:
    """What a backup holds now: ``automatic`` is Home Assistant's ``config.data.create_backup``."""
    if choice.contents == CONTENTS_AUTOMATIC:
        return Contents(
            include_database=bool(automatic.include_database),
            include_all_addons=supervised and bool(automatic.include_all_addons),
            include_addons=list(automatic.include_addons or []) or None if supervised else None,
            include_folders=list(automatic.include_folders or []) or None if supervised else None,
        )
    if not supervised:
        return Contents(include_database=choice.include_database)
    if choice.contents == CONTENTS_CUSTOM:
        folders = [FOLDERS[key] for key in choice.folders if key in FOLDERS]
        return Contents(
            include_database=choice.include_database,
            include_addons=list(choice.addons) or None,
            include_folders=folders or None,
        )
    return Contents(
        include_database=choice.include_database, include_all_addons=True, include_folders=list(Folder)
    )
