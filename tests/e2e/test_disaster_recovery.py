"""Disaster recovery onto a new machine: two real Home Assistant processes, the gateway and SeaweedFS as processes.

The scenario is ``disaster_recovery.py`` (see its docstring), run as a subprocess like the demo's test: nothing runs in
the test process, so Home Assistant's test harness sees no thread or task left behind, and whatever the scenario
started is checked to be gone.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_demo import _processes_with, demo_env, demo_ports

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 900

EXPECTED = [
    r"OK +the old machine sent backup (\w+) off-site",
    r"OK +the operator rotated the instance's token",
    r"OK +the new machine lists backup \w+ in its Backups, on offsite_backup\.\w+",
    r"OK +Home Assistant stopped to restore \(exit code 100: restart me\)",
    r"OK +the new machine's configuration holds the old one's marker file \(262144 bytes, identical\)",
    r"OK +the restore is done",
    r"OK +the old machine's user 'demo' logs in to the new one",
    r"OK +the restored entry \(its old token was rotated\) asks to re-authenticate",
    r"OK +the new token re-authenticates it \(reauth_successful\)",
    r"OK +backup \w+ is listed again on offsite_backup\.\w+",
]


@pytest.mark.timeout(TIMEOUT + 120)
def test_restore_onto_a_new_machine(tmp_path: Path) -> None:
    marker = f"offsite-dr-test-{uuid.uuid4().hex}"
    env = demo_env(marker, demo_ports(), DEMO_HA_START_TIMEOUT="300")
    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tests.e2e.disaster_recovery", str(tmp_path / "dr")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        left = _processes_with(marker)
    output = result.stdout + result.stderr
    tail = "\n".join(output.splitlines()[-60:])
    assert result.returncode == 0, f"the scenario exited with {result.returncode}:\n{tail}"
    for line in EXPECTED:
        assert re.search(line, output), f"{line}\n{tail}"
    assert "FAIL" not in output, tail
    assert left == [], f"processes left behind: {left}"
    print(f"disaster recovery: {time.monotonic() - started:.0f} s")
