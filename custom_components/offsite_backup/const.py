"""Constants for the Offsite Backup integration."""

from typing import Final

DOMAIN: Final = "offsite_backup"
