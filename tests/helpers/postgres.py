"""A throwaway PostgreSQL cluster for the tests, from the machine's PostgreSQL binaries.

    with run_postgres(workdir) as cluster:
        url = await cluster.create_database()    # a new, empty database owned by the gateway's role
        ...  # OFFSITE_GATEWAY_DB=url
        await cluster.drop_database(url)

`initdb` and `pg_ctl` come from `pg_config --bindir` (Debian keeps them off PATH), else
/usr/lib/postgresql/<newest>/bin; `scripts/setup` installs Debian's `postgresql` package where they are missing.
The cluster listens on 127.0.0.1 and a free port only (no Unix socket), runs as the `postgres` user when we are root
(PostgreSQL refuses to run as root) from a directory that user owns, with durability off (fsync, synchronous
commit: a test's data dies with it anyway), and is stopped and removed at the end of the block. Nothing relies on a
server already running. The gateway connects as a role that is no superuser (`gateway`, with a password over
SCRAM), as it would in production; the tests' own setup uses the bootstrap superuser.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.servers import free_port

ADMIN = "offsite_admin"
ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex
GATEWAY_ROLE = "gateway"
GATEWAY_PASSWORD = "gw-" + uuid.uuid4().hex


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    candidates += versions
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    raise RuntimeError(
        "PostgreSQL's server binaries (initdb, pg_ctl) are missing: run scripts/setup (it installs Debian's "
        "postgresql package), or limit the tests to SQLite with OFFSITE_TEST_STORES=sqlite"
    )


@dataclass
class PostgresCluster:
    """A running throwaway cluster."""

    bindir: Path
    datadir: Path
    port: int
    host: str = "127.0.0.1"

    def url(self, database: str, *, admin: bool = False) -> str:
        user, password = (ADMIN, ADMIN_PASSWORD) if admin else (GATEWAY_ROLE, GATEWAY_PASSWORD)
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the bootstrap superuser (psql, from the same binaries); its unaligned output."""
        result = subprocess.run(
            [
                *(str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
                *("-h", self.host, "-p", str(self.port), "-U", ADMIN, "-d", database, "-c", sql),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PGPASSWORD": ADMIN_PASSWORD, "PGCONNECT_TIMEOUT": "10"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def create_database(self) -> str:
        """A new empty database owned by the gateway's role; its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.psql(f"CREATE DATABASE {name} OWNER {GATEWAY_ROLE} STRATEGY FILE_COPY")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by create_database (its connections are ended first)."""
        self.psql(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")

    def wipe(self, url: str) -> None:
        """Lose everything in the database (as if it were restored from nothing): drop and create it again."""
        self.drop_database(url)
        self.psql(f"CREATE DATABASE {url.rsplit('/', 1)[1]} OWNER {GATEWAY_ROLE} STRATEGY FILE_COPY")

    def _client(self, tool: str, url: str, *args: str) -> None:
        """Run pg_dump or pg_restore (from the same binaries) as the gateway's role on the database of `url`."""
        result = subprocess.run(
            [str(self.bindir / tool), "-h", self.host, "-p", str(self.port), "-U", GATEWAY_ROLE, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "PGPASSWORD": GATEWAY_PASSWORD, "PGCONNECT_TIMEOUT": "10"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()}")

    def dump(self, url: str, path: Path) -> None:
        """`pg_dump -Fc` of the database, as an operator backs it up."""
        self._client("pg_dump", url, "--format=custom", f"--file={path}", url.rsplit("/", 1)[1])

    def restore(self, url: str, path: Path) -> None:
        """The database as `dump` saved it: emptied, then `pg_restore` (everything since is lost)."""
        self.wipe(url)
        self._client("pg_restore", url, "--no-owner", f"--dbname={url.rsplit('/', 1)[1]}", str(path))

    def dump_text(self, url: str) -> str:
        """Every row of every table of the database, as text (to check what it stores)."""
        name = url.rsplit("/", 1)[1]
        tables = self.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", name).split()
        return "".join(self.psql(f'SELECT * FROM "{table}"', name) for table in tables)


def _as_postgres() -> dict[str, Any]:
    """subprocess arguments that run a command as the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root but there is no `postgres` user to run PostgreSQL as") from None
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _run(command: list[str], workdir: Path, **kwargs: Any) -> None:
    result = subprocess.run(
        command,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **_as_postgres(),
        **kwargs,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} failed ({result.returncode}): {result.stderr[-2000:]}")


@contextlib.contextmanager
def run_postgres(*, durable: bool = False, max_connections: int = 300) -> Iterator[PostgresCluster]:
    """Start a throwaway cluster (see the module's docstring); stop and remove it at the end.

    `durable=True` keeps PostgreSQL's production defaults (fsync, synchronous commit, full page writes): what a
    benchmark of its CPU per backup should measure.
    """
    bindir = find_bindir()
    workdir = Path(tempfile.mkdtemp(prefix="offsite-pg-"))
    try:
        owner = _as_postgres()
        if owner:
            os.chown(workdir, owner["user"], owner["group"])
        password_file = workdir / "admin-password"
        password_file.write_text(ADMIN_PASSWORD + "\n")
        if owner:
            os.chown(password_file, owner["user"], owner["group"])
        datadir = workdir / "data"
        _run(
            [
                str(bindir / "initdb"),
                "--pgdata",
                str(datadir),
                "--username",
                ADMIN,
                "--pwfile",
                str(password_file),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            workdir,
        )
        password_file.unlink()
        port = free_port()
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={port}",
                "-c unix_socket_directories=''",
                *(
                    ()
                    if durable
                    else ("-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off")
                ),
                f"-c max_connections={max_connections}",
                "-c shared_buffers=64MB",
                "-c log_min_messages=warning",
            ]
        )
        _run(
            [
                *(str(bindir / "pg_ctl"), "--pgdata", str(datadir), "--log", str(workdir / "postgres.log")),
                *("--options", options, "--wait", "--timeout", "60", "start"),
            ],
            workdir,
        )
        try:
            cluster = PostgresCluster(bindir, datadir, port)
            _create_gateway_role(cluster)
            yield cluster
        finally:
            _run(
                [str(bindir / "pg_ctl"), "--pgdata", str(datadir), "--mode", "immediate", "--wait", "stop"],
                workdir,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _create_gateway_role(cluster: PostgresCluster) -> None:
    cluster.psql(f"CREATE ROLE {GATEWAY_ROLE} LOGIN PASSWORD '{GATEWAY_PASSWORD}'")
