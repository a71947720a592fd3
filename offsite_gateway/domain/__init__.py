"""The gateway's domain: what begins, completes, aborts and deletes a backup, whoever asks (the API's handlers, the
CLI, the sweeper), with its rules: the backup belongs to the caller and is held by its lock (on every node), the
instance's quota, Object Lock, the manifest written before the database records a backup, retention's choice, and
the purger that deletes what retention expired. Nothing here knows HTTP's web layer: a refusal is an `ApiError`
(`errors`), which the API answers as it is and the CLI words for the operator.
"""

from __future__ import annotations

from .begin import abort_unrecorded, begin
from .complete import Declared, complete
from .context import Context, not_found, owned, require_uploading
from .orphans import abort_instance_uploads, abort_orphans
from .remove import abort, delete, fail_upload

__all__ = [
    "Context",
    "Declared",
    "abort",
    "abort_instance_uploads",
    "abort_orphans",
    "abort_unrecorded",
    "begin",
    "complete",
    "delete",
    "fail_upload",
    "not_found",
    "owned",
    "require_uploading",
]
