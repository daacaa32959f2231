"""The task functions and the enqueue helper."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from imagekit_bgremove import queueing, tasks
from imagekit_bgremove.compat import InvalidTaskBackend, task_backends
from imagekit_bgremove.models import JobStatus, RemovalJob
from tests.helpers import make_image, task_backend
from tests.testapp.models import Product

pytestmark = pytest.mark.django_db
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def two_backends(settings):
    settings.TASKS = {
        "default": {"BACKEND": task_backend("immediate.ImmediateBackend")},
        "removals": {"BACKEND": task_backend("dummy.DummyBackend"), "QUEUES": ["ikbg", "default"]},
    }
    settings.IMAGEKIT_BGREMOVE = {
        **settings.IMAGEKIT_BGREMOVE,
        "TASK_BACKEND": "removals",
        "TASK_QUEUE": "ikbg",
    }
    backend = task_backends["removals"]
    backend.clear()
    yield backend
    backend.clear()


def test_enqueue_uses_the_configured_backend_and_queue(two_backends, run_on_commit):
    with run_on_commit():
        product = Product.objects.create(photo=make_image())
    job = product.photo.removal
    [result] = two_backends.results
    assert result.task.func is tasks.submit_removal.func
    assert result.task.queue_name == "ikbg" and result.backend == "removals"
    assert list(result.args) == [job.pk]
    assert RemovalJob.objects.get(pk=job.pk).status == JobStatus.QUEUED


def test_run_after_defers_where_supported_and_is_dropped_elsewhere(two_backends, settings):
    when = timezone.now() + timedelta(minutes=5)
    deferred = queueing.enqueue(queueing.RECONCILE, run_after=when)
    assert deferred.task.run_after == when
    settings.IMAGEKIT_BGREMOVE = {
        **settings.IMAGEKIT_BGREMOVE,
        "TASK_BACKEND": "default",
        "TASK_QUEUE": "default",
    }
    assert queueing.enqueue(queueing.RECONCILE, run_after=when) is None


def test_unknown_backend_raises_from_enqueue(settings):
    settings.IMAGEKIT_BGREMOVE = {**settings.IMAGEKIT_BGREMOVE, "TASK_BACKEND": "nowhere"}
    with pytest.raises(InvalidTaskBackend):
        queueing.enqueue(queueing.RECONCILE)


def test_a_task_backend_without_a_default_alias_works():
    """TASK_BACKEND naming the only configured backend (no "default"): importing the app and
    enqueueing must work. Run in a fresh interpreter, since the tasks are defined at import."""
    script = textwrap.dedent(
        """
        import django
        from django.conf import settings
        settings.configure(
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                            "imagekit_bgremove"],
            DATABASES={{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}},
            TASKS={{"work": {{"BACKEND": "{}"}}}},
            IMAGEKIT_BGREMOVE={{"TASK_BACKEND": "work"}},
            USE_TZ=True,
        )
        django.setup()
        from imagekit_bgremove import queueing, tasks
        from imagekit_bgremove.compat import task_backends
        assert tasks.submit_removal.backend == "work", tasks.submit_removal.backend
        queueing.enqueue(queueing.RECONCILE)
        print(len(task_backends["work"].results))
        """.format(task_backend("dummy.DummyBackend"))
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_tasks_are_safe_to_run_twice(dummy_tasks, run_on_commit):
    with run_on_commit():
        product = Product.objects.create(photo=make_image())
    job = product.photo.removal
    product.delete()
    assert tasks.submit_removal.call(job.pk) == "cancelled"
    assert tasks.submit_removal.call(job.pk) == "skipped"
    assert tasks.finalize_removal.call(job.pk) == "skipped"
    assert tasks.finalize_removal.call(10**9) == "skipped"
    assert RemovalJob.objects.get(pk=job.pk).status == JobStatus.CANCELLED
    summary = tasks.reconcile_removals.call()
    assert set(summary) >= {"checked", "requeued", "failed", "succeeded"}
    assert not any(summary.values()), summary  # a cancelled job leaves nothing to reconcile
    assert tasks.reconcile_removals.call() == summary


DB_WORKER_SETTINGS = """
import json, os
SECRET_KEY = "x"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django_tasks_db",
                  "imagekit_bgremove", "tests.testapp"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "dbw_urls"
STORAGES = {"default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                        "OPTIONS": {"location": "media"}},
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend",
                     "QUEUES": ["default", "removals"]}}
IMAGEKIT_BGREMOVE = json.loads(os.environ["IKBG_SETTINGS"])
SILENCED_SYSTEM_CHECKS = ["imagekit_bgremove.E010"]
"""

CREATE = """
from django.core.files.base import ContentFile
from tests.helpers import image_bytes
from tests.testapp.models import Product
p = Product.objects.create(name="db", photo=ContentFile(image_bytes(seed=9), name="db.png"))
print(p.photo.removal.pk)
"""

SHOW = """
from imagekit_bgremove.models import RemovalJob
from django_tasks_db.models import DBTaskResult
job = RemovalJob.objects.get()
print(job.status, bool(job.file_id), DBTaskResult.objects.filter(queue_name="removals").count())
"""

CHECK = """
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from imagekit_bgremove.models import RemovalJob
from django_tasks_db.models import DBTaskResult
job = RemovalJob.objects.get()
check = DBTaskResult.objects.get(task_path="imagekit_bgremove.tasks.check_removal")
print(check.status, check.args_kwargs["args"] == [job.pk],
      check.run_after - job.submitted_at == timedelta(seconds=600))
"""


def test_database_backend_and_db_worker(emulator, tmp_path):
    """The production path: save enqueues on django-tasks-db, `manage.py db_worker` submits."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.helpers import emulator_settings, uploads

    pytest.importorskip("django_tasks_db")
    (tmp_path / "dbw_settings.py").write_text(DB_WORKER_SETTINGS)
    (tmp_path / "dbw_urls.py").write_text(
        "from django.urls import include, path\n"
        'urlpatterns = [path("ikbg/", include("imagekit_bgremove.urls"))]\n'
    )
    repo = Path(__file__).resolve().parent.parent
    config = emulator_settings(emulator, TASK_QUEUE="removals")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "dbw_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)]),
        "IKBG_SETTINGS": json.dumps(config),
    }

    def manage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    manage("migrate", "-v0")
    manage("shell", "-c", CREATE)
    assert manage("shell", "-c", SHOW) == "queued False 1"
    assert uploads(emulator) == []
    manage("db_worker", "--batch", "--queue-name", "removals", "--no-startup-delay")
    # Submitted once, and a check for a lost callback waits its turn (RECONCILE_AFTER_SECONDS).
    assert manage("shell", "-c", SHOW) == "pending True 2"
    assert len(uploads(emulator)) == 1
    assert manage("shell", "-c", CHECK) == "READY True True"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_that_runs_every_task_in_one_process_outlives_a_dropped_connection():
    # rq's SimpleWorker runs every task in the worker process itself, with a connection kept
    # between tasks (CONN_MAX_AGE) and health checks on, as the example project configures
    # them. A database restart drops that connection; the next task must not inherit it.
    from django.db import connection, connections

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True)
    try:
        tasks.reconcile_removals.call()
        backend_pid = connection.connection.info.backend_pid
        admin = connections.create_connection("default")
        try:
            with admin.cursor() as cursor:  # what a restart does to every session
                cursor.execute("SELECT pg_terminate_backend(%s)", [backend_pid])
        finally:
            admin.close()
        summary = tasks.reconcile_removals.call()
        assert summary["overdue"] == 0
        assert connection.connection.info.backend_pid != backend_pid
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


@pytest.mark.django_db(transaction=True)
def test_tasks_run_inside_a_command_leave_its_connection_alone(settings):
    # retry_removals reads the failed jobs with a cursor while each retry's submit task runs
    # on commit, inside the command (ImmediateBackend): the tasks must not close the
    # connection that cursor lives on.
    from io import StringIO

    from django.core.management import call_command

    from imagekit_bgremove.models import Trigger

    settings.TASKS = {"default": {"BACKEND": task_backend("dummy.DummyBackend")}}
    for number in range(3):
        Product.objects.create(photo=make_image(f"retry{number}.png", seed=70 + number))
    RemovalJob.objects.update(
        status=JobStatus.FAILED, finished_at=timezone.now(), error_code="removal_failed"
    )
    settings.TASKS = {"default": {"BACKEND": task_backend("immediate.ImmediateBackend")}}
    out = StringIO()
    call_command("retry_removals", stdout=out, stderr=out)
    assert "Retried 3 job(s)" in out.getvalue()
    assert RemovalJob.objects.filter(trigger=Trigger.RETRY).count() == 3
