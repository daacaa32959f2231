"""What ``pip install imagekit-bgremove`` ships: the app, without the ImageKit emulator or its
dependencies, and an app that never imports the emulator."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMULATOR_ONLY = ("numpy", "opencv", "onnx", "werkzeug", "imagekit-emulator")


def test_the_apps_requirements_leave_the_emulator_out():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    shipped = list(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        if extra != "dev":  # the development toolchain, never a user's install
            shipped += requirements
    assert not [r for r in shipped if r.lower().startswith(EMULATOR_ONLY)], shipped
    assert "scripts" not in project  # imagekit-emulator belongs to the emulator's distribution


def test_the_app_package_holds_no_emulator_and_never_imports_it():
    package = ROOT / "imagekit_bgremove"
    assert not (package / "emulator").exists()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            assert not [n for n in names if n.split(".")[0] == "imagekit_emulator"], path
