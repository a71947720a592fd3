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

This file is the story, step by step (`run`); the pieces it is told with are the package `offsite_demo/`, which
the end-to-end tests (tests/e2e) reuse.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
# Run as `python scripts/demo.py`: the repository's packages (the demo's pieces in offsite_demo/, tests/helpers).
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

from offsite_demo.backup import back_up, show_usage, verify  # noqa: E402
from offsite_demo.checks import (  # noqa: E402
    check_dashboard_entities,
    check_examples,
    check_no_repairs,
    check_nothing_installed,
)
from offsite_demo.configure import (  # noqa: E402
    add_integration,
    confirm_http_config,
    onboard,
    set_backup_key,
    set_default_dashboard,
)
from offsite_demo.console import DemoError, say, show  # noqa: E402
from offsite_demo.files import prepare_directory, write_credentials, write_home_assistant_config  # noqa: E402
from offsite_demo.homeassistant import HomeAssistantApi  # noqa: E402
from offsite_demo.launch import start_home_assistant, start_storage_and_gateway  # noqa: E402
from offsite_demo.settings import (  # noqa: E402
    BUCKET,
    DASHBOARD_URL_PATH,
    INSTANCE_NAME,
    S3_ACCESS_KEY,
    USERNAME,
    Ports,
    check_ports,
)
from offsite_demo.state import Demo  # noqa: E402


async def run(demo: Demo, once: bool, stop: asyncio.Event) -> bool:
    """Every step; then stay up until ``stop`` unless ``once``. Returns whether every check passed."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as session:
        # 1. SeaweedFS, the gateway's bucket and instance, the gateway; Home Assistant's configuration; its start.
        await start_storage_and_gateway(demo, session)
        write_home_assistant_config(demo)
        await start_home_assistant(demo, session)
        # 2. Onboarding, the HTTP settings, the dashboard, the backup key, the integration (its config flow).
        api = HomeAssistantApi(session, demo.ha_url)
        await onboard(demo, api)
        async with api.websocket() as ws:
            await confirm_http_config(ws)
            await set_default_dashboard(ws)
            await set_backup_key(demo, ws)
            await add_integration(demo, api, ws)
            write_credentials(demo)
            await check_examples(demo, api)
            entities = await check_dashboard_entities(demo, ws)
            # 3. A backup through the action, followed on the websocket; the bytes checked on every side.
            made = await back_up(demo, api, ws, entities)
            if made is not None:
                await verify(demo, api, ws, *made)
                await show_usage(demo, api, entities, made[1])
            # 4. Home Assistant installed nothing and raised no Repairs issue.
            await check_nothing_installed(demo, api, ws)
            await check_no_repairs(demo, ws)
        demo.result.summary()
        if once:
            return demo.result.ok
        show_how_to_reach(demo)
        demo.staying_up = True
        await stay_up(demo, stop)
    return demo.result.ok


def show_how_to_reach(demo: Demo) -> None:
    """What a person needs to look at the running demo."""
    print(
        f"""
  Home Assistant: {demo.ha_url}/{DASHBOARD_URL_PATH}  (the Offsite Backup dashboard)
  login:          {USERNAME} / {demo.password}
  backup key:     {demo.backup_key}  (Settings > System > Backups; a restore needs it)
  gateway:        {demo.gateway_url}  (instance {INSTANCE_NAME!r}, id {demo.instance_id})
  S3 (SeaweedFS): {demo.s3_endpoint}  bucket {BUCKET}, key {S3_ACCESS_KEY} (secret in {show(demo.seaweedfs_dir)}/s3.json)
  logs:           {show(demo.dir)}/*.log, {show(demo.dir)}/home-assistant.out

  Press "Back up now" on the dashboard, or Settings > System > Backups. Ctrl-C stops everything.
""",
        flush=True,
    )


async def stay_up(demo: Demo, stop: asyncio.Event) -> None:
    """Until ``stop`` (Ctrl-C, SIGTERM); DemoError if one of the servers exits meanwhile."""
    while not stop.is_set():
        demo.processes.check_running()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                await stop.wait()


async def amain(once: bool, demo_dir: Path, ports: Ports, sample_mib: int) -> int:
    """Run the demo with signal handling; stop everything it started on every way out; returns the exit code."""
    check_ports(ports)
    prepare_directory(demo_dir)
    demo = Demo(demo_dir, ports, sample_mib)
    stop = asyncio.Event()
    run_task = asyncio.create_task(run(demo, once, stop))
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
        err.report()
    except Exception as err:
        say(f"ERROR: {type(err).__name__}: {err}", stream=sys.stderr)
        say(f"what to do: look at the logs in {show(demo_dir)}/ and run the demo again", stream=sys.stderr)
    finally:
        stopping = True
        await demo.processes.stop_all()
        with contextlib.suppress(OSError):
            (demo_dir / "demo.pid").unlink()
        say(f"everything stopped (pids {' '.join(map(str, demo.processes.pids))}); exit code {code}")
    return code


def main() -> int:
    """Parse the arguments and the environment, and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--once", action="store_true", help="exit after the check; non-zero if anything failed"
    )
    args = parser.parse_args()
    try:
        ports = Ports.from_env()
        demo_dir = Path(os.environ.get("DEMO_DIR") or ROOT / ".demo").resolve()
        sample_mib = int(os.environ.get("DEMO_SAMPLE_MIB") or "64")
        return asyncio.run(amain(args.once, demo_dir, ports, sample_mib))
    except DemoError as err:  # before anything started
        err.report()
        return 1


if __name__ == "__main__":
    sys.exit(main())
