"""Local S3-compatible servers for the tests, each run as a subprocess on a free 127.0.0.1 port.

moto (in memory) proves the S3 protocol; LocalStack's S3 also checks presigned URL signatures and expiry
(../shared/research/local-s3-servers.md). Both are plain processes, never threads in the test process:
Home Assistant's test harness fails a test that leaves threads behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[2]
LOCALSTACK_PYTHON = ROOT / ".venv-localstack" / "bin" / "python"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class S3Server:
    """A running S3-compatible server."""

    name: str
    endpoint: str
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def client(self) -> Any:
        """A synchronous boto3 client (path-style, SigV4) for test setup and assertions."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def create_bucket(self, prefix: str = "test") -> str:
        """Create a new, uniquely named bucket and return its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def gateway_env(self, bucket: str) -> dict[str, str]:
        """The gateway's S3 settings pointing at this server."""
        return {
            "OFFSITE_GATEWAY_S3_ENDPOINT": self.endpoint,
            "OFFSITE_GATEWAY_S3_BUCKET": bucket,
            "OFFSITE_GATEWAY_S3_REGION": self.region,
            "OFFSITE_GATEWAY_S3_ACCESS_KEY": self.access_key,
            "OFFSITE_GATEWAY_S3_SECRET_KEY": self.secret_key,
        }


def _wait_http(url: str, process: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except urllib.error.HTTPError as err:
            if err.code < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready at {url} after {timeout:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def run_moto(log_path: Path | None = None) -> Iterator[S3Server]:
    """Run moto's S3 server on a free loopback port for the duration of the block."""
    port = free_port()
    log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_http(f"{endpoint}/moto-api/", process, "moto")
        yield S3Server("moto", endpoint, process=process)
    finally:
        _stop(process)
        log.close()


@contextmanager
def run_localstack(workdir: Path) -> Iterator[S3Server]:
    """Run LocalStack's S3 with presigned-URL signature checks on, in its own venv."""
    if not LOCALSTACK_PYTHON.exists():
        raise RuntimeError(f"{LOCALSTACK_PYTHON} is missing: run scripts/setup")
    port = free_port()
    listen = f"127.0.0.1:{port}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "SERVICES": "s3",
        "GATEWAY_LISTEN": listen,
        "LOCALSTACK_HOST": listen,
        "GATEWAY_SERVER": "hypercorn",  # the default server ignores the host and listens on 0.0.0.0
        "EAGER_SERVICE_LOADING": "1",
        "S3_SKIP_SIGNATURE_VALIDATION": "0",
        "DNS_ADDRESS": "0",
        "LOCALSTACK_TELEMETRY_DISABLED": "1",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",
        "FILESYSTEM_ROOT": str(workdir / "fs"),
        "TMPDIR": str(workdir),
    }
    log = open(workdir / "localstack.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(LOCALSTACK_PYTHON), "-m", "localstack.runtime.main"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=workdir,
    )
    try:
        endpoint = f"http://{listen}"
        _wait_http(f"{endpoint}/_localstack/health", process, "LocalStack", timeout=120)
        # LocalStack checks presigned URLs against its default secret key "test".
        yield S3Server("localstack", endpoint, access_key="test", secret_key="test", process=process)
    finally:
        _stop(process)
        log.close()
