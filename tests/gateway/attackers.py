"""Attacks on a gateway, each run as a process of its own so that its own work does not slow the test's client.

    python -m tests.gateway.attackers idle URL SOCKETS
    python -m tests.gateway.attackers complete URL TOKEN BACKUP_ID... PARTS
    python -m tests.gateway.attackers heads URL SOCKETS BYTES
    python -m tests.gateway.attackers pipeline URL ADDRESSES
    python -m tests.gateway.attackers slowread URL ADDRESSES

Each prints "attacking" once under way, and on SIGTERM stops and prints one JSON line of what it saw. `attack`
runs one as a subprocess for the length of a block. Bounded: each stops by itself after 120 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
IDLE_SOURCE = "127.0.0.2"  # another host than a test client's 127.0.0.1 (Linux answers on all of 127.0.0.0/8)
LIFETIME = 120.0


async def idle(url: str, sockets: int, stop: asyncio.Event) -> dict[str, Any]:
    """Keep `sockets` connections open from IDLE_SOURCE that never finish a request (half silent, half
    trickling a header a line every half second); reopen at once each one the server closes."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    seen = {"opened": 0, "closed_by_server": 0, "refused": 0}

    async def one(trickles: bool) -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port, local_addr=(IDLE_SOURCE, 0))
            except OSError:
                seen["refused"] += 1
                await asyncio.sleep(0.05)
                continue
            seen["opened"] += 1
            try:
                if trickles:
                    writer.write(b"GET /v1/instance HTTP/1.1\r\nHost: x\r\n")
                read = asyncio.ensure_future(reader.read())
                stopped = asyncio.ensure_future(stop.wait())
                while not read.done() and not stop.is_set():
                    await asyncio.wait([read, stopped], timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                    if trickles and not read.done():
                        writer.write(b"X: y\r\n")
                if read.done():
                    seen["closed_by_server"] += 1
                read.cancel()
                stopped.cancel()
            except OSError:
                seen["closed_by_server"] += 1
            finally:
                writer.close()

    await asyncio.gather(*(one(n % 2 == 1) for n in range(sockets)))
    return seen


async def complete(
    url: str, token: str, backup_ids: list[str], parts: int, stop: asyncio.Event
) -> dict[str, Any]:
    """One stream per backup id, each sending the same `parts`-part complete body again and again."""
    body = json.dumps(
        {
            "parts": [
                {"part_number": n, "etag": '"0123456789abcdef0123456789abcdef"'} for n in range(1, parts + 1)
            ]
        }
    ).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    statuses: list[int] = []

    async def stream(session: aiohttp.ClientSession, backup_id: str) -> None:
        while not stop.is_set():
            async with session.post(
                f"{url}/v1/backups/{backup_id}/complete", data=body, headers=headers
            ) as resp:
                await resp.read()
                statuses.append(resp.status)

    async with aiohttp.ClientSession() as session:
        streams = [asyncio.create_task(stream(session, backup_id)) for backup_id in backup_ids]
        await stop.wait()
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    return {"requests": len(statuses), "statuses": sorted(set(statuses)), "body_bytes": len(body)}


def _source(number: int) -> str:
    """The number-th of the attackers' addresses, 127.0.1.0 onwards (none is a test client's 127.0.0.1)."""
    return f"127.0.{1 + number // 250}.{number % 250 + 1}"


async def heads(url: str, sockets: int, size: int, stop: asyncio.Event) -> dict[str, Any]:
    """`sockets` connections (from 50 addresses) each sending a request head of `size` bytes that never ends
    (header lines of 8,000 bytes, as fast as the server reads them), reading what the server answers meanwhile;
    each is then held open until the server closes it or `stop`."""
    parts = urlsplit(url)
    seen: dict[str, int] = {}

    async def one(number: int) -> None:
        reader, writer = await asyncio.open_connection(
            parts.hostname, parts.port, local_addr=(_source(number % 50), 0)
        )
        answer = asyncio.ensure_future(reader.read(4096))
        outcome = "none"
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            sent, line = 0, 0
            while sent < size and not answer.done() and not stop.is_set():
                chunk = f"X-Pad-{line}: ".encode() + b"a" * 7980 + b"\r\n"
                writer.write(chunk)
                sent += len(chunk)
                line += 1
                if line % 2 == 0:
                    await writer.drain()
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait([answer, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if answer.done():
                data = answer.result()
                outcome = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"
        except OSError:
            if answer.done() and not answer.cancelled() and answer.exception() is None:
                data = answer.result()
                outcome = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "reset"
            else:
                outcome = "reset"
        finally:
            answer.cancel()
            writer.close()
        seen[outcome] = seen.get(outcome, 0) + 1

    await asyncio.gather(*(one(n) for n in range(sockets)))
    return {"outcomes": seen}


async def pipeline(
    url: str, addresses: int, stop: asyncio.Event, *, burst: int, pause: float
) -> dict[str, Any]:
    """One connection per address, each sending requests for the root page `burst` at a time every `pause`
    seconds (pipelined, keep-alive) and never reading an answer, with a receive buffer of 4 KiB; a connection
    the server closes is opened again 0.2 to 1 s later (a crowd that reconnects at once is a flood of
    connections, which a gateway alone cannot keep out: README, "What it does not do")."""
    parts = urlsplit(url)
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * burst
    seen = {"opened": 0, "closed_by_server": 0, "refused": 0}

    async def one(number: int) -> None:
        while not stop.is_set():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.bind((_source(number), 0))
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
                _, writer = await asyncio.open_connection(sock=sock)
            except OSError:
                sock.close()
                seen["refused"] += 1
                await asyncio.sleep(0.05)
                continue
            seen["opened"] += 1
            try:
                while not stop.is_set():
                    writer.write(request)
                    await asyncio.wait_for(writer.drain(), 1)
                    await asyncio.sleep(pause)
                    if writer.transport.is_closing():
                        seen["closed_by_server"] += 1
                        break
            except (OSError, TimeoutError):
                seen["closed_by_server"] += 1
            finally:
                writer.close()
            await asyncio.sleep(random.uniform(0.2, 1.0))

    await asyncio.gather(*(one(n) for n in range(addresses)))
    return seen


async def main(argv: list[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.call_later(LIFETIME, stop.set)
    kind, url, *rest = argv
    if kind == "idle":
        work = asyncio.create_task(idle(url, int(rest[0]), stop))
    elif kind == "heads":
        work = asyncio.create_task(heads(url, int(rest[0]), int(rest[1]), stop))
    elif kind == "pipeline":  # a burst far beyond what a connection may queue
        work = asyncio.create_task(pipeline(url, int(rest[0]), stop, burst=2000, pause=0.5))
    elif kind == "slowread":  # a few at a time, each answered, never read
        work = asyncio.create_task(pipeline(url, int(rest[0]), stop, burst=4, pause=0.002))
    else:
        work = asyncio.create_task(complete(url, rest[0], rest[1:-1], int(rest[-1]), stop))
    await asyncio.sleep(0.2)
    print("attacking", flush=True)
    print(json.dumps(await work), flush=True)


@contextlib.asynccontextmanager
async def attack(*args: str) -> AsyncIterator[dict[str, Any]]:
    """Run `python -m tests.gateway.attackers ARGS...` for the block; the dict it yields is filled on exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.gateway.attackers", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    report: dict[str, Any] = {}
    try:
        assert (await process.stdout.readline()).strip() == b"attacking"
        yield report
    finally:
        if process.returncode is None:
            process.terminate()
        output, _ = await process.communicate()
        if output.strip():
            report.update(json.loads(output.splitlines()[-1]))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
