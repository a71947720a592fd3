"""What clients that send too much, or read nothing, may hold (issue 24, A5-A7): the memory of request heads that
never end, the connections of clients that never read their answers, and the database's connections while a
complete's body trickles in. Each attack runs in a process of its own (tests/gateway/attackers.py) against the
real `serve` process, whose memory is read from /proc."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from pathlib import Path

import aiohttp

from offsite_gateway.app import STORE
from offsite_gateway.server import MAX_HEAD_BYTES, MAX_PENDING_HEAD_BYTES
from offsite_gateway.store import COMPLETED, Backup
from tests.gateway.api import Api, put
from tests.gateway.attackers import attack
from tests.gateway.raw import address
from tests.helpers.gateway import GatewayDatabase, GatewayProcess, run_gateway, serve_process
from tests.helpers.servers import S3Server

MIB = 1024 * 1024


def rss(pid: int) -> int:
    """The process's resident memory, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


async def _peak_rss(pid: int, until: asyncio.Event) -> int:
    peak = rss(pid)
    while not until.is_set():
        peak = max(peak, rss(pid))
        await asyncio.sleep(0.05)
    return max(peak, rss(pid))


async def _served(
    process: GatewayProcess, seconds: float, path: str = "/healthz"
) -> tuple[list[float], list[str]]:
    """A real client from 127.0.0.1, a request at a time on a new connection each, for `seconds`."""
    latencies: list[float] = []
    failures: list[str] = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=3)) as session:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                async with session.get(process.url + path) as resp:
                    await resp.read()
                    if resp.status != 200:
                        failures.append(f"HTTP {resp.status}")
            except (aiohttp.ClientError, TimeoutError) as err:
                failures.append(repr(err))
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
    return latencies, failures


async def test_unfinished_huge_heads_are_refused_and_hold_no_memory(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, database: GatewayDatabase
) -> None:
    """150 connections each sending about 1 MB of header lines without ever ending the head: each is answered
    431 once its head passes 32 KiB, and the gateway's memory hardly moves (it grew by 2 MiB per connection
    before)."""
    with serve_process(moto_server, moto_bucket, tmp_path, database=database, HEADER_TIMEOUT="30") as process:
        before = rss(process.pid)
        done = asyncio.Event()
        peak = asyncio.create_task(_peak_rss(process.pid, done))
        async with attack("heads", process.url, "150", str(MIB)) as seen:
            await asyncio.sleep(3)
            _, failures = await _served(process, 1.0)
        done.set()
        grown = await peak - before
        log = process.log()
    print(json.dumps({"rss_before_mib": round(before / MIB, 1), "grown_mib": round(grown / MIB, 1), **seen}))
    assert seen["outcomes"] == {"431": 150}, seen
    assert grown < 40 * MIB, grown
    assert not failures, failures[:5]
    assert "Request heads over 32 KiB refused" in log
    assert "Traceback" not in log


async def test_unfinished_heads_share_a_budget(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, database: GatewayDatabase
) -> None:
    """Heads under the limit each, but not in all: 400 connections each holding 30 to 32 KiB of a head they never end
    (12 MB) leave at most `MAX_PENDING_HEAD_BYTES` pending; the connections holding the most are closed with a
    503, and a real client's short requests go through meanwhile."""
    each = 30 * 1024
    assert each < MAX_HEAD_BYTES
    with serve_process(moto_server, moto_bucket, tmp_path, database=database, HEADER_TIMEOUT="30") as process:
        async with attack("heads", process.url, "400", str(each)) as seen:
            await asyncio.sleep(3)
            _, failures = await _served(process, 1.0)
        log = process.log()
    outcomes = seen["outcomes"]
    print(json.dumps(seen))
    budget = MAX_PENDING_HEAD_BYTES // each
    assert outcomes.get("503", 0) >= 400 - budget, outcomes
    assert outcomes.get("503", 0) + outcomes.get("none", 0) == 400, outcomes
    assert not failures, failures[:5]
    assert "Unfinished request heads hold over" in log


async def test_clients_that_pipeline_and_never_read_do_not_hold_every_connection(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, database: GatewayDatabase
) -> None:
    """40 addresses pipelining thousands of requests at a time and never reading, against 16 connection slots:
    each such connection is closed at once (too many requests queued), and a real client is served every time."""
    with serve_process(
        moto_server, moto_bucket, tmp_path, database=database, MAX_CONNECTIONS="16", WRITE_TIMEOUT="60"
    ) as process:
        async with attack("pipeline", process.url, "40") as flood:
            await asyncio.sleep(2)
            latencies, failures = await _served(process, 5.0)
        log = process.log()
    print(json.dumps({"requests": len(latencies), "max_ms": round(max(latencies) * 1000), **flood}))
    assert not failures, (failures[:5], flood)
    assert max(latencies) < 2.0, latencies
    assert flood["closed_by_server"] > 40, flood
    assert "requests pipelined" in log


async def test_clients_that_never_read_their_answers_are_closed(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, database: GatewayDatabase
) -> None:
    """40 addresses asking a few requests at a time (never too many queued) and never reading the answers,
    against 16 connection slots: once an answer has waited `WRITE_TIMEOUT` for its client (or, when every slot is
    taken, a quarter of a second), the connection is closed, and a real client is served every time."""
    with serve_process(
        moto_server, moto_bucket, tmp_path, database=database, MAX_CONNECTIONS="16", WRITE_TIMEOUT="2"
    ) as process:
        async with attack("slowread", process.url, "40") as flood:
            await asyncio.sleep(4)
            latencies, failures = await _served(process, 5.0)
        log = process.log()
    print(json.dumps({"requests": len(latencies), "max_ms": round(max(latencies) * 1000), **flood}))
    assert not failures, (failures[:5], flood)
    assert max(latencies) < 2.5, latencies
    assert flood["closed_by_server"] > 40, flood
    assert "Traceback" not in log


async def _trickle_complete(
    url: str, token: str, backup_id: str, body: bytes, stop: asyncio.Event
) -> int | None:
    """POST a complete whose body arrives a byte every 0.2 s, until `stop`; its status, if answered."""
    host, port = address(url)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = (
            f"POST /v1/backups/{backup_id}/complete HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode())
        for byte in body:
            if stop.is_set():
                return None
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1])
    finally:
        writer.close()


async def test_trickled_complete_bodies_hold_no_database_connection(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """Two tokens trickling their complete bodies, a pool of 2 connections: nothing is held while a body arrives,
    so other instances go on (they got 503 once the pool's wait ran out, before); the bodies, once in, complete."""
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, DB_POOL_SIZE="2", DB_TIMEOUT="2"
    ) as gateway:
        trickling = []
        for name in ("attacker-1", "attacker-2"):
            _, token = await gateway.add_instance(name)
            api = Api(session, gateway.url, token)
            init = await api.init(10)
            url = (await api.sign(init["id"], [1]))[0]["url"]
            etag = await put(session, url, b"0123456789")
            body = json.dumps({"parts": [{"part_number": 1, "etag": etag}]}).encode()
            trickling.append((token, init["id"], body))
        _, token = await gateway.add_instance("home")
        home = Api(session, gateway.url, token)
        stop = asyncio.Event()
        attackers = [
            asyncio.create_task(_trickle_complete(gateway.url, token, backup_id, body, stop))
            for token, backup_id, body in trickling
        ]
        await asyncio.sleep(1)
        statuses = []
        end = time.monotonic() + 5
        while time.monotonic() < end:
            statuses.append((await home.call("GET", "/v1/instance"))[0])
            statuses.append((await home.call("GET", "/v1/backups"))[0])
            await asyncio.sleep(0.1)
        done = await asyncio.gather(*attackers)
        stop.set()
        assert set(statuses) == {200}, sorted(set(statuses))
        assert done == [200, 200]


async def test_an_answer_left_unread_for_the_write_timeout_closes_its_connection(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    """One request whose answer (a listing of 8 MB, more than the kernel's buffers take) the client never reads,
    with a receive buffer of 4 KiB: `WRITE_TIMEOUT` seconds later the gateway drops the connection and what it
    had not sent; before, it waited for as long as the client liked."""
    async with run_gateway(
        moto_server,
        moto_bucket,
        tmp_path,
        database=database,
        WRITE_TIMEOUT="1",
        RETENTION="200",
        INIT_RATE="1000",
    ) as gateway:
        instance_id, token = await gateway.add_instance("home")
        api = Api(session, gateway.url, token)
        for n in range(130):  # listed from the database alone: rows are enough
            backup_id = uuid.uuid4().hex
            await gateway.app[STORE].restore_backup(
                Backup(backup_id, instance_id, f"n{n}", 1, None, COMPLETED, 1.0, 2.0 + n, 1, 1,
                       f"{instance_id}/{backup_id}", metadata={"padding": "p" * 64_000})
            )  # fmt: skip
        listing = len(json.dumps(await api.ok("GET", "/v1/backups")))
        assert listing > 8_000_000
        host, port = address(gateway.url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        try:
            writer.write(
                f"GET /v1/backups HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
            )
            await asyncio.sleep(3)  # not reading
            received = 0
            try:
                async with asyncio.timeout(10):
                    while chunk := await reader.read(65536):
                        received += len(chunk)
            except ConnectionResetError:
                pass
        finally:
            writer.close()
        assert received < listing // 2, (received, listing)
        await api.ok("GET", "/v1/instance")  # the gateway goes on
