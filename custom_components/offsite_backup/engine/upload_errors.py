"""How an upload fails, in words a person can act on."""

from __future__ import annotations

from dataclasses import dataclass

from .api import redact_urls
from .upload_retry import duration


class UploadError(Exception):
    """The upload failed (and was aborted). The message says what to do; the attributes say what happened."""

    def __init__(
        self,
        message: str,
        *,
        backup_id: str | None = None,
        part_number: int | None = None,
        status: int | None = None,
        storage_code: str | None = None,
        tries: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.backup_id = backup_id
        self.part_number = part_number
        self.status = status
        self.storage_code = storage_code
        self.tries = tries


class UploadStreamError(UploadError):
    """The backup stream failed, ended before ``size`` bytes or yielded more."""


@dataclass(slots=True)
class Outcome:
    """What became of one PUT of a part."""

    etag: str | None = None
    kind: str = "ok"  # ok | retry (transient) | resign (403: sign the URL again) | resend (corrupted) | fatal
    status: int | None = None
    code: str | None = None
    detail: str = ""
    retry_after: float | None = None
    etag_is_md5: bool = (
        True  # storage may say otherwise (server-side encryption with KMS or the client's key)
    )

    def summary(self) -> str:
        """``HTTP 503 SlowDown (message)``, or what went wrong on the way when storage never answered."""
        if self.status is None:
            return self.detail
        text = f"HTTP {self.status}"
        if self.code:
            text += f" {self.code}"
        if self.detail:
            text += f" ({self.detail})"
        return text


def describe(err: BaseException) -> str:
    """An exception as ``Type: message``, without the signatures of any URL in it."""
    text = redact_urls(str(err)).strip()
    name = type(err).__name__
    return f"{name}: {text}" if text else name


def part_error(
    *,
    backup_id: str,
    part_number: int,
    part_count: int,
    outcome: Outcome,
    tries: int,
    waited: float | None = None,
) -> UploadError:
    """The error that ends an upload whose part could not be stored: what happened, and what to do about it.

    ``waited``: how long a transient failure was retried before giving up (said in the message).
    """
    where = f"part {part_number} of {part_count} of backup {backup_id}"
    tried = f"{tries} {'try' if tries == 1 else 'tries'}"
    if waited is not None and tries > 1:
        tried += f" in {duration(waited)}"
    summary = outcome.summary()
    if outcome.status is None:
        if "no answer" in outcome.detail:
            hint = "the connection to storage is too slow or stalled; check it, or lower the parallel uploads"
        else:
            hint = "storage could not be reached; check the network connection and the storage endpoint"
        message = f"Upload of {where} failed after {tried}: {summary}. {hint}"
    elif outcome.code == "BadDigest":
        message = (
            f"Upload of {where} failed after {tried}: {summary}. The data was corrupted on the way; "
            "check the network path (proxies) to storage"
        )
    elif outcome.status == 403:
        message = (
            f"Storage refused the signed URL of {where} after {tried}: {summary}. Check the gateway's "
            "storage credentials and both clocks"
        )
    elif outcome.status == 404:
        message = (
            f"Storage no longer knows the upload of {where}: {summary}. It was aborted (by the gateway's "
            "sweeper?); start a new backup"
        )
    elif outcome.kind == "fatal":
        message = f"Storage rejected {where}: {summary}. This will not pass by retrying"
    else:
        message = f"Upload of {where} failed after {tried}: storage answered {summary}. Try again later"
    return UploadError(
        message,
        backup_id=backup_id,
        part_number=part_number,
        status=outcome.status,
        storage_code=outcome.code,
        tries=tries,
    )
