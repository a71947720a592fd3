"""What HACS and Home Assistant read from the integration's folder: manifest, translations, icons, services."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from custom_components.offsite_backup.binary_sensor import STALE
from custom_components.offsite_backup.button import BACKUP_NOW
from custom_components.offsite_backup.const import GATEWAY_POLL_INTERVAL, DrillStatus, JobStatus
from custom_components.offsite_backup.sensor import SENSORS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "custom_components" / "offsite_backup"


def load(name: str) -> Any:
    return json.loads((PACKAGE / name).read_text(encoding="utf-8"))


def keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    found: set[str] = set()
    for key, value in tree.items():
        found.add(prefix + key)
        if isinstance(value, dict):
            found |= keys(value, f"{prefix}{key}.")
    return found


def test_manifest() -> None:
    manifest = load("manifest.json")
    assert list(manifest)[:2] == ["domain", "name"]
    assert list(manifest)[2:] == sorted(list(manifest)[2:])
    assert manifest["domain"] == "offsite_backup"
    assert manifest["config_flow"] is True
    assert manifest["dependencies"] == ["backup"]
    assert manifest["integration_type"] == "service"
    assert manifest["iot_class"] == "cloud_polling"
    assert manifest["documentation"].startswith("https://")
    assert re.fullmatch(r"\d+\.\d+\.\d+", manifest["version"])
    assert manifest["codeowners"]
    assert "requirements" not in manifest, "everything we need ships with Home Assistant"


def test_hacs_json() -> None:
    hacs = json.loads((ROOT / "hacs.json").read_text(encoding="utf-8"))
    assert hacs == {"name": "Offsite Backup", "homeassistant": "2025.4.4"}
    # The minimum HACS enforces is the version the oldest environment tests.
    oldest = (ROOT / "requirements" / "oldest.lock").read_text(encoding="utf-8")
    assert f"\nhomeassistant=={hacs['homeassistant']}\n" in oldest
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")


def test_translations_are_whole_and_match() -> None:
    strings = load("strings.json")
    english = load("translations/en.json")
    french = load("translations/fr.json")
    assert english == strings, "a custom integration ships strings.json in full as translations/en.json"
    assert keys(french) == keys(english)
    assert "[%key:" not in json.dumps(english)


def strings_of(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Every translated string, by its dotted key."""
    found: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            found |= strings_of(value, f"{prefix}{key}.")
        else:
            found[prefix + key] = value
    return found


# hassfest's translation check (2026): an address in a string must be a description placeholder instead.
URL_IN_TEXT = re.compile(r"(?i)\b(?:https?://[\w-]+(?:\.[\w-]+)*|www\.[\w-]+\.[a-z]{2,})")


def test_no_address_in_any_translation() -> None:
    for name in ("strings.json", "translations/en.json", "translations/fr.json"):
        for key, text in strings_of(load(name)).items():
            assert not URL_IN_TEXT.search(text), f"{name}: {key} holds an address: {text!r}"
    assert URL_IN_TEXT.search("for example https://backup.example.com.")  # the check sees one


def test_every_entity_has_a_name_and_an_icon() -> None:
    strings = load("strings.json")["entity"]
    icons = load("icons.json")["entity"]
    for platform, descriptions in (
        ("sensor", SENSORS),
        ("binary_sensor", (STALE,)),
        ("button", (BACKUP_NOW,)),
    ):
        for description in descriptions:
            assert description.translation_key in strings[platform]
            assert description.translation_key in icons[platform]
    assert set(strings["sensor"]["status"]["state"]) == {
        status.value for status in (*JobStatus, *DrillStatus)
    }
    assert set(icons["sensor"]["status"]["state"]) == set(strings["sensor"]["status"]["state"]) - {"idle"}


def test_services_have_translations_and_icons() -> None:
    services = yaml.safe_load((PACKAGE / "services.yaml").read_text(encoding="utf-8"))
    strings = load("strings.json")["services"]
    icons = load("icons.json")["services"]
    assert set(services) == set(strings) == set(icons) == {"create_backup", "cancel_backup", "verify_backup"}
    for name, service in services.items():
        assert set(service["fields"]) == set(strings[name]["fields"])


def test_every_translation_key_used_in_code_exists() -> None:
    strings = load("strings.json")
    code = "\n".join(path.read_text(encoding="utf-8") for path in PACKAGE.glob("*.py"))
    for key in set(re.findall(r'translation_domain=DOMAIN,\s*translation_key="([a-z_]+)"', code)):
        assert key in strings["exceptions"], key
    errors = set(re.findall(r'"(cannot_connect|invalid_auth|invalid_url|unknown|empty_window)"', code))
    assert errors <= set(strings["config"]["error"]) | set(strings["options"]["error"])
    for reason in set(re.findall(r'reason="([a-z_]+)"', code)):
        assert reason in strings["config"]["abort"], reason


def test_quality_scale_tracks_every_rule() -> None:
    scale = yaml.safe_load((PACKAGE / "quality_scale.yaml").read_text(encoding="utf-8"))["rules"]
    assert len(scale) >= 50
    for rule, status in scale.items():
        if isinstance(status, dict):
            assert status["status"] == "exempt", rule
            assert status["comment"], rule
        else:
            assert status == "done", rule


def test_quality_scale_documentation_claims_hold() -> None:
    """The documentation rules marked done point at README sections that exist and say what the code does."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#+ (.+)$", readme, re.MULTILINE))
    assert "Troubleshooting" in headings  # docs-troubleshooting
    assert "How the data is kept up to date" in headings  # docs-data-update
    assert "Known limitations" in headings  # docs-known-limitations
    minutes = int(GATEWAY_POLL_INTERVAL.total_seconds() // 60)
    assert f"every {minutes} minutes" in readme, "the README gives the gateway's polling interval"


def test_brand_icon() -> None:
    with Image.open(PACKAGE / "brand" / "icon.png") as icon:
        assert icon.format == "PNG"
        assert icon.size == (256, 256)
    with Image.open(PACKAGE / "brand" / "icon@2x.png") as icon:
        assert icon.size == (512, 512)
