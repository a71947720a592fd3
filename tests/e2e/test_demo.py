"""`scripts/demo --once` as a newcomer runs it: SeaweedFS, the gateway and a real Home Assistant as processes.

The demo runs as a subprocess (its servers are processes of their own: nothing runs in the test process, so Home
Assistant's test harness sees no thread or task left behind), on free 127.0.0.1 ports and in a directory of the
test's own, with the Home Assistant environment the suite runs in (each lock pins what its Home Assistant asks for,
so nothing is installed at start: the demo checks it). scripts/test set the environments up already, so the demo's
own scripts/setup is skipped (DEMO_SKIP_SETUP).
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from offsite_demo.settings import SEAWEEDFS_LAST_PORT_OFFSET, Ports
from tests.helpers.servers import free_port, seaweedfs_grpc_sockets

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


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (Linux's default: 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def demo_ports() -> Ports:
    """Free ports for every port the demo opens: Home Assistant's, the gateway's and SeaweedFS's ten.

    SeaweedFS's ten are chosen below the kernel's range for outgoing connections: a port derived from a free
    ephemeral one may be taken by another test's connection before SeaweedFS binds it (the demo's own defaults,
    9000 to 9004 and 19000 to 19004, are below it too).
    """
    highest = _ephemeral_low() - 1 - SEAWEEDFS_LAST_PORT_OFFSET
    while True:
        s3 = random.randrange(10000, highest) if highest > 10000 else free_port()
        ports = Ports(free_port(), free_port(), s3)
        numbers = [port for _, _, port in ports.named()]
        if len(set(numbers)) == len(numbers) and max(numbers) <= 65535 and all(_free(n) for n in numbers[2:]):
            return ports


def demo_env(marker: str, ports: Ports, **extra: str) -> dict[str, str]:
    """The environment of a demo run of this test session: its ports, the marker its processes inherit."""
    return {
        **os.environ,
        "DEMO_HA_PORT": str(ports.home_assistant),
        "DEMO_GATEWAY_PORT": str(ports.gateway),
        "DEMO_S3_PORT": str(ports.s3),
        "OFFSITE_DEMO_TEST_MARKER": marker,
        "DEMO_SKIP_SETUP": "1",
        "DEMO_VENV": sys.prefix,  # the Home Assistant this run tests (current or oldest)
        **extra,
    }


@pytest.mark.timeout(DEMO_TIMEOUT + 120)
def test_demo_once(tmp_path: Path) -> None:
    """The backup reaches the bucket and comes back identical through Home Assistant; nothing is left running.

    Home Assistant installs nothing, raises no Repairs issue and logs no traceback; nothing is left in /tmp.
    """
    marker = f"offsite-demo-test-{uuid.uuid4().hex}"
    ports = demo_ports()
    demo_dir = tmp_path / "demo"
    try:
        result = subprocess.run(
            [str(ROOT / "scripts" / "demo"), "--once"],
            cwd=ROOT,
            env=demo_env(marker, ports, DEMO_DIR=str(demo_dir)),
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
    assert "storage: SeaweedFS at" in output, tail
    # The usage sensors show what the gateway holds after the backup (one backup, a share of the 1 GiB quota).
    assert re.search(
        r"OK +Storage used [\d.]+ \([\d.]+ MiB\), Backups stored 1, Quota used [\d.]+ %", output
    ), tail
    assert re.search(
        r"OK +Home Assistant installed nothing: the \d+ requirements of the \d+ integrations", output
    )
    assert re.search(r"OK +no Repairs issue", output), tail
    assert "FAIL" not in output, tail
    stopped = re.search(r"everything stopped \(pids ([\d ]+)\)", output)
    assert stopped is not None, tail
    assert len(stopped.group(1).split()) >= 3  # SeaweedFS, the gateway, Home Assistant (and the CLI commands)
    assert left == [], f"processes left behind: {left}"

    log = (demo_dir / "home-assistant.out").read_text(errors="replace")
    assert "Attempting install" not in log
    tracebacks = [line for line in log.splitlines() if " ERROR " in line or line.startswith("Traceback")]
    assert tracebacks == [], "Home Assistant's log of the demo:\n" + "\n".join(tracebacks)
    # SeaweedFS's data, keys and logs are in the demo's folder; the sockets it must put in /tmp are gone.
    assert (demo_dir / "seaweedfs" / "data").is_dir()
    assert list((demo_dir / "seaweedfs" / "tmp").glob("weed.*"))
    assert [path for path in seaweedfs_grpc_sockets(ports.seaweedfs) if path.exists()] == []


def test_a_port_seaweedfs_needs_in_use_stops_the_demo_before_it_starts_anything(tmp_path: Path) -> None:
    """SeaweedFS's filer port (DEMO_S3_PORT + 3) taken: the demo names the variable to change and starts nothing."""
    ports = demo_ports()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", ports.seaweedfs["filer"]))
        taken.listen()
        result = subprocess.run(
            [str(ROOT / "scripts" / "demo"), "--once"],
            cwd=ROOT,
            env=demo_env(f"offsite-demo-test-{uuid.uuid4().hex}", ports, DEMO_DIR=str(tmp_path / "demo")),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"port {ports.seaweedfs['filer']} on 127.0.0.1 is already in use" in output
    assert "SeaweedFS's filer (DEMO_S3_PORT + 3)" in output
    assert f"DEMO_S3_PORT={ports.s3 + 5} scripts/demo" in output
    assert "started" not in output
    assert not (tmp_path / "demo").exists()
