"""The gateway as a process on a fixed port, which a test can kill and start again (a gateway restart, an outage)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from pathlib import Path

from tests.helpers.gateway import GatewayProcess, serve_process
from tests.helpers.servers import S3Server, free_port


class Gateway:
    """`offsite-gateway serve` on one port; `kill()` stops it dead, `start()` brings the same gateway back."""

    def __init__(self, s3: S3Server, bucket: str, tmp_path: Path, **settings: str) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self._args = (s3, bucket, tmp_path)
        self._settings = settings
        self.port = free_port()
        self._stack = contextlib.ExitStack()
        self.process: GatewayProcess | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = self._stack.enter_context(serve_process(*self._args, port=self.port, **self._settings))

    def kill(self) -> None:
        """SIGKILL, no goodbye, mid-request if one is under way."""
        assert self.process is not None
        self.process.process.kill()
        self.process.process.wait(timeout=10)
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self.process = None

    def kill_and_restart(self) -> None:
        self.kill()
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        self._stack.close()


async def add_instance(gateway: Gateway, name: str = "home") -> tuple[str, str]:
    """``offsite-gateway instance add`` against the process's database: (instance id, token)."""
    assert gateway.process is not None
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "offsite_gateway",
        "instance",
        "add",
        name,
        env=gateway.process.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    text = out.decode()
    match = re.search(r"id ([0-9a-f]+)\.", text)
    assert match is not None, text
    return match.group(1), text.strip().splitlines()[-1].strip()
