"""The manifest beside each archive: the bucket describes itself.

At complete, before the database records the backup, the gateway writes `<object key>.manifest.json` next to the
archive `<prefix><instance id>/<backup id>`: everything the backup's row holds but secrets (the upload id is not
kept: it means nothing once completed; no token or token hash), and the instance's id and name, with a format
version. `offsite-gateway reindex` rebuilds the database from them. Keys stay opaque: ids only, never a name.

    {"format": "offsite-backup-manifest", "version": 1,
     "instance": {"id": "…", "name": "home", "created_at": "2026-11-26T23:59:00.123456Z",
                  "policy": {"quota_bytes": null, "keep_last": 3, …}, "policy_set_at": "…" | null},
     "backup": {"id": "…", "name": "…", "size": 123, "sha256": "…" | null, "part_size": …, "part_count": …,
                "created_at": "…", "completed_at": "…", "object_key": "<prefix><instance id>/<backup id>",
                "metadata": {…Home Assistant's description of the backup…}}}

Timestamps are ISO 8601 UTC with microseconds. A reader refuses a manifest of a newer format version, one whose
archive key is not the one beside it, and any field of the wrong type.

The instance's policy (what the operator set for it, `null` for a field that follows the gateway's settings) and
when it was set ride along in every backup's manifest, and `offsite-gateway instance set` also writes it to
`<prefix><instance id>/instance.json` (`build_instance`, when the storage settings are at hand), so a policy set
after the instance's last backup is in the bucket too. Manifests written before policies were recorded have none
(`policy_set_at` absent): reindex then has no record of a policy for them.

    {"format": "offsite-backup-instance", "version": 1,
     "instance": {"id": "…", "name": "home", "created_at": "…", "policy": {…}, "policy_set_at": "…" | null}}
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

from .auth import validate_instance_name
from .store import COMPLETED, POLICY_FIELDS, Backup, Instance, PolicyOverrides

FORMAT = "offsite-backup-manifest"
INSTANCE_FORMAT = "offsite-backup-instance"
VERSION = 1
SUFFIX = ".manifest.json"
INSTANCE_FILE = "instance.json"
MAX_POLICY_VALUE = 1 << 62
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


def instance_manifest_key(prefix: str, instance_id: str) -> str:
    """Where the instance manifest (its policy) of an instance lives."""
    return f"{prefix}{instance_id}/{INSTANCE_FILE}"


def is_instance_manifest_key(key: str) -> bool:
    folder, _, name = key.rpartition("/")
    return name == INSTANCE_FILE and bool(_ID_RE.match(folder.rpartition("/")[2]))


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


def _instance_json(instance: Instance) -> dict[str, Any]:
    return {
        "id": instance.id,
        "name": instance.name,
        "created_at": _iso(instance.created_at),
        "policy": {name: getattr(instance.policy, name) for name in POLICY_FIELDS},
        "policy_set_at": None if instance.policy_set_at is None else _iso(instance.policy_set_at),
    }


def build_instance(instance: Instance) -> bytes:
    """The instance manifest: the instance and its policy, as `instance set` left it."""
    document = {"format": INSTANCE_FORMAT, "version": VERSION, "instance": _instance_json(instance)}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def build(backup: Backup, instance: Instance) -> bytes:
    """The manifest of a completed backup (its `completed_at` set)."""
    if backup.completed_at is None:
        raise ValueError("a manifest describes a completed backup")
    document = {
        "format": FORMAT,
        "version": VERSION,
        "instance": _instance_json(instance),
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


def _document(data: bytes, kind: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ManifestError("not JSON") from None
    if not isinstance(document, dict) or document.get("format") != kind:
        raise ManifestError(f"not an {kind}")
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ManifestError("no format version")
    if version > VERSION:
        raise ManifestError(f"format version {version}, newer than this gateway's {VERSION}")
    return document


def _policy(instance_data: dict[str, Any]) -> tuple[PolicyOverrides, float | None]:
    """The policy an instance's description records, and when it was set (None: no record of one)."""
    policy = instance_data.get("policy")
    if policy is None or instance_data.get("policy_set_at") is None:
        return PolicyOverrides(), None
    if not isinstance(policy, dict):
        raise ManifestError("instance.policy: expected an object")
    values: dict[str, int | None] = {}
    for name in POLICY_FIELDS:
        value = policy.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_POLICY_VALUE
        ):
            raise ManifestError(f"instance.policy.{name}: expected a whole number or null")
        values[name] = value
    return PolicyOverrides(**values), _timestamp(instance_data["policy_set_at"], "instance.policy_set_at")


def _instance(instance_data: dict[str, Any]) -> Instance:
    instance_id: str = _field(instance_data, "id", str, "instance")
    if not _ID_RE.match(instance_id):
        raise ManifestError("ids must be 32 lower-case hexadecimal characters")
    instance_name: str = _field(instance_data, "name", str, "instance")
    if not instance_name.strip():
        raise ManifestError("empty name")
    try:  # the rules the gateway's own commands and API hold names to
        instance_name = validate_instance_name(instance_name)
    except ValueError as err:
        raise ManifestError(f"instance.name: {err}") from None
    policy, policy_set_at = _policy(instance_data)
    return Instance(
        id=instance_id,
        name=instance_name,
        created_at=_timestamp(instance_data.get("created_at"), "instance.created_at"),
        policy=policy,
        policy_set_at=policy_set_at,
    )


def parse_instance(data: bytes, key: str) -> Instance:
    """The instance (and its policy) an instance manifest found at `key` describes; ManifestError if not one."""
    instance = _instance(_field(_document(data, INSTANCE_FORMAT), "instance", dict, "manifest"))
    if key.rpartition("/")[0].rpartition("/")[2] != instance.id:
        raise ManifestError("describes another instance than the folder it is in")
    return instance


def parse(data: bytes, key: str) -> tuple[Instance, Backup]:
    """The instance and the completed backup a manifest (found at `key`) describes; ManifestError if not one."""
    document = _document(data, FORMAT)
    instance_data = _field(document, "instance", dict, "manifest")
    backup_data = _field(document, "backup", dict, "manifest")

    instance_id: str = _field(instance_data, "id", str, "instance")
    backup_id: str = _field(backup_data, "id", str, "backup")
    if not _ID_RE.match(instance_id) or not _ID_RE.match(backup_id):
        raise ManifestError("ids must be 32 lower-case hexadecimal characters")
    object_key: str = _field(backup_data, "object_key", str, "backup")
    if object_key != archive_key(key) or not object_key.endswith(f"{instance_id}/{backup_id}"):
        raise ManifestError(f"describes {object_key!r}, not the archive beside it")
    instance = _instance(instance_data)
    name: str = _field(backup_data, "name", str, "backup")
    if not name:
        raise ManifestError("empty name")
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
