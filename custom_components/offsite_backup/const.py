"""Constants for the Offsite Backup integration."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import time, timedelta
from enum import StrEnum
from typing import Final

from homeassistant.util.hass_dict import HassKey

DOMAIN: Final = "offsite_backup"
LOGGER = logging.getLogger(__package__)

# The backup platform's listeners, told when a location comes or goes (backup.py adds them, __init__.py calls them).
DATA_BACKUP_AGENT_LISTENERS: HassKey[list[Callable[[], None]]] = HassKey(f"{DOMAIN}.backup_agent_listeners")

CONF_URL: Final = "url"
CONF_TOKEN: Final = "token"  # noqa: S105 - the name of a field, not a secret

# Options (all set in the UI, Configure on the integration's card).
CONF_NIGHTLY: Final = "nightly"
CONF_WINDOW_START: Final = "window_start"
CONF_WINDOW_END: Final = "window_end"
CONF_PARTS_IN_FLIGHT: Final = "parts_in_flight"
CONF_BANDWIDTH_LIMIT: Final = "bandwidth_limit"  # KiB/s; 0 or absent: unlimited
CONF_INCLUDE_DATABASE: Final = "include_database"
CONF_FAILURES_BEFORE_REPAIR: Final = "failures_before_repair"
CONF_STALE_AFTER: Final = "stale_after"  # hours
CONF_ALLOW_UNENCRYPTED: Final = "allow_unencrypted"
CONF_KEEP_LOCAL: Final = "keep_local"
CONF_CONTENTS: Final = "contents"  # what a backup holds: one of CONTENTS_CHOICES
CONF_ADDONS: Final = "addons"  # with contents "custom" (Supervisor only): the add-ons' slugs
CONF_FOLDERS: Final = "folders"  # with contents "custom" (Supervisor only): share, ssl, media, addons/local
CONTENTS_FULL: Final = (
    "full"  # Home Assistant, its database (option), and on a Supervisor every add-on and folder
)
CONTENTS_AUTOMATIC: Final = (
    "automatic"  # what Home Assistant's automatic backups hold (Settings > System > Backups)
)
CONTENTS_CUSTOM: Final = "custom"  # Home Assistant, its database (option), the add-ons and folders chosen
CONTENTS_CHOICES: Final = (CONTENTS_FULL, CONTENTS_AUTOMATIC, CONTENTS_CUSTOM)
CONF_RESTORE_DRILL: Final = "restore_drill"
# "Alert me from outside if backups stop": the gateway's watchdog tells this URL (an ntfy topic, say).
CONF_OUTSIDE_ALERTS: Final = "outside_alerts"
CONF_NOTIFY_URL: Final = (
    "notify_url"  # its path and query may be secret: never logged, redacted in diagnostics
)
CONF_NOTIFY_FORMAT: Final = "notify_format"
NOTIFY_FORMATS: Final = ("ntfy", "gotify", "json")
DEFAULT_NOTIFY_FORMAT: Final = "ntfy"

DEFAULT_NIGHTLY: Final = True
DEFAULT_WINDOW_START: Final = time(0, 0)
DEFAULT_WINDOW_END: Final = time(2, 0)
DEFAULT_PARTS_IN_FLIGHT: Final = 2
MIN_PARTS_IN_FLIGHT: Final = 1
MAX_PARTS_IN_FLIGHT: Final = 8
DEFAULT_INCLUDE_DATABASE: Final = True
DEFAULT_FAILURES_BEFORE_REPAIR: Final = 2
DEFAULT_STALE_AFTER: Final = 36
DEFAULT_ALLOW_UNENCRYPTED: Final = False
DEFAULT_KEEP_LOCAL: Final = False
DEFAULT_CONTENTS: Final = CONTENTS_FULL
MAX_FAILURES_BEFORE_REPAIR: Final = 30
MAX_STALE_AFTER: Final = 24 * 31  # hours

GATEWAY_POLL_INTERVAL: Final = timedelta(minutes=5)
BUSY_RETRY_DELAY: Final = timedelta(minutes=10)
# Transient failures (network, timeouts, 5xx, 429, 408, the gateway or storage unreachable) are retried until a
# deadline: a nightly backup's is the end of its window plus RETRY_GRACE; a backup started by hand (the button,
# the action, Settings > System > Backups) gets RETRY_MANUAL from its start. A failure that begins later still
# gets the engine's patience (UploadOptions.patience, 10 minutes).
RETRY_GRACE: Final = timedelta(hours=1)
RETRY_MANUAL: Final = timedelta(hours=1)
HISTORY_SIZE: Final = 30
# A stored time (the last success, the start of the history) further ahead than now plus CLOCK_MARGIN was
# recorded while the clock was ahead: it is set aside with a warning, checked at setup and every CLOCK_CHECK_INTERVAL.
CLOCK_MARGIN: Final = timedelta(days=1)
CLOCK_CHECK_INTERVAL: Final = timedelta(hours=1)
# After Home Assistant stopped while creating a backup, what it left on this machine is looked for this often.
LEFTOVER_CHECK_INTERVAL: Final = timedelta(minutes=10)

# The entry's stores in Home Assistant's .storage: offsite_backup.<entry id>.<name>.
STORE_JOBS: Final = "jobs"
STORE_SCHEDULE: Final = "schedule"
STORE_DRILL: Final = "drill"
STORES: Final = (STORE_JOBS, STORE_SCHEDULE, STORE_DRILL)


def store_key(entry_id: str, name: str) -> str:
    """The key of one of an entry's stores."""
    return f"{DOMAIN}.{entry_id}.{name}"


EVENT_SUCCEEDED: Final = "offsite_backup_succeeded"
EVENT_FAILED: Final = "offsite_backup_failed"
EVENT_WAITING: Final = "offsite_backup_waiting"
EVENT_DRILL_SUCCEEDED: Final = "offsite_backup_drill_succeeded"
EVENT_DRILL_FAILED: Final = "offsite_backup_drill_failed"

SERVICE_CREATE_BACKUP: Final = "create_backup"
SERVICE_CANCEL_BACKUP: Final = "cancel_backup"
SERVICE_VERIFY_BACKUP: Final = "verify_backup"
ATTR_CONFIG_ENTRY_ID: Final = "config_entry_id"
ATTR_BACKUP_ID: Final = "backup_id"

ISSUE_BACKUP_FAILING: Final = "backup_failing"
ISSUE_DRILL_FAILED: Final = "drill_failed"
ISSUE_QUOTA_EXCEEDED: Final = "quota_exceeded"


class JobStatus(StrEnum):
    """What the integration is doing, or how its last job ended."""

    IDLE = "idle"
    CREATING = "creating"
    UPLOADING = "uploading"
    WAITING = "waiting"  # for a transient failure to pass (or Home Assistant's busy backup manager)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The runner's refusal by the owner's own policy (allow_unencrypted off): logged as a warning, not an error.
UNENCRYPTED_REFUSED: Final = (
    "Refusing to send an unencrypted backup off-site. Set this location to encrypted in Settings > System > "
    "Backups (Home Assistant then encrypts it with its backup key), or allow unencrypted backups in the "
    "integration's options"
)


class JobTrigger(StrEnum):
    """Why a job ran."""

    SCHEDULE = "schedule"
    MANUAL = "manual"  # the button or the create_backup action
    HOME_ASSISTANT = "home_assistant"  # a backup made from Settings > System > Backups to this location


class DrillSchedule(StrEnum):
    """When the restore drill runs (option "Restore drill"): after that night's backup, inside the window."""

    OFF = "off"
    WEEKLY = "weekly"
    AFTER_EVERY_BACKUP = "after_every_backup"


DEFAULT_RESTORE_DRILL: Final = DrillSchedule.WEEKLY


class DrillStatus(StrEnum):
    """The status sensor's states for a restore drill (beside :class:`JobStatus`)."""

    VERIFYING = "verifying"
    VERIFIED = "verified"
    VERIFY_FAILED = "verify_failed"
