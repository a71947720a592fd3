"""`scripts/demo --once` as a newcomer runs it: moto, the gateway and a real Home Assistant as processes.

The demo runs as a subprocess (its servers are processes of their own: nothing runs in the test process, so Home
Assistant's test harness sees no thread or task left behind), on free 127.0.0.1 ports and in a directory of the
test's own, with the Home Assistant environment the suite runs in (each lock pins its frontend, so nothing is
installed at start).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT = 1200


def _processes_with(marker: str) -> list[str]:
    """The processes whose environment carries ``marker`` (every process the demo started inherits it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                found.append(f"{proc.name}: {(proc / 'cmdline').read_bytes().replace(b'\0', b' ').decode()}")
        except OSError:
            continue
    return found


def _ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.mark.timeout(DEMO_TIMEOUT + 120)
def test_demo_once(tmp_path: Path) -> None:
    """The backup reaches the bucket and comes back identical through Home Assistant; nothing is left running."""
    marker = f"offsite-demo-test-{uuid.uuid4().hex}"
    ha_port, gateway_port, s3_port = _ports(3)
    env = {
        **os.environ,
        "DEMO_HA_PORT": str(ha_port),
        "DEMO_GATEWAY_PORT": str(gateway_port),
        "DEMO_S3_PORT": str(s3_port),
        "DEMO_DIR": str(tmp_path / "demo"),
        "OFFSITE_DEMO_TEST_MARKER": marker,
        "DEMO_VENV": sys.prefix,  # the Home Assistant this run tests (current or oldest)
    }
    try:
        result = subprocess.run(
            [str(ROOT / "scripts" / "demo"), "--once"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEMO_TIMEOUT,
            check=False,
        )
    finally:
        left = _processes_with(marker)
    output = result.stdout + result.stderr
    tail = "\n".join(output.splitlines()[-60:])
    assert result.returncode == 0, f"scripts/demo --once exited with {result.returncode}:\n{tail}"
    match = re.search(r"SHA-256 match: ([0-9a-f]{64})", output)
    assert match is not None, tail
    assert re.search(r"OK +object in the bucket: s3://offsite-demo/\S+, \d+ bytes in [2-9] parts", output), (
        tail
    )
    # The usage sensors show what the gateway holds after the backup (one backup, a share of the 1 GiB quota).
    assert re.search(
        r"OK +Storage used [\d.]+ \([\d.]+ MiB\), Backups stored 1, Quota used [\d.]+ %", output
    ), tail
    assert "FAIL" not in output, tail
    stopped = re.search(r"everything stopped \(pids ([\d ]+)\)", output)
    assert stopped is not None, tail
    assert len(stopped.group(1).split()) >= 3  # moto, the gateway, Home Assistant (and the CLI commands)
    assert left == [], f"processes left behind: {left}"
