"""Benchmark: a night of N homes (default 100,000) backing up through two gateway nodes on one PostgreSQL.

    .venv/bin/python bench/night.py [--homes 100000] [--window SECONDS] [--retained 7] [--parts 1] [--batch 4]
                                    [--nodes 2] [--db-pool 10] [--profile DIR] [--floor]

Everything runs on this machine, on 127.0.0.1: a PostgreSQL cluster started for the run from the machine's binaries
(tests/helpers/postgres.py, with PostgreSQL's durable defaults: fsync and synchronous commit on), `--nodes`
`offsite-gateway serve` processes on it (access log on, as deployed), and bench/s3_sink.py as storage (bodies
discarded, so the figures are the gateway's and the database's, not storage's). N instances are created in the
database beforehand (COPY, untimed), each with `--retained` completed backups of earlier nights (7 by default, the
default retention: so each complete also deletes the oldest backup, archive and manifest, as on every night but
the first; `--retained 0` measures a first night). Then each home runs what Home Assistant's upload engine does,
once, at a uniformly random instant of a `--window`-second night (a 2-hour window compressed; by default
homes / 80 seconds, the rate this 2-core VM sustains with everything on it):

    POST /v1/backups (name, size, SHA-256, Home Assistant's metadata, ~1 KB; the first `--batch` parts' URLs
    asked with it) → the next parts' URLs asked in batches of `--batch` (POST /v1/backups/{id}/parts) → each
    part PUT to storage → POST /v1/backups/{id}/complete

(so a backup of at most `--batch` parts makes no signing call: two gateway calls, as Home Assistant makes)

to a node chosen at random (a load balancer), each gateway call retried on what the engine retries (429, 5xx or no
answer) with full-jitter backoff from 1 s. The engine retries until the night's deadline; the bench stops after 6 tries
so that a gateway that cannot keep up shows as errors within the night (retries are counted, errors are calls that
failed after the last try). A backup is `--parts` parts: one small part by default (what the
per-backup cost is about; signing is ~0.1 ms per URL more, see bench/gateway_sign.py); with more, every part but the
last is 5 MiB (storage checks sizes), so keep `--homes` small then.

Printed: per call p50/p99 (of every try), errors and retries; CPU per backup (milliseconds) of the gateway processes and of PostgreSQL (all
its processes, exited backends included through the postmaster's children time), read from /proc over the night:
that figure holds on any machine, the wall times here do not (2 cores shared by everything above); backups lost (a
complete answered 200 that the database or storage does not hold); the nodes and database cores a night of
1,000,000 homes in 2 hours needs at that CPU cost. The last line is one JSON object:
`{"homes": N, "errors": 0, "lost": 0, "p99_ms": …, "gateway_cpu_ms_per_backup": …, "db_cpu_ms_per_backup": …, …}`
(`p99_ms`: the worst of the calls' p99).

`--profile DIR` runs each node under cProfile (DIR/node0.prof, …), to see where the gateway's time goes.

`--floor` then runs the same night three more times, on the same database and sink, through `--nodes`
bench/floor_node.py processes instead of the gateway: servers that do a backup's I/O and nothing else, one layer
more each time (`http`: the two requests served; `db`: and five database round trips, as many as the gateway
makes; `all`: and the three storage requests and four botocore signatures). Their CPU per backup, printed side by
side with the gateway's (`floor_cpu_ms_per_backup` and `gateway_over_floor` in the JSON), is what this stack
(aiohttp, asyncpg, botocore) costs on this machine before any of the gateway's own work: the floor a CPU goal can
be set against.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway_sign import cpu_seconds, percentile, run_sink, wait_ready  # noqa: E402
from offsite_gateway.auth import hash_token  # noqa: E402
from offsite_gateway.config import load_settings  # noqa: E402
from offsite_gateway.purger import LINGER  # noqa: E402
from offsite_gateway.store import create_store  # noqa: E402
from tests.helpers.postgres import PostgresCluster, run_postgres  # noqa: E402
from tests.helpers.servers import free_port  # noqa: E402

MIB = 1024 * 1024
PART = 5 * MIB
BUCKET = "night"
CALLS = ("create", "sign", "complete")
METADATA = {
    "addons": [{"name": "Mosquitto broker", "slug": "core_mosquitto", "version": "6.4.1"}],
    "backup_id": "",
    "date": "2026-11-26T01:13:00.000000+01:00",
    "database_included": True,
    "extra_metadata": {
        "instance_id": "",
        "with_automatic_settings": True,
        "supervisor.backup_request_date": "",
    },
    "folders": ["share", "media"],
    "homeassistant_included": True,
    "homeassistant_version": "2026.11.3",
    "name": "Automatic backup 2026.11.3",
    "protected": True,
    "size": 0,
}
BACKUP_COLUMNS = [
    "id",
    "instance_id",
    "name",
    "size",
    "sha256",
    "status",
    "created_at",
    "completed_at",
    "part_size",
    "part_count",
    "object_key",
    "upload_id",
    "metadata",
]
MAX_TRIES = 6  # the bench's cap; the engine retries a transient failure until its deadline (upload_retry)
RETRIED = {0, 429, 500, 502, 503, 504}  # 0: no answer (connection error, timeout)
TARGET_HOMES = 1_000_000
TARGET_WINDOW = 2 * 3600
FLOOR_LAYERS = ("http", "db", "all")  # bench/floor_node.py --layers, each a layer more
NODE_BUSY = 0.6  # a node is sized to run at most 60 % of its core at the night's rate, for latency headroom


def process_cpu(pid: int) -> float:
    """CPU seconds of a process and of its children it has reaped (utime, stime, cutime, cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


# `--profile`: each node under cProfile counting CPU time (not wall time: on a busy machine a process waiting for
# the CPU would otherwise be charged to whatever call it was in), dumped when the node stops.
PROFILE_RUNNER = """
import cProfile, sys, time
from offsite_gateway.cli import main
profile = cProfile.Profile(time.process_time)
try:
    profile.runcall(main, ["serve"])
finally:
    profile.dump_stats(sys.argv[1])
"""


def rss(pid: int) -> float:
    """Resident memory of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def postgres_cpu(cluster: PostgresCluster) -> tuple[float, float]:
    """User and system CPU seconds of the whole cluster: the postmaster, its live children, and those that
    exited (reaped by the postmaster)."""
    postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    user = (int(fields[11]) + int(fields[13])) / tick
    system = (int(fields[12]) + int(fields[14])) / tick
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == postmaster:  # ppid
            user += int(fields[11]) / tick
            system += int(fields[12]) / tick
    return user, system


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {call: [] for call in CALLS})
    errors: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)  # "call status" -> tries that were retried
    completed: list[str] = field(default_factory=list)
    first_errors: list[str] = field(default_factory=list)
    left_deleting: int = 0  # rows retention marked `deleting` whose deletes had not run at the end

    def error(self, what: str, detail: str) -> None:
        self.errors[what] += 1
        if len(self.first_errors) < 10:
            self.first_errors.append(f"{what}: {detail}")


class Home:
    """One Home Assistant: its token and the upload engine's sequence of calls."""

    def __init__(self, token: str, parts: int, batch: int) -> None:
        self.headers = {"Authorization": f"Bearer {token}"}
        self.parts = parts
        self.batch = batch

    async def _call(
        self, session: aiohttp.ClientSession, url: str, body: Any, results: Results, what: str, expect: int
    ) -> Any:
        """One gateway call, retried on what the upload engine retries (upload_retry): on 429, 5xx and
        connection errors, here up to MAX_TRIES (the engine: until its deadline), full-jitter backoff from 1 s, `Retry-After` of a 429 honoured.
        Every try's latency counts; a retry is counted, an error is what still failed after the last try."""
        for tries in range(1, MAX_TRIES + 1):
            started = time.perf_counter()
            retry_after: float | None = None
            try:
                async with session.post(url, json=body, headers=self.headers) as resp:
                    data = await resp.read()
                    status = resp.status
                    if status == 429 and resp.headers.get("Retry-After", "").isdigit():
                        retry_after = float(resp.headers["Retry-After"])
            except (aiohttp.ClientError, TimeoutError) as err:
                status, data = 0, f"{type(err).__name__}: {err}".encode()
            results.latencies[what].append(time.perf_counter() - started)
            if status == expect:
                return json.loads(data)
            if status not in RETRIED or tries == MAX_TRIES:
                raise RuntimeError(f"{what}: HTTP {status} {data[:200]!r} after {tries} tries")
            results.retries[f"{what} {status}"] += 1
            await asyncio.sleep(retry_after or random.uniform(0, min(60.0, 2.0 ** (tries - 1))))
        raise AssertionError("unreachable")

    async def back_up(self, session: aiohttp.ClientSession, node: str, results: Results) -> None:
        last = random.randint(1, 64 * 1024)
        size = (self.parts - 1) * PART + last
        bodies = {n: (b"x" * PART if n < self.parts else os.urandom(last)) for n in range(1, self.parts + 1)}
        sha256 = hashlib.sha256(b"".join(bodies[n] for n in sorted(bodies))).hexdigest()
        metadata = {**METADATA, "backup_id": uuid.uuid4().hex[:8], "size": size}
        what = "create"
        try:
            init = await self._call(
                session,
                f"{node}/v1/backups",
                {
                    "name": metadata["name"],
                    "size": size,
                    "sha256": sha256,
                    "metadata": metadata,
                    "part_urls": self.batch,  # the first batch's URLs come with the create, as the engine asks
                },
                results,
                "create",
                201,
            )
            backup_id = init["id"]
            urls = {part["part_number"]: part["url"] for part in init.get("parts", [])}
            completed: list[dict[str, Any]] = []
            for number in range(1, init["part_count"] + 1):
                if number not in urls:
                    what = "sign"
                    numbers = list(range(number, min(init["part_count"], number + self.batch - 1) + 1))
                    signed = await self._call(
                        session,
                        f"{node}/v1/backups/{backup_id}/parts",
                        {"part_numbers": numbers},
                        results,
                        "sign",
                        200,
                    )
                    urls.update((part["part_number"], part["url"]) for part in signed["parts"])
                what = "put"
                async with session.put(urls[number], data=bodies[number]) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"PUT part {number}: HTTP {resp.status}")  # noqa: TRY301
                    completed.append({"part_number": number, "etag": resp.headers["ETag"]})
            what = "complete"
            await self._call(
                session,
                f"{node}/v1/backups/{backup_id}/complete",
                {"parts": completed, "sha256": sha256},
                results,
                "complete",
                200,
            )
            results.completed.append(backup_id)
        except (aiohttp.ClientError, TimeoutError, RuntimeError, KeyError, ValueError) as err:
            results.error(what, f"{type(err).__name__}: {err}")


async def create_instances(url: str, count: int, retained: int) -> list[str]:
    """N instances straight into the database (COPY), each with `retained` completed backups of the nights
    before (rows only: the sink answers a delete of any key): setup, not what is measured."""
    settings = load_settings({"OFFSITE_GATEWAY_DB": url}, require_storage=False)
    store = create_store(settings)
    await store.open()  # the schema, through the gateway's own migrations
    await store.close()
    tokens = [secrets.token_urlsafe(32) for _ in range(count)]
    now = time.time()
    records = [(uuid.uuid4().hex, f"home-{n}", hash_token(token), now) for n, token in enumerate(tokens)]
    backups = [
        (
            backup_id := uuid.uuid4().hex,
            instance_id,
            f"Automatic backup, night -{night}",
            123_456,
            None,
            "completed",
            now - night * 86400 - 60,
            now - night * 86400,
            PART,
            1,
            f"{instance_id}/{backup_id}",
            None,
            "{}",
        )
        for instance_id, *_ in records
        for night in range(1, retained + 1)
    ]
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "instances", records=records, columns=["id", "name", "token_hash", "created_at"]
        )
        if backups:
            await conn.copy_records_to_table("backups", records=backups, columns=BACKUP_COLUMNS)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return tokens


async def night(args: argparse.Namespace, nodes: list[str], tokens: list[str], results: Results) -> float:
    """Every home at its instant of the window; the wall time it took."""
    connector = aiohttp.TCPConnector(limit=args.connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Keep-alive connections to each node (a reverse proxy's upstream pool), opened before the night.
        async def touch(node: str) -> None:
            async with session.get(node + "/healthz") as resp:
                await resp.read()

        await asyncio.gather(*(touch(node) for node in nodes for _ in range(min(args.connections, 64))))
        due = sorted(random.uniform(0, args.window) for _ in tokens)
        homes = [Home(token, args.parts, args.batch) for token in tokens]
        random.shuffle(homes)
        began = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        reported = began
        for at, home in zip(due, homes, strict=True):
            if (wait := began + at - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(home.back_up(session, random.choice(nodes), results))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if time.perf_counter() - reported > 30:
                reported = time.perf_counter()
                print(
                    f"  {reported - began:5.0f} s: {len(results.completed)} backups done, {len(tasks)} in flight, "
                    f"{sum(results.errors.values())} errors",
                    flush=True,
                )
        if tasks:
            await asyncio.wait(tasks)
        return time.perf_counter() - began


async def check_lost(url: str, results: Results, sink: str) -> tuple[int, dict[str, Any]]:
    """Backups answered 200 at complete that the database or storage does not hold."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id FROM backups WHERE status = 'completed'")
        results.left_deleting = await conn.fetchval("SELECT count(*) FROM backups WHERE status = 'deleting'")
    finally:
        await conn.close()
    in_db = {row["id"] for row in rows}
    async with aiohttp.ClientSession() as session, session.get(sink + "/stats") as resp:
        stats: dict[str, Any] = await resp.json()
    missing = len(set(results.completed) - in_db)
    # Each completed backup is an archive and its manifest in the sink.
    missing_objects = max(0, 2 * len(results.completed) - int(stats["objects"]))
    return max(missing, missing_objects // 2), stats


def gateway_command(profile: Path | None, number: int) -> list[str]:
    if profile is not None:
        return [sys.executable, "-c", PROFILE_RUNNER, str(profile / f"node{number}.prof")]
    return [sys.executable, "-m", "offsite_gateway", "serve"]


@dataclass
class Measured:
    """One night's figures, read from /proc and the sink around it."""

    results: Results
    elapsed: float
    gateway_user: float  # seconds, all the nodes
    gateway_system: float
    db_user: float
    db_system: float
    client_cpu: float
    calls_before: Counter[str]
    load_before: float

    @property
    def done(self) -> int:
        return len(self.results.completed) or 1

    def ms(self, seconds: float) -> float:
        """CPU seconds of the night as milliseconds per backup done."""
        return seconds * 1000 / self.done

    @property
    def gateway_ms(self) -> float:
        return self.ms(self.gateway_user + self.gateway_system)

    @property
    def db_ms(self) -> float:
        return self.ms(self.db_user + self.db_system)


@contextlib.contextmanager
def node_processes(
    commands: list[tuple[list[str], dict[str, str]]], workdir: Path, name: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The node processes, logging to workdir; terminated (then killed) on the way out."""
    processes: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for number, (command, env) in enumerate(commands):
            log = (workdir / f"{name}{number}.log").open("wb")
            logs.append(log)
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=log))
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


async def measure(
    args: argparse.Namespace,
    processes: list[subprocess.Popen[bytes]],
    nodes: list[str],
    tokens: list[str],
    cluster: PostgresCluster,
    sink: str,
    label: str,
) -> Measured:
    """A warm-up, then the night, with the CPU the nodes, PostgreSQL and this client spent on it."""
    for node, process in zip(nodes, processes, strict=True):
        await wait_ready(node, process)
    # Warm-up (untimed): a few hundred backups, so every node has loaded botocore and filled its pool.
    warm = Results()
    await night(
        argparse.Namespace(**{**vars(args), "window": 2.0}), nodes, tokens[: min(200, len(tokens))], warm
    )
    print(f"{label} warm-up: {len(warm.completed)} backups, {sum(warm.errors.values())} errors", flush=True)
    results = Results()
    async with aiohttp.ClientSession() as session, session.get(sink + "/stats") as resp:
        calls_before = Counter((await resp.json())["calls"])
    before_split = [user_system(p.pid) for p in processes]
    before_db = postgres_cpu(cluster)
    before_client = cpu_seconds(os.getpid())
    load_before = os.getloadavg()[0]
    print(
        f"{label} night: {args.homes} homes over {args.window:.0f} s ({args.homes / args.window:.1f} backups/s)",
        flush=True,
    )
    elapsed = await night(args, nodes, tokens, results)
    # The last completes' retention deletes are batched (offsite_gateway/purger.py): counted once done.
    await asyncio.sleep(LINGER + 1.5)
    after_split = [user_system(p.pid) for p in processes]
    user = sum(a[0] - b[0] for a, b in zip(after_split, before_split, strict=True))
    system = sum(a[1] - b[1] for a, b in zip(after_split, before_split, strict=True))
    after_db = postgres_cpu(cluster)
    return Measured(
        results=results,
        elapsed=elapsed,
        gateway_user=user,
        gateway_system=system,
        db_user=after_db[0] - before_db[0],
        db_system=after_db[1] - before_db[1],
        client_cpu=cpu_seconds(os.getpid()) - before_client,
        calls_before=calls_before,
        load_before=load_before,
    )


def floor_commands(
    count: int, url: str, sink: str, layers: str
) -> tuple[list[str], list[tuple[list[str], dict[str, str]]]]:
    nodes, commands = [], []
    for _ in range(count):
        port = free_port()
        nodes.append(f"http://127.0.0.1:{port}")
        commands.append(
            (
                [
                    sys.executable,
                    str(ROOT / "bench" / "floor_node.py"),
                    f"--port={port}",
                    f"--db={url}",
                    f"--s3={sink}",
                    f"--bucket={BUCKET}",
                    f"--layers={layers}",
                ],
                dict(os.environ),
            )
        )
    return nodes, commands


async def run(args: argparse.Namespace, cluster: PostgresCluster, sink: str, workdir: Path) -> dict[str, Any]:
    url = cluster.create_database()
    print(f"creating {args.homes} instances ...", flush=True)
    tokens = await create_instances(url, args.homes, args.retained)
    nodes: list[str] = []
    commands: list[tuple[list[str], dict[str, str]]] = []
    for number in range(args.nodes):
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OFFSITE_GATEWAY_")},
            "OFFSITE_GATEWAY_LISTEN": f"127.0.0.1:{port}",
            "OFFSITE_GATEWAY_DB": url,
            "OFFSITE_GATEWAY_S3_ENDPOINT": sink,
            "OFFSITE_GATEWAY_S3_BUCKET": BUCKET,
            "OFFSITE_GATEWAY_S3_ACCESS_KEY": "bench",
            "OFFSITE_GATEWAY_S3_SECRET_KEY": "bench-secret",
            "OFFSITE_GATEWAY_PART_SIZE": str(PART),
            "OFFSITE_GATEWAY_DB_POOL_SIZE": str(args.db_pool),
        }
        if number == 0:
            bucket = subprocess.run(  # noqa: ASYNC221 - setup
                [sys.executable, "-m", "offsite_gateway", "bucket", "create"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if bucket.returncode != 0:
                raise RuntimeError(f"bucket create: {bucket.stderr}")
        commands.append((gateway_command(args.profile, number), env))
        nodes.append(f"http://127.0.0.1:{port}")
    with node_processes(commands, workdir, "node") as processes:
        measured = await measure(args, processes, nodes, tokens, cluster, sink, label="gateway")
        lost, stats = await check_lost(url, measured.results, sink)
        rss_mb = max(rss(p.pid) for p in processes)
    floors: dict[str, Measured] = {}
    for layers in FLOOR_LAYERS if args.floor else ():
        floor_nodes, floor_cmds = floor_commands(args.nodes, url, sink, layers)
        with node_processes(floor_cmds, workdir, f"floor-{layers}-") as processes:
            label = f"floor ({layers})"
            floors[layers] = await measure(args, processes, floor_nodes, tokens, cluster, sink, label=label)
    results, calls_before = measured.results, measured.calls_before
    per_call = {
        call: {
            "n": len(values),
            "p50_ms": round(percentile(values, 50) * 1000, 1),
            "p99_ms": round(percentile(values, 99) * 1000, 1),
            "mean_ms": round(statistics.fmean(values) * 1000, 1) if values else None,
        }
        for call, values in results.latencies.items()
        if values  # no `sign` call when every part's URL came with the create
    }
    rate = TARGET_HOMES / TARGET_WINDOW
    gateway_cores = rate * measured.gateway_ms / 1000
    db_cores = rate * measured.db_ms / 1000
    return {
        "per_call": per_call,
        "errors": dict(results.errors),
        "retries": dict(results.retries),
        "first_errors": results.first_errors,
        "completed": len(results.completed),
        "lost": lost,
        "left_deleting": results.left_deleting,
        "elapsed_s": round(measured.elapsed, 1),
        "backups_per_s": round(len(results.completed) / measured.elapsed, 1),
        "gateway_cpu_ms_per_backup": round(measured.gateway_ms, 2),
        "gateway_user_ms_per_backup": round(measured.ms(measured.gateway_user), 2),
        "gateway_system_ms_per_backup": round(measured.ms(measured.gateway_system), 2),
        "db_cpu_ms_per_backup": round(measured.db_ms, 2),
        "db_user_ms_per_backup": round(measured.ms(measured.db_user), 2),
        "db_system_ms_per_backup": round(measured.ms(measured.db_system), 2),
        "client_cpu_ms_per_backup": round(measured.ms(measured.client_cpu), 2),
        "sink_calls": {call: n - calls_before[call] for call, n in stats["calls"].items()},
        "storage_calls_per_backup": round(
            sum(
                n - calls_before[call]
                for call, n in stats["calls"].items()
                if call not in ("UploadPart", "HeadBucket", "CreateBucket")
            )
            / measured.done,
            2,
        ),
        "node_rss_mb": round(rss_mb),
        "load_avg_before": round(measured.load_before, 2),
        "target_backups_per_s": round(rate, 1),
        "target_gateway_cores": round(gateway_cores, 2),
        "target_db_cores": round(db_cores, 2),
        # At least two: no single point of failure.
        "target_nodes": max(2, math.ceil(gateway_cores / NODE_BUSY)),
        "floor": {layers: floor_figures(floor, measured.gateway_ms) for layers, floor in floors.items()},
    }


def floor_figures(floor: Measured, gateway_ms: float) -> dict[str, Any]:
    return {
        "completed": len(floor.results.completed),
        "errors": dict(floor.results.errors),
        "first_errors": floor.results.first_errors,
        "cpu_ms_per_backup": round(floor.gateway_ms, 2),
        "user_ms_per_backup": round(floor.ms(floor.gateway_user), 2),
        "system_ms_per_backup": round(floor.ms(floor.gateway_system), 2),
        "db_cpu_ms_per_backup": round(floor.db_ms, 2),
        "gateway_over_floor": round(gateway_ms / floor.gateway_ms, 2) if floor.gateway_ms else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--homes", type=int, default=100_000)
    parser.add_argument(
        "--window",
        type=float,
        default=None,
        help="seconds the night is compressed to (default: homes / 80, what this 2-core VM sustains)",
    )
    parser.add_argument(
        "--retained",
        type=int,
        default=7,
        help="completed backups each home already has (7, the default retention: each complete then deletes "
        "the oldest, as on any night but the first; 0 for a first night)",
    )
    parser.add_argument("--parts", type=int, default=1, help="parts per backup (all but the last 5 MiB)")
    parser.add_argument("--batch", type=int, default=4, help="part URLs asked per call, as the engine does")
    parser.add_argument("--nodes", type=int, default=2, help="gateway processes")
    parser.add_argument(
        "--connections", type=int, default=256, help="client keep-alive connections, all nodes"
    )
    parser.add_argument(
        "--db-pool", type=int, default=10, help="database connections per node (OFFSITE_GATEWAY_DB_POOL_SIZE)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", type=Path, default=None, help="run the nodes under cProfile, dumps here")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="then the same night through bench/floor_node.py's nodes, layer by layer (http, + db, + storage): "
        "the CPU of the gateway's I/O alone, side by side",
    )
    args = parser.parse_args()
    if args.window is None:
        args.window = args.homes / 80
    random.seed(args.seed)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_postgres(durable=True) as cluster,
        run_sink(Path(tmp) / "sink.log") as sink,
    ):
        figures = asyncio.run(run(args, cluster, sink.endpoint, Path(tmp)))
    print(f"{'call':10} {'n':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for call, values in figures["per_call"].items():
        print(
            f"{call:10} {values['n']:>8} {values['p50_ms']:>8} {values['p99_ms']:>8} {values['mean_ms']:>8}"
        )
    print(
        f"errors: {figures['errors'] or 0}   lost: {figures['lost']}   retried: {figures['retries'] or 0}   "
        f"left deleting: {figures['left_deleting']}"
    )
    for line in figures["first_errors"]:
        print(f"  {line}")
    print(
        f"{figures['completed']} backups in {figures['elapsed_s']} s ({figures['backups_per_s']}/s); CPU per backup: "
        f"gateway {figures['gateway_cpu_ms_per_backup']} ms (all nodes; user {figures['gateway_user_ms_per_backup']}, "
        f"system {figures['gateway_system_ms_per_backup']}), PostgreSQL {figures['db_cpu_ms_per_backup']} ms "
        f"(user {figures['db_user_ms_per_backup']}, system {figures['db_system_ms_per_backup']}), "
        f"this client {figures['client_cpu_ms_per_backup']} ms"
    )
    print(
        f"storage calls per backup (besides part uploads): {figures['storage_calls_per_backup']} "
        f"{figures['sink_calls']}; largest node RSS {figures['node_rss_mb']} MB"
    )
    print(
        f"1,000,000 homes in 2 hours = {figures['target_backups_per_s']} backups/s: "
        f"{figures['target_gateway_cores']} gateway cores -> {figures['target_nodes']} nodes "
        f"(each at most {NODE_BUSY:.0%} busy, never fewer than 2), {figures['target_db_cores']} PostgreSQL cores"
    )
    if figures["floor"]:
        print(
            "the floor (bench/floor_node.py: the gateway's I/O and nothing else), the same night; CPU ms per backup"
        )
        print(
            f"{'layers':34} {'backups':>8} {'errors':>6} {'nodes':>6} {'user':>6} {'system':>6} {'PostgreSQL':>10}"
        )
        described = {
            "http": "http (2 requests served)",
            "db": "+ db (5 round trips)",
            "all": "+ storage (3 requests, 4 signatures)",
        }
        for layers, floor in figures["floor"].items():
            print(
                f"{described[layers]:34} {floor['completed']:>8} {sum(floor['errors'].values()):>6} "
                f"{floor['cpu_ms_per_backup']:>6} {floor['user_ms_per_backup']:>6} "
                f"{floor['system_ms_per_backup']:>6} {floor['db_cpu_ms_per_backup']:>10}"
            )
            for line in floor["first_errors"]:
                print(f"  {line}")
        full = figures["floor"]["all"]
        print(
            f"the gateway: {figures['gateway_cpu_ms_per_backup']} ms, {full['gateway_over_floor']} x the floor"
        )
    summary = {
        "homes": args.homes,
        "errors": sum(figures["errors"].values()),
        "lost": figures["lost"],
        "retries": sum(figures["retries"].values()),
        "p99_ms": max(values["p99_ms"] for values in figures["per_call"].values()),
        "gateway_cpu_ms_per_backup": figures["gateway_cpu_ms_per_backup"],
        "db_cpu_ms_per_backup": figures["db_cpu_ms_per_backup"],
        "window_s": args.window,
        "retained": args.retained,
        "backups_per_s": figures["backups_per_s"],
        "nodes_for_1m_homes_in_2h": figures["target_nodes"],
        "db_cores_for_1m_homes_in_2h": figures["target_db_cores"],
        **{f"{call}_p99_ms": values["p99_ms"] for call, values in figures["per_call"].items()},
    }
    if figures["floor"]:
        summary["floor_cpu_ms_per_backup"] = figures["floor"]["all"]["cpu_ms_per_backup"]
        summary["gateway_over_floor"] = figures["floor"]["all"]["gateway_over_floor"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
