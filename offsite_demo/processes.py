"""The processes the demo starts: each the leader of its own process group, stopped by its pid, newest first.

Every child gets SIGTERM if the driver dies, whatever the way (PR_SET_PDEATHSIG on Linux), so that nothing the demo
started outlives it. Short commands (the gateway's CLI) run to their end; servers run until stopped, their output in
a log file that the driver can follow and quote.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from offsite_demo.console import ROOT, DemoError, say, show
from tests.helpers.servers import log_tail

STOP_TIMEOUT = 60.0
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


def _in_child() -> None:
    """Run in each child before exec: SIGTERM when this driver dies, whatever the way."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def killpg(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to a process group, if it is still there."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def tail(path: Path, lines: int = 25) -> str:
    """The end of a log, indented, to quote under a message."""
    return textwrap.indent(log_tail(path, lines), "    ")


@dataclass
class Child:
    """A long-running process of the demo."""

    name: str
    process: asyncio.subprocess.Process
    log: Path
    after_stop: Callable[[], None] | None = None  # removes what it leaves behind outside the demo directory
    stop_timeout: float = STOP_TIMEOUT  # SIGTERM, then SIGKILL after this many seconds

    @property
    def running(self) -> bool:
        """Whether it has not exited."""
        return self.process.returncode is None

    def exited(self, what: str) -> DemoError:
        """The error for a server that exited before it was ready, with the end of its log."""
        end = tail(self.log)
        hint = f"Its log is {show(self.log)}"
        if "address already in use" in end.lower():
            hint += " (its port was taken meanwhile: stop what uses it, or choose other ports, see above)"
        return DemoError(
            f"{what} exited with code {self.process.returncode} before it was ready; the end of its log:\n{end}",
            hint + ".",
        )


class Processes:
    """Every process the demo starts, each the leader of its own process group, stopped in reverse order."""

    def __init__(self) -> None:
        """Nothing started yet."""
        self.children: list[Child] = []
        self.pids: list[int] = []

    async def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log: Path,
        *,
        cwd: Path = ROOT,
        after_stop: Callable[[], None] | None = None,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> Child:
        """Start a server; its output goes to ``log``; ``after_stop`` runs once it has exited."""
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_in_child,
            )
        child = Child(name, process, log, after_stop, stop_timeout)
        self.children.append(child)
        self.pids.append(process.pid)
        say(f"started {name} (pid {process.pid}), log {show(log)}")
        return child

    async def run(self, name: str, argv: list[str], env: dict[str, str], limit: float = 60) -> str:
        """Run a short command to its end; its output, or DemoError with it if it failed."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=_in_child,
        )
        self.pids.append(process.pid)
        try:
            async with asyncio.timeout(limit):
                output, _ = await process.communicate()
        except BaseException:
            killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise
        finally:
            killpg(process.pid, signal.SIGKILL)  # anything it left behind in its group
        text = output.decode(errors="replace")
        if process.returncode != 0:
            raise DemoError(f"`{name}` failed with exit code {process.returncode}:\n{text.rstrip()}")
        return text

    async def stop_all(self) -> None:
        """Stop every server, newest first: SIGTERM to its group, SIGKILL after a while."""
        for child in reversed(self.children):
            await self.stop(child)
        self.children.clear()

    async def stop(self, child: Child) -> None:
        """Stop one server: SIGTERM to its group, SIGKILL after a while."""
        if child.running:
            say(f"stopping {child.name} (pid {child.process.pid})")
            killpg(child.process.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(child.stop_timeout):
                    await child.process.wait()
            except TimeoutError:
                say(f"{child.name} did not stop within {child.stop_timeout:.0f} s: killing it")
                killpg(child.process.pid, signal.SIGKILL)
                await child.process.wait()
        killpg(child.process.pid, signal.SIGKILL)  # anything left in its group (e.g. an installer)
        if child.after_stop is not None:
            child.after_stop()

    def kill_all(self) -> None:
        """Last resort (a second Ctrl-C): SIGKILL every group at once (``stop_all`` still tidies up after)."""
        for child in self.children:
            killpg(child.process.pid, signal.SIGKILL)

    def check_running(self) -> None:
        """DemoError, with the end of its log, if a server has exited."""
        for child in self.children:
            if not child.running:
                raise DemoError(f"{child.name} exited (code {child.process.returncode}):\n{tail(child.log)}")


class LogFollower:
    """Reads the lines a log file gains."""

    def __init__(self, path: Path) -> None:
        """Start at the beginning of the file."""
        self.path = path
        self.offset = 0
        self.partial = b""

    def new_lines(self) -> list[str]:
        """The complete lines written since the last call."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        return [line.decode(errors="replace") for line in lines]


async def wait_http(
    session: aiohttp.ClientSession, url: str, child: Child, what: str, limit: float = 60
) -> None:
    """Wait until ``url`` answers below 500, while ``child`` runs; DemoError after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not child.running:
            raise child.exited(what)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                if response.status < 500:
                    return
        await asyncio.sleep(0.2)
    raise DemoError(f"{what} did not answer at {url} within {limit:.0f} s", f"See {show(child.log)}.")
