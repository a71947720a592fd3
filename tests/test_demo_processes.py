"""The demo's process supervision (offsite_demo/processes.py) with real processes: what it starts, it stops by its
pid, its whole process group included; a server that ignores SIGTERM is killed; a wait for a server that exited or
never answers ends with an error that says so; a short command that fails or hangs leaves nothing behind."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from offsite_demo.console import DemoError
from offsite_demo.processes import Processes, wait_http
from tests.helpers.servers import free_port


def _gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (gone, or a zombie waiting for its new parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _written(path: Path) -> bool:
    """Whether a pid file has its pid."""
    return path.is_file() and bool(path.read_text().strip())


async def _until(check: Callable[[], object], limit: float = 10) -> bool:
    """Poll ``check()`` until it is true or ``limit`` seconds passed; its last value."""
    deadline = time.monotonic() + limit
    while not (value := check()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return bool(value)


async def test_stop_all_stops_each_server_and_what_it_started_newest_first(tmp_path: Path) -> None:
    """Each server's process group gets the signal: a process it started in the background goes too."""
    processes = Processes()
    stopped: list[str] = []
    children = []
    for name in ("first", "second"):
        pid_file = tmp_path / f"{name}.pid"
        child = await processes.start(
            name,
            ["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"],
            dict(os.environ),
            tmp_path / f"{name}.log",
            after_stop=functools.partial(stopped.append, name),
        )
        assert await _until(functools.partial(_written, pid_file))
        children.append((child, int(pid_file.read_text())))
    assert all(not _gone(grandchild) for _, grandchild in children)

    await processes.stop_all()

    assert stopped == ["second", "first"]
    assert processes.children == []
    for child, grandchild in children:
        assert child.process.returncode is not None
        assert await _until(functools.partial(_gone, grandchild)), f"pid {grandchild} still runs"
    assert processes.pids == [child.process.pid for child, _ in children]


async def test_a_server_that_ignores_sigterm_is_killed_after_its_stop_timeout(tmp_path: Path) -> None:
    processes = Processes()
    log = tmp_path / "stubborn.log"
    child = await processes.start(
        "stubborn",
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(300)",
        ],
        dict(os.environ),
        log,
        stop_timeout=0.5,
    )
    assert await _until(lambda: "ready" in log.read_text())
    started = time.monotonic()
    await processes.stop_all()
    assert child.process.returncode == -9
    assert time.monotonic() - started < 10


async def test_waiting_for_a_server_that_exited_quotes_its_log(tmp_path: Path) -> None:
    processes = Processes()
    child = await processes.start(
        "crasher",
        ["sh", "-c", "echo 'bind: address already in use'; exit 3"],
        dict(os.environ),
        tmp_path / "c.log",
    )
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(DemoError) as raised:
                await wait_http(session, f"http://127.0.0.1:{free_port()}/", child, "the crasher", limit=30)
    finally:
        await processes.stop_all()
    assert "the crasher exited with code 3 before it was ready" in str(raised.value)
    assert "bind: address already in use" in str(raised.value)
    assert raised.value.hint is not None
    assert "its port was taken meanwhile" in raised.value.hint


async def test_waiting_for_a_server_that_never_answers_times_out_naming_the_url(tmp_path: Path) -> None:
    processes = Processes()
    child = await processes.start("mute", ["sleep", "300"], dict(os.environ), tmp_path / "mute.log")
    url = f"http://127.0.0.1:{free_port()}/"
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(DemoError, match=f"the mute server did not answer at {url} within 1 s"):
                await wait_http(session, url, child, "the mute server", limit=1)
    finally:
        await processes.stop_all()
    assert time.monotonic() - started < 10
    assert child.process.returncode is not None


async def test_a_short_command_that_fails_says_its_code_and_output(tmp_path: Path) -> None:
    processes = Processes()
    with pytest.raises(DemoError, match=r"`refuse` failed with exit code 2:\nno such bucket"):
        await processes.run("refuse", ["sh", "-c", "echo 'no such bucket'; exit 2"], dict(os.environ))


async def test_a_short_command_that_hangs_is_killed_with_what_it_started(tmp_path: Path) -> None:
    processes = Processes()
    pid_file = tmp_path / "background.pid"
    with pytest.raises(TimeoutError):
        await processes.run(
            "hang", ["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"], dict(os.environ), limit=1
        )
    background = int(pid_file.read_text())
    assert await _until(lambda: _gone(background)), f"pid {background} still runs"
    (sh,) = processes.pids
    assert await _until(lambda: _gone(sh)), f"pid {sh} still runs"
