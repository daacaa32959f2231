"""The example project is importable and passes Django's checks with its own settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def example_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'example.sqlite3'}",
        "IMAGEKIT_EMULATOR_AUTOSTART": "false",
        "VAR_DIR": str(tmp_path / "var"),
    }


def manage(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = example_env(tmp_path)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def manage_python(code: str, *, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=example_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )


CHECK_SCRIPT = """
from django.core.management import call_command
call_command("check", fail_level="WARNING")
call_command("makemigrations", "catalogue", check=True, dry_run=True, verbosity=0)
print("ALL GOOD")
"""


def test_check_and_migrations_are_complete(tmp_path):
    # `manage.py check` with the example's settings, and no model change without a migration.
    result = manage("shell", "-c", CHECK_SCRIPT, tmp_path=tmp_path)  # through manage.py
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ALL GOOD" in result.stdout


def test_sample_images_are_small_and_licensed():
    samples = ROOT / "example_project" / "sample_images"
    images = sorted(p.name for p in samples.iterdir() if p.suffix in (".jpg", ".png"))
    assert len(images) >= 3
    licence = (samples / "LICENCE.md").read_text()
    for name in images:
        assert name in licence
        assert (samples / name).stat().st_size < 200_000


SEED_SCRIPT = """
import io, json, django
django.setup()
from django.core.management import call_command
from django.test.utils import override_settings
outputs = []
call_command("migrate", "--noinput", verbosity=0)
with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
    for args in ([], [], ["--password", "s3cret-pw"]):
        out = io.StringIO()
        call_command("seed_catalogue", *args, stdout=out)
        outputs.append(out.getvalue())
print(json.dumps(outputs))
"""


def test_seed_catalogue_is_idempotent(tmp_path):
    # One interpreter for migrate and three seeds: a subprocess per command would be slow.
    result = manage_python(SEED_SCRIPT, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    first, again, reset = json.loads(result.stdout.strip().splitlines()[-1])
    assert "4 product(s) created" in first
    assert "Admin user 'admin' created; password: " in first
    assert (tmp_path / "var" / "media" / "products" / "synthetic_product_white.jpg").exists()
    assert (tmp_path / "var" / "media" / "products" / "flower_pot.png").exists()
    assert "0 product(s) created, 4 in total" in again
    assert "password unchanged" in again and "password:" not in again
    assert "Admin user 'admin' updated." in reset


def test_run_script_is_valid_bash():
    script = ROOT / "scripts" / "run_example.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
