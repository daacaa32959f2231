"""The README's settings table: every key of IMAGEKIT_BGREMOVE once, with its real default."""

from __future__ import annotations

import json
import re
from pathlib import Path

from imagekit_bgremove.conf import DEFAULTS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def shown(value: object) -> str:
    """A default as the README writes it (Python literals, strings in double quotes)."""
    if isinstance(value, str | list | dict):
        return json.dumps(value)
    return repr(value)


def test_every_setting_is_documented_once_with_its_default():
    table = README[README.index("\n## Settings\n") :]
    table = table[: table.index("\n## ", 1)]
    rows = re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", table, re.M)
    keys = [key for key, _ in rows]
    assert sorted(keys) == sorted(DEFAULTS), set(keys) ^ set(DEFAULTS)
    assert len(keys) == len(set(keys))
    assert {key: default for key, default in rows} == {
        key: shown(value) for key, value in DEFAULTS.items()
    }
