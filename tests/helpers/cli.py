"""The `offsite-gateway` command run as the operator runs it: a subprocess with settings in its environment.

result = run_cli("bucket", "check", env=cli_env(s3, bucket, DB=database.setting), check=False)
result.returncode, result.stdout, result.stderr
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.servers import S3Server

COMMAND = [sys.executable, "-m", "offsite_gateway"]


def settings_env(**settings: str) -> dict[str, str]:
    """This process's environment without any OFFSITE_GATEWAY_ variable, plus `settings` (names unprefixed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFSITE_GATEWAY_")}
    env.update({f"OFFSITE_GATEWAY_{name}": value for name, value in settings.items()})
    return env


def cli_env(s3: S3Server, bucket: str, tmp_path: Path, **more: str) -> dict[str, str]:
    """The storage settings of `s3` and `bucket`, a SQLite database in `tmp_path` (or `DB=`), and `more`."""
    settings = {k.removeprefix("OFFSITE_GATEWAY_"): v for k, v in s3.gateway_env(bucket).items()}
    return settings_env(**{**settings, "DB": str(tmp_path / "gw.sqlite3"), **more})


def run_cli(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `offsite-gateway ARGS...`; with `check`, fail unless it exits 0 (showing its stderr)."""
    result = subprocess.run(
        [*COMMAND, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


async def run_cli_async(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`run_cli` for a test whose event loop must keep serving meanwhile (a proxy, a gateway in the test)."""
    process = await asyncio.create_subprocess_exec(
        *COMMAND, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(60):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return subprocess.CompletedProcess(
        [*COMMAND, *args], process.returncode or 0, stdout.decode(), stderr.decode()
    )
