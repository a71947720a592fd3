"""What docs/deploy.md and deploy/systemd/ tell an operator to run is what the tests run, and is hardened.

- The SeaweedFS command line in docs/deploy.md and in `seaweedfs.service` is `seaweedfs_command`'s (the one the
  tests and the demo start), with the deployment's paths and ports: one source of truth.
- Both units pass `systemd-analyze verify` (in a throwaway root holding the system's units and stand-ins for the
  executables they name), with no warning at all (an unknown or misspelt option is one), and
  `systemd-analyze security` rates their exposure 2.0 or better; their hardening options are there.
- The settings file and the identity file the page shows are valid: the gateway loads the one, and the other has
  the shape of the tests' own identities.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from offsite_gateway.config import load_settings
from tests.helpers.servers import seaweedfs_command, seaweedfs_identities

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "deploy" / "systemd"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

# The deployment's SeaweedFS: SeaweedFS's usual ports, its data in the unit's StateDirectory.
WEED = Path("/opt/seaweedfs/bin/weed")
DATA = Path("/var/lib/seaweedfs")
PORTS = {"s3": 8333, "master": 9333, "volume": 8080, "filer": 8888, "admin": 23646}


def unit(name: str) -> dict[str, list[str]]:
    """A unit file's [Service] settings (continued lines joined), each key's values in order."""
    text = (UNITS / name).read_text().replace("\\\n", " ")
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(re.sub(r"\s+", " ", value.strip()))
    return settings


def doc_blocks(language: str) -> list[str]:
    """The fenced code blocks of docs/deploy.md in `language`, their indentation removed."""
    blocks = []
    for match in re.finditer(rf"^( *)```{language}\n(.*?)^\1```", DEPLOY_DOC.read_text(), re.M | re.S):
        indent = len(match.group(1))
        blocks.append("\n".join(line[indent:] for line in match.group(2).splitlines()))
    return blocks


def test_the_seaweedfs_command_line_is_the_tests() -> None:
    in_unit = shlex.split(unit("seaweedfs.service")["ExecStart"][0])
    assert in_unit == seaweedfs_command(WEED, DATA, Path("%d/s3.json"), PORTS)
    by_hand = [block for block in doc_blocks("sh") if " mini " in block]
    assert len(by_hand) == 1
    assert shlex.split(by_hand[0].replace("\\\n", " ")) == seaweedfs_command(
        WEED, DATA, Path("/etc/seaweedfs/s3.json"), PORTS
    )
    # The unit's data folder is its state directory, and the keys come in as its credential.
    service = unit("seaweedfs.service")
    assert service["StateDirectory"] == [DATA.name]
    assert service["LoadCredential"] == ["s3.json:/etc/seaweedfs/s3.json"]


def test_the_documented_files_are_valid(tmp_path: Path) -> None:
    (toml,) = doc_blocks("toml")
    path = tmp_path / "gateway.toml"
    path.write_text(toml)
    settings = load_settings({}, path)
    assert str(settings.db) == "/var/lib/offsite-gateway/gateway.sqlite3"
    assert settings.db.parent.name == unit("offsite-gateway.service")["StateDirectory"][0]  # type: ignore[union-attr]
    assert settings.s3_endpoint == f"http://127.0.0.1:{PORTS['s3']}"
    assert settings.object_lock is True
    assert settings.listen == "127.0.0.1:8780"
    (identities,) = doc_blocks("json")
    documented = json.loads(identities)["identities"]
    ours = seaweedfs_identities("key", "secret")["identities"][0]
    assert len(documented) == 1
    assert set(documented[0]) == set(ours)
    assert documented[0]["actions"] == ours["actions"]
    credentials = documented[0]["credentials"][0]
    assert credentials["accessKey"] in toml
    assert credentials["secretKey"] in toml  # the same pair in both files
    assert "--config /etc/offsite-gateway/gateway.toml" in unit("offsite-gateway.service")["ExecStart"][0]


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "UMask": "0077",
}


@pytest.mark.parametrize("name", ["offsite-gateway.service", "seaweedfs.service"])
def test_the_units_are_hardened(name: str) -> None:
    service = unit(name)
    for key, value in HARDENING.items():
        assert service.get(key) == [value], (name, key, service.get(key))
    assert service["StateDirectory"]
    assert service.get("DynamicUser") == ["yes"] or service.get("User", ["root"])[0] not in ("root", "0")
    assert "@system-service" in service["SystemCallFilter"]
    assert set(service["RestrictAddressFamilies"][0].split()) <= {
        "AF_INET",
        "AF_INET6",
        "AF_UNIX",
        "AF_NETLINK",
    }
    assert service.get("Restart") in (["always"], ["on-failure"])


def test_the_gateway_is_not_restarted_on_a_setting_that_cannot_work() -> None:
    """`serve` exits 2 on a configuration that cannot work (docs/gateway.md): restarting it would not help."""
    assert unit("offsite-gateway.service")["RestartPreventExitStatus"] == ["2"]


def _throwaway_root(tmp_path: Path) -> Path:
    """A file system root for systemd-analyze: the system's own units, ours, stand-ins for their executables."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for path in UNITS.glob("*.service"):
        shutil.copy(path, root / "etc/systemd/system" / path.name)
        executable = root / shlex.split(unit(path.name)["ExecStart"][0])[0].lstrip("/")
        executable.parent.mkdir(parents=True, exist_ok=True)
        executable.write_text("#!/bin/sh\n")
        executable.chmod(0o755)
    return root


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here (Debian: apt-get install systemd)")
    if not (SYSTEM_UNITS / "sysinit.target").exists():
        pytest.skip(f"{SYSTEM_UNITS} holds no system units to verify against")
    return tool


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    root = _throwaway_root(tmp_path)
    names = sorted(path.name for path in UNITS.glob("*.service"))
    assert names == ["offsite-gateway.service", "seaweedfs.service"]
    result = subprocess.run(
        [tool, "verify", "--man=no", "--generators=no", f"--root={root}", *names],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""  # not even a warning (an unknown key is one)


def test_systemd_analyze_security(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    root = _throwaway_root(tmp_path)
    for name in ("offsite-gateway.service", "seaweedfs.service"):
        result = subprocess.run(
            [
                tool,
                "security",
                "--offline=yes",
                "--threshold=20",
                f"--root={root}",
                str(root / "etc/systemd/system" / name),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
        assert exposure is not None, result.stdout + result.stderr
        assert result.returncode == 0, (name, exposure.group(1))
        assert float(exposure.group(1)) <= 2.0
