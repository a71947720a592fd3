"""Idle and slow connections: timeouts, a cap with room for new ones, the file limit (issue 14, item 1)."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from offsite_gateway.limits import OTHER_FILES, STORAGE_FILES, FileLimitTooLow, connection_budget
from offsite_gateway.server import LINGERING_TIME, AcceptErrorLog
from tests.gateway.attackers import IDLE_SOURCE, attack
from tests.gateway.raw import address, parse_response, request_bytes
from tests.helpers.gateway import GatewayDatabase, GatewayProcess, run_gateway, serve_process
from tests.helpers.servers import S3Server


async def closed_after(
    url: str, send: bytes = b"", trickle: bytes = b"", every: float = 0.2
) -> tuple[float, bytes]:
    """Open a connection, send `send`, then `trickle` a byte at a time; (seconds until the server closed, bytes read)."""
    host, port = address(url)
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    try:
        writer.write(send)

        async def dribble() -> None:
            for byte in trickle:
                await asyncio.sleep(every)
                writer.write(bytes([byte]))

        dribbler = asyncio.create_task(dribble())
        try:
            async with asyncio.timeout(10):
                received = await reader.read()
        finally:
            dribbler.cancel()
        return time.monotonic() - started, received
    finally:
        writer.close()
        await writer.wait_closed()


async def test_idle_and_slow_connections_are_closed(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    database: GatewayDatabase,
) -> None:
    timeouts = {"HEADER_TIMEOUT": "1", "KEEPALIVE_TIMEOUT": "2", "BODY_TIMEOUT": "1"}
    async with run_gateway(moto_server, moto_bucket, tmp_path, database=database, **timeouts) as gateway:
        _, token = await gateway.add_instance("home")
        # Connects and says nothing.
        seconds, received = await closed_after(gateway.url)
        assert 0.8 < seconds < 2.5, seconds
        assert received == b""
        # Trickles a header that never ends: the header timeout counts from the connection, not the last byte.
        seconds, _ = await closed_after(gateway.url, b"GET /v1/instance HTTP/1.1\r\n", b"X-a: b\r\n" * 10)
        assert 0.8 < seconds < 2.5, seconds
        # One request, then idle in keep-alive.
        keep_alive = f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        seconds, received = await closed_after(gateway.url, keep_alive)
        assert parse_response(received).status == 200
        assert 1.8 < seconds < 3.5, seconds
        # And trickles the next request's header.
        seconds, _ = await closed_after(gateway.url, keep_alive, b"GET /healthz HTTP/1.1\r\n" * 3)
        assert 1.8 < seconds < 3.5, seconds
        # A body that does not come: 408, in JSON, and the connection is closed (once aiohttp has lingered,
        # reading what still comes for LINGERING_TIME, so that a client sending a body reads the answer).
        head = request_bytes("POST", "/v1/backups", {"Authorization": f"Bearer {token}"}, b"x" * 100)
        seconds, received = await closed_after(gateway.url, head[:-90], head[-90:-80], every=0.3)
        answer = parse_response(received)
        assert (answer.status, answer.json()["error"]["code"]) == (408, "request_timeout"), answer
        assert 0.8 < seconds < 1 + LINGERING_TIME + 0.8, seconds


async def idle_connection(url: str, opened: list[int], closed: list[int]) -> None:
    host, port = address(url)
    reader, writer = await asyncio.open_connection(host, port, local_addr=(IDLE_SOURCE, 0))
    opened.append(1)
    try:
        await reader.read()
        closed.append(1)
    finally:
        writer.close()


async def test_the_oldest_idle_connections_make_room_for_new_ones(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    session: aiohttp.ClientSession,
    database: GatewayDatabase,
) -> None:
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, MAX_CONNECTIONS="20"
    ) as gateway:
        _, token = await gateway.add_instance("home")
        opened: list[int] = []
        closed: list[int] = []
        idle = [asyncio.create_task(idle_connection(gateway.url, opened, closed)) for _ in range(60)]
        try:
            async with asyncio.timeout(5):
                while len(opened) < 60 or len(closed) < 40:
                    await asyncio.sleep(0.05)
            # A real client gets in at once, and is served.
            started = time.monotonic()
            headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
            async with session.get(gateway.url + "/v1/instance", headers=headers) as resp:
                assert resp.status == 200
            assert time.monotonic() - started < 1.0
            assert len(closed) >= 40
        finally:
            for task in idle:
                task.cancel()
            await asyncio.gather(*idle, return_exceptions=True)


async def test_a_new_connection_is_refused_in_json_when_every_one_is_busy(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    database: GatewayDatabase,
) -> None:
    async with run_gateway(
        moto_server, moto_bucket, tmp_path, database=database, MAX_CONNECTIONS="5"
    ) as gateway:
        _, token = await gateway.add_instance("home")
        host, port = address(gateway.url)
        busy = []
        head = request_bytes("POST", "/v1/backups", {"Authorization": f"Bearer {token}"}, b"x" * 100)[:-50]
        try:
            for _ in range(10):  # requests whose bodies never come (busy, not idle): twice the cap
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(head)
                busy.append((reader, writer))
            await asyncio.sleep(0.3)
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request_bytes("GET", "/healthz"))
            async with asyncio.timeout(5):
                answer = parse_response(await reader.read())
            writer.close()
            assert answer.status == 503, answer
            assert answer.json()["error"]["code"] == "server_busy"
            assert answer.headers["retry-after"] == "1"
        finally:
            for _, writer in busy:
                writer.close()


def add_instance(process: GatewayProcess, name: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "offsite_gateway", "instance", "add", name],
        env=process.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


async def test_a_flood_of_idle_sockets_does_not_starve_a_real_client(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    database: GatewayDatabase,
) -> None:
    """300 sockets from another address that never finish a request, reopened as soon as they are closed,
    against a gateway whose file limit is 256: a real client making one request at a time, each on a new
    connection, is still served within a second, every time."""
    with serve_process(moto_server, moto_bucket, tmp_path, database=database, nofile=(256, 256)) as process:
        token = add_instance(process, "home")
        latencies: list[float] = []
        failures: list[str] = []
        async with attack("idle", process.url, "300") as flood:
            await asyncio.sleep(1.0)  # the flood is on
            connector = aiohttp.TCPConnector(force_close=True)
            timeout = aiohttp.ClientTimeout(total=5)
            headers = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                end = time.monotonic() + 6
                while time.monotonic() < end:
                    started = time.monotonic()
                    try:
                        async with session.get(process.url + "/v1/instance", headers=headers) as resp:
                            await resp.read()
                            if resp.status != 200:
                                failures.append(f"HTTP {resp.status}")
                    except (aiohttp.ClientError, TimeoutError) as err:
                        failures.append(repr(err))
                    latencies.append(time.monotonic() - started)
                    await asyncio.sleep(0.05)
        log = process.log()
    numbers = {
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(sorted(latencies)[int(0.99 * len(latencies))] * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
        **flood,
    }
    print(json.dumps(numbers))  # the numbers for the report (pytest -s)
    assert not failures, (failures[:5], numbers)
    assert max(latencies) < 1.0, numbers
    assert statistics.median(latencies) < 0.1, numbers
    assert flood["closed_by_server"] > 300, numbers  # the gateway kept making room
    assert "Traceback" not in log
    assert log.count("out of system resource") <= 6
    assert len(log) < 100_000


def test_serve_raises_its_file_limit(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, database: GatewayDatabase
) -> None:
    with serve_process(moto_server, moto_bucket, tmp_path, database=database, nofile=(256, 4096)) as process:
        assert open_files_limit(process.pid) == (4096, 4096)
        log = process.log()
    assert "open-file limit 4096" in log


def test_serve_refuses_a_file_limit_too_low_to_serve(
    moto_server: S3Server,
    moto_bucket: str,
    tmp_path: Path,
    database: GatewayDatabase,
) -> None:
    with (
        pytest.raises(RuntimeError, match="exited with 1") as info,
        serve_process(moto_server, moto_bucket, tmp_path, database=database, nofile=(64, 64)),
    ):
        pass
    assert "open-file limit" in str(info.value)
    assert "ulimit -n" in str(info.value)


def test_failed_accepts_make_one_line_now_and_then(caplog: pytest.LogCaptureFixture) -> None:
    """What asyncio reports for each accept() that fails with EMFILE: a throttled line, never a traceback."""
    caplog.set_level(logging.DEBUG)
    now = [1000.0]
    log = AcceptErrorLog(interval=10.0, clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        fallback: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _, context: fallback.append(context))
        log.install(loop)
        error = OSError(24, "Too many open files")
        for _ in range(5000):
            loop.call_exception_handler(
                {"message": "socket.accept() out of system resource", "exception": error}
            )
            now[0] += 0.001
        now[0] += 10
        loop.call_exception_handler({"message": "socket.accept() out of system resource", "exception": error})
        loop.call_exception_handler({"message": "something else", "exception": ValueError("x")})
    finally:
        loop.close()
    lines = [record for record in caplog.records if record.name.startswith("offsite_gateway")]
    assert len(lines) == 2, [record.getMessage() for record in lines]
    assert all(record.exc_info is None for record in lines)
    assert "Too many open files" in lines[0].getMessage()
    assert "4999 more" in lines[1].getMessage() or "5000 more" in lines[1].getMessage()
    assert [context["message"] for context in fallback] == ["something else"]  # others go where they went


def test_the_connection_budget_fits_the_file_limit() -> None:
    """Twice the cap, three accept batches, storage's connections and the rest fit in the limit."""
    for limit in (256, 1024, 4096, 65536, 1 << 20):
        budget = connection_budget(4096, limit, open_now=12)
        used = 12 + STORAGE_FILES + OTHER_FILES + 2 * budget.max_connections + 3 * budget.accept_batch
        assert used <= limit, (limit, budget)
        assert 8 <= budget.accept_batch <= 128
    assert connection_budget(4096, 256, 12).max_connections >= 30
    assert connection_budget(4096, 1 << 20, 12).max_connections == 4096  # the setting, when the limit allows
    assert connection_budget(50, 1 << 20, 12).max_connections == 50
    with pytest.raises(FileLimitTooLow) as info:
        connection_budget(4096, 128, 12)
    assert info.value.needed == 256
