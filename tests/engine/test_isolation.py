"""The engine imports with Home Assistant absent, as a package of its own (as bench/upload.py imports it).

Each check runs in a fresh interpreter (``python -I``: no PYTHONPATH, no current directory on the path) whose
import system refuses ``homeassistant`` and ``custom_components``: the engine's folder is put on the path and every
one of its modules is imported as ``engine.<module>``. A module that imports Home Assistant, or reaches back into
the integration (``custom_components.offsite_backup``, or ``from .. import``), fails the import.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "custom_components" / "offsite_backup" / "engine"

CHECK = """
import importlib, importlib.abc, json, pkgutil, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("homeassistant", "custom_components"):
            raise ModuleNotFoundError(f"No module named {name!r} (absent in this check)", name=name)
        return None

sys.meta_path.insert(0, Absent())
sys.path.insert(0, sys.argv[1])
import engine
names = sorted(m.name for m in pkgutil.iter_modules(engine.__path__))
for name in names:
    importlib.import_module(f"engine.{name}")
print(json.dumps({"modules": names, "loaded": sorted(n for n in sys.modules if n.startswith(("homeassistant", "custom_components")))}))
"""


def _check(parent: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-c", CHECK, str(parent)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_engine_module_imports_without_home_assistant() -> None:
    done = _check(ENGINE.parent)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    expected = sorted(p.stem for p in ENGINE.glob("*.py") if p.stem != "__init__")
    assert report["modules"] == expected
    assert "uploader" in report["modules"]
    assert "api" in report["modules"]
    assert report["loaded"] == []


@pytest.mark.parametrize(
    "line",
    [
        "import homeassistant.core",
        "from homeassistant.util import dt",
        "from custom_components.offsite_backup import const",
        "from ..const import DOMAIN",
    ],
)
def test_the_check_fails_when_an_engine_module_reaches_out(tmp_path: Path, line: str) -> None:
    """The same check on a copy of the engine with one bad import in one module: it fails, naming the import."""
    copy = tmp_path / "engine"
    shutil.copytree(ENGINE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    schedule = copy / "schedule.py"
    text = schedule.read_text()
    marker = "from __future__ import annotations\n"
    schedule.write_text(text.replace(marker, marker + line + "\n", 1))
    done = _check(tmp_path)
    assert done.returncode != 0
    assert "ImportError" in done.stderr or "ModuleNotFoundError" in done.stderr, done.stderr
