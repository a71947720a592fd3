"""Setting Home Assistant up through its APIs, as a person does it in the frontend: onboarding, the HTTP settings,
the default dashboard, the backup encryption key, and the integration added through its config flow."""

from __future__ import annotations

import asyncio
import time

from offsite_demo.console import DemoError, say
from offsite_demo.homeassistant import HomeAssistantApi, Websocket
from offsite_demo.settings import DASHBOARD_URL_PATH, DOMAIN, USERNAME
from offsite_demo.state import Demo


async def onboard(demo: Demo, api: HomeAssistantApi) -> None:
    """Onboarding through the HTTP API, as the frontend's first screens do it; then wait until it runs."""
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
            "password": demo.password,
            "language": "en",
        },
    )
    await api.exchange_code(user["auth_code"])
    steps = {step["step"]: step["done"] for step in await api.request("GET", "/api/onboarding")}
    if not all(steps.values()):
        raise DemoError(f"Home Assistant's onboarding is not done after its user step: {steps}")
    say(f"onboarded: user {USERNAME!r} (the location, analytics and integration steps were marked done)")
    await api.wait_running()


async def confirm_http_config(ws: Websocket) -> None:
    """Keep HTTP settings on trial (127.0.0.1 and its port), as a person confirms them in the dialog.

    Home Assistant 2026.x moves configuration.yaml's ``http:`` into its storage as a trial, which it undoes (and
    restarts) five minutes later unless confirmed. The demo writes them into the storage before the start, so
    there is nothing on trial: this is a guard. Earlier versions have no such command and read the YAML.
    """
    config = await ws.call_if_known("http/config")
    if config is None or config.get("pending") is None or config.get("revert_at") is None:
        return
    await ws.call("http/config/promote")
    say("HTTP settings confirmed (http/config/promote): Home Assistant keeps serving on 127.0.0.1 only")


async def set_default_dashboard(ws: Websocket) -> None:
    """Make the Offsite Backup dashboard the one Home Assistant opens (2026.x: its system-wide default panel).

    Earlier versions keep the default per browser: the address the demo prints opens the dashboard there.
    """
    data = await ws.call_if_known("frontend/get_system_data", key="core")
    if data is None:
        return
    core = data.get("value") or {}
    await ws.call("frontend/set_system_data", key="core", value={**core, "default_panel": DASHBOARD_URL_PATH})


async def set_backup_key(demo: Demo, ws: Websocket) -> None:
    """Give Home Assistant a backup encryption key, as Settings > System > Backups does."""
    await ws.call("backup/config/update", create_backup={"password": demo.backup_key})
    config = (await ws.call("backup/config/info"))["config"]
    if config["create_backup"]["password"] != demo.backup_key:
        raise DemoError("Home Assistant did not keep the backup encryption key")
    say("backup encryption key set (backup/config/update); backups are encrypted with it")


async def add_integration(demo: Demo, api: HomeAssistantApi, ws: Websocket) -> None:
    """The config flow through the HTTP API (gateway URL and token); then wait for the backup location."""
    flow = await api.request(
        "POST", "/api/config/config_entries/flow", {"handler": DOMAIN, "show_advanced_options": False}
    )
    if flow.get("type") != "form":
        raise DemoError(f"the config flow did not show its form: {flow}")
    result = await api.request(
        "POST",
        f"/api/config/config_entries/flow/{flow['flow_id']}",
        {"url": demo.gateway_url, "token": demo.token},
    )
    if result.get("type") != "create_entry":
        raise DemoError(f"the config flow did not create the entry: {result}")
    demo.entry_id = result["result"]["entry_id"]
    deadline = time.monotonic() + 60
    while (state := await api.entry_state(DOMAIN, demo.entry_id)) != "loaded":
        if time.monotonic() > deadline:
            raise DemoError(f"the Offsite Backup entry is {state}, not loaded", "See the Home Assistant log.")
        await asyncio.sleep(0.5)
    say(f"integration added through the config flow: entry {result['result']['title']!r} ({demo.entry_id})")
    # The backup manager registers the location in a task of its own once the entry is loaded: wait for it.
    while True:
        agents = [agent["agent_id"] for agent in (await ws.call("backup/agents/info"))["agents"]]
        if demo.agent_id in agents:
            break
        if time.monotonic() > deadline:
            raise DemoError(f"backup location {demo.agent_id} is not among Home Assistant's: {agents}")
        await asyncio.sleep(0.2)
    say(f"backup location {demo.agent_id} is registered")
