"""Which retention keeps the integration's backups, and applying Home Assistant's where the user set one for them.

Why the nightly backups are not Home Assistant's automatic backups: Home Assistant's retention of automatic
backups ("Backups to keep", 3 with the wizard's recommended settings) counts them across every location at once
unless a location has its own setting, and 2025.4 has no such setting at all. Marked automatic, each night's backup
(and its local copy, while it is sent) counted against Home Assistant's own local backups, which fell to 0 or 1,
and cut this location to that count, so the gateway's generations never existed. So the integration's backups are
made as Home Assistant's manual ones are (``with_automatic_settings`` false), marked in their metadata
(``extra_metadata[MARKER]``: the trigger), and:

- off-site, the gateway's policy keeps them (its operator's generations), unless the user set a retention for
  this location in Home Assistant's backup settings (2025.5 and later): then that setting applies to the nightly
  backups on it too, as Home Assistant would apply it to automatic ones (the newest N, none older than D days),
  on top of the gateway's, and the integration says so (log, the "Backups stored" sensor's ``retention``);
- kept on this machine ("Keep a local copy"), the nightly copies follow what Home Assistant keeps there (the
  local location's own setting, else "Backups to keep"), counted apart from Home Assistant's own backups; with
  nothing set there, they are all kept;
- backups made by hand (the button, the action) are left alone, like Home Assistant's manual ones.

The copy a restart resumes from is removed once the job has its outcome; being no automatic backup, it never
counts against Home Assistant's retention meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from homeassistant.components.backup import AgentBackup
from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util

from .compat import backup_manager
from .const import LOGGER, JobTrigger
from .engine.api import InstancePolicy

MARKER = "offsite_backup"
"""The key of ``extra_metadata`` that marks a backup this integration made; its value is the job's trigger."""
JOB_MARKER = "offsite_backup_job"
"""The key of ``extra_metadata`` holding the id of the job that made it (to find what a stop left behind)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """A retention as Home Assistant's settings give it: the newest ``copies``, none older than ``days``."""

    copies: int | None
    days: int | None

    @property
    def keeps_all(self) -> bool:
        """Whether it removes nothing."""
        return self.copies is None and self.days is None

    def describe(self) -> str:
        """``5 backups, 30 days``."""
        parts = []
        if self.copies is not None:
            parts.append(f"{self.copies} backup{'s' if self.copies != 1 else ''}")
        if self.days is not None:
            parts.append(f"{self.days} day{'s' if self.days != 1 else ''}")
        return ", ".join(parts) or "every backup"


def expired(backups: Sequence[AgentBackup], rule: Rule, now: datetime) -> list[AgentBackup]:
    """The backups ``rule`` removes: beyond the newest ``copies``, or older than ``days`` (by their date)."""
    newest_first = sorted(backups, key=_date, reverse=True)
    gone: list[AgentBackup] = []
    for index, backup in enumerate(newest_first):
        beyond_count = rule.copies is not None and index >= rule.copies
        too_old = rule.days is not None and _date(backup) + timedelta(days=rule.days) < now
        if beyond_count or too_old:
            gone.append(backup)
    return gone


def _date(backup: AgentBackup) -> datetime:
    parsed = dt_util.parse_datetime(backup.date)
    return dt_util.as_utc(parsed) if parsed is not None else datetime.min.replace(tzinfo=dt_util.UTC)


def made_by_us(backup: AgentBackup, trigger: JobTrigger) -> bool:
    """Whether the integration made ``backup`` for ``trigger``."""
    return backup.extra_metadata.get(MARKER) == trigger.value


def gateway_policy_text(policy: InstancePolicy | None) -> str | None:
    """The gateway's generations, for a person: ``newest 7, 7 daily, 4 weekly, 12 monthly``."""
    if policy is None:
        return None
    parts = [f"newest {policy.keep_last}"]
    for count, what in (
        (policy.keep_daily, "daily"),
        (policy.keep_weekly, "weekly"),
        (policy.keep_monthly, "monthly"),
    ):
        if count:
            parts.append(f"{count} {what}")
    return ", ".join(parts)


class OwnRetention:
    """Applies Home Assistant's retention settings to the integration's nightly backups where they apply."""

    def __init__(self, hass: HomeAssistant, agent_id: str) -> None:
        """For the backups of location ``agent_id``."""
        self._hass = hass
        self._agent_id = agent_id
        self._told: Rule | None = None

    def _agent_rule(self, agent_id: str) -> Rule | None:
        """The retention set for one location in Home Assistant's settings (2025.5+), if any."""
        config = backup_manager(self._hass).config.data.agents.get(agent_id)
        retention = getattr(config, "retention", None)
        if retention is None:
            return None
        return Rule(copies=retention.copies, days=retention.days)

    def offsite_rule(self) -> Rule | None:
        """Home Assistant's retention for this location, when the user set one; ``None``: the gateway's policy."""
        return self._agent_rule(self._agent_id)

    def local_rule(self, local_agent_id: str) -> Rule:
        """What Home Assistant keeps on this machine: the local location's own setting, else "Backups to keep"."""
        own = self._agent_rule(local_agent_id)
        if own is not None:
            return own
        retention = backup_manager(self._hass).config.data.retention
        return Rule(copies=retention.copies, days=retention.days)

    def summary(self, policy: InstancePolicy | None) -> str | None:
        """What keeps the backups on this location, for the "Backups stored" sensor."""
        rule = self.offsite_rule()
        gateway = gateway_policy_text(policy)
        if rule is None:
            return f"gateway: {gateway}" if gateway else None
        text = f"Home Assistant: {rule.describe()} (set for this location)"
        return f"{text}; gateway: {gateway}" if gateway else text

    async def async_apply(self, *, local_copies_at: str | None) -> None:
        """After a nightly backup: remove the nightly backups the retention settings that apply to them expire.

        Off-site only when the user set a retention for this location in Home Assistant; on this machine (the
        copies "Keep a local copy" keeps, in ``local_copies_at``) what Home Assistant keeps there. Failures are
        logged (a backup the gateway protects cannot be deleted yet); the next night tries again.
        """
        now = dt_util.utcnow()
        rule = self.offsite_rule()
        if rule is not None:
            if rule != self._told:
                LOGGER.info(
                    "Home Assistant's retention for this location (%s) applies to the nightly backups on it, on "
                    "top of the gateway's",
                    rule.describe(),
                )
                self._told = rule
            await self._expire(self._agent_id, rule, now)
        if local_copies_at is not None:
            await self._expire(local_copies_at, self.local_rule(local_copies_at), now)

    async def _expire(self, agent_id: str, rule: Rule, now: datetime) -> None:
        if rule.keeps_all:
            return
        manager = backup_manager(self._hass)
        agent = manager.backup_agents.get(agent_id)
        if agent is None:
            return
        try:
            listed: list[AgentBackup] = await agent.async_list_backups()
        except Exception as err:  # any location's failure: logged, tried the next night
            LOGGER.warning("Could not list the backups of %s to apply the retention: %s", agent_id, err)
            return
        ours = [backup for backup in listed if made_by_us(backup, JobTrigger.SCHEDULE)]
        for backup in expired(ours, rule, now):
            errors: dict[str, Any] = await manager.async_delete_backup(backup.backup_id, agent_ids=[agent_id])
            if errors:
                LOGGER.warning(
                    "Could not remove backup %s (%s) from %s as its retention asks: %s",
                    backup.name,
                    backup.backup_id,
                    agent_id,
                    errors.get(agent_id),
                )
            else:
                LOGGER.info(
                    "Removed backup %s from %s (retention: %s)", backup.name, agent_id, rule.describe()
                )
