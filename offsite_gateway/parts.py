"""How a backup is cut into parts: one part size for the whole upload, every part that size but the last.

Storage has rules of its own about parts, and the plan keeps to the strictest of them:
- S3: parts of 5 MiB to 5 GiB (the last may be smaller), at most 10,000 of them;
- Cloudflare R2 and Mega S4: every part but the last of the same size (CompleteMultipartUpload refuses otherwise);
- Scaleway: at most 1,000 parts (`OFFSITE_GATEWAY_MAX_PARTS=1000`).
The configured part size (`PART_SIZE`) is used while a backup fits in `MAX_PARTS` parts of it; a bigger backup gets
a bigger part size, rounded up to a whole MiB, kept for that upload (its row holds it, and each part's URL signs
its exact length). A backup that would need parts over S3's 5 GiB cannot be uploaded: the settings refuse a
`MAX_BACKUP_BYTES` that allows one (config.py), and `plan_parts` raises `TooLarge` for it.
"""

from __future__ import annotations

import math

from .config import MIB, S3_MAX_PART_SIZE, S3_MAX_PARTS


class TooLarge(ValueError):
    """The backup does not fit in `max_parts` parts of at most S3's largest part size."""


def plan_parts(size: int, configured_part_size: int, max_parts: int = S3_MAX_PARTS) -> tuple[int, int]:
    """(part_size, part_count) of a backup of `size` bytes: `configured_part_size`, or more (a whole MiB) so that
    there are at most `max_parts` parts. TooLarge if that would take parts of more than 5 GiB."""
    part_size = configured_part_size
    if math.ceil(size / part_size) > max_parts:
        part_size = math.ceil(size / max_parts / MIB) * MIB
    if part_size > S3_MAX_PART_SIZE:
        raise TooLarge(
            f"{size} bytes do not fit in {max_parts} parts of at most {S3_MAX_PART_SIZE // MIB} MiB "
            "(S3's largest part)"
        )
    return part_size, max(1, math.ceil(size / part_size))


def largest_backup(max_parts: int) -> int:
    """The largest backup `max_parts` parts can hold (each at most S3's 5 GiB)."""
    return max_parts * S3_MAX_PART_SIZE
