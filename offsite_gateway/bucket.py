"""The bucket as storage has it, read through the S3 API: the first contact (storage reachable, the credentials
accepted, the bucket there), versioning, Object Lock and lifecycle rules; and the two commands that act on them
at once: `bucket create` (with Object Lock when `OBJECT_LOCK` is on, and a clear refusal when an existing bucket
lacks it) and `serve`'s start-up check. `bucket check` (bucket_check.py, bucket_probes.py) reports all of it as
findings (`Finding`, each with its word), and what it means for the settings.

Every message names the setting or the command that fixes what it reports, never a secret; what storage said is
escaped (it is storage's text, not ours).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit
from xml.etree import ElementTree

from .config import PREFIX, Settings
from .logs import escape
from .s3 import child_text, children
from .storage import Storage, StorageError

NOT_SUPPORTED = frozenset(("NotImplemented", "501", "MethodNotAllowed", "405", "XNotImplemented"))
NO_LOCK = frozenset(("ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration"))
WRONG_PLACE = frozenset(
    (
        "AuthorizationHeaderMalformed",
        "PermanentRedirect",
        "301",
        "IllegalLocationConstraintException",
        "TemporaryRedirect",
    )
)

OK, NOTE, WARNING, CANNOT = "ok", "note", "warning", "cannot work"
WORDS = (OK, NOTE, WARNING, CANNOT)

LOCK_ONLY_AT_CREATION = (
    "Object Lock can only be enabled when a bucket is created on most providers (AWS can also enable it on a "
    "versioned bucket)"
)


def endpoint_of(settings: Settings) -> str:
    """The storage endpoint the gateway talks to, as it can be shown (without any user or password in it)."""
    endpoint = settings.s3_endpoint or f"https://s3.{settings.s3_region}.amazonaws.com"
    parts = urlsplit(endpoint)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def said(err: StorageError) -> str:
    """What storage answered, escaped for a terminal or a log."""
    return escape(str(err), 300)


@dataclass(frozen=True)
class Contact:
    """The first request to the bucket: whether it answered, and if not what is wrong and what fixes it."""

    problem: str | None = None  # None: storage answers, the credentials are accepted, the bucket is there
    topic: str = "storage"  # what the problem is about: "storage", "credentials" or "bucket"
    transient: bool = False  # the problem may go away by itself (storage unreachable, or answering 5xx)
    missing_bucket: bool = False
    versioning: str | None = None  # "Enabled", "Suspended" or "" (never enabled); None: could not be read


async def first_contact(storage: Storage, settings: Settings) -> Contact:
    """GET the bucket's versioning (a GET, unlike a HEAD, says why it is refused), and say what its answer means."""
    bucket, endpoint = settings.s3_bucket, endpoint_of(settings)
    try:
        root = await storage.bucket_configuration("versioning")
    except StorageError as err:
        code = err.code or ""
        if err.status == 0 or ((err.status or 0) >= 500 and code not in NOT_SUPPORTED):
            return Contact(f"storage at {endpoint} does not answer: {said(err)}", transient=True)
        if code in ("NoSuchBucket", "404"):
            return Contact(
                f"bucket {bucket!r} does not exist at {endpoint}: create it with `offsite-gateway bucket create` "
                f"(with these settings), or set {PREFIX}S3_BUCKET to a bucket that exists",
                topic="bucket",
                missing_bucket=True,
            )
        if code == "InvalidAccessKeyId":
            return Contact(
                f"storage does not know the access key: check {PREFIX}S3_ACCESS_KEY ({said(err)})",
                topic="credentials",
            )
        if code == "SignatureDoesNotMatch":
            return Contact(
                f"storage refuses the requests' signature: {PREFIX}S3_SECRET_KEY is not the secret of "
                f"{PREFIX}S3_ACCESS_KEY, or {PREFIX}S3_REGION is not the bucket's ({said(err)})",
                topic="credentials",
            )
        if code in WRONG_PLACE:
            return Contact(
                f"storage says bucket {bucket!r} is to be reached in another region or at another endpoint: check "
                f"{PREFIX}S3_REGION ({settings.s3_region}) and {PREFIX}S3_ENDPOINT ({said(err)})",
                topic="bucket",
            )
        if code in NOT_SUPPORTED or code in ("AccessDenied", "403"):
            return await _head_instead(storage, settings, err)
        return Contact(f"storage refuses requests to bucket {bucket!r}: {said(err)}")
    return Contact(versioning=child_text(root, "Status"))


async def _head_instead(storage: Storage, settings: Settings, refused: StorageError) -> Contact:
    """Versioning could not be read: whether the bucket answers at all (a HEAD needs fewer permissions)."""
    try:
        await storage.head_bucket()
    except StorageError as err:
        if err.code in ("404", "NoSuchBucket"):
            return Contact(
                f"bucket {settings.s3_bucket!r} does not exist at {endpoint_of(settings)}: create it with "
                "`offsite-gateway bucket create`",
                topic="bucket",
                missing_bucket=True,
            )
        return Contact(
            f"the credentials are refused for bucket {settings.s3_bucket!r} ({said(refused)}): give "
            f"{PREFIX}S3_ACCESS_KEY access to it",
            topic="credentials",
        )
    return Contact()


@dataclass(frozen=True)
class ObjectLock:
    """The bucket's Object Lock configuration."""

    enabled: bool
    supported: bool = True
    default_mode: str | None = None  # the default retention's mode, if there is one
    default_days: int | None = None


async def read_object_lock(storage: Storage) -> tuple[ObjectLock | None, str]:
    """(the bucket's Object Lock, "") or (None, why it could not be read)."""
    try:
        root = await storage.bucket_configuration("object-lock")
    except StorageError as err:
        if err.code in NO_LOCK or err.code == "404":
            return ObjectLock(enabled=False), ""
        if err.code in NOT_SUPPORTED:
            return ObjectLock(enabled=False, supported=False), ""
        return None, said(err)
    enabled = child_text(root, "ObjectLockEnabled") == "Enabled"
    for rule in children(root, "Rule"):
        for default in children(rule, "DefaultRetention"):
            days = _int(child_text(default, "Days"))
            years = _int(child_text(default, "Years"))
            return ObjectLock(
                enabled, True, child_text(default, "Mode") or None, days or (years or 0) * 365
            ), ""
    return ObjectLock(enabled), ""


@dataclass(frozen=True)
class LifecycleRule:
    """One enabled lifecycle rule, as far as the gateway's objects are concerned."""

    rule_id: str
    prefix: str
    conditional: bool  # also filtered by tags or object sizes: may or may not apply to an object
    abort_incomplete_days: int | None
    expiration: str | None  # "after N days", "on DATE": storage deletes objects by itself
    noncurrent_days: int | None

    def covers(self, prefix: str) -> str:
        """Whether the rule applies to the gateway's keys (under `prefix`): "all", "some" or "none"."""
        if self.conditional and (prefix.startswith(self.prefix) or self.prefix.startswith(prefix)):
            return "some"
        if prefix.startswith(self.prefix):
            return "all"
        return "some" if self.prefix.startswith(prefix) else "none"


async def read_lifecycle(storage: Storage) -> tuple[list[LifecycleRule] | None, str]:
    """(the bucket's enabled lifecycle rules, "") or (None, why they could not be read)."""
    try:
        root = await storage.bucket_configuration("lifecycle")
    except StorageError as err:
        if err.code in ("NoSuchLifecycleConfiguration", "404"):
            return [], ""
        if err.code in NOT_SUPPORTED:
            return None, "this storage has no lifecycle rules"
        return None, said(err)
    return [_rule(rule) for rule in children(root, "Rule") if child_text(rule, "Status") == "Enabled"], ""


def _rule(rule: ElementTree.Element) -> LifecycleRule:
    prefix, conditional = child_text(rule, "Prefix"), False  # the old form: <Prefix> in the rule itself
    for found in children(rule, "Filter"):
        prefix = child_text(found, "Prefix")
        conditional = any(
            children(found, name) for name in ("Tag", "ObjectSizeGreaterThan", "ObjectSizeLessThan")
        )
        for both in children(found, "And"):
            prefix = child_text(both, "Prefix")
            conditional = True
    abort = None
    for item in children(rule, "AbortIncompleteMultipartUpload"):
        abort = _int(child_text(item, "DaysAfterInitiation"))
    expiration = None
    for item in children(rule, "Expiration"):
        if child_text(item, "Days"):
            expiration = f"{escape(child_text(item, 'Days'), 20)} days after they are written"
        elif child_text(item, "Date"):
            expiration = f"on {escape(child_text(item, 'Date'), 40)}"
    noncurrent = None
    for item in children(rule, "NoncurrentVersionExpiration"):
        noncurrent = _int(child_text(item, "NoncurrentDays"))
    return LifecycleRule(
        escape(child_text(rule, "ID"), 100), prefix, conditional, abort, expiration, noncurrent
    )


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def lock_problem(lock: ObjectLock, settings: Settings, *, existed: bool = True) -> str | None:
    """With OBJECT_LOCK on, what is wrong with the bucket's Object Lock (None: nothing)."""
    bucket = settings.s3_bucket
    if lock.enabled:
        return None
    if not lock.supported or not existed:
        return (
            f"{PREFIX}OBJECT_LOCK is on, but this storage has no S3 Object Lock (bucket {bucket!r} has none: "
            f"Cloudflare R2 and Garage, for instance, lack it): set {PREFIX}OBJECT_LOCK=false (delete protection, "
            "PROTECT_DAYS, still holds at the gateway), or use storage that has it"
        )
    return (
        f"{PREFIX}OBJECT_LOCK is on, but bucket {bucket!r} has no Object Lock: {LOCK_ONLY_AT_CREATION}. Choose a "
        f"new bucket name ({PREFIX}S3_BUCKET) and create it with `offsite-gateway bucket create`, or set "
        f"{PREFIX}OBJECT_LOCK=false"
    )


async def create(storage: Storage, settings: Settings) -> tuple[bool, str]:
    """`bucket create`: (done, what to tell). With OBJECT_LOCK on, the bucket is created with Object Lock, and an
    existing bucket without it (or storage that ignored the request for it) is an error, not "already exists"."""
    bucket = settings.s3_bucket
    try:
        created = await storage.create_bucket()
    except StorageError as err:
        return False, f"could not create bucket {bucket!r}: {said(err)}"
    state = "created" if created else "already exists"
    if not settings.object_lock:
        return True, f"Bucket {bucket!r} {state}."
    lock, why = await read_object_lock(storage)
    if lock is None:
        return True, (
            f"Bucket {bucket!r} {state}; its Object Lock configuration could not be read ({why}): "
            "`offsite-gateway bucket check` tells more."
        )
    problem = lock_problem(lock, settings, existed=not created)
    if problem is not None:
        if created:
            return False, f"storage created bucket {bucket!r} without Object Lock: {problem}"
        return False, f"bucket {bucket!r} already exists without Object Lock: {problem}"
    return True, f"Bucket {bucket!r} {state}, with Object Lock (and so versioning)."


@dataclass(frozen=True)
class StartupCheck:
    """What `serve` finds at start: lines to log, and whether it must not serve at all."""

    lines: list[tuple[int, str]]
    refuse: str | None = None  # why serving cannot work (the process exits with it)


async def startup_check(storage: Storage, settings: Settings) -> StartupCheck:
    """Storage unreachable, the credentials refused or the bucket missing: logged, and the gateway serves on
    (`/readyz` answers 503 until storage answers; a bucket created meanwhile is used at once). OBJECT_LOCK on with
    a bucket that has no Object Lock: refused, since every backup would be uploaded and then fail to complete,
    and only a new bucket or another setting can change that."""
    contact = await first_contact(storage, settings)
    if contact.problem is not None:
        if contact.transient:
            return StartupCheck(
                [
                    (
                        logging.WARNING,
                        f"Storage is not reachable yet (GET /readyz reports it): {contact.problem}",
                    )
                ]
            )
        return StartupCheck(
            [
                (
                    logging.ERROR,
                    f"Storage: {contact.problem}; until then GET /readyz answers 503 and backups fail",
                )
            ]
        )
    if not settings.object_lock:
        return StartupCheck([])
    lock, why = await read_object_lock(storage)
    if lock is None:
        return StartupCheck(
            [
                (
                    logging.WARNING,
                    f"Could not read bucket {settings.s3_bucket!r}'s Object Lock configuration: {why}",
                )
            ]
        )
    problem = lock_problem(lock, settings)
    return StartupCheck([], refuse=problem) if problem else StartupCheck([])


@dataclass(frozen=True)
class Finding:
    """One line of `bucket check`'s report: a word (one of WORDS), what it is about, and what it means."""

    word: str
    topic: str
    text: str


class Findings(list[Finding]):
    """A report's findings, in the order they were made."""

    def add(self, word: str, topic: str, text: str) -> None:
        self.append(Finding(word, topic, text))

    @property
    def usable(self) -> bool:
        return all(finding.word != CANNOT for finding in self)
