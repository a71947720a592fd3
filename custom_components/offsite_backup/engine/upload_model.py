"""What an upload is tuned with and what is persisted to resume it; S3's part limits."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MIN_PART_SIZE = 5 * 1024 * 1024
"""S3's minimum size of every part but the last."""
MAX_PARTS = 10_000
"""S3's maximum number of parts."""
SUSPEND = "offsite_backup.suspend"
"""Cancel message (``task.cancel(SUSPEND)``) that stops an upload without aborting it, to resume it later."""

_RANDOM = random.Random()  # noqa: S311 - backoff jitter, not cryptography


@dataclass(frozen=True, slots=True)
class UploadOptions:
    """Tuning of one upload. The defaults suit a home uplink."""

    parallel: int = 2
    """Parts in flight at once."""
    deadline: float | None = None
    """Until when transient failures (network, timeouts, 5xx, 429, 408, an unreachable gateway) are retried: a
    time of the upload's clock (``time.time`` unless another is given); ``None``: ``patience`` alone."""
    patience: float = 600.0
    """Seconds a transient failure is retried at least, even when it begins after the deadline."""
    max_tries: int = 6
    """Tries per part of what is not a transient failure but may pass: storage refusing the signed URL (403,
    signed again) and a part whose ETag is not its MD5 (corrupted on the way)."""
    retry_base: float = 1.0
    """First backoff ceiling in seconds; doubles with each try (full jitter: a uniform draw below it)."""
    retry_cap: float = 120.0
    """Longest backoff delay between two tries, in seconds."""
    retry_after_cap: float = 600.0
    """Longest ``Retry-After`` honoured, in seconds (storage's 429/503 and the gateway's 429)."""
    url_batch: int = 0
    """Part URLs asked for at once; 0 = ``2 * parallel`` (at least 2, at most 100)."""
    url_refresh: float = 0.5
    """A URL older than this fraction of its lifetime is signed again before use."""
    timeout_base: float = 60.0
    """Per-attempt timeout of a part: this many seconds…"""
    timeout_min_rate: float = 32 * 1024
    """…plus the part's size divided by this rate (bytes per second) — the slowest upload we accept."""
    bandwidth_limit: int | None = None
    """Bytes per second for all parts together; ``None`` = unlimited."""
    progress_interval: float = 1.0
    """Seconds between two progress reports…"""
    progress_step: float = 0.01
    """…unless at least this fraction of the total was acknowledged since the last one."""
    abort_timeout: float = 15.0
    """Seconds allowed for the abort call after a failure or a cancel."""

    def __post_init__(self) -> None:
        if self.parallel < 1 or self.max_tries < 1:
            raise ValueError("parallel and max_tries must be at least 1")
        if self.patience < 0:
            raise ValueError("patience must not be negative")
        if self.bandwidth_limit is not None and self.bandwidth_limit <= 0:
            raise ValueError("bandwidth_limit must be positive (or None)")
        if self.timeout_min_rate <= 0 or self.timeout_base <= 0:
            raise ValueError("timeouts must be positive")

    @property
    def batch(self) -> int:
        """Part URLs asked for at once."""
        return max(1, min(100, self.url_batch or max(2, 2 * self.parallel)))

    def part_timeout(self, nbytes: int) -> float:
        """Per-attempt timeout of a part of ``nbytes``."""
        rate = self.timeout_min_rate
        if self.bandwidth_limit is not None:
            rate = min(rate, self.bandwidth_limit / self.parallel)
        return self.timeout_base + nbytes / rate

    def backoff(self, tries: int) -> float:
        """Delay before try ``tries + 1``: full jitter below ``retry_base * 2^(tries-1)``, capped."""
        ceiling = min(self.retry_cap, self.retry_base * 2 ** min(tries - 1, 30))
        return _RANDOM.uniform(0, ceiling)


@dataclass(slots=True)
class UploadState:
    """What to persist to resume an upload: ``to_dict()`` is JSON-serialisable, ``from_dict()`` reads it back."""

    backup_id: str
    size: int
    part_size: int
    part_count: int
    url_ttl: int
    parts: dict[int, str] = field(default_factory=dict)
    """Acknowledged part number → ETag as storage returned it."""

    VERSION = 1

    def expected_size(self, part_number: int) -> int:
        """Size of part ``part_number``."""
        if part_number < self.part_count:
            return self.part_size
        return self.size - self.part_size * (self.part_count - 1)

    @property
    def acknowledged_bytes(self) -> int:
        """Bytes storage has acknowledged."""
        return sum(self.expected_size(number) for number in self.parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot."""
        return {
            "version": self.VERSION,
            "backup_id": self.backup_id,
            "size": self.size,
            "part_size": self.part_size,
            "part_count": self.part_count,
            "url_ttl": self.url_ttl,
            "parts": [[number, self.parts[number]] for number in sorted(self.parts)],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UploadState:
        """Read a snapshot back; raises ``ValueError`` when it is not one."""
        try:
            if data.get("version") != cls.VERSION:
                raise ValueError(f"unsupported upload state version {data.get('version')!r}")
            state = cls(
                backup_id=str(data["backup_id"]),
                size=int(data["size"]),
                part_size=int(data["part_size"]),
                part_count=int(data["part_count"]),
                url_ttl=int(data["url_ttl"]),
                parts={int(number): str(etag) for number, etag in data["parts"]},
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not an upload state: {err}") from err
        if (
            state.size < 1
            or state.part_size < 1
            or state.part_count != math.ceil(state.size / state.part_size)
            or any(not 1 <= number <= state.part_count for number in state.parts)
        ):
            raise ValueError("inconsistent upload state")
        return state
