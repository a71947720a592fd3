"""What the demo checks of Home Assistant: the examples loaded, the dashboard's entities are the entry's, nothing
was installed at start (every requirement pinned by this environment's lock), and no Repairs issue."""

from __future__ import annotations

from pathlib import Path

import yaml  # type: ignore[import-untyped]
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from offsite_demo.console import ROOT, show
from offsite_demo.files import dashboard_entities, examples
from offsite_demo.homeassistant import HomeAssistantApi, Websocket
from offsite_demo.settings import DASHBOARD, KEPT_REQUIREMENTS
from offsite_demo.state import Demo


async def check_examples(demo: Demo, api: HomeAssistantApi) -> None:
    """The automation and script examples loaded (Home Assistant validated them)."""
    states = await api.request("GET", "/api/states")
    ids = {state["attributes"].get("id") for state in states if state["entity_id"].startswith("automation.")}
    scripts = {state["entity_id"] for state in states if state["entity_id"].startswith("script.")}
    automations = {path.stem: yaml.safe_load(path.read_text()).get("id") for path in examples("automations")}
    wanted_scripts = {f"script.{path.stem}" for path in examples("scripts")}
    missing = sorted(
        {name for name, id_ in automations.items() if id_ not in ids} | (wanted_scripts - scripts)
    )
    demo.result.check(
        f"the examples are loaded: {len(automations)} automation(s) and {len(wanted_scripts)} script(s) "
        "from examples/"
        + (f"; not loaded: {', '.join(missing)} (see the Home Assistant log)" if missing else ""),
        not missing,
    )


async def check_dashboard_entities(demo: Demo, ws: Websocket) -> dict[str, str]:
    """The dashboard's entity ids are the entry's: {sensor key: entity id} of the entry."""
    entities = await ws.call("config/entity_registry/list")
    ours = {
        e["unique_id"].removeprefix(f"{demo.instance_id}_"): e["entity_id"]
        for e in entities
        if e.get("config_entry_id") == demo.entry_id
    }
    wanted = set(dashboard_entities(DASHBOARD))
    missing = sorted(wanted - set(ours.values()))
    demo.result.check(
        f"the dashboard ({show(DASHBOARD)}) shows entities of the entry: {', '.join(sorted(wanted))}"
        + (f"; missing: {', '.join(missing)}" if missing else ""),
        not missing and bool(wanted),
    )
    return ours


async def check_nothing_installed(demo: Demo, api: HomeAssistantApi, ws: Websocket) -> None:
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
    where = show(lock) if lock is not None else f"no lock (none pins homeassistant=={version})"
    demo.result.check(
        f"Home Assistant installed nothing: the {len(wanted)} requirements of the {len(manifests)} "
        f"integrations it loaded are pinned in {where}"
        + (f"; not pinned: {', '.join(sorted(missing))}" if missing else "")
        + (f"; its log shows: {' | '.join(demo.installs)}" if demo.installs else ""),
        lock is not None and not missing and not demo.installs,
    )


async def check_no_repairs(demo: Demo, ws: Websocket) -> None:
    """The demo's configuration raises no Repairs issue (the "Settings" badge stays empty)."""
    issues = (await ws.call("repairs/list_issues"))["issues"]
    active = sorted(
        f"{issue['domain']}.{issue['issue_id']}"
        for issue in issues
        if not issue.get("ignored") and not issue.get("dismissed_version")
    )
    demo.result.check(
        "no Repairs issue (websocket repairs/list_issues)" + (f": {', '.join(active)}" if active else ""),
        not active,
    )


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
