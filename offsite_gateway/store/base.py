"""The metadata store's interface: instances, backups and init events, and the rules they follow.

`Store` is what the gateway uses; `SQLiteStore` (store/sqlite.py, one node) and `PostgresStore`
(store/postgres.py, any number of nodes over one database) implement it. Every rule that must hold across
requests is kept by the database, never in one process's memory:

- one upload in progress per instance: a partial unique index on `backups(instance_id) WHERE status =
  'uploading'`, and `begin_backup` checks it (and the init rate) in one transaction that holds the instance;
- every state change is conditional (`... WHERE status = 'uploading'`), so two nodes racing on one backup
  never both win;
- `lock_backup` serialises what one backup's complete, abort and delete do between their storage calls and
  their database writes: an advisory lock on PostgreSQL (released by the server if the node dies), a lock of the
  process on SQLite (one node);
- `lock_sweeper`: one node at a time runs the sweeper; the others skip that run.

Backup status: `uploading` → `completed` | `failed`; `completed` → `deleting` (retention or DELETE) → row removed
once the object is gone from storage. A row stays `deleting` until its object delete succeeded: the sweeper
retries it, so nothing is forgotten half-way. A backup that becomes `completed` gets its `completion_seq` from the
database (a trigger, migration 9), the next of a sequence: "newest" means the highest, never a clock's reading. A
failed upload keeps no metadata (it is dropped as it fails: nothing needs it after).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

UPLOADING = "uploading"
COMPLETED = "completed"
FAILED = "failed"
DELETING = "deleting"


class StoreError(Exception):
    """Base class of the store's expected refusals."""


class StoreUnavailable(StoreError):
    """The database cannot answer now (unreachable, overloaded, a lock wait or a statement timed out)."""


class UploadInProgress(StoreError):
    """The instance already has an upload in progress: backup `backup_id`."""

    def __init__(self, backup_id: str) -> None:
        super().__init__(f"backup {backup_id} is uploading")
        self.backup_id = backup_id


class RateLimited(StoreError):
    """The instance started too many uploads within the last hour."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many uploads started; retry in {retry_after} s")
        self.retry_after = retry_after


class QuotaExceeded(StoreError):
    """A new upload would take the instance over its quota: `used` bytes are held already."""

    def __init__(self, used: int) -> None:
        super().__init__(f"{used} bytes are used")
        self.used = used


class DuplicateInstance(StoreError):
    """An active instance already has this name."""


class UnknownInstance(StoreError, LookupError):
    """No active instance has this name (there is none, or it was revoked)."""


POLICY_FIELDS = (
    "quota_bytes",
    "keep_last",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "protect_days",
    "expect_every",
)


@dataclass(frozen=True)
class PolicyOverrides:
    """What the operator set for one instance (`instance set`); None: the gateway's default (its settings)."""

    quota_bytes: int | None = None
    keep_last: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    protect_days: int | None = None
    expect_every: int | None = None  # seconds between backups the watchdog expects; 0: not watched


@dataclass(frozen=True)
class NotifyTarget:
    """Where a house asked to be told when its backups stop (its notify URL), in which format, signed with which
    key. The URL's path and query may be secret (an ntfy topic, a Gotify token): never logged or shown."""

    url: str = field(repr=False)
    format: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Instance:
    """A Home Assistant installation allowed to back up through the gateway."""

    id: str
    name: str
    created_at: float
    revoked_at: float | None = None
    policy: PolicyOverrides = field(default_factory=PolicyOverrides)
    notify: NotifyTarget | None = field(default=None, repr=False)
    policy_set_at: float | None = None  # when the operator last changed `policy` (None: never)


# The watchdog's states of an instance (offsite_gateway/watchdog.py).
OK = "ok"
LATE = "late"
NEVER = "never"
PAUSED = "paused"
WATCH_STATES = (OK, LATE, NEVER, PAUSED)


@dataclass(frozen=True)
class Activity:
    """What the database holds of one instance's backups: when the newest completed one completed, the bytes of
    those it holds (those being deleted too) and how many are completed."""

    last_success: float | None
    bytes: int
    backups: int


@dataclass(frozen=True)
class Watched:
    """The state the watchdog last recorded for an instance: since when, and when it last told anyone of it.

    `version` counts the changes (0: no row yet); a change is made only from the version it was decided on.
    """

    instance_id: str
    state: str
    since: float
    notified_at: float | None
    version: int = 0


PENDING = "pending"
SENT = "sent"
GAVE_UP = "failed"
DROPPED = "dropped"  # its recipient is gone (the house cleared its URL, the instance was revoked)


@dataclass
class Notice:
    """A notification in the outbox: one event, for one recipient, on one channel."""

    id: str
    instance_id: str
    event: str  # late, reminder, recovered
    recipient: str  # owner, operator
    channel: str  # webhook, email
    payload: dict[str, Any]  # the facts, as the JSON body carries them
    created_at: float
    next_at: float  # due from then; while a node sends it, held ahead of now (its lease)
    attempts: int = 0
    status: str = PENDING
    done_at: float | None = None
    error: str | None = None


@dataclass
class Backup:
    """One backup: an upload in progress, a completed object, a failed attempt, or an object being deleted."""

    id: str
    instance_id: str
    name: str
    size: int
    sha256: str | None
    status: str
    created_at: float
    completed_at: float | None
    part_size: int
    part_count: int
    object_key: str
    upload_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # An upload's last sign of life (created, parts signed or listed), or when it failed: the sweeper's clock.
    last_activity: float | None = None
    # The order backups of an instance completed in, which the database assigns as a backup becomes completed
    # (migration 9): newest is highest, whatever the clocks of the nodes said. Not part of what a backup is (a
    # backup read back from its manifest is the same backup), so not compared.
    completion_seq: int | None = field(default=None, compare=False)


class SchemaTooNew(StoreError, RuntimeError):
    """The database's schema is newer than this gateway's: a newer gateway migrated it."""


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands: its version, this gateway's, and the migrations between them."""

    current: int
    latest: int
    pending: tuple[tuple[int, str], ...]  # (version, description) not applied yet


class Store(Protocol):
    """What the gateway needs from its metadata database."""

    kind: str  # "sqlite" or "postgresql"

    async def open(self, *, migrate: bool = True) -> None:
        """Connect; with `migrate`, bring the schema up to date first (under a lock, so nodes starting together
        migrate once). Raise SchemaTooNew if a newer gateway migrated it."""
        ...

    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    async def schema_status(self) -> SchemaStatus: ...
    async def migrate(self) -> list[tuple[int, str]]:
        """Apply the pending migrations, under a lock; return those this call applied."""
        ...

    def describe(self) -> str:
        """Where the database is, for people (no password)."""
        ...

    def lock_backup(
        self, backup_id: str, *, wait: bool = True, completing: bool = False
    ) -> AbstractAsyncContextManager[bool]:
        """Hold one backup against every other node's complete, abort, delete, retention and sweeper.

        Yields True once held; with `wait=False`, yields False at once if someone else holds it. `completing`
        says the block reads the backup's instance's completed backups too (PostgreSQL reads them with the lock).
        """
        ...

    def lock_sweeper(self) -> AbstractAsyncContextManager[bool]:
        """Yields True if this node may sweep now, False if another node is sweeping."""
        ...

    async def create_instance(self, instance: Instance, token_hash: str) -> None: ...
    async def list_instances(self) -> list[Instance]: ...
    async def revoke_instance(self, name: str, now: float) -> Instance | None:
        """Revoke the active instance with this name and, in the same transaction, mark its uploads in progress
        failed at `now` (their metadata dropped) (their storage uploads become orphans: see `sweeper`); None if there is none."""
        ...

    async def rotate_token(self, name: str, token_hash: str) -> Instance | None:
        """Replace the token hash of the active instance with this name; None if there is none."""
        ...

    async def set_policy(
        self, name: str, changes: dict[str, int | None], now: float | None = None
    ) -> Instance | None:
        """Set some of the active instance's policy fields (POLICY_FIELDS; None: back to the default), and its
        `policy_set_at` (`now`, else the time); the instance as it then is, or None if no active instance has
        this name. No change: the instance as it is."""
        ...

    async def restore_policy(self, instance_id: str, policy: PolicyOverrides, set_at: float) -> bool:
        """Give the instance (active or not) this policy, set at `set_at`, unless its own was set at `set_at` or
        later (reindex: the newest record wins); whether it was given."""
        ...

    async def usage(self, instance_id: str) -> tuple[int, int]:
        """(bytes, count) of the instance's completed backups (bytes: those being deleted too, which storage
        still holds); each backup's size is what storage holds (complete reads it back from storage)."""
        ...

    async def instance_by_token_hash(self, token_hash: str) -> Instance | None: ...
    async def restore_instance(self, instance: Instance, token_hash: str) -> bool:
        """Insert an instance with its own id (reindex); False if that id is already there."""
        ...

    async def restore_backup(self, backup: Backup) -> bool:
        """Insert a completed backup as it was (reindex); False if that id is already there."""
        ...

    async def begin_backup(
        self, backup: Backup, now: float, init_rate: int, quota: int | None = None
    ) -> None:
        """Insert an `uploading` backup; raise UploadInProgress (naming the upload), QuotaExceeded (what the
        instance holds: its completed backups, those being deleted, and an upload in progress by its declared
        size, plus this one, would be over `quota`) or RateLimited, in that order, atomically."""
        ...

    async def promote_backup(self, backup: Backup) -> bool:
        """An `uploading` or `failed` row → `completed` as `backup` (a manifest) describes it (reindex, after a
        database restore lost its complete); False if there is no such row in either state."""
        ...

    async def set_upload_id(self, backup_id: str, upload_id: str) -> bool:
        """Record the storage upload of an `uploading` backup; False if it is not uploading any more."""
        ...

    async def get_backup(self, backup_id: str) -> Backup | None: ...
    async def list_backups(self, instance_id: str, status: str) -> list[Backup]:
        """Backups of one instance with one status, newest first (`newest_first`: completion order, then
        completion time, then creation)."""
        ...

    async def complete_backup(
        self, backup_id: str, sha256: str | None, now: float, expired: Sequence[str] = ()
    ) -> bool:
        """`uploading` → `completed`, and with it (at once) the instance's completed backups `expired` →
        `deleting`; False, and nothing changed, if it was not uploading any more."""
        ...

    async def fail_backup(self, backup_id: str, now: float) -> Backup | None:
        """`uploading` → `failed` (its last activity: `now`; its metadata dropped), atomically; the backup as it
        then was (its storage upload id, if the create had recorded one by then), or None if it was not uploading
        any more."""
        ...

    async def touch_backup(self, backup_id: str, now: float) -> None:
        """An upload in progress shows a sign of life (parts signed or listed): its last activity is `now`."""
        ...

    async def mark_deleting(self, backup_ids: Sequence[str]) -> None:
        """Completed (or failed) backups → `deleting`; an upload in progress is left alone."""
        ...

    async def delete_backup(self, backup_id: str) -> None: ...
    async def delete_backups(self, backup_ids: Sequence[str]) -> None:
        """Delete the rows of these backups that are `deleting` (their objects are gone)."""
        ...

    async def stale_uploads(self, active_before: float) -> list[Backup]:
        """Uploads in progress whose last activity is older than `active_before`."""
        ...

    async def prune_failed(self, before: float) -> int:
        """Delete the `failed` rows that failed before `before`; how many."""
        ...

    async def deleting_backups(self) -> list[Backup]: ...
    async def count_uploading(self) -> int: ...
    async def prune_init_events(self, before: float) -> None: ...
    async def completed_backups(self, after_id: str, limit: int) -> list[Backup]:
        """Completed backups of every instance by id, a page after `after_id` (reindex's backfill)."""
        ...

    # --- the watchdog (offsite_gateway/watchdog.py, outbox.py) --------------------------------------------

    async def set_notify(self, instance_id: str, target: NotifyTarget | None) -> bool:
        """Set (or clear) the active instance's notify URL; False if it is not active."""
        ...

    async def instance_by_id(self, instance_id: str) -> Instance | None:
        """The instance with this id, active or revoked."""
        ...

    async def last_success(self, instance_id: str) -> float | None:
        """When the instance's newest completed backup completed; None if it has none."""
        ...

    async def activity(self) -> dict[str, Activity]:
        """`Activity` of every instance that has backups in storage, by id (one query)."""
        ...

    async def watched(self) -> dict[str, Watched]:
        """The state recorded for every instance the watchdog has seen, by id."""
        ...

    async def change_watch(self, expected_version: int, new: Watched, notices: Sequence[Notice]) -> bool:
        """Record `new` for its instance, if its record is still at `expected_version` (0: none yet), and queue
        `notices`, in one transaction; False, and nothing changed, if another node changed it first."""
        ...

    async def claim_notices(self, now: float, lease_until: float, limit: int) -> list[Notice]:
        """Up to `limit` pending notices due at `now`, claimed for this node: each one's attempts counted and
        its `next_at` moved to `lease_until`, so that no other node takes it meanwhile (PostgreSQL: FOR UPDATE
        SKIP LOCKED, so nodes claiming at once take different ones)."""
        ...

    async def retry_notice(self, notice_id: str, next_at: float, error: str) -> None: ...
    async def finish_notice(self, notice_id: str, status: str, now: float, error: str | None = None) -> None:
        """A pending notice is done: `sent`, `failed` (given up) or `dropped`."""
        ...

    async def pending_notices(self) -> int: ...
    async def list_notices(self) -> list[Notice]:
        """Every notice in the outbox, oldest first (tests, and an operator's look)."""
        ...

    async def prune_notices(self, before: float) -> int:
        """Delete the notices done before `before`; how many."""
        ...
