"""The emulator is a test double of ImageKit, not of the app: it imports nothing from the app
but ImageKit's published signature scheme, and its well-known credentials agree with the
app's defaults."""

from __future__ import annotations

import ast
from pathlib import Path

from imagekit_bgremove import defaults
from imagekit_bgremove.emulator import config

EMULATOR = Path(__file__).resolve().parent.parent / "imagekit_bgremove" / "emulator"


def test_emulator_imports_nothing_from_the_app_but_signatures():
    found = set()
    for path in EMULATOR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                in_app = name == "imagekit_bgremove" or name.startswith("imagekit_bgremove.")
                if in_app and not name.startswith("imagekit_bgremove.emulator"):
                    found.add((path.name, name))
    modules = {name for _, name in found}
    assert modules <= {
        "imagekit_bgremove.signatures",
        "imagekit_bgremove.signatures.signature_headers",
    }, sorted(found)


def test_well_known_credentials_agree_with_the_app_defaults():
    assert config.DEFAULT_PRIVATE_KEY == defaults.EMULATOR_PRIVATE_KEY
    assert config.DEFAULT_WEBHOOK_SECRET == defaults.EMULATOR_WEBHOOK_SECRET
    assert defaults.EMULATOR_URL.rstrip("/") == config.DEFAULT_URL
