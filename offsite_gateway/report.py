"""`offsite-gateway report`: every active instance's state, last success, usage and quota, for a daily cron mail.

One screen: a summary line, then one line per instance, the late ones first (the longest late first), then those
near their quota, then the rest by name; `--problems` keeps only the late and those near their quota, which is
what an operator of thousands of homes reads. `--json` gives everything, with the same fields. Usage is what the
database holds (completed backups, and those being deleted), without asking storage: the command needs only
the database settings.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .config import Settings
from .messages import duration_text, iso
from .policy import policy_for
from .store import LATE, NEVER, OK, PAUSED, WATCH_STATES, Activity, Instance
from .watchdog import NEAR_QUOTA, Expectation, expectation


@dataclass(frozen=True)
class Line:
    """One instance in the report."""

    instance: Instance
    expected: Expectation
    held: Activity
    quota: int | None
    now: float

    @property
    def late_for(self) -> float | None:
        if self.expected.state in (LATE, NEVER) and self.expected.due_at is not None:
            return self.now - self.expected.due_at
        return None

    @property
    def quota_used(self) -> float | None:
        return self.held.bytes / self.quota if self.quota else None

    @property
    def problem(self) -> bool:
        used = self.quota_used
        return self.late_for is not None or (used is not None and used >= NEAR_QUOTA)

    def order(self) -> tuple[int, float, str]:
        if self.late_for is not None:
            return 0, -self.late_for, self.instance.name
        used = self.quota_used
        if used is not None and used >= NEAR_QUOTA:
            return 1, -used, self.instance.name
        return 2, 0.0, self.instance.name

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.instance.id,
            "name": self.instance.name,
            "state": self.expected.state,
            "late_for": None if self.late_for is None else round(self.late_for),
            "expect_every": self.expected.expect_every,
            "last_success_at": iso(self.expected.last_success),
            "due_at": iso(self.expected.due_at),
            "bytes": self.held.bytes,
            "backups": self.held.backups,
            "quota_bytes": self.quota,
            "quota_used": None if self.quota_used is None else round(self.quota_used, 4),
            "owner_alerts": self.instance.notify is not None,
        }


def report_lines(
    settings: Settings, instances: list[Instance], activity: dict[str, Activity], now: float
) -> list[Line]:
    """The report's lines, in its order (the module's docstring)."""
    lines = [
        Line(
            instance,
            expectation(
                instance, activity.get(instance.id, Activity(None, 0, 0)).last_success, settings, now
            ),
            activity.get(instance.id, Activity(None, 0, 0)),
            policy_for(instance, settings).quota_bytes,
            now,
        )
        for instance in instances
        if instance.revoked_at is None
    ]
    return sorted(lines, key=Line.order)


def _summary(lines: list[Line]) -> dict[str, int]:
    states = Counter(line.expected.state for line in lines)
    return {
        "instances": len(lines),
        **{state: states[state] for state in WATCH_STATES},
        "near_quota": sum(
            1 for line in lines if line.quota_used is not None and line.quota_used >= NEAR_QUOTA
        ),
        "bytes": sum(line.held.bytes for line in lines),
        "backups": sum(line.held.backups for line in lines),
    }


def as_json(lines: list[Line], now: float, *, problems: bool = False) -> str:
    shown = [line for line in lines if line.problem or not problems]
    document = {
        "generated_at": iso(now),
        "summary": _summary(lines),
        "instances": [line.as_json() for line in shown],
    }
    return json.dumps(document, indent=2, ensure_ascii=False)


def human_size(size: int) -> str:
    """`12.0 GiB`, `512 B`: one decimal from KiB up."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # pragma: no cover - the loop returns


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M")


def _state(line: Line) -> str:
    late_for = line.late_for
    if late_for is None:
        return line.expected.state
    return f"{line.expected.state} {duration_text(late_for).replace(' ', '')}"


def as_text(lines: list[Line], now: float, *, problems: bool = False) -> str:
    summary = _summary(lines)
    head = (
        f"Offsite gateway, {_when(now)} UTC: {summary['instances']} instance(s): {summary[OK]} ok, "
        f"{summary[LATE]} late, {summary[NEVER]} never backed up, {summary[PAUSED]} paused; "
        f"{summary['near_quota']} near their quota; {human_size(summary['bytes'])} in {summary['backups']} "
        "backup(s)."
    )
    shown = [line for line in lines if line.problem or not problems]
    if not shown:
        return head + ("\nNothing late, nothing near its quota." if problems else "")
    rows = [("STATE", "NAME", "LAST SUCCESS", "DUE BY", "USED", "QUOTA")]
    for line in shown:
        used = line.quota_used
        quota = "-" if line.quota is None else f"{human_size(line.quota)} ({used:.0%})"
        rows.append(
            (
                _state(line),
                line.instance.name if line.instance.name.isprintable() else repr(line.instance.name),
                _when(line.expected.last_success),
                _when(line.expected.due_at),
                human_size(line.held.bytes),
                quota,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    table = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join([head, "", *table])
