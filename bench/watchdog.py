"""What the watchdog's look at every instance costs, for an operator of thousands of homes.

    .venv/bin/python bench/watchdog.py --homes 1000 10000 100000 [--backups 8] [--stores sqlite postgresql]

For each store and number of homes: a database of that many instances, each with `--backups` completed backups
(a night apart), 2 % of them late; then `Watchdog.run_once` twice, as every node runs it every WATCH_INTERVAL:
the first look records the late ones and queues their notices (no recipient set here: nothing is sent); the
second is a look with nothing to change, what every later one costs. Printed: each look's wall and CPU time (this
process: the gateway's share; the database's own CPU is PostgreSQL's), the CPU per home, and the share of one core a
node gives its looks at the default WATCH_INTERVAL (300 s), side by side in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from offsite_gateway.config import load_settings
from offsite_gateway.metrics import Metrics
from offsite_gateway.store import create_store
from offsite_gateway.watchdog import Watchdog
from tests.helpers.postgres import run_postgres

DAY = 86_400
LATE_SHARE = 0.02


def rows(homes: int, backups: int, now: float) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    instances, completed = [], []
    for number in range(homes):
        instance_id = uuid.uuid4().hex
        instances.append(
            (instance_id, f"home-{number}", uuid.uuid4().hex + uuid.uuid4().hex, now - 400 * DAY)
        )
        newest = now - (3 * DAY if number < homes * LATE_SHARE else 3600)
        for night in range(backups):
            backup_id = uuid.uuid4().hex
            at = newest - night * DAY
            completed.append(
                (backup_id, instance_id, "nightly", 10**9, None, "completed", at - 600, at, 20 << 20, 48,
                 f"{instance_id}/{backup_id}", None, "{}", at)
            )  # fmt: skip
    return instances, completed


INSERT_INSTANCE = "INSERT INTO instances (id, name, token_hash, created_at) VALUES "
INSERT_BACKUP = (
    "INSERT INTO backups (id, instance_id, name, size, sha256, status, created_at, completed_at, part_size, "
    "part_count, object_key, upload_id, metadata, last_activity) VALUES "
)


async def fill(store_kind: str, setting: str, homes: int, backups: int, now: float) -> None:
    instances, completed = rows(homes, backups, now)
    settings = load_settings({"OFFSITE_GATEWAY_DB": setting}, require_storage=False)
    store = create_store(settings)
    await store.open()  # migrated
    await store.close()
    if store_kind == "sqlite":
        import sqlite3  # noqa: PLC0415

        conn = sqlite3.connect(setting)
        with conn:
            conn.executemany(INSERT_INSTANCE + "(?, ?, ?, ?)", instances)
            conn.executemany(INSERT_BACKUP + "(" + ", ".join("?" * 14) + ")", completed)
        conn.close()
        return
    pg = await asyncpg.connect(setting)
    try:
        await pg.copy_records_to_table(
            "instances", records=instances, columns=["id", "name", "token_hash", "created_at"]
        )
        await pg.copy_records_to_table(
            "backups",
            records=completed,
            columns=["id", "instance_id", "name", "size", "sha256", "status", "created_at", "completed_at",
                     "part_size", "part_count", "object_key", "upload_id", "metadata", "last_activity"],
        )  # fmt: skip
        await pg.execute("ANALYZE")
    finally:
        await pg.close()


async def measure(store_kind: str, setting: str, homes: int, backups: int) -> dict[str, float]:
    now = time.time()
    await fill(store_kind, setting, homes, backups, now)
    settings = load_settings({"OFFSITE_GATEWAY_DB": setting}, require_storage=False)
    store = create_store(settings)
    await store.open()
    try:
        watchdog = Watchdog(settings, store, Metrics(), clock=lambda: now)
        figures: dict[str, float] = {}
        for look in ("first", "steady"):
            wall, cpu = time.perf_counter(), time.process_time()
            report = await watchdog.run_once()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(
                f"{store_kind:<10} {homes:>7} homes  {look:<6} look: {wall * 1000:8.1f} ms wall, "
                f"{cpu * 1000:8.1f} ms CPU ({cpu / homes * 1e6:5.1f} µs a home), {report.changes:>5} changes; "
                f"{cpu / settings.watch_interval:.3%} of a core at WATCH_INTERVAL={settings.watch_interval} s"
            )
            figures[f"{look}_wall_ms"] = round(wall * 1000, 1)
            figures[f"{look}_cpu_us_per_home"] = round(cpu / homes * 1e6, 2)
        return figures
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--homes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--backups", type=int, default=8)
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        if "sqlite" in args.stores:
            for homes in args.homes:
                path = os.path.join(workdir, f"w{homes}.sqlite3")
                results[f"sqlite/{homes}"] = await measure("sqlite", path, homes, args.backups)
        if "postgresql" in args.stores:
            with run_postgres() as cluster:
                for homes in args.homes:
                    url = cluster.create_database()
                    try:
                        results[f"postgresql/{homes}"] = await measure("postgresql", url, homes, args.backups)
                    finally:
                        cluster.drop_database(url)
    print(json.dumps(results, separators=(",", ":")))


if __name__ == "__main__":
    asyncio.run(main())
