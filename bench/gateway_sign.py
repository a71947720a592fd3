"""Benchmark: the gateway's signing throughput and its init+sign+complete latency, through the HTTP API.

Runs ONE `offsite-gateway serve` process (SQLite, access log on, as deployed) in front of an S3 server, both on
127.0.0.1, with 200 simulated instances (200 tokens, one aiohttp client, 200 concurrent tasks). `--storage`
chooses the S3 server; by default (`both`) every phase runs twice in one go, each time with a fresh gateway and
database, and the two are printed side by side:

- `sink` (the headline): bench/s3_sink.py, a minimal in-memory S3 server in its own process that costs almost
  nothing per call (bodies discarded, no signature checks): latency and throughput are the gateway's own (plus
  the loopback round trips and this client, on the same machine);
- `moto` (reference): moto's S3 server, which spends several ms of CPU per call (more than the gateway); with
  it, the numbers mostly measure moto, not the gateway.

Phases, against each:

1. throughput: each instance has begun a 10,000-part backup and asks for part URLs in batches of 100, all 200
   at once, for --seconds; reports URLs signed per second (`urls_per_s`) and the sign call's p50/p99 (signing
   is local: no storage call);
2. latency: each instance backs up a tiny one-part backup, `--rounds` times: init (CreateMultipartUpload), sign
   its part, PUT the part to storage (not timed: it goes to storage, not the gateway), complete (ListParts +
   CompleteMultipartUpload, then retention, which deletes an object from the 8th backup on). `p50_ms` /
   `p99_ms` are of the sum of the three gateway calls per backup. Three arrival patterns:
   - `burst`: all 200 instances start together and go on in a closed loop (the next round as soon as the
     last ends): the gateway's capacity in backups/s; latency there is queueing behind 199 others on a 2-core
     machine shared with the storage server and this client, so it says nothing of one instance's wait;
   - `alone`: one instance, 20 backups in a row, nothing else running (after 3 untimed warm-up backups of
     another instance): the time one backup's three calls take without any queueing (3 to 4 storage calls
     among them);
   - `paced` (the headline p50/p99): each instance's rounds are due at random instants within --spread seconds
     (open loop), as nightly jittered schedules spread real instances. The offered rate (200 x rounds /
     spread, 10 backups/s by default) is printed with it; a real fleet of 200 offers about 200 per 2-hour
     window, i.e. 0.03 backups/s. The schedule is drawn from --seed: both storages get the same one.

Before the phases, every instance makes one call at once (untimed), so the 200 keep-alive connections the phases
reuse are open: 200 connects at once overflow the gateway's listen backlog (128, aiohttp's default) and the SYNs
the kernel drops are retried 1, 3, 7 s later, which would time TCP retransmission, not the gateway.

Each phase prints the CPU used by the gateway, the storage server and this client, in % of one core over the
phase. The last line printed is one JSON object: the sink's figures under plain keys (`urls_per_s`, `p50_ms`,
`p99_ms`, ...), moto's under the same keys prefixed `moto_` (`moto_urls_per_s`, `moto_p99_ms`, ...).

    .venv/bin/python bench/gateway_sign.py [--storage both] [--instances 200] [--seconds 10] [--rounds 3]
                                           [--spread 60]

(BENCH_PROFILE=/tmp/gateway.prof runs the gateway under cProfile: /tmp/gateway.sink.prof, /tmp/gateway.moto.prof.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from offsite_gateway import auth  # noqa: E402
from offsite_gateway.store import SQLiteStore  # noqa: E402
from tests.helpers.servers import S3Server, free_port, run_moto  # noqa: E402

PART = 5 * 1024 * 1024
BUCKET = "gateway-bench"


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


async def make_tokens(db: Path, count: int) -> list[str]:
    store = SQLiteStore(db)
    await store.open()
    try:
        return [(await auth.add_instance(store, f"bench-{n}"))[1] for n in range(count)]
    finally:
        await store.close()


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self.session = session
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        async with self.session.request(method, self.url + path, json=body, headers=self.headers) as resp:
            data = await resp.read()
            if resp.status != expect:
                raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
            return json.loads(data) if data else None


async def throughput(clients: list[Client], seconds: float) -> dict[str, float]:
    ids = []
    for client in clients:
        init = await client.call("POST", "/v1/backups", {"name": "big", "size": 10_000 * PART}, 201)
        ids.append(init["id"])
    latencies: list[float] = []
    urls = 0
    deadline = time.perf_counter() + seconds

    async def worker(client: Client, backup_id: str) -> None:
        nonlocal urls
        start_part = random.randrange(0, 99) * 100
        while time.perf_counter() < deadline:
            numbers = list(range(start_part + 1, start_part + 101))
            started = time.perf_counter()
            body = await client.call("POST", f"/v1/backups/{backup_id}/parts", {"part_numbers": numbers})
            latencies.append(time.perf_counter() - started)
            urls += len(body["parts"])
            start_part = (start_part + 100) % 10_000

    began = time.perf_counter()
    await asyncio.gather(*(worker(c, i) for c, i in zip(clients, ids, strict=True)))
    elapsed = time.perf_counter() - began
    for client, backup_id in zip(clients, ids, strict=True):
        await client.call("DELETE", f"/v1/backups/{backup_id}/upload", expect=204)
    return {
        "urls_per_s": urls / elapsed,
        "sign_calls": len(latencies),
        "sign_p50_ms": percentile(latencies, 50) * 1000,
        "sign_p99_ms": percentile(latencies, 99) * 1000,
    }


async def one_backup(client: Client, session: aiohttp.ClientSession) -> float:
    started = time.perf_counter()
    init = await client.call("POST", "/v1/backups", {"name": "tiny", "size": 1, "metadata": {"n": 1}}, 201)
    url = (await client.call("POST", f"/v1/backups/{init['id']}/parts", {"part_numbers": [1]}))["parts"][0][
        "url"
    ]
    gateway_time = time.perf_counter() - started
    async with session.put(url, data=b"x", headers={"Content-Length": "1"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"PUT: {resp.status}")
        etag = resp.headers["ETag"]
    started = time.perf_counter()
    await client.call(
        "POST", f"/v1/backups/{init['id']}/complete", {"parts": [{"part_number": 1, "etag": etag}]}
    )
    return gateway_time + time.perf_counter() - started


async def latency(
    clients: list[Client], session: aiohttp.ClientSession, rounds: int, spread: float
) -> dict[str, float]:
    """Each instance runs `rounds` backups. spread=0: all start together, the next round as soon as the last
    ends (closed loop). spread>0: each round is due at a random instant within `spread` seconds (open loop: it
    starts then, or when the instance's previous round ends if that is later)."""
    results: list[float] = []

    async def worker(client: Client) -> None:
        due = sorted(random.uniform(0, spread) for _ in range(rounds)) if spread else [0.0] * rounds
        began = time.perf_counter()
        for at in due:
            if (wait := began + at - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            results.append(await one_backup(client, session))

    began = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in clients))
    elapsed = time.perf_counter() - began
    return {
        "backups": len(results),
        "offered_backups_per_s": len(results) / spread if spread else float("inf"),
        "backups_per_s": len(results) / elapsed,
        "p50_ms": percentile(results, 50) * 1000,
        "p99_ms": percentile(results, 99) * 1000,
        "mean_ms": statistics.fmean(results) * 1000,
    }


def gateway_cli() -> list[str]:
    script = Path(sys.executable).with_name("offsite-gateway")
    if script.exists():
        return [str(script)]
    found = shutil.which("offsite-gateway")
    return [found] if found else [sys.executable, "-m", "offsite_gateway"]


def gateway_command(storage: str) -> list[str]:
    if profile := os.environ.get("BENCH_PROFILE"):  # a cProfile dump of the gateway, to see where time goes
        path = Path(profile)
        dump = str(path.with_name(f"{path.stem}.{storage}{path.suffix}"))
        return [sys.executable, "-m", "cProfile", "-o", dump, "-m", "offsite_gateway", "serve"]
    return [*gateway_cli(), "serve"]


async def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {process.returncode}")
            try:
                async with session.get(url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the gateway did not become healthy")


@contextmanager
def run_sink(log_path: Path) -> Iterator[S3Server]:
    """bench/s3_sink.py in its own process, on a free loopback port."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "s3_sink.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the sink did not start: {line!r} (see {log_path})")
        yield S3Server("sink", f"http://127.0.0.1:{int(line.split()[1])}", process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def run_storage(storage: str, workdir: Path) -> AbstractContextManager[S3Server]:
    return run_sink(workdir / "sink.log") if storage == "sink" else run_moto(workdir / "moto.log")


async def run(args: argparse.Namespace, storage: str, server: S3Server, workdir: Path) -> dict[str, Any]:
    """Every phase against one gateway in front of `server`; the figures, unprefixed."""
    assert server.process is not None
    random.seed(args.seed)  # the same throughput offsets and paced schedule for each storage
    db = workdir / "gateway.sqlite3"
    tokens = await make_tokens(db, args.instances)
    port = free_port()
    env = {
        **os.environ,
        "OFFSITE_GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "OFFSITE_GATEWAY_DB": str(db),
        "OFFSITE_GATEWAY_S3_ENDPOINT": server.endpoint,
        "OFFSITE_GATEWAY_S3_BUCKET": BUCKET,
        "OFFSITE_GATEWAY_S3_ACCESS_KEY": server.access_key,
        "OFFSITE_GATEWAY_S3_SECRET_KEY": server.secret_key,
        "OFFSITE_GATEWAY_PART_SIZE": str(PART),
        "OFFSITE_GATEWAY_INIT_RATE": "1000000",
        "OFFSITE_GATEWAY_MAX_BACKUP_BYTES": str(10_000 * PART),
    }
    # The gateway's own HeadBucket + CreateBucket (the sink starts without this bucket, as moto does).
    creating = await asyncio.create_subprocess_exec(
        *gateway_cli(), "bucket", "create", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = (await creating.communicate())[0].decode()
    if creating.returncode != 0:
        raise RuntimeError(f"offsite-gateway bucket create: {output}")
    log = (workdir / "gateway.log").open("wb")
    process = subprocess.Popen(gateway_command(storage), env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220
    url = f"http://127.0.0.1:{port}"
    results: dict[str, dict[str, Any]] = {}
    try:
        await wait_ready(url, process)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            clients = [Client(session, url, token) for token in tokens]
            pids = {"gateway": process.pid, "storage": server.process.pid, "client": os.getpid()}

            async def phase(name: str, work: Any) -> None:
                before = {who: cpu_seconds(pid) for who, pid in pids.items()}
                began = time.perf_counter()
                result: dict[str, Any] = await work
                elapsed = time.perf_counter() - began
                for who, pid in pids.items():
                    result[f"{who}_cpu_pct"] = round((cpu_seconds(pid) - before[who]) / elapsed * 100)
                rounded = {key: round(value, 1) for key, value in result.items()}
                print(f"{storage} | {name}: {json.dumps(rounded)}", flush=True)
                results[name] = result

            # Warm-up, untimed. 200 connections opened at once overflow the gateway's listen backlog (aiohttp's
            # 128): the dropped SYNs are retried 1, 3, 7 s later, which put 11 s in the throughput phase's sign
            # p99. Every phase runs on connections opened here. Then 3 backups: first calls load botocore models.
            await asyncio.gather(*(client.call("GET", "/v1/instance") for client in clients))
            await latency(clients[-1:], session, 3, 0)
            await phase("alone", latency(clients[:1], session, 20, 0))
            await phase("throughput", throughput(clients, args.seconds))
            await phase("burst", latency(clients, session, args.rounds, 0))
            await phase("paced", latency(clients, session, args.rounds, args.spread))
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
    alone, sign, burst, paced = (results[name] for name in ("alone", "throughput", "burst", "paced"))
    return {
        "urls_per_s": round(sign["urls_per_s"]),
        "p50_ms": round(paced["p50_ms"], 1),
        "p99_ms": round(paced["p99_ms"], 1),
        "offered_backups_per_s": round(paced["offered_backups_per_s"], 1),
        "paced_cpu_pct": {who: paced[f"{who}_cpu_pct"] for who in pids},
        "burst_p50_ms": round(burst["p50_ms"], 1),
        "burst_p99_ms": round(burst["p99_ms"], 1),
        "burst_backups_per_s": round(burst["backups_per_s"], 1),
        "burst_cpu_pct": {who: burst[f"{who}_cpu_pct"] for who in pids},
        "sign_p99_ms": round(sign["sign_p99_ms"], 1),
        "throughput_cpu_pct": {who: sign[f"{who}_cpu_pct"] for who in pids},
        "alone_p50_ms": round(alone["p50_ms"], 1),
        "alone_p99_ms": round(alone["p99_ms"], 1),
    }


ROWS = (
    ("URLs signed /s", "urls_per_s"),
    ("sign call (100 URLs) p99 ms", "sign_p99_ms"),
    ("throughput CPU % gw/storage/client", "throughput_cpu_pct"),
    ("alone p50 ms", "alone_p50_ms"),
    ("alone p99 ms", "alone_p99_ms"),
    ("burst backups/s", "burst_backups_per_s"),
    ("burst p50 ms", "burst_p50_ms"),
    ("burst p99 ms", "burst_p99_ms"),
    ("burst CPU % gw/storage/client", "burst_cpu_pct"),
    ("paced offered backups/s", "offered_backups_per_s"),
    ("paced p50 ms", "p50_ms"),
    ("paced p99 ms", "p99_ms"),
    ("paced CPU % gw/storage/client", "paced_cpu_pct"),
)


def table(figures: dict[str, dict[str, Any]]) -> str:
    """The storages' figures side by side."""

    def cell(value: Any) -> str:
        return "/".join(str(v) for v in value.values()) if isinstance(value, dict) else str(value)

    names = list(figures)
    lines = [f"{'':36}" + "".join(f"{name:>14}" for name in names)]
    lines += [f"{label:36}" + "".join(f"{cell(figures[n][key]):>14}" for n in names) for label, key in ROWS]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--storage",
        choices=["sink", "moto", "both"],
        default="both",
        help="S3 server behind the gateway (both: sink, then moto)",
    )
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the throughput phase")
    parser.add_argument("--rounds", type=int, default=3, help="backups per instance in each latency phase")
    parser.add_argument(
        "--spread", type=float, default=60.0, help="seconds over which the paced phase's backups are due"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the random offsets and paced schedule")
    args = parser.parse_args()
    storages = ["sink", "moto"] if args.storage == "both" else [args.storage]
    load_at_start = os.getloadavg()  # other work on the machine skews every number
    print(
        f"load average at start: {' '.join(f'{load:.2f}' for load in load_at_start)} ({os.cpu_count()} cores)"
    )
    figures: dict[str, dict[str, Any]] = {}
    for storage in storages:
        with tempfile.TemporaryDirectory() as tmp, run_storage(storage, Path(tmp)) as server:
            figures[storage] = asyncio.run(run(args, storage, server, Path(tmp)))
    print(table(figures))
    summary: dict[str, Any] = {}
    for storage, values in figures.items():
        prefix = "" if storage == "sink" else f"{storage}_"
        summary.update({prefix + key: value for key, value in values.items()})
    summary.update(
        {
            "storage": args.storage,
            "instances": args.instances,
            "loadavg_1m_at_start": round(load_at_start[0], 2),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        }
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
