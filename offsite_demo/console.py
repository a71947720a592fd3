"""What the demo prints: a line with the time since it started, an error with its remedy, the checks it made."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[1]
STARTED = time.monotonic()


def say(message: str, *, stream: TextIO | None = None) -> None:
    """One line on the console, with the time since the demo started."""
    print(f"[demo {elapsed():6.1f}s] {message}", file=stream or sys.stdout, flush=True)


def elapsed() -> float:
    """Seconds since the demo started."""
    return time.monotonic() - STARTED


def show(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def mib(size: object) -> str:
    """A size in MiB, one decimal ("?" when it is not a number of bytes)."""
    return f"{size / 1024 / 1024:.1f} MiB" if isinstance(size, int) else "?"


class DemoError(Exception):
    """A step failed: what happened, and what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        """Keep the hint apart from the message."""
        super().__init__(message)
        self.hint = hint

    def report(self) -> None:
        """The error and its remedy, on stderr."""
        say(f"ERROR: {self}", stream=sys.stderr)
        if self.hint:
            say(f"what to do: {self.hint}", stream=sys.stderr)


@dataclass
class Result:
    """What the demo checked."""

    checks: list[tuple[str, bool]] = field(default_factory=list)

    def check(self, what: str, ok: bool) -> bool:
        """Record and print one check."""
        self.checks.append((what, ok))
        say(f"{'OK  ' if ok else 'FAIL'} {what}")
        return ok

    @property
    def ok(self) -> bool:
        """Whether there were checks and all of them passed."""
        return bool(self.checks) and all(ok for _, ok in self.checks)

    def summary(self) -> None:
        """How many checks passed."""
        passed = sum(ok for _, ok in self.checks)
        say(f"{passed} of {len(self.checks)} checks passed" + ("" if self.ok else ": FAILED"))
