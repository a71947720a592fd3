"""Several gateway nodes over one PostgreSQL database: no rule lives in one process's memory.

Two real `offsite-gateway serve` processes on one database and one bucket (moto) take creates, completes, aborts
and deletes for the same instances at once, each call sent to either node at random (and some to both at once).
Afterwards: never more than one upload in progress per instance (sampled in the database all along), every backup
completed exactly once (the answers and both nodes' counters agree), no multipart upload the database does not
know, no row without its archive and manifest, no archive without its row. Then both nodes' sweepers at once.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from offsite_gateway import auth
from offsite_gateway.config import load_settings
from offsite_gateway.manifest import SUFFIX
from offsite_gateway.store import create_store
from tests.gateway.api import Api
from tests.helpers.gateway import GatewayDatabase, run_gateway, selected_stores
from tests.helpers.postgres import PostgresCluster
from tests.helpers.servers import S3Server, free_port

INSTANCES = 4
WORKERS_PER_INSTANCE = 3
MAX_ROUNDS = 40  # per worker, at most
TARGET_COMPLETES = 30  # the workers stop once this many completes succeeded
EXPECTED = {200, 201, 204, 404, 409}


@pytest.fixture
def pg_database(request: pytest.FixtureRequest) -> Iterator[GatewayDatabase]:
    if "postgresql" not in selected_stores():
        pytest.skip("several nodes need PostgreSQL (OFFSITE_TEST_STORES leaves it out)")
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    url = cluster.create_database()
    try:
        yield GatewayDatabase.postgresql(url, cluster)
    finally:
        cluster.drop_database(url)


@dataclass
class Node:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


METRICS_TOKEN = "nodes-metrics-token-0123"


def _env(s3: S3Server, bucket: str, database: GatewayDatabase, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFSITE_GATEWAY_")}
    env.update(s3.gateway_env(bucket))
    env["OFFSITE_GATEWAY_DB"] = database.setting
    env["OFFSITE_GATEWAY_METRICS_TOKEN"] = METRICS_TOKEN
    env.update({f"OFFSITE_GATEWAY_{name}": value for name, value in settings.items()})
    return env


@asynccontextmanager
async def two_nodes(
    s3: S3Server, bucket: str, database: GatewayDatabase, tmp_path: Path, **settings: str
) -> AsyncIterator[list[Node]]:
    """Two `offsite-gateway serve` processes on free ports, stopped (SIGTERM) at the end."""
    nodes: list[Node] = []
    try:
        for number in range(2):
            port = free_port()
            env = _env(s3, bucket, database, LISTEN=f"127.0.0.1:{port}", **settings)
            log = tmp_path / f"node{number}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(  # noqa: ASYNC220 - started, not waited for
                    [sys.executable, "-m", "offsite_gateway", "serve"], env=env, stdout=out, stderr=out
                )
            nodes.append(Node(f"http://127.0.0.1:{port}", process, log))
        async with aiohttp.ClientSession() as session:
            for node in nodes:
                deadline = time.monotonic() + 60
                while True:
                    assert node.process.poll() is None, node.log.read_text()
                    try:
                        async with session.get(node.url + "/healthz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    assert time.monotonic() < deadline, node.log.read_text()
                    await asyncio.sleep(0.1)
        yield nodes
    finally:
        for node in nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in nodes:
            code = await asyncio.to_thread(node.process.wait, 30)
            assert code == 0, node.log.read_text()[-3000:]


async def _add_instances(database: GatewayDatabase, count: int) -> list[tuple[str, str]]:
    store = create_store(load_settings({"OFFSITE_GATEWAY_DB": database.setting}, require_storage=False))
    await store.open()
    try:
        return [
            (instance.id, token)
            for instance, token in [await auth.add_instance(store, f"home-{n}") for n in range(count)]
        ]
    finally:
        await store.close()


async def _metric(session: aiohttp.ClientSession, node: Node, name: str) -> float:
    async with session.get(
        node.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    ) as resp:
        text = await resp.text()
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@dataclass
class Ledger:
    """What the clients were told."""

    completed: Counter[str] = field(default_factory=Counter)  # backup id -> 200s to its complete
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: list[tuple[str, str, int, Any]] = field(default_factory=list)

    def note(self, what: str, path: str, status: int, body: Any) -> None:
        self.statuses[what, status] += 1
        if status not in EXPECTED:
            self.unexpected.append((what, path, status, body))


async def _race(nodes: list[Node], tokens: list[str], ledger: Ledger) -> None:
    rng = random.Random(11)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        def api(token: str) -> Api:
            return Api(session, rng.choice(nodes).url, token)

        async def call(token: str, what: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
            status, answer = await api(token).call(method, path, body)
            ledger.note(what, path, status, answer)
            return status, answer

        async def complete(token: str, backup_id: str, parts: list[dict[str, Any]]) -> None:
            status, _ = await call(
                token, "complete", "POST", f"/v1/backups/{backup_id}/complete", {"parts": parts}
            )
            if status == 200:
                ledger.completed[backup_id] += 1

        async def worker(token: str) -> None:
            for _ in range(MAX_ROUNDS):
                if ledger.statuses["complete", 200] >= TARGET_COMPLETES:
                    break
                status, body = await call(token, "create", "POST", "/v1/backups", {"name": "n", "size": 7})
                if status == 409 and body["error"]["code"] == "upload_in_progress":
                    if rng.random() < 0.2:  # the owner may be completing it right now, on the other node
                        other = body["error"]["backup_id"]
                        await call(token, "abort", "DELETE", f"/v1/backups/{other}/upload")
                    else:
                        await asyncio.sleep(rng.uniform(0, 0.02))
                    continue
                if status != 201:
                    continue
                backup_id = body["id"]
                status, signed = await call(
                    token, "sign", "POST", f"/v1/backups/{backup_id}/parts", {"part_numbers": [1]}
                )
                if status != 200:
                    continue
                async with session.put(signed["parts"][0]["url"], data=b"payload") as resp:
                    if resp.status != 200:  # aborted meanwhile by another worker (moto answers 404 or 500)
                        continue
                    etag = resp.headers["ETag"]
                parts = [{"part_number": 1, "etag": etag}]
                roll = rng.random()
                if roll < 0.45:
                    await complete(token, backup_id, parts)
                elif roll < 0.65:  # the same complete sent twice, to both nodes at once
                    await asyncio.gather(complete(token, backup_id, parts), complete(token, backup_id, parts))
                elif roll < 0.8:  # complete and abort at once
                    await asyncio.gather(
                        complete(token, backup_id, parts),
                        call(token, "abort", "DELETE", f"/v1/backups/{backup_id}/upload"),
                    )
                elif roll < 0.9:  # complete and delete at once
                    await asyncio.gather(
                        complete(token, backup_id, parts),
                        call(token, "delete", "DELETE", f"/v1/backups/{backup_id}"),
                    )
                else:
                    await call(token, "abort", "DELETE", f"/v1/backups/{backup_id}/upload")
                if (
                    rng.random() < 0.3
                ):  # delete an older backup, while retention may delete it on the other node
                    status, listed = await call(token, "list", "GET", "/v1/backups")
                    if status == 200 and listed["backups"]:
                        victim = rng.choice(listed["backups"])["id"]
                        await call(token, "delete", "DELETE", f"/v1/backups/{victim}")

        await asyncio.gather(*(worker(token) for token in tokens for _ in range(WORKERS_PER_INSTANCE)))


async def _sample_uploads(database: GatewayDatabase, stop: asyncio.Event, seen: list[Any]) -> int:
    """Look for two uploads in progress of one instance, every few milliseconds, until `stop`."""
    conn = await asyncpg.connect(database.setting)
    samples = 0
    try:
        while not stop.is_set():
            rows = await conn.fetch(
                "SELECT instance_id, count(*) FROM backups WHERE status = 'uploading' "
                "GROUP BY instance_id HAVING count(*) > 1"
            )
            seen.extend(tuple(row) for row in rows)
            samples += 1
            await asyncio.sleep(0.005)
    finally:
        await conn.close()
    return samples


async def test_two_nodes_racing_on_the_same_instances(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, pg_database: GatewayDatabase
) -> None:
    instances = await _add_instances(pg_database, INSTANCES)
    ledger = Ledger()
    overlapping: list[Any] = []
    async with two_nodes(
        moto_server, moto_bucket, pg_database, tmp_path, SWEEP_INTERVAL="0", RETENTION="2", INIT_RATE="100000"
    ) as nodes:
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_uploads(pg_database, stop, overlapping))
        try:
            await _race(nodes, [token for _, token in instances], ledger)
        finally:
            stop.set()
            samples = await sampler
        async with aiohttp.ClientSession() as session:
            counted = [
                await _metric(session, node, "offsite_gateway_backups_completed_total") for node in nodes
            ]

    # Every answer was one a client can act on; the races did happen.
    assert ledger.unexpected == []
    assert samples > 50
    assert ledger.statuses["complete", 200] >= TARGET_COMPLETES, ledger.statuses
    assert ledger.statuses["complete", 409] > 0  # lost races: a second complete, or an abort that won
    assert ledger.statuses["abort", 204] > 0
    assert ledger.statuses["create", 409] > 0
    # Never two uploads in progress of one instance.
    assert overlapping == []
    # Every backup completed exactly once: one 200 each, and both nodes' counters add up to the same.
    assert set(ledger.completed.values()) == {1}
    assert sum(counted) == len(ledger.completed)

    conn = await asyncpg.connect(pg_database.setting)
    try:
        rows = await conn.fetch("SELECT id, instance_id, status, object_key, upload_id FROM backups")
    finally:
        await conn.close()
    by_status = Counter(row["status"] for row in rows)
    assert by_status["deleting"] == 0  # storage never refused a delete here: none left half-way
    per_instance = Counter(row["instance_id"] for row in rows if row["status"] == "uploading")
    assert max(per_instance.values(), default=0) <= 1
    completed = {row["id"]: row["object_key"] for row in rows if row["status"] == "completed"}
    assert set(completed) <= set(ledger.completed)  # nothing completed that no client was told of
    assert 0 < len(completed) <= INSTANCES * 2  # retention kept the newest 2 of each

    client = moto_server.client()
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=moto_bucket).get("Contents", [])}
    archives = {key for key in keys if not key.endswith(SUFFIX)}
    # No row without its archive and manifest; no archive (nor manifest) without its row.
    assert archives == set(completed.values())
    assert {key.removesuffix(SUFFIX) for key in keys if key.endswith(SUFFIX)} == archives
    # No multipart upload the database does not hold as in progress.
    uploads = {
        (u["Key"], u["UploadId"])
        for u in client.list_multipart_uploads(Bucket=moto_bucket).get("Uploads", [])
    }
    in_progress = {(row["object_key"], row["upload_id"]) for row in rows if row["status"] == "uploading"}
    assert uploads <= in_progress


async def test_every_node_sweeps_and_each_thing_is_swept_once(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, pg_database: GatewayDatabase
) -> None:
    """Stale uploads and pending deletes, with the sweeper of both nodes running every second."""
    instances = await _add_instances(pg_database, 6)
    client = moto_server.client()
    async with (
        run_gateway(moto_server, moto_bucket, tmp_path, database=pg_database) as setup,
        aiohttp.ClientSession() as session,
    ):
        stale = [await Api(session, setup.url, token).init(10) for _, token in instances[:3]]
        done = [await Api(session, setup.url, token).upload(b"to delete") for _, token in instances[3:]]
    conn = await asyncpg.connect(pg_database.setting)
    try:  # as if storage had refused their deletes: left `deleting` for the sweeper
        await conn.execute(
            "UPDATE backups SET status = 'deleting' WHERE id = ANY($1::text[])", [b["id"] for b in done]
        )
    finally:
        await conn.close()
    assert len(client.list_multipart_uploads(Bucket=moto_bucket).get("Uploads", [])) == 3

    async with (
        two_nodes(
            moto_server, moto_bucket, pg_database, tmp_path, SWEEP_INTERVAL="1", STALE_UPLOAD_AFTER="1"
        ) as nodes,
        aiohttp.ClientSession() as session,
    ):
        deadline = time.monotonic() + 30
        while client.list_objects_v2(Bucket=moto_bucket).get("Contents") or client.list_multipart_uploads(
            Bucket=moto_bucket
        ).get("Uploads"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.5)  # a few more runs of each: nothing is swept twice
        stale_counts = [
            await _metric(session, node, 'offsite_gateway_swept_total{kind="stale"}') for node in nodes
        ]
        deleted_counts = [
            await _metric(session, node, 'offsite_gateway_swept_total{kind="deleted"}') for node in nodes
        ]
        sweeps = [await _metric(session, node, "offsite_gateway_sweeps_total") for node in nodes]
    assert sum(stale_counts) == len(stale)
    assert sum(deleted_counts) == len(done)
    assert sum(sweeps) >= 2
    conn = await asyncpg.connect(pg_database.setting)
    try:
        statuses = Counter(row[0] for row in await conn.fetch("SELECT status FROM backups"))
    finally:
        await conn.close()
    assert statuses == Counter({"failed": 3})


async def test_sweepers_started_together_take_turns(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, pg_database: GatewayDatabase
) -> None:
    """Two nodes' sweepers at the same instant: one sweeps, the other skips; each stale upload failed once."""
    async with (
        run_gateway(moto_server, moto_bucket, tmp_path, database=pg_database) as node_a,
        run_gateway(moto_server, moto_bucket, tmp_path, database=pg_database) as node_b,
        aiohttp.ClientSession() as session,
    ):
        for n in range(3):
            _, token = await node_a.add_instance(f"home-{n}")
            await Api(session, node_b.url, token).init(10)
        later = time.time() + 7 * 3600
        reports = await asyncio.gather(node_a.run_sweeper_once(later), node_b.run_sweeper_once(later))
        assert sorted(report.skipped for report in reports) == [False, True]
        assert sum(report.stale_failed for report in reports) == 3
        again = await asyncio.gather(node_a.run_sweeper_once(later), node_b.run_sweeper_once(later))
        assert sum(report.stale_failed for report in again) == 0
        assert moto_server.client().list_multipart_uploads(Bucket=moto_bucket).get("Uploads", []) == []
