"""The demo's files: its directory (recreated on every run), Home Assistant's configuration, the credentials."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from offsite_demo.console import DemoError, say, show
from offsite_demo.settings import COMPONENT, DASHBOARD, DASHBOARD_URL_PATH, DOMAIN, EXAMPLES, USERNAME
from offsite_demo.state import Demo

MARKER = ".offsite-backup-demo"  # only a directory holding this file is ever deleted


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
                    f"another demo (pid {pid}) is running in {show(demo_dir)}",
                    f"Stop it first (Ctrl-C in its terminal, or kill {pid}), or use another DEMO_DIR.",
                )
        say(f"removing the previous run's {show(demo_dir)}/ (every run starts from scratch)")
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


def _http_settings_in_storage() -> bool:
    """Whether this Home Assistant keeps its HTTP settings in its storage (2026.x), read without importing it.

    There configuration.yaml's `http:` is deprecated (a Repairs issue); earlier versions read it from the YAML.
    """
    spec = importlib.util.find_spec("homeassistant")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    return any((Path(folder) / "components" / "http" / "config.py").exists() for folder in folders)


def write_home_assistant_config(demo: Demo, *, copy_component: bool = False) -> None:
    """A minimal configuration, written the current way: no default_config, only what the demo shows.

    The integration is linked in from the working tree, or copied (``copy_component``), as HACS installs it.
    Nothing in it is deprecated, so Home Assistant raises no Repairs issue: the dashboard is a YAML dashboard of
    its own (not Lovelace's YAML mode); on 2026.x the HTTP settings are in Home Assistant's storage. Onboarding's
    location, analytics and integration steps are marked done before the start: the location is set here, and
    onboarding's location step would add weather, radio, text-to-speech and shopping-list integrations.
    """
    ha_dir = demo.ha_dir
    ha_dir.mkdir()
    (ha_dir / "custom_components").mkdir()
    if copy_component:
        shutil.copytree(
            COMPONENT, ha_dir / "custom_components" / DOMAIN, ignore=shutil.ignore_patterns("__pycache__")
        )
    else:
        (ha_dir / "custom_components" / DOMAIN).symlink_to(COMPONENT, target_is_directory=True)
    shutil.copyfile(DASHBOARD, ha_dir / "dashboard.yaml")
    http = f"""
http:
  server_host: 127.0.0.1
  server_port: {demo.ports.home_assistant}
"""
    if _http_settings_in_storage():
        http = ""  # its storage's first format, which Home Assistant migrates to its current one
        _write_storage(
            ha_dir, "http", 1, {"server_host": ["127.0.0.1"], "server_port": demo.ports.home_assistant}
        )
    # Onboarding's own steps but the first (the user); the storage version of 2025.4 to 2026.10.
    _write_storage(
        ha_dir, "onboarding", 4, {"done": ["core_config", "analytics", "integration"]}, private=True
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
    (ha_dir / "configuration.yaml").write_text(config)
    if demo.sample_mib:
        sample = ha_dir / "demo-sample.bin"
        with sample.open("wb") as handle:  # random, so that compression keeps its size
            for _ in range(demo.sample_mib):
                handle.write(os.urandom(1024 * 1024))
    component = "a copy of" if copy_component else "->"
    say(
        f"Home Assistant configuration in {show(ha_dir)}: minimal configuration.yaml, "
        f"custom_components/{DOMAIN} {component} {show(COMPONENT)}, dashboard.yaml from {show(DASHBOARD)}"
        + (
            f", a {demo.sample_mib} MiB random sample file (so the backup has several 20 MiB parts)"
            if demo.sample_mib
            else ""
        )
    )


def _write_storage(
    ha_dir: Path, key: str, version: int, data: dict[str, Any], *, private: bool = False
) -> None:
    """One of Home Assistant's storage files (.storage/<key>), as its Store writes them, before it starts."""
    storage = ha_dir / ".storage"
    storage.mkdir(exist_ok=True)
    path = storage / key
    path.write_text(json.dumps({"version": version, "minor_version": 1, "key": key, "data": data}, indent=2))
    if private:
        path.chmod(0o600)


def write_credentials(demo: Demo) -> None:
    """For scripts/screenshot and the curious: how to reach this demo (git-ignored, like all of .demo/)."""
    credentials = {
        "url": demo.ha_url,
        "username": USERNAME,
        "password": demo.password,
        "backup_key": demo.backup_key,
        "entry_id": demo.entry_id,
        "instance_id": demo.instance_id,
        "gateway_url": demo.gateway_url,
        "s3_endpoint": demo.s3_endpoint,
        "dashboard": f"{demo.ha_url}/{DASHBOARD_URL_PATH}",
    }
    path = demo.dir / "credentials.json"
    path.write_text(json.dumps(credentials, indent=2) + "\n")
    path.chmod(0o600)


def examples(kind: str) -> list[Path]:
    """The example files of examples/<kind>/ (automations, scripts)."""
    return sorted((EXAMPLES / kind).glob("*.yaml"))


def dashboard_entities(path: Path = DASHBOARD) -> Iterator[str]:
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
