"""The README's install, field and real-account steps, done as a newcomer would: a fresh
virtualenv with Python 3.12 (where the Django 5.2 backport is not installed by default), the
package installed from this checkout, a new project from ``startproject`` with the README's code
blocks pasted in. Once on Django 6 and once on Django 5.2.

Slow (two virtualenvs): it runs on the Django 6 / SQLite leg only."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import django
import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

pytestmark = pytest.mark.slow


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def blocks(title: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", section(title), re.S | re.M)


def python_312() -> str | None:
    """A Python 3.12 executable (not a pyenv shim, which needs PYENV_VERSION)."""
    candidates = [getattr(sys, "_base_executable", sys.executable), shutil.which("python3.12")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p) for p in pyenv.glob("3.12*/bin/python3"))
    for candidate in filter(None, candidates):
        check = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
            capture_output=True,
            text=True,
        )
        if check.stdout.strip() == "True":
            return candidate
    return None


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def pip_line(django_major: int) -> list[str]:
    """The README's pip command for that Django, pointed at this checkout."""
    lines = [
        line for line in blocks("Install", "bash")[0].splitlines() if line.startswith("pip install")
    ]
    line = next(x for x in lines if ("<6" in x) == (django_major == 5))
    words = line.split()[2:]
    return [w.strip('"').replace("imagekit-bgremove", str(ROOT)) for w in words]


SAVE_ONE = """
from django.core.files.base import ContentFile
from django.db import transaction
from PIL import Image
import io
from shop.models import Product
from imagekit_bgremove.models import RemovalJob
from django_tasks_db.models import DBTaskResult

buffer = io.BytesIO()
Image.new("RGB", (40, 30), "white").save(buffer, "PNG")
with transaction.atomic():
    product = Product()
    product.photo.save("mug.png", ContentFile(buffer.getvalue()))
job = product.photo.removal
assert job is not None and job.status == "queued", job
assert RemovalJob.objects.count() == 1
import time
for _ in range(100):  # enqueued after the commit (by a thread of this process, if so set)
    tasks = list(DBTaskResult.objects.values_list("task_path", flat=True))
    if tasks:
        break
    time.sleep(0.05)
assert tasks == ["imagekit_bgremove.tasks.submit_removal"], tasks
print("SAVED", job.pk, product.photo.removal_status)
"""


@pytest.mark.parametrize("django_major", [6, 5])
def test_the_readme_install_field_and_real_account_steps(tmp_path, django_major):
    if connection.vendor != "sqlite" or django.VERSION < (6,):
        pytest.skip("runs once, on the Django 6 / SQLite leg")
    python = python_312()
    if python is None:
        pytest.skip("no Python 3.12 found")
    venv = tmp_path / "venv"
    run(python, "-m", "venv", str(venv), cwd=tmp_path)
    bin_dir = venv / "bin"
    run(str(bin_dir / "pip"), "install", "--quiet", *pip_line(django_major), cwd=tmp_path)
    version = run(
        str(bin_dir / "python"), "-c", "import django; print(django.VERSION[0])", cwd=tmp_path
    )
    assert version.strip() == str(django_major)

    project = tmp_path / "project"
    project.mkdir()
    run(str(bin_dir / "django-admin"), "startproject", "mysite", ".", cwd=project)
    settings_py, urls_py = blocks("Install", "python")[0].split("# urls.py\n")
    if django_major == 5:  # what the comment asks a Django 5.2 user to do
        settings_py = settings_py.replace("# INSTALLED_APPS.insert(", "INSTALLED_APPS.insert(")
    settings_file = project / "mysite" / "settings.py"
    settings_file.write_text(
        settings_file.read_text() + "\n" + settings_py + '\nINSTALLED_APPS += ["shop"]\n'
        'MEDIA_ROOT = BASE_DIR / "media"\n'
    )
    urls_file = project / "mysite" / "urls.py"
    urls_file.write_text(
        urls_file.read_text().replace("import path", "import include, path") + "\n" + urls_py
    )
    (project / "shop").mkdir()
    (project / "shop" / "__init__.py").write_text("")
    field = blocks("The field", "python")[0]
    (project / "shop" / "models.py").write_text("from django.db import models\n" + field)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "IMAGEKIT_"))}
    env.pop("DATABASE_URL", None)
    manage = [str(bin_dir / "python"), "manage.py"]
    run(*manage, "makemigrations", "shop", cwd=project, env=env)
    run(*manage, "migrate", "--verbosity", "0", cwd=project, env=env)
    assert "no issues" in run(*manage, "check", cwd=project, env=env)
    assert "SAVED" in run(*manage, "shell", "-c", SAVE_ONE, cwd=project, env=env)

    # The real account: the README's settings, with the values from the environment.
    real = blocks("Using a real ImageKit account", "python")[0]
    settings_file.write_text(
        settings_file.read_text() + "\nimport environ\nenv = environ.Env()\nDEBUG = False\n" + real
    )
    env.update(IMAGEKIT_PRIVATE_KEY="private_newcomer", IMAGEKIT_WEBHOOK_SECRETS="whsec_x")
    out = run(*manage, "check", "--deploy", "--tag", "imagekit_bgremove", cwd=project, env=env)
    assert "no issues" in out, out
