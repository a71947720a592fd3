"""Disaster recovery onto a new machine, end to end, with two real Home Assistant processes (run by
``test_disaster_recovery.py`` as ``python -m tests.e2e.disaster_recovery DIR``).

The pieces are the demo's (``offsite_demo/``, which ``scripts/demo.py`` tells its story with): SeaweedFS (a real
S3 server), the gateway as a process with its CLI, and a real Home Assistant onboarded and configured through its
HTTP and websocket APIs. The story:

1. the first Home Assistant ("the old machine") has a marker file in its configuration and makes a backup to the
   Offsite Backup location; then it is gone (stopped, its folder never used again);
2. the gateway's operator gives the homeowner a new token for the same instance (``offsite-gateway instance rotate``);
3. a second Home Assistant, in a fresh configuration folder, is onboarded, gets the integration through the config
   flow (gateway URL, new token), lists the first one's backup in its Backups (websocket ``backup/info``) and restores
   it through Home Assistant's API (websocket ``backup/restore``) with the first one's backup key;
4. Home Assistant restarts to restore: ``python -m homeassistant`` exits with code 100 to be started again, which the
   driver does, as systemd, Docker or the Supervisor would. After the restart the configuration holds the marker
   file; the old user logs in; the restored entry (its old token was rotated) asks to re-authenticate, and the new
   token brings the backup location back.

Each check prints ``OK`` or ``FAIL``; the exit code is 0 when all passed. Everything started is stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from offsite_demo import configure, files, launch
from offsite_demo.console import DemoError, Result, say
from offsite_demo.homeassistant import HomeAssistantApi
from offsite_demo.processes import Child
from offsite_demo.settings import DOMAIN, INSTANCE_NAME, USERNAME, Ports, check_ports
from offsite_demo.state import Demo

MARKER = "disaster-recovery-marker.bin"
RESTART_EXIT_CODE = 100  # homeassistant.const.RESTART_EXIT_CODE: "restart me"


async def start_again(machine: Demo, session: aiohttp.ClientSession) -> int:
    """Start Home Assistant again after it stopped to restore, as many times as it asks for a restart (it restores
    the backup at its next start, then restarts once more); returns how many starts it took."""
    for starts in range(1, 4):
        try:
            # Onboarding is done in the restored configuration: its view is gone; the login providers answer.
            await launch.start_home_assistant(machine, session, ready_path="/auth/providers")
        except DemoError:
            child = machine.processes.children[-1]
            if child.process.returncode != RESTART_EXIT_CODE:
                raise
            say("Home Assistant exited with code 100 (restart me): starting it again")
            continue
        return starts
    raise DemoError("Home Assistant asked to be restarted three times in a row")


async def wait_exit(child: Child, limit: float = 180) -> int:
    """The exit code of a process that is expected to end by itself."""
    async with asyncio.timeout(limit):
        return await child.process.wait()


async def wait_until(what: str, check: Any, limit: float = 120) -> Any:
    """Call ``check()`` until it returns something true; DemoError after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"{what}: still not the case after {limit:.0f} s")
        await asyncio.sleep(0.5)


async def run(directory: Path, ports: Ports) -> bool:
    result = Result()
    old = Demo(directory, ports, sample_mib=0, ha_dir=directory / "old-machine")
    new = Demo(directory, ports, sample_mib=0, ha_dir=directory / "new-machine")
    new.processes = old.processes
    marker = os.urandom(256 * 1024)
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        ) as session:
            # 1. The old machine makes a backup with a marker in its configuration, then it is gone.
            await launch.start_storage_and_gateway(old, session)
            files.write_home_assistant_config(old, copy_component=True)
            (old.ha_dir / MARKER).write_bytes(marker)
            old_hass = await launch.start_home_assistant(old, session)
            api = HomeAssistantApi(session, old.ha_url)
            await configure.onboard(old, api)
            async with api.websocket() as ws:
                await configure.confirm_http_config(ws)
                await configure.set_backup_key(old, ws)
                await configure.add_integration(old, api, ws)

            async def entry_on_disk() -> bool:
                # Home Assistant writes its stores a moment after a change; a backup holds what is on disk.
                path = old.ha_dir / ".storage" / "core.config_entries"
                return path.is_file() and f'"domain":"{DOMAIN}"' in path.read_text().replace(" ", "")

            await wait_until("the new entry written to disk", entry_on_disk, limit=60)
            answer = await api.request(
                "POST",
                "/api/services/offsite_backup/create_backup?return_response",
                {"config_entry_id": old.entry_id},
            )
            backup_id = (answer.get("service_response") or {}).get("backup_id")
            if not result.check(
                f"the old machine sent backup {backup_id} off-site", isinstance(backup_id, str)
            ):
                return False
            await old.processes.stop(old_hass)
            say("the old machine is gone: only the backup key, the gateway's URL and the operator remain")

            # 2. The operator gives a new token for the same instance.
            output = await old.processes.run(
                "offsite-gateway instance rotate",
                [*launch.gateway_cli(), "instance", "rotate", INSTANCE_NAME],
                old.env,
            )
            new.instance_id = old.instance_id
            new.token = output.strip().splitlines()[-1].strip()
            result.check(
                "the operator rotated the instance's token (offsite-gateway instance rotate)", bool(new.token)
            )

            # 3. A new machine: onboarded, the integration added with the new token, the backup listed and restored.
            files.write_home_assistant_config(new, copy_component=True)
            new_hass = await launch.start_home_assistant(new, session)
            api = HomeAssistantApi(session, new.ha_url)
            await configure.onboard(new, api)
            async with api.websocket() as ws:
                await configure.confirm_http_config(ws)
                await configure.add_integration(new, api, ws)
                info = await ws.call("backup/info")
                listed = {backup["backup_id"]: backup for backup in info["backups"]}
                found = listed.get(backup_id) or {}
                result.check(
                    f"the new machine lists backup {backup_id} in its Backups, on {new.agent_id}",
                    new.agent_id in (found.get("agents") or {}),
                )
                say(f"restoring backup {backup_id} from {new.agent_id} with the old machine's backup key")
                try:
                    await ws.call(
                        "backup/restore",
                        backup_id=backup_id,
                        agent_id=new.agent_id,
                        password=old.backup_key,
                        restore_database=True,
                        restore_homeassistant=True,
                    )
                except DemoError as err:  # the answer may be lost in the restart
                    if "closed" not in str(err):
                        raise
            code = await wait_exit(new_hass)
            result.check(
                f"Home Assistant stopped to restore (exit code {code}: restart me)", code == RESTART_EXIT_CODE
            )

            # 4. Started again, as an operator's service manager would: the old configuration is back.
            starts = await start_again(new, session)
            say(f"Home Assistant is up again after {starts} start(s)")
            restored = new.ha_dir / MARKER
            result.check(
                f"the new machine's configuration holds the old one's marker file ({len(marker)} bytes, identical)",
                restored.is_file() and restored.read_bytes() == marker,
            )
            result.check(
                "the restore is done (no restore pending)", not (new.ha_dir / ".HA_RESTORE").exists()
            )
            api = HomeAssistantApi(session, new.ha_url)
            await api.login(USERNAME, old.password)
            await api.wait_running()
            result.check(f"the old machine's user {USERNAME!r} logs in to the new one", api.token is not None)

            async with api.websocket() as ws:

                async def reauth_flow() -> dict[str, Any] | None:
                    flows = await ws.call("config_entries/flow/progress")
                    return next(
                        (
                            flow
                            for flow in flows
                            if flow["handler"] == DOMAIN and flow["context"]["source"] == "reauth"
                        ),
                        None,
                    )

                flow = await wait_until("a re-authentication of the restored entry", reauth_flow)
                result.check("the restored entry (its old token was rotated) asks to re-authenticate", True)
                answer = await api.request(
                    "POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {"token": new.token}
                )
                result.check(
                    f"the new token re-authenticates it ({answer.get('reason')})",
                    answer.get("reason") == "reauth_successful",
                )

                async def listed_again() -> bool:
                    backups = (await ws.call("backup/info"))["backups"]
                    return any(
                        backup["backup_id"] == backup_id and old.agent_id in backup["agents"]
                        for backup in backups
                    )

                result.check(
                    f"backup {backup_id} is listed again on {old.agent_id}",
                    await wait_until("the backup listed again", listed_again, limit=60),
                )
        say(f"disaster recovery took {time.monotonic() - started:.0f} s")
    finally:
        await old.processes.stop_all()
        say(f"everything stopped (pids {' '.join(map(str, old.processes.pids))})")
    passed = sum(ok for _, ok in result.checks)
    say(f"{passed} of {len(result.checks)} checks passed" + ("" if result.ok else ": FAILED"))
    return result.ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("directory", type=Path, help="a new folder for everything (it must not exist)")
    args = parser.parse_args()
    ports = Ports.from_env()
    check_ports(ports)
    args.directory.mkdir(parents=True)
    try:
        return 0 if asyncio.run(run(args.directory.resolve(), ports)) else 1
    except DemoError as err:
        err.report()
        return 1


if __name__ == "__main__":
    sys.exit(main())
