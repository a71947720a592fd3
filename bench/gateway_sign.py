"""Benchmark: the gateway's signing throughput and its init+sign+complete latency, through the HTTP API.

Runs a moto S3 server and ONE `offsite-gateway serve` process (SQLite, access log on, as deployed), both on
127.0.0.1, then with 200 simulated instances (200 tokens, one aiohttp client, 200 concurrent tasks):

1. throughput: each instance has begun a 10,000-part backup and asks for part URLs in batches of 100, all 200
   at once, for --seconds; reports URLs signed per second (`urls_per_s`) and the sign call's p50/p99;
2. latency: each instance backs up a tiny one-part backup, `--rounds` times: init, sign its part, PUT the part
   to moto (not timed: it goes to storage, not the gateway), complete (ListParts + CompleteMultipartUpload on
   moto, then retention, which deletes from the 8th backup on). `p50_ms` / `p99_ms` are of the sum of the three
   gateway calls per backup. Three arrival patterns:
   - `burst`: all 200 instances start together and go on in a closed loop (the next round as soon as the
     last ends): the gateway's capacity in backups/s; latency there is queueing behind 199 others on a 2-core
     machine shared with moto and this client, so it says nothing of one instance's wait;
   - `alone`: one instance, 20 backups in a row, nothing else running: the time one backup's three calls
     take without any queueing (4 moto calls among them);
   - `paced` (the headline p50/p99): each instance's rounds are due at random instants within --spread seconds
     (open loop), as nightly jittered schedules spread real instances. The offered rate (200 x rounds /
     spread, 10 backups/s by default) is printed with it; a real fleet of 200 offers about 200 per 2-hour
     window, i.e. 0.03 backups/s.

The last line printed is one JSON object with every number.

    .venv/bin/python bench/gateway_sign.py [--instances 200] [--seconds 10] [--rounds 3] [--spread 60]

(BENCH_PROFILE=/tmp/gateway.prof runs the gateway under cProfile.)
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
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from offsite_gateway import auth  # noqa: E402
from offsite_gateway.store import SQLiteStore  # noqa: E402
from tests.helpers.servers import S3Server, free_port, run_moto  # noqa: E402

PART = 5 * 1024 * 1024


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


def gateway_command() -> list[str]:
    if profile := os.environ.get("BENCH_PROFILE"):  # a cProfile dump of the gateway, to see where time goes
        return [sys.executable, "-m", "cProfile", "-o", profile, "-m", "offsite_gateway", "serve"]
    script = Path(sys.executable).with_name("offsite-gateway")
    if script.exists():
        return [str(script), "serve"]
    found = shutil.which("offsite-gateway")
    return [found, "serve"] if found else [sys.executable, "-m", "offsite_gateway", "serve"]


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


async def run(args: argparse.Namespace, moto: S3Server, workdir: Path) -> dict[str, Any]:
    endpoint = moto.endpoint
    assert moto.process is not None
    load_at_start = os.getloadavg()[0]  # other work on the machine skews every number
    import boto3  # noqa: PLC0415

    bucket = "bench"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    db = workdir / "gateway.sqlite3"
    tokens = await make_tokens(db, args.instances)
    port = free_port()
    env = {
        **os.environ,
        "OFFSITE_GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "OFFSITE_GATEWAY_DB": str(db),
        "OFFSITE_GATEWAY_S3_ENDPOINT": endpoint,
        "OFFSITE_GATEWAY_S3_BUCKET": bucket,
        "OFFSITE_GATEWAY_S3_ACCESS_KEY": "testing",
        "OFFSITE_GATEWAY_S3_SECRET_KEY": "testing",
        "OFFSITE_GATEWAY_PART_SIZE": str(PART),
        "OFFSITE_GATEWAY_INIT_RATE": "1000000",
        "OFFSITE_GATEWAY_MAX_BACKUP_BYTES": str(10_000 * PART),
    }
    log = (workdir / "gateway.log").open("wb")
    process = subprocess.Popen(gateway_command(), env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, process)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            clients = [Client(session, url, token) for token in tokens]
            pids = {"gateway": process.pid, "moto": moto.process.pid, "client": os.getpid()}

            async def phase(name: str, work: Any) -> dict[str, Any]:
                before = {who: cpu_seconds(pid) for who, pid in pids.items()}
                began = time.perf_counter()
                result: dict[str, Any] = await work
                elapsed = time.perf_counter() - began
                for who, pid in pids.items():
                    result[f"{who}_cpu_pct"] = round((cpu_seconds(pid) - before[who]) / elapsed * 100)
                print(f"{name}: {json.dumps(result)}", flush=True)
                return result

            alone = await phase("one instance alone", latency(clients[:1], session, 20, 0))
            sign = await phase("throughput", throughput(clients, args.seconds))
            burst = await phase("burst", latency(clients, session, args.rounds, 0))
            spread = await phase(
                f"paced over {args.spread} s", latency(clients, session, args.rounds, args.spread)
            )
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
    return {
        "urls_per_s": round(sign["urls_per_s"]),
        "p50_ms": round(spread["p50_ms"], 1),
        "p99_ms": round(spread["p99_ms"], 1),
        "offered_backups_per_s": round(spread["offered_backups_per_s"], 1),
        "burst_p50_ms": round(burst["p50_ms"], 1),
        "burst_p99_ms": round(burst["p99_ms"], 1),
        "burst_backups_per_s": round(burst["backups_per_s"], 1),
        "sign_p99_ms": round(sign["sign_p99_ms"], 1),
        "alone_p50_ms": round(alone["p50_ms"], 1),
        "alone_p99_ms": round(alone["p99_ms"], 1),
        "instances": args.instances,
        "loadavg_1m_at_start": round(load_at_start, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the throughput phase")
    parser.add_argument("--rounds", type=int, default=3, help="backups per instance in each latency phase")
    parser.add_argument(
        "--spread", type=float, default=60.0, help="seconds over which the paced phase's backups are due"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, run_moto(Path(tmp) / "moto.log") as moto:
        result = asyncio.run(run(args, moto, Path(tmp)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
