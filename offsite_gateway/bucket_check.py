"""`offsite-gateway bucket check`: what the bucket supports, and what that means for the gateway's settings.

Each finding gets a word: `ok`; `note` (nothing to do, worth knowing); `warning` (it works, at a cost the line
names, with the fix); `cannot work` (with these settings the gateway fails: the line says what fixes it). The
command exits 1 when anything cannot work, else 0.

It reads the bucket's versioning, Object Lock (and any default retention) and lifecycle rules, and proves the
permissions the gateway needs by doing, under `<S3_PREFIX>offsite-gateway-check/`, what a backup does, then
undoing it: a multipart upload is begun, a one-byte part PUT through its presigned URL as Home Assistant sends it,
the parts and the uploads listed, the upload aborted; a small object is written, read, listed, (with OBJECT_LOCK)
put under a governance lock of `PROBE_LOCK` seconds (bucket_probes.py), and deleted as retention deletes (with Object Lock: every
version, bypassing governance). Nothing of it is left behind unless storage refuses a delete, which it then says.
No secret is ever printed.
"""

from __future__ import annotations

import textwrap

from .bucket import (
    CANNOT,
    NOTE,
    OK,
    WARNING,
    WORDS,
    Findings,
    ObjectLock,
    endpoint_of,
    first_contact,
    lock_problem,
    read_lifecycle,
    read_object_lock,
)
from .bucket_probes import object_probe, upload_probe
from .config import PREFIX, Settings
from .storage import Storage

DAY = 24 * 3600


async def check_bucket(storage: Storage, settings: Settings) -> Findings:
    """Every finding about the bucket and the settings, in the order they were made."""
    findings = Findings()
    contact = await first_contact(storage, settings)
    if contact.problem is not None:
        findings.add(
            CANNOT,
            contact.topic,
            contact.problem + (" (try again once it answers)" if contact.transient else ""),
        )
        return findings
    findings.add(
        OK, "storage", f"{endpoint_of(settings)} answers; the credentials are accepted for the bucket"
    )
    lock, lock_unread = await read_object_lock(storage)
    _versioning(findings, settings, contact.versioning, lock)
    _object_lock(findings, settings, lock, lock_unread)
    locked = lock is not None and lock.enabled
    await _lifecycle(findings, storage, settings, contact.versioning == "Enabled" and not locked)
    if lock is not None and lock.default_mode == "COMPLIANCE":
        findings.add(
            NOTE, "probes", "not run: a compliance-mode default retention would lock the probe object"
        )
        return findings
    await upload_probe(findings, storage, settings)
    await object_probe(findings, storage, settings, lock, contact.versioning)
    return findings


def _versioning(findings: Findings, settings: Settings, status: str | None, lock: ObjectLock | None) -> None:
    if status is None:
        findings.add(NOTE, "versioning", "could not be read (the keys may not, or this storage has none)")
    elif status != "Enabled":
        findings.add(OK, "versioning", f"{status.lower() or 'off'}: a delete removes the object")
    elif settings.object_lock or (lock is not None and lock.enabled):
        findings.add(OK, "versioning", "on, as Object Lock needs it")
    # Versioned without Object Lock: told with the lifecycle rules (which may expire the old versions).


def _object_lock(findings: Findings, settings: Settings, lock: ObjectLock | None, unread: str) -> None:
    if lock is None:
        word = WARNING if settings.object_lock else NOTE
        findings.add(word, "Object Lock", f"its configuration could not be read ({unread})")
        return
    if settings.object_lock:
        problem = lock_problem(lock, settings)
        if problem is not None:
            findings.add(
                CANNOT, "Object Lock", f"{problem}; until then every complete fails to lock its backup"
            )
        else:
            findings.add(
                OK,
                "Object Lock",
                "enabled: each completed backup and its manifest are locked (governance mode) for its instance's "
                f"protect-days, and deleted by retention and `backup delete` with every version (PROTECT_DAYS "
                f"{settings.protect_days})",
            )
            if settings.protect_days == 0:
                findings.add(
                    NOTE,
                    "Object Lock",
                    f"{PREFIX}PROTECT_DAYS is 0: only the backups of an instance given its own protect-days "
                    "(`offsite-gateway instance set NAME --protect-days N`) are locked",
                )
    elif lock.enabled:
        findings.add(
            WARNING,
            "Object Lock",
            f"enabled on the bucket, but {PREFIX}OBJECT_LOCK is off: backups are not locked, and each delete "
            "leaves the deleted version behind (the bucket keeps versions; the gateway deletes them only with "
            f"OBJECT_LOCK on): set {PREFIX}OBJECT_LOCK=true",
        )
    else:
        none = "this storage has none" if not lock.supported else "not enabled on the bucket"
        findings.add(
            OK, "Object Lock", f"{none} ({PREFIX}OBJECT_LOCK is off: delete protection is the gateway's)"
        )
    if lock.default_mode is not None:
        default = (
            f"a default retention ({lock.default_mode}, {lock.default_days} days) locks every object written"
        )
        if lock.default_mode == "COMPLIANCE":
            findings.add(
                CANNOT,
                "Object Lock",
                f"{default}, and nobody can lift it: neither retention nor `backup delete` can delete a backup "
                "before then (it stays `deleting`, counted in its instance's usage). Remove the default "
                "retention: the gateway sets each backup's own (OBJECT_LOCK=true, PROTECT_DAYS)",
            )
        else:
            findings.add(
                WARNING,
                "Object Lock",
                f"{default}: AWS S3 and others then refuse uploads without Content-MD5, which presigned part "
                "uploads do not carry (the upload probe shows whether this storage does). Remove the default "
                "retention: the gateway sets each backup's own (OBJECT_LOCK=true, PROTECT_DAYS)",
            )


async def _lifecycle(findings: Findings, storage: Storage, settings: Settings, versions_kept: bool) -> None:
    """The rules that touch the gateway's keys; `versions_kept`: a versioned bucket that the gateway's deletes
    leave old versions in (no Object Lock, so OBJECT_LOCK cannot be on)."""
    rules, unread = await read_lifecycle(storage)
    prefix = settings.s3_prefix
    expires_versions = None
    if rules is None:
        findings.add(NOTE, "lifecycle", f"its rules could not be read ({unread})")
    else:
        aborts = None
        for rule in rules:
            covers = rule.covers(prefix)
            if covers == "none":
                continue
            some = " (some of the gateway's)" if covers == "some" else ""
            if rule.expiration is not None:
                findings.add(
                    WARNING,
                    "lifecycle",
                    f"rule {rule.rule_id!r} deletes objects{some} {rule.expiration}: storage then removes backups "
                    "behind the gateway's back (their downloads fail while the gateway still lists them). Leave "
                    "retention to the gateway: remove the rule, or scope it to other keys",
                )
            if covers == "all" and rule.abort_incomplete_days is not None:
                aborts = rule
            if covers == "all" and rule.noncurrent_days is not None:
                expires_versions = rule
        if aborts is not None:
            days = aborts.abort_incomplete_days or 0
            findings.add(
                OK,
                "lifecycle",
                f"rule {aborts.rule_id!r} aborts multipart uploads left incomplete after {days} days",
            )
            if days * DAY < settings.stale_upload_after:
                findings.add(
                    NOTE,
                    "lifecycle",
                    f"that is sooner than {PREFIX}STALE_UPLOAD_AFTER ({settings.stale_upload_after} s): storage "
                    "may abort a slow upload the gateway still waits for",
                )
        else:
            findings.add(
                NOTE,
                "lifecycle",
                "no rule aborts incomplete multipart uploads: the gateway's sweeper aborts those left behind while "
                "it runs; a rule AbortIncompleteMultipartUpload (after 7 days, say) is a safety net should the "
                "gateway be gone for good",
            )
    if versions_kept and not settings.object_lock:
        if expires_versions is not None:
            findings.add(
                OK,
                "versioning",
                f"on; rule {expires_versions.rule_id!r} expires old versions after "
                f"{expires_versions.noncurrent_days} days",
            )
        else:
            findings.add(
                WARNING,
                "versioning",
                "on, and no rule expires old versions: each delete (retention's too) leaves the deleted version "
                "behind, which storage keeps and bills. Add a lifecycle rule expiring noncurrent versions "
                "(NoncurrentVersionExpiration) and expired delete markers, or suspend versioning",
            )


def report(findings: Findings, settings: Settings) -> list[str]:
    """The lines `bucket check` prints: what was checked, each finding (word, topic, text), the verdict."""
    lines = [
        f"Bucket {settings.s3_bucket!r} at {endpoint_of(settings)} (region {settings.s3_region}, "
        f"{settings.s3_addressing} addressing, key prefix {settings.s3_prefix or 'none'}, OBJECT_LOCK "
        f"{'on' if settings.object_lock else 'off'}):"
    ]
    for finding in findings:
        lines.append(
            textwrap.fill(
                f"{finding.topic}: {finding.text}",
                width=110,
                initial_indent=f"  {finding.word:<13}",
                subsequent_indent=" " * 15,
                break_on_hyphens=False,
                break_long_words=False,
            )
        )
    lines.append(f"Verdict: {verdict(findings)}.")
    return lines


def verdict(findings: Findings) -> str:
    counts = {word: sum(1 for finding in findings if finding.word == word) for word in WORDS}
    if counts[CANNOT]:
        return f"cannot work with these settings: {counts[CANNOT]} problem(s) above, each with its fix"
    if counts[WARNING]:
        return f"usable with these settings, {counts[WARNING]} warning(s) above"
    return "usable with these settings"
