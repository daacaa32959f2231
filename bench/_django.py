"""The in-process Django set-up the benchmarks share: SQLite in memory unless told otherwise,
the test app's models, django-tasks-db's DatabaseBackend as the app's task backend (tasks are
stored, never run)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def configure(
    default_storage: dict[str, Any], *, database: dict[str, Any] | None = None, **imagekit: Any
) -> None:
    """Configure and set up Django, then create the tables. ``database`` replaces the default
    SQLite in memory; ``imagekit`` adds to the ``IMAGEKIT_BGREMOVE`` settings."""
    import django
    from django.conf import settings

    try:
        import django.tasks

        immediate = "django.tasks.backends.immediate.ImmediateBackend"
    except ImportError:  # Django 5.2 + backport
        immediate = "django_tasks.backends.immediate.ImmediateBackend"
    settings.configure(
        SECRET_KEY="bench",
        USE_TZ=True,
        DEBUG=False,
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django_tasks_db",
            "imagekit_bgremove",
            "tests.testapp",
        ],
        DATABASES={
            "default": database or {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        ROOT_URLCONF="tests.urls",
        STORAGES={
            "default": default_storage,
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        },
        TASKS={
            "default": {"BACKEND": immediate},
            "db": {"BACKEND": "django_tasks_db.DatabaseBackend"},
        },
        IMAGEKIT_BGREMOVE={"TASK_BACKEND": "db", **imagekit},
        SILENCED_SYSTEM_CHECKS=["imagekit_bgremove.W009"],
        LOGGING_CONFIG=None,
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, run_syncdb=True)
