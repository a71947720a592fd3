"""docs/alerts.yml: valid Prometheus rules (`promtool check rules`), that fire as tests/gateway/alerts.test.yml
says (`promtool test rules`), on metrics the gateway does expose (issue 22, item 3).

promtool is Debian's `prometheus` package (/usr/bin/promtool); where it is missing the promtool tests are skipped,
saying so."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml

from offsite_gateway.app import WATCHDOG
from tests.gateway.watching import Clock, metrics_text, watching_gateway
from tests.helpers.gateway import GatewayDatabase
from tests.helpers.servers import ROOT, S3Server

RULES = ROOT / "docs" / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "gateway" / "alerts.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_the_rules_are_valid() -> None:
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout


@needs_promtool
def test_the_rules_fire_as_expected() -> None:
    tested = _promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


async def test_the_rules_use_metrics_the_gateway_exposes(
    moto_server: S3Server, moto_bucket: str, tmp_path: Path, database: GatewayDatabase
) -> None:
    clock = Clock()
    async with watching_gateway(
        moto_server, moto_bucket, tmp_path, database, clock, STORAGE_QUOTA="1TiB"
    ) as gateway:
        await gateway.app[WATCHDOG].run_once(clock())
        async with aiohttp.ClientSession() as session:
            exposed = await metrics_text(session, gateway)
    series = set(re.findall(r"^# TYPE (\S+) \w+$", exposed, re.MULTILINE))  # counters' names end in _total
    groups = yaml.safe_load(RULES.read_text())["groups"]
    used = {
        name
        for group in groups
        for rule in group["rules"]
        for name in re.findall(r"offsite_gateway_\w+", rule["expr"])
    }
    assert used <= series, used - series
    assert "offsite_gateway_storage_quota_bytes 1.099511627776e+12" in exposed
    tested = set(re.findall(r"offsite_gateway_\w+", RULE_TESTS.read_text()))
    assert used <= tested  # every metric a rule reads is in a rule test
