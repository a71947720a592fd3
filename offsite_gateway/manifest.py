"""The manifest beside each archive: the bucket describes itself.

At complete, before the database records the backup, the gateway writes `<object key>.manifest.json` next to the
archive `<prefix><instance id>/<backup id>`: everything the backup's row holds but secrets (the upload id is not
kept: it means nothing once completed; no token or token hash), and the instance's id and name, with a format
version. `offsite-gateway reindex` rebuilds the database from them. Keys stay opaque: ids only, never a name.

    {"format": "offsite-backup-manifest", "version": 1,
     "instance": {"id": "…", "name": "home", "created_at": "2026-11-26T23:59:00.123456Z"},
     "backup": {"id": "…", "name": "…", "size": 123, "sha256": "…" | null, "part_size": …, "part_count": …,
                "created_at": "…", "completed_at": "…", "object_key": "<prefix><instance id>/<backup id>",
                "metadata": {…Home Assistant's description of the backup…}}}

Timestamps are ISO 8601 UTC with microseconds. A reader refuses a manifest of a newer format version, one whose
archive key is not the one beside it, and any field of the wrong type.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from .auth import validate_instance_name
from .store import COMPLETED, Backup, Instance

FORMAT = "offsite-backup-manifest"
VERSION = 1
SUFFIX = ".manifest.json"
MAX_SIZE = 256 * 1024  # metadata is at most 64 KiB; names 200 characters
MAX_BACKUP_NAME = 200

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """Not a manifest this gateway can read; the message says why."""


def manifest_key(object_key: str) -> str:
    """Where the manifest of the archive at `object_key` lives."""
    return object_key + SUFFIX


def is_manifest_key(key: str) -> bool:
    return key.endswith(SUFFIX)


def archive_key(key: str) -> str:
    """The archive a manifest describes."""
    return key.removesuffix(SUFFIX)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _timestamp(value: Any, field: str) -> float:
    if not isinstance(value, str):
        raise ManifestError(f"{field}: expected an ISO 8601 timestamp")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ManifestError(f"{field}: expected an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        raise ManifestError(f"{field}: the timestamp has no time zone")
    return moment.timestamp()


def build(backup: Backup, instance: Instance) -> bytes:
    """The manifest of a completed backup (its `completed_at` set)."""
    if backup.completed_at is None:
        raise ValueError("a manifest describes a completed backup")
    document = {
        "format": FORMAT,
        "version": VERSION,
        "instance": {"id": instance.id, "name": instance.name, "created_at": _iso(instance.created_at)},
        "backup": {
            "id": backup.id,
            "name": backup.name,
            "size": backup.size,
            "sha256": backup.sha256,
            "part_size": backup.part_size,
            "part_count": backup.part_count,
            "created_at": _iso(backup.created_at),
            "completed_at": _iso(backup.completed_at),
            "object_key": backup.object_key,
            "metadata": backup.metadata,
        },
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ManifestError(f"{where}.{name}: missing or of the wrong type")
    return value


def _positive(data: dict[str, Any], name: str, where: str) -> int:
    value: int = _field(data, name, int, where)
    if value < 1:
        raise ManifestError(f"{where}.{name}: must be at least 1")
    return value


def parse(data: bytes, key: str) -> tuple[Instance, Backup]:
    """The instance and the completed backup a manifest (found at `key`) describes; ManifestError if not one."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ManifestError("not JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ManifestError(f"not an {FORMAT}")
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ManifestError("no format version")
    if version > VERSION:
        raise ManifestError(f"format version {version}, newer than this gateway's {VERSION}")
    instance_data = _field(document, "instance", dict, "manifest")
    backup_data = _field(document, "backup", dict, "manifest")

    instance_id: str = _field(instance_data, "id", str, "instance")
    backup_id: str = _field(backup_data, "id", str, "backup")
    if not _ID_RE.match(instance_id) or not _ID_RE.match(backup_id):
        raise ManifestError("ids must be 32 lower-case hexadecimal characters")
    object_key: str = _field(backup_data, "object_key", str, "backup")
    if object_key != archive_key(key) or not object_key.endswith(f"{instance_id}/{backup_id}"):
        raise ManifestError(f"describes {object_key!r}, not the archive beside it")
    instance_name: str = _field(instance_data, "name", str, "instance")
    name: str = _field(backup_data, "name", str, "backup")
    if not instance_name.strip() or not name:
        raise ManifestError("empty name")
    try:  # the rules the gateway's own commands and API hold names to
        instance_name = validate_instance_name(instance_name)
    except ValueError as err:
        raise ManifestError(f"instance.name: {err}") from None
    if len(name) > MAX_BACKUP_NAME:
        raise ManifestError(f"backup.name: longer than {MAX_BACKUP_NAME} characters")
    sha256 = backup_data.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256_RE.match(sha256)):
        raise ManifestError("backup.sha256: expected 64 lower-case hexadecimal characters or null")
    size = _positive(backup_data, "size", "backup")
    part_size = _positive(backup_data, "part_size", "backup")
    part_count = _positive(backup_data, "part_count", "backup")
    if part_count != math.ceil(size / part_size):
        raise ManifestError("backup.part_count does not match its size and part size")
    instance = Instance(
        id=instance_id,
        name=instance_name,
        created_at=_timestamp(instance_data.get("created_at"), "instance.created_at"),
    )
    backup = Backup(
        id=backup_id,
        instance_id=instance_id,
        name=name,
        size=size,
        sha256=sha256,
        status=COMPLETED,
        created_at=_timestamp(backup_data.get("created_at"), "backup.created_at"),
        completed_at=_timestamp(backup_data.get("completed_at"), "backup.completed_at"),
        part_size=part_size,
        part_count=part_count,
        object_key=object_key,
        upload_id=None,
        metadata=_field(backup_data, "metadata", dict, "backup"),
    )
    return instance, backup
