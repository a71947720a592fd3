"""What a newcomer reads: the options form as the frontend gets it, the English and French texts, the quality scale."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.offsite_backup.const import CONF_WINDOW_END, CONF_WINDOW_START, CONTENTS_CUSTOM

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "custom_components" / "offsite_backup"

# hassfest's ALL_RULES (script/hassfest/quality_scale.py), which checks only core integrations' files: a
# quality_scale.yaml missing a rule would read as complete. Refresh from there when the scale gains a rule.
QUALITY_SCALE_RULES = {
    # Bronze
    "action-setup",
    "appropriate-polling",
    "brands",
    "common-modules",
    "config-flow",
    "config-flow-test-coverage",
    "dependency-transparency",
    "docs-actions",
    "docs-conditions",
    "docs-high-level-description",
    "docs-installation-instructions",
    "docs-removal-instructions",
    "docs-triggers",
    "entity-event-setup",
    "entity-unique-id",
    "has-entity-name",
    "runtime-data",
    "test-before-configure",
    "test-before-setup",
    "unique-config-entry",
    # Silver
    "action-exceptions",
    "config-entry-unloading",
    "docs-configuration-parameters",
    "docs-installation-parameters",
    "entity-unavailable",
    "integration-owner",
    "log-when-unavailable",
    "parallel-updates",
    "reauthentication-flow",
    "test-coverage",
    # Gold
    "devices",
    "diagnostics",
    "discovery",
    "discovery-update-info",
    "docs-data-update",
    "docs-examples",
    "docs-known-limitations",
    "docs-supported-devices",
    "docs-supported-functions",
    "docs-troubleshooting",
    "docs-use-cases",
    "dynamic-devices",
    "entity-category",
    "entity-device-class",
    "entity-disabled-by-default",
    "entity-translations",
    "exception-translations",
    "icon-translations",
    "reconfiguration-flow",
    "repair-issues",
    "stale-devices",
    # Platinum
    "async-dependency",
    "inject-websession",
    "strict-typing",
}


def load(name: str) -> Any:
    return json.loads((PACKAGE / name).read_text(encoding="utf-8"))


def strings_of(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Every translated string, by its dotted key."""
    found: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            found |= strings_of(value, f"{prefix}{key}.")
        else:
            found[prefix + key] = value
    return found


ENGLISH = strings_of(load("translations/en.json"))
FRENCH = strings_of(load("translations/fr.json"))
OPTIONS = "options.step.init.data_description."


# ------------------------------------------------------------------------------------------- the options form


async def _options_form(hass: HomeAssistant, hass_client: ClientSessionGenerator, entry_id: str) -> Any:
    """The options form as the frontend gets it (the config entries HTTP API, selectors serialised)."""
    assert await async_setup_component(hass, "config", {})
    client = await hass_client()
    answer = await client.post("/api/config/config_entries/options/flow", json={"handler": entry_id})
    assert answer.status == 200, await answer.text()
    return await answer.json()


async def test_the_window_asks_for_hours_and_minutes(
    hass: HomeAssistant, loaded_entry: MockConfigEntry, hass_client: ClientSessionGenerator
) -> None:
    form = await _options_form(hass, hass_client, loaded_entry.entry_id)
    fields = {field["name"]: field for field in form["data_schema"]}
    for name in (CONF_WINDOW_START, CONF_WINDOW_END):
        assert fields[name]["selector"] == {"time": {"no_second": True}}, fields[name]
        assert re.fullmatch(r"\d\d:\d\d", fields[name]["description"]["suggested_value"])
    # On Core the contents offer no add-ons and folders, and no text offers them either.
    assert CONTENTS_CUSTOM not in fields["contents"]["selector"]["select"]["options"]


async def test_a_window_of_the_same_time_written_two_ways_is_empty(
    hass: HomeAssistant, loaded_entry: MockConfigEntry
) -> None:
    """The frontend may send "01:00" or "01:00:00": the same time, an empty window."""
    result = await hass.config_entries.options.async_init(loaded_entry.entry_id)
    answer = {
        key.schema: key.description["suggested_value"]
        for key in result["data_schema"].schema
        if key.description and "suggested_value" in key.description
    }
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], answer | {CONF_WINDOW_START: "01:00", CONF_WINDOW_END: "01:00:00"}
    )
    assert result["errors"] == {CONF_WINDOW_END: "empty_window"}


# ------------------------------------------------------------------------------------------------ the texts


def test_the_option_texts_say_what_the_options_do() -> None:
    for strings in (ENGLISH, FRENCH):
        # The gateway sets the part size: no size in the text.
        assert not re.search(r"\d+ ?(MiB|Mio)", strings[OPTIONS + "parts_in_flight"])
        # The option applies to every backup the integration makes, not only the nightly ones.
        assert not re.search(
            r"(?i)each nightly backup|chaque sauvegarde nocturne", strings[OPTIONS + "keep_local"]
        )
        # "Chosen add-ons and folders" exists only where there is a Supervisor: its own option label says it.
        assert not re.search(r"(?i)chosen add-ons|modules et dossiers choisis", strings[OPTIONS + "contents"])
    assert "each backup this integration makes" in ENGLISH[OPTIONS + "keep_local"]
    assert "next step" in ENGLISH["selector.contents.options.custom"]
    assert "étape suivante" in FRENCH["selector.contents.options.custom"]


def test_both_languages_have_the_same_keys_and_placeholders() -> None:
    assert load("translations/en.json") == load("strings.json")
    assert set(ENGLISH) == set(FRENCH)
    for key, text in ENGLISH.items():
        assert set(re.findall(r"{\w+}", text)) == set(re.findall(r"{\w+}", FRENCH[key])), key


def test_french_uses_one_word_for_each_thing() -> None:
    text = "\n".join(FRENCH.values())
    for avoided, chosen in (
        (r"op[ée]rateur", "administrateur de la passerelle"),
        (r"externe", "hors site"),
        (r"signalement", "problème"),
        (r"\ballum", "activer"),
    ):
        assert not re.search(avoided, text, re.IGNORECASE), f"{avoided}: say {chosen!r}"
        assert chosen.split()[0] in text.lower()


def test_french_sentences_read_right() -> None:
    # Two sentences joined by a comma ("…, ni l'administrateur … ne peuvent les lire").
    assert not re.search(r", ni ", FRENCH[OPTIONS + "allow_unencrypted"])
    assert "{used} d'un quota de {quota} sont déjà utilisés" in FRENCH["issues.quota_exceeded.description"]
    # The status reads "État : <state>": single words are nouns, which agree with nothing.
    states = {key.rsplit(".", 1)[1]: value for key, value in FRENCH.items() if ".sensor.status.state." in key}
    for state, value in states.items():
        if " " not in value:
            assert not re.search(r"(ée|ie|if|é)$", value), f"{state}: {value!r} agrees with a noun it lacks"
    assert FRENCH["entity.sensor.last_error.state.none"] == "Aucune erreur"


# ------------------------------------------------------------------------------------------- quality scale


def test_quality_scale_lists_every_rule_of_the_current_scale() -> None:
    rules = yaml.safe_load((PACKAGE / "quality_scale.yaml").read_text(encoding="utf-8"))["rules"]
    assert set(rules) == QUALITY_SCALE_RULES
    for rule in ("docs-triggers", "docs-conditions"):
        assert rules[rule]["status"] == "exempt", rule
        assert rules[rule]["comment"], rule


def test_quality_scale_docs_actions_names_every_action() -> None:
    services = yaml.safe_load((PACKAGE / "services.yaml").read_text(encoding="utf-8"))
    line = next(
        line
        for line in (PACKAGE / "quality_scale.yaml").read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("docs-actions:")
    )
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for service in services:
        assert service in line, f"docs-actions' comment omits {service}"
        assert f"`offsite_backup.{service}`" in readme, service
