"""`offsite-gateway`: serve the API, manage instances and their tokens, the database's schema, the bucket; report.

Exit codes: 0 done, 1 failed (storage, database, unknown instance), 2 bad usage or configuration (`serve`: also
settings the bucket cannot serve, such as OBJECT_LOCK on a bucket without Object Lock).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from . import auth
from .config import ConfigError, Settings, load_settings, parse_duration, parse_size
from .store import DuplicateInstance, Instance, Store, UnknownInstance, create_store

if TYPE_CHECKING:
    from aiohttp import web

# The web app and the S3 client (aiohttp, botocore: about a second of imports) are imported by the commands
# that use them, so that `instance ...` answers at once.

_LOGGER = logging.getLogger("offsite_gateway")

EXIT_FAILED = 1
EXIT_USAGE = 2
STARTUP_CHECK_TIMEOUT = 10  # seconds `serve` gives storage to answer its start-up check


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="TOML file with the settings in lower case (s3_endpoint = ...); the environment overrides it",
    )
    parser = argparse.ArgumentParser(
        prog="offsite-gateway",
        description="Offsite Backup gateway: signs upload URLs for Home Assistant instances.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", parents=[common], help="serve the HTTP API")

    instance = commands.add_parser("instance", parents=[common], help="manage instances and their tokens")
    instance_commands = instance.add_subparsers(dest="instance_command", required=True, metavar="ACTION")
    add = instance_commands.add_parser(
        "add", parents=[common], help="create an instance; prints its token (once) on the last line"
    )
    add.add_argument("name")
    instance_commands.add_parser("list", parents=[common], help="list instances")
    revoke = instance_commands.add_parser("revoke", parents=[common], help="revoke an instance's token")
    revoke.add_argument("name")
    rotate = instance_commands.add_parser(
        "rotate",
        parents=[common],
        help="give an instance a new token (same id, same backups; the old token is refused at once); "
        "prints it (once) on the last line",
    )
    rotate.add_argument("name")
    policy = instance_commands.add_parser(
        "set",
        parents=[common],
        help="set an instance's policy (quota, retention, delete protection, expected backup interval); "
        "`default` puts a field back to the gateway's setting",
    )
    policy.add_argument("name")
    policy.add_argument("--quota", metavar="SIZE", help="bytes stored at most (KiB/MiB/GiB/TiB; 0: none)")
    for option, what in (
        ("--keep-last", "the N newest backups"),
        ("--keep-daily", "the newest backup of each of the last N days that have one (UTC)"),
        ("--keep-weekly", "the newest backup of each of the last N ISO weeks that have one"),
        ("--keep-monthly", "the newest backup of each of the last N months that have one"),
        ("--protect-days", "the instance's token cannot delete a backup younger than N days"),
    ):
        policy.add_argument(option, metavar="N", help=f"keep {what}" if "keep" in option else what)
    policy.add_argument(
        "--expect-every",
        metavar="DURATION",
        help="the watchdog expects a backup this often (36h, 2d, 90m); `off`: not watched",
    )

    backup = commands.add_parser("backup", parents=[common], help="backups, as the operator")
    backup_commands = backup.add_subparsers(dest="backup_command", required=True, metavar="ACTION")
    delete = backup_commands.add_parser(
        "delete",
        parents=[common],
        help="delete a backup (archive, manifest, row), whatever its delete protection and Object Lock",
    )
    delete.add_argument("backup_id", metavar="ID")

    database = commands.add_parser("db", parents=[common], help="the database's schema")
    database_commands = database.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    database_commands.add_parser(
        "upgrade", parents=[common], help="apply the pending schema migrations (serve also does, at start)"
    )
    database_commands.add_parser(
        "status", parents=[common], help="show the schema's version and the migrations pending"
    )
    reindex = commands.add_parser(
        "reindex",
        parents=[common],
        help="rebuild the database's instances, backups and policies from the manifests in the bucket "
        "(after the database is lost or restored from an older dump); then `instance rotate NAME` issues each "
        "re-created instance's token",
    )
    reindex.add_argument(
        "--prune-missing",
        action="store_true",
        help="remove the completed backups the database lists whose archive is gone from the bucket "
        "(without it they are only reported)",
    )

    report = commands.add_parser(
        "report",
        parents=[common],
        help="every instance's state, last success, usage and quota on one screen (a daily cron mail)",
    )
    report.add_argument("--json", action="store_true", help="everything, as JSON")
    report.add_argument(
        "--problems",
        action="store_true",
        help="only the instances late or near their quota (and the summary)",
    )

    bucket = commands.add_parser("bucket", parents=[common], help="storage bucket (for local setups)")
    bucket_commands = bucket.add_subparsers(dest="bucket_command", required=True, metavar="ACTION")
    bucket_commands.add_parser(
        "create",
        parents=[common],
        help="create the configured bucket (with Object Lock if OBJECT_LOCK is on)",
    )
    bucket_commands.add_parser(
        "check",
        parents=[common],
        help="report what the bucket supports (versioning, Object Lock, lifecycle, the permissions a backup "
        "needs) and what that means for the settings",
    )
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # botocore's debug logs print request URLs and headers: keep them out of our logs at any level.
    logging.getLogger("botocore").setLevel(max(logging.INFO, getattr(logging, level)))
    logging.getLogger("aiobotocore").setLevel(max(logging.INFO, getattr(logging, level)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway CLI; return the exit code."""
    args = _parser().parse_args(argv)
    config_file: Path | None = getattr(args, "config", None)
    needs_storage = args.command in ("serve", "bucket", "reindex", "backup")
    try:
        settings = load_settings(os.environ, config_file, require_storage=needs_storage)
    except ConfigError as err:
        print(f"offsite-gateway: configuration error: {err}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(settings.log_level)
    try:
        if args.command == "serve":
            return asyncio.run(serve(settings))
        if args.command == "bucket":
            if args.bucket_command == "check":
                return asyncio.run(_bucket_check(settings))
            return asyncio.run(_bucket_create(settings))
        if args.command == "reindex":
            return asyncio.run(_reindex(settings, prune_missing=args.prune_missing))
        if args.command == "backup":
            return asyncio.run(_backup_delete(settings, args.backup_id))
        if args.command == "report":
            return asyncio.run(_report(settings, as_json=args.json, problems=args.problems))
        if args.command == "db":
            return asyncio.run(
                _db_upgrade(settings) if args.db_command == "upgrade" else _db_status(settings)
            )
        if args.instance_command == "add":
            return asyncio.run(_instance_add(settings, args.name))
        if args.instance_command == "list":
            return asyncio.run(_instance_list(settings))
        if args.instance_command == "rotate":
            return asyncio.run(_instance_rotate(settings, args.name))
        if args.instance_command == "set":
            try:
                changes = _policy_changes(args)
            except ValueError as err:
                print(f"offsite-gateway: {err}", file=sys.stderr)
                return EXIT_USAGE
            return asyncio.run(_instance_set(settings, args.name, changes))
        return asyncio.run(_instance_revoke(settings, args.name))
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as err:
        print(f"offsite-gateway: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED


@contextlib.asynccontextmanager
async def _open_store(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Store]:
    store = create_store(settings)
    await store.open(migrate=migrate)
    try:
        yield store
    finally:
        await store.close()


async def _instance_add(settings: Settings, name: str) -> int:
    try:
        auth.validate_instance_name(name)
    except ValueError as err:
        print(f"offsite-gateway: {err}", file=sys.stderr)
        return EXIT_USAGE
    async with _open_store(settings) as store:
        try:
            instance, token = await auth.add_instance(store, name)
        except DuplicateInstance:
            print(
                f"offsite-gateway: an active instance is already named {name!r} (revoke it first to replace it)",
                file=sys.stderr,
            )
            return EXIT_FAILED
    print(f"Instance {instance.name!r} created, id {instance.id}.")
    print("Its token follows, shown this once: paste it into Home Assistant.")
    print(token)
    return 0


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _size_text(size: int | None) -> str:
    if size is None:
        return "none"
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def _policy_text(settings: Settings, instance: Instance) -> str:
    """The policy in force, `*` after each field the operator set for this instance."""
    from .policy import policy_for  # noqa: PLC0415
    from .watchdog import expect_every_for  # noqa: PLC0415

    policy, own = policy_for(instance, settings), instance.policy

    def mark(name: str) -> str:
        return "*" if getattr(own, name) is not None else ""

    return (
        f"quota={_size_text(policy.quota_bytes)}{mark('quota_bytes')} "
        f"keep-last={policy.keep_last}{mark('keep_last')} keep-daily={policy.keep_daily}{mark('keep_daily')} "
        f"keep-weekly={policy.keep_weekly}{mark('keep_weekly')} "
        f"keep-monthly={policy.keep_monthly}{mark('keep_monthly')} "
        f"protect-days={policy.protect_days}{mark('protect_days')} "
        f"expect-every={_duration_text(expect_every_for(instance, settings))}{mark('expect_every')}"
    )


def _duration_text(seconds: int) -> str:
    from .messages import duration_text  # noqa: PLC0415

    return duration_text(seconds).replace(" ", "") if seconds else "off"


def _watch_columns(
    settings: Settings, instance: Instance, last_success: float | None, now: float
) -> list[str]:
    """STATE, LAST SUCCESS and ALERTS of `instance list` (the notify URL without its path and query)."""
    from .messages import redact_url  # noqa: PLC0415
    from .watchdog import expectation  # noqa: PLC0415

    if instance.revoked_at is not None:
        return ["-", "-", "-"]
    expected = expectation(instance, last_success, settings, now)
    state = expected.state
    if expected.due_at is not None and now > expected.due_at:
        state += " " + _duration_text(round(now - expected.due_at))
    notify = instance.notify
    alerts = "-" if notify is None else f"{notify.format} {redact_url(notify.url)}"
    return [state, _when(last_success) if last_success is not None else "-", alerts]


async def _instance_list(settings: Settings) -> int:
    async with _open_store(settings) as store:
        instances = await store.list_instances()
        activity = await store.activity()
    if not instances:
        print("No instances yet: offsite-gateway instance add NAME")
        return 0
    now = time.time()
    watch = {
        instance.id: _watch_columns(
            settings, instance, activity[instance.id].last_success if instance.id in activity else None, now
        )
        for instance in instances
    }
    width = max(len("NAME"), *(len(instance.name) for instance in instances))
    state_width = max(len("STATE"), *(len(columns[0]) for columns in watch.values()))
    alerts_width = max(len("ALERTS"), *(len(columns[2]) for columns in watch.values()))
    print(
        f"{'ID':<32}  {'NAME':<{width}}  {'CREATED':<20}  {'STATUS':<28}  {'STATE':<{state_width}}  "
        f"{'LAST SUCCESS':<20}  {'ALERTS':<{alerts_width}}  POLICY (* set for this instance)"
    )
    for instance in instances:
        status = "active" if instance.revoked_at is None else f"revoked {_when(instance.revoked_at)}"
        state, last, alerts = watch[instance.id]
        print(
            f"{instance.id:<32}  {instance.name:<{width}}  {_when(instance.created_at):<20}  {status:<28}  "
            f"{state:<{state_width}}  {last:<20}  {alerts:<{alerts_width}}  {_policy_text(settings, instance)}"
        )
    return 0


async def _report(settings: Settings, *, as_json: bool, problems: bool) -> int:
    from . import report  # noqa: PLC0415

    async with _open_store(settings) as store:
        instances = await store.list_instances()
        activity = await store.activity()
    now = time.time()
    lines = report.report_lines(settings, instances, activity, now)
    print((report.as_json if as_json else report.as_text)(lines, now, problems=problems))
    return 0


_POLICY_OPTIONS = {
    "quota": "quota_bytes",
    "keep_last": "keep_last",
    "keep_daily": "keep_daily",
    "keep_weekly": "keep_weekly",
    "keep_monthly": "keep_monthly",
    "protect_days": "protect_days",
    "expect_every": "expect_every",
}


def _policy_changes(args: argparse.Namespace) -> dict[str, int | None]:
    """The fields `instance set` was given: a value, or None for `default`. ValueError names a bad one."""
    changes: dict[str, int | None] = {}
    for option, field in _POLICY_OPTIONS.items():
        raw: str | None = getattr(args, option)
        if raw is None:
            continue
        flag = "--" + option.replace("_", "-")
        if raw.strip().lower() == "default":
            changes[field] = None
            continue
        try:
            if option == "expect_every":
                value = parse_duration(raw)
            else:
                value = parse_size(raw) if option == "quota" else int(raw.strip())
        except ValueError:
            what = {"quota": "a size such as 200GiB", "expect_every": "a duration such as 36h or 2d, `off`"}
            raise ValueError(
                f"{flag} {raw!r}: expected {what.get(option, 'a whole number')}, or `default`"
            ) from None
        if value < 0 or value > (
            1 << 62 if option == "quota" else 10**8 if option == "expect_every" else 36_500
        ):
            raise ValueError(f"{flag} {raw!r} is out of range")
        changes[field] = value
    if not changes:
        raise ValueError(
            "nothing to set: give --quota, --keep-last, --keep-daily, --keep-weekly, "
            "--keep-monthly, --protect-days or --expect-every"
        )
    return changes


async def _instance_set(settings: Settings, name: str, changes: dict[str, int | None]) -> int:
    from .policy import policy_for  # noqa: PLC0415

    name = name.strip()
    async with _open_store(settings) as store:
        current = await store.set_policy(name, {})
        if current is None:
            print(f"offsite-gateway: no active instance is named {name!r}", file=sys.stderr)
            return EXIT_FAILED
        merged = dataclasses.replace(current.policy, **changes)
        if not policy_for(dataclasses.replace(current, policy=merged), settings).keeps_something():
            print(
                "offsite-gateway: that policy keeps no backup: at least one of --keep-last, --keep-daily, "
                "--keep-weekly, --keep-monthly must be more than 0",
                file=sys.stderr,
            )
            return EXIT_USAGE
        instance = await store.set_policy(name, changes)
    if instance is None:  # revoked meanwhile
        print(f"offsite-gateway: no active instance is named {name!r}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Instance {name!r}: {_policy_text(settings, instance)}")
    await _record_policy(settings, instance)
    return 0


async def _record_policy(settings: Settings, instance: Instance) -> None:
    """Write the instance's policy to the bucket (`instance.json`), so that `reindex` brings it back after the
    database is lost or restored from an older dump. The policy stands whatever happens here."""
    from . import manifest  # noqa: PLC0415
    from .storage import Storage  # noqa: PLC0415

    later = "the bucket records it with the instance's next backup"
    if not (settings.s3_bucket and settings.s3_access_key and settings.s3_secret_key):
        print(f"Storage is not configured here: {later}.")
        return
    storage = Storage(settings)
    try:
        await storage.open()
        key = manifest.instance_manifest_key(settings.s3_prefix, instance.id)
        await storage.put_object(key, manifest.build_instance(instance))
    except Exception as err:  # reported: the database has the policy whatever storage said
        print(f"Could not write the policy to the bucket ({type(err).__name__}): {later}.")
    finally:
        await storage.close()


async def _backup_delete(settings: Settings, backup_id: str) -> int:
    """The operator deletes a backup: not bound by its instance's delete protection (nor by Object Lock, which
    the gateway bypasses in governance mode)."""
    from . import domain  # noqa: PLC0415
    from .errors import ApiError  # noqa: PLC0415
    from .metrics import Metrics  # noqa: PLC0415
    from .storage import Storage  # noqa: PLC0415

    storage = Storage(settings)
    await storage.open()
    try:
        async with _open_store(settings) as store:
            backup_id = backup_id.strip()
            if await store.get_backup(backup_id) is None:
                print(f"offsite-gateway: no backup has the id {backup_id!r}", file=sys.stderr)
                return EXIT_FAILED
            context = domain.Context(settings, store, storage, Metrics())
            try:
                backup = await domain.delete(context, backup_id, owner=None)
            except ApiError as err:
                if err.code == "storage_error":
                    print(
                        f"offsite-gateway: storage did not delete backup {backup_id}; the gateway's sweeper "
                        "retries it",
                        file=sys.stderr,
                    )
                else:
                    print(f"offsite-gateway: backup {backup_id}: {err.message}", file=sys.stderr)
                return EXIT_FAILED
    finally:
        await storage.close()
    if backup is None:
        print(f"Backup {backup_id} was deleted meanwhile.")
    else:
        print(f"Backup {backup.id} of instance {backup.instance_id} deleted.")
    return 0


async def _instance_revoke(settings: Settings, name: str) -> int:
    async with _open_store(settings) as store:
        revoked = await auth.revoke_instance(store, name)
        if revoked is None:
            print(f"offsite-gateway: no active instance is named {name!r}", file=sys.stderr)
            return EXIT_FAILED
        print(f"Instance {name!r} revoked: its token is refused from now on.")
        # Its part URLs signed already would work until they expire: its upload goes, now if storage is at hand.
        later = "its upload in progress, if any, is marked failed; the gateway's sweeper aborts it in storage"
        if not (settings.s3_bucket and settings.s3_access_key and settings.s3_secret_key):
            print(f"Storage is not configured here: {later} on its next run.")
            return 0
        try:
            aborted = await _abort_uploads(settings, store, revoked.id)
        except Exception as err:  # the revocation stands; only the abort waits
            print(f"Could not reach storage ({type(err).__name__}): {later} on its next run.")
            return 0
    if aborted:
        print("Its upload in progress was aborted: its part URLs are refused from now on.")
    return 0


async def _abort_uploads(settings: Settings, store: Store, instance_id: str) -> int:
    from .domain import abort_instance_uploads  # noqa: PLC0415
    from .storage import Storage  # noqa: PLC0415

    storage = Storage(settings)
    await storage.open()
    try:
        return await abort_instance_uploads(store, storage, settings, instance_id)
    finally:
        await storage.close()


async def _instance_rotate(settings: Settings, name: str) -> int:
    name = name.strip()
    async with _open_store(settings) as store:
        try:
            token = await auth.rotate_token(store, name)
        except UnknownInstance:
            revoked = any(instance.name == name for instance in await store.list_instances())
            if revoked:
                print(
                    f"offsite-gateway: instance {name!r} is revoked: a revoked instance gets no new token "
                    f"(offsite-gateway instance add {name!r} creates a new instance, with a new id)",
                    file=sys.stderr,
                )
            else:
                print(f"offsite-gateway: no active instance is named {name!r}", file=sys.stderr)
            return EXIT_FAILED
        active = [i for i in await store.list_instances() if i.name == name and i.revoked_at is None]
    where = f", id {active[0].id}" if active else ""
    print(f"Instance {name!r}{where} has a new token: its old token is refused from now on.")
    print("The new token follows, shown this once: paste it into Home Assistant (reauthenticate).")
    print(token)
    return 0


async def _db_status(settings: Settings) -> int:
    async with _open_store(settings, migrate=False) as store:
        status = await store.schema_status()
        where = store.describe()
    print(f"Database: {where}")
    if not status.pending:
        print(f"Schema version {status.current}: up to date.")
        return 0
    print(
        f"Schema version {status.current} of {status.latest}: {len(status.pending)} migration(s) pending "
        "(applied by `offsite-gateway db upgrade`, or when the gateway starts):"
    )
    for version, description in status.pending:
        print(f"  {version}  {description}")
    return 0


async def _db_upgrade(settings: Settings) -> int:
    async with _open_store(settings, migrate=False) as store:
        applied = await store.migrate()
        status = await store.schema_status()
        where = store.describe()
    for version, description in applied:
        print(f"Applied migration {version}: {description}")
    print(f"Database: {where}: schema version {status.current}, up to date.")
    return 0


async def _reindex(settings: Settings, *, prune_missing: bool = False) -> int:
    from .reindex import reindex  # noqa: PLC0415
    from .storage import Storage  # noqa: PLC0415

    storage = Storage(settings)
    await storage.open()
    try:
        async with _open_store(settings) as store:
            report = await reindex(store, storage, settings, prune_missing=prune_missing)
    finally:
        await storage.close()
    print(
        f"Read {report.manifests} manifest(s): {report.backups_added} backup(s) added, "
        f"{report.backups_known} already known, {len(report.skipped)} skipped."
    )
    if report.backups_promoted:
        print(
            f"{len(report.backups_promoted)} backup(s) the database held as uploading or failed completed in "
            "storage: now completed: " + ", ".join(report.backups_promoted)
        )
    if report.policies_restored:
        print(
            f"Restored the policy of {len(report.policies_restored)} instance(s) from the bucket (newer than the "
            "database's): " + ", ".join(sorted(_quoted(name) for name in report.policies_restored))
        )
    if report.missing:
        if prune_missing:
            print(
                f"Removed {len(report.pruned)} of {len(report.missing)} listed backup(s) whose archive is gone: "
                + ", ".join(report.pruned)
            )
        else:
            print(
                f"{len(report.missing)} listed backup(s) have no archive in the bucket any more (deleted after "
                "the database's copy was made?): " + ", ".join(report.missing)
            )
            print("Run `offsite-gateway reindex --prune-missing` to remove them.")
    for key, why in sorted(report.skipped.items()):
        print(f"  skipped {key if key.isprintable() else repr(key)}: {why}")
    if report.manifests_written:
        print(f"Wrote {report.manifests_written} missing manifest(s) of backups the database knew.")
    if report.instances_revoked:
        print(
            f"{len(report.instances_revoked)} older instance(s) sharing a name with a newer one came back revoked: "
            + ", ".join(report.instances_revoked)
        )
    if report.instances_added:
        print(f"Re-created {len(report.instances_added)} instance(s), each without a usable token yet:")
        for name in sorted(report.instances_added):
            print(f"  offsite-gateway instance rotate {_quoted(name)}")
        print("Run those, and give each token to its Home Assistant (it asks to reauthenticate).")
    return 0


def _quoted(name: str) -> str:
    import shlex  # noqa: PLC0415

    return shlex.quote(name)


async def _bucket_create(settings: Settings) -> int:
    from .bucket import create  # noqa: PLC0415
    from .storage import Storage  # noqa: PLC0415

    storage = Storage(settings)
    await storage.open()
    try:
        done, message = await create(storage, settings)
    finally:
        await storage.close()
    if not done:
        print(f"offsite-gateway: {message}", file=sys.stderr)
        return EXIT_FAILED
    print(message)
    return 0


async def _bucket_check(settings: Settings) -> int:
    from .bucket_check import check_bucket, report  # noqa: PLC0415
    from .storage import Storage  # noqa: PLC0415

    storage = Storage(settings)
    await storage.open()
    try:
        findings = await check_bucket(storage, settings)
    finally:
        await storage.close()
    print("\n".join(report(findings, settings)))
    return 0 if findings.usable else EXIT_FAILED


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT (or `stop` is set)."""
    from aiohttp import web  # noqa: PLC0415

    from .app import create_app, make_runner  # noqa: PLC0415
    from .limits import (  # noqa: PLC0415
        LISTEN_BACKLOG,
        FileLimitTooLow,
        connection_budget,
        listening_socket,
        open_files,
        raise_file_limit,
    )
    from .server import AcceptErrorLog  # noqa: PLC0415

    # Every connection holds a file descriptor: the limit raised as far as allowed, connections capped below it.
    try:
        budget = connection_budget(settings.max_connections, raise_file_limit(), open_files())
    except FileLimitTooLow as err:
        print(f"offsite-gateway: cannot start: {err}", file=sys.stderr)
        return EXIT_FAILED
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    AcceptErrorLog().install(loop)
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    app = create_app(settings)
    runner = make_runner(app, max_connections=budget.max_connections)
    metrics_runner: web.AppRunner | None = None
    try:
        await runner.setup()
    except Exception as err:
        print(f"offsite-gateway: cannot start: {type(err).__name__}: {err}", file=sys.stderr)
        await runner.cleanup()
        return EXIT_FAILED
    try:
        # A longer queue of connections waiting to be accepted than aiohttp's 128: many instances connecting at
        # once must not see SYNs dropped (their connection attempts would be retried only after 1, 3, 7 s). But
        # accepted a few at a time, each holding a file descriptor at once (see limits).
        try:
            sock = listening_socket(settings.listen_host, settings.listen_port)
        except OSError as err:
            reason = err.strerror or str(err)
            print(f"offsite-gateway: cannot listen on {settings.listen}: {reason}", file=sys.stderr)
            return EXIT_FAILED
        site = web.SockSite(runner, sock, backlog=budget.accept_batch)
        await site.start()
        sock.listen(LISTEN_BACKLOG)
        for address in runner.addresses:
            _LOGGER.info("Listening on http://%s:%s", *address[:2])
        try:
            metrics_runner = await _serve_metrics(app, settings)
        except OSError as err:
            print(f"offsite-gateway: cannot listen on METRICS_LISTEN: {err.strerror or err}", file=sys.stderr)
            return EXIT_FAILED
        _LOGGER.info(
            "Serving up to %d connections (open-file limit %d; over it, idle ones are closed)",
            min(settings.max_connections, budget.max_connections),
            budget.file_limit,
        )
        refusal = await _check_storage_at_start(app)
        if refusal is not None:
            print(f"offsite-gateway: cannot serve: {refusal}", file=sys.stderr)
            return EXIT_USAGE
        await stop.wait()
        _LOGGER.info("Stopping")
    finally:
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await runner.cleanup()
    return 0


async def _serve_metrics(app: web.Application, settings: Settings) -> web.AppRunner | None:
    """The metrics listener (`METRICS_LISTEN`), if one is set: `/metrics` alone, off the API's listener."""
    from aiohttp import web  # noqa: PLC0415

    from .app import METRICS_CONNECTIONS, create_metrics_app, make_runner  # noqa: PLC0415

    if settings.metrics_listen is None:
        if settings.metrics_token is None:
            _LOGGER.info("/metrics is not served: set METRICS_LISTEN or METRICS_TOKEN to serve it")
        return None
    runner = make_runner(create_metrics_app(app), max_connections=METRICS_CONNECTIONS)
    await runner.setup()
    try:
        host, port = settings.metrics_listen
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    for address in runner.addresses:
        _LOGGER.info("Serving /metrics on http://%s:%s", *address[:2])
    return runner


async def _check_storage_at_start(app: web.Application) -> str | None:
    """Log what is wrong with storage (see `bucket.startup_check`); the reason not to serve at all, if any."""
    from .app import SETTINGS, STORAGE  # noqa: PLC0415
    from .bucket import startup_check  # noqa: PLC0415

    try:
        async with asyncio.timeout(STARTUP_CHECK_TIMEOUT):
            check = await startup_check(app[STORAGE], app[SETTINGS])
    except TimeoutError:
        _LOGGER.warning(
            "Storage is not reachable yet (GET /readyz reports it): no answer within %d s",
            STARTUP_CHECK_TIMEOUT,
        )
        return None
    for level, line in check.lines:
        _LOGGER.log(level, "%s", line)
    return check.refuse
