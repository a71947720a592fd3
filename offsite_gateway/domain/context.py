"""What the domain works with (the database, storage, the metrics, the clock, the purger), and the checks every
operation on one backup starts with: it belongs to the caller, it is uploading."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from ..config import Settings
from ..errors import ApiError
from ..metrics import Metrics
from ..purger import Purger
from ..storage import Storage
from ..store import DELETING, UPLOADING, Backup, Store


@dataclass(frozen=True, slots=True)
class Context:
    """The gateway's parts that begin, complete, abort and delete a backup. The API's is built by `create_app`,
    the sweeper's by the sweeper, the CLI's by the command (without a purger: what it deletes goes at once)."""

    settings: Settings
    store: Store
    storage: Storage
    metrics: Metrics
    clock: Callable[[], float] = time.time
    purger: Purger | None = None


def not_found() -> NoReturn:
    raise ApiError(404, "not_found", "no such backup")


async def owned(context: Context, instance_id: str, backup_id: str, *, deleting: bool = False) -> Backup:
    """The backup if it belongs to instance `instance_id`; 404 otherwise (whether it exists or not), and for a
    backup being deleted unless `deleting`."""
    backup = await context.store.get_backup(backup_id)
    if backup is None or backup.instance_id != instance_id:
        not_found()
    if backup.status == DELETING and not deleting:
        not_found()
    return backup


def require_uploading(backup: Backup) -> str:
    """The backup's storage upload id; 409 unless it is uploading and its storage upload exists."""
    if backup.status != UPLOADING:
        raise ApiError(409, "not_uploading", f"backup {backup.id} is {backup.status}, not uploading")
    if backup.upload_id is None:
        raise ApiError(
            409,
            "not_uploading",
            f"the upload of backup {backup.id} is still being created; try again shortly",
        )
    return backup.upload_id
