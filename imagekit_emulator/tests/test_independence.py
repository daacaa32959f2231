"""The emulator is a test double of ImageKit, not of the app: it imports nothing from the app
(nor Django), so a drift between the app and ImageKit's published behaviour shows up as a
failure instead of being mirrored."""

from __future__ import annotations

import ast
from pathlib import Path

EMULATOR = Path(__file__).resolve().parents[1]


def test_emulator_imports_nothing_from_the_app_nor_django():
    found = set()
    for path in EMULATOR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] in ("imagekit_bgremove", "django", "rest_framework"):
                    found.add((path.name, name))
    assert not found, sorted(found)
