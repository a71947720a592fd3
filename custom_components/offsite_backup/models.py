"""The runtime data of a loaded config entry (``entry.runtime_data``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from homeassistant.config_entries import ConfigEntry

from .coordinator import GatewayCoordinator
from .drill_runner import RestoreDrill
from .engine.api import GatewayClient
from .engine.privacy import MetadataPrivacy
from .listing import BackupListing
from .runner import BackupRunner
from .scheduler import NightlyScheduler
from .settings import Settings

type OffsiteBackupConfigEntry = ConfigEntry[OffsiteBackupData]


@dataclass(slots=True)
class OffsiteBackupData:
    """What a loaded entry holds (``entry.runtime_data``)."""

    client: GatewayClient
    coordinator: GatewayCoordinator
    runner: BackupRunner
    scheduler: NightlyScheduler
    settings: Settings
    privacy: MetadataPrivacy
    drill: RestoreDrill
    listing: BackupListing = field(default_factory=BackupListing)
