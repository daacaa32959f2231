"""What one soak run does: its size, its faults, its chaos, and the settings of the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/imagekit_bgremove"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"

#: Every fault the emulator has (knob names of imagekit_emulator.faults.Faults).
FAULTS: dict[str, Any] = {
    # API, before the work: upload, list, details, versions, restore (never delivery).
    "error_rate_5xx": 0.03,
    "error_statuses": [500, 502, 503],
    "rate_limit_rate": 0.03,
    "rate_limit_reset_ms": 500,
    "rate_limit_upload": True,
    "drop_rate": 0.01,
    "slow_rate": 0.02,
    "slow_seconds": 0.5,
    "upload_too_many_requests_rate": 0.02,
    # API, after the work: the upload stored / the PATCH applied, and the answer lost.
    "answer_drop_rate": 0.02,
    "answer_error_rate": 0.02,
    "answer_late_rate": 0.015,
    "answer_late_seconds": 7.0,  # past READ_TIMEOUT below: the client sees a timeout
    # remove-bg itself, and ImageKit's legitimate variations.
    "extension_failure_rate": 0.04,
    "result_as_new_file_rate": 0.04,
    "sync_success_rate": 0.03,
    # Callbacks.
    "duplicate_rate": 0.2,
    "duplicate_max": 2,
    "delay_seconds": [0.0, 1.0],
    "reorder": True,
    "reorder_window": 3,
    "reorder_hold_seconds": 1.0,
    "fail_first_attempts": 1,
    "lost_rate": 0.05,
    "retry_original_signature": True,
}

#: ImageKit's timings (30 s webhook timeout, retries 10 s doubling to 1 h, for 24 h), compressed:
#: a day of retries takes 43 s, an hour 1.8 s. Network timeouts stay at least MIN_TIMEOUT.
TIME_SCALE = 0.0005
MIN_TIMEOUT = 10.0

#: Why a job may end failed, short of a bug (``verify`` flags any other reason).
DOCUMENTED_FAILURES = {
    "removal_failed": "remove-bg failed at ImageKit (FAILURE callback, or its check)",
    "no_result": "the FAILURE callback never reached the app (lost, or a retry refused as "
    "stale); nothing in ImageKit's API says a run failed, so the job ends at "
    "PENDING_DEADLINE_SECONDS",
    "shared": "an identical earlier job failed, and this one shared its outcome",
    "extension_failed": "ImageKit answered the upload with extensionStatus 'failed' (a "
    "synchronous remove-bg that failed)",
}

ENGINES = ("db", "rq", "celery")
MEDIA = ("local", "s3")


@dataclass
class SoakConfig:
    images: int = 200
    seed: int = 1
    timeout: float = 1800.0
    keep_db: bool = False
    #: The PostgreSQL server (and credentials) to create the throw-away database on.
    database_url: str = ""
    #: "db": django-tasks-db and ``manage.py db_worker``; "rq": django-tasks-rq and ``rqworker``.
    engine: str = "db"
    redis_url: str = DEFAULT_REDIS_URL
    #: rqworker's --worker-class ("" for rq's default, a work horse forked per task, which the
    #: README recommends; "rq.SimpleWorker" runs each task in the worker process).
    rq_worker_class: str = ""
    #: RabbitMQ, the broker of --engine celery.
    broker_url: str = DEFAULT_BROKER_URL
    #: "local": MEDIA_ROOT, one folder every process shares; "s3": a bucket on moto's S3 server
    #: and a folder of its own for each process (no shared disk).
    media: str = "local"
    workers: int = 4
    server: str = "auto"  # gunicorn, runserver or auto
    emulator_workers: int = 2
    #: At most this many jobs unfinished at once: saves wait when more are (a site's upload
    #: rate never exceeds ImageKit's for long), so a job's time at ImageKit stays bounded.
    in_flight: int = 150
    #: Sides of the synthetic product shots (min, max pixels).
    image_size: tuple[int, int] = (400, 800)
    #: services.reconcile() runs this often, as cron would; for jobs quiet RECONCILE_AFTER.
    reconcile_every: float = 5.0
    reconcile_after: float = 10.0
    #: PENDING_DEADLINE_SECONDS: longer than a job can take here (a backlog at the emulator of
    #: ``in_flight`` images, and a finalize killed twice waiting out its lease each time).
    pending_deadline: float = 100.0
    #: TASK_LEASE_SECONDS: longer than a submit can take (timeouts and client retries).
    lease_seconds: float = 25.0
    #: WEBHOOK_TOLERANCE_SECONDS: a retry with the original signature older than this is refused.
    tolerance_seconds: float = 2.0
    # -- the mix (shares of ``images``)
    resave_fraction: float = 0.05  # ORM re-save with a new image while the first is in flight
    admin_resave_fraction: float = 0.04  # admin change form, a new image
    admin_same_fraction: float = 0.03  # admin change form, the same bytes uploaded again
    admin_add_fraction: float = 0.02  # admin add form, a new product
    api_options_fraction: float = 0.04  # API: other options (a new paid run)
    api_repeat_fraction: float = 0.02  # API: the same options again (must not be paid)
    api_force_fraction: float = 0.01  # API: force=True (paid again, allowed)
    delete_fraction: float = 0.03  # products deleted while their job is unfinished
    identical_fraction: float = 0.05  # a new product with the image of one that succeeded
    racing_fraction: float = 0.02  # twins of a pending one, whose original is then re-saved
    # -- chaos
    chaos: bool = True
    kill_every: tuple[float, float] = (2.0, 5.0)
    gunicorn_kills: int = 2
    emulator_restarts: int = 1
    #: Measure the emulator's own capacity (the emulator alone, same images) before the run.
    capacity: bool = True
    capacity_images: int = 200
    faults: dict[str, Any] = field(default_factory=lambda: dict(FAULTS))
    quiet: bool = False

    def app_settings(self) -> dict[str, Any]:
        """IMAGEKIT_BGREMOVE keys the soak changes (over the example project's)."""
        return {
            "MAX_RETRIES": 2,
            "RETRY_BACKOFF": 0.2,
            "RETRY_BACKOFF_MAX": 2.0,
            "CONNECT_TIMEOUT": 3.0,
            "READ_TIMEOUT": 5.0,
            "TASK_RETRY_DELAY": 0.5,
            "TASK_MAX_ATTEMPTS": 6,
            "TASK_LEASE_SECONDS": self.lease_seconds,
            "WEBHOOK_CONFIRM_WITH_API": True,
            "WEBHOOK_TOLERANCE_SECONDS": self.tolerance_seconds,
            "RECONCILE_AFTER_SECONDS": self.reconcile_after,
            "PENDING_DEADLINE_SECONDS": self.pending_deadline,
        }


SETTINGS_MODULE = "soak_settings"
SETTINGS_TEMPLATE = '''"""Settings of one soak run (written by bench/soak): the example
project's, pointed at a throw-away database, emulator and task engine by the environment, with
timings short enough for the run."""

import os

from example_project.settings import *  # noqa: F403
from example_project.settings import IMAGEKIT_BGREMOVE, INSTALLED_APPS

DEBUG = False
SILENCED_SYSTEM_CHECKS = ["imagekit_bgremove.W009"]  # the emulator, on purpose
IMAGEKIT_BGREMOVE = {{**IMAGEKIT_BGREMOVE, **{overrides!r}}}
{engine}
_log_file = os.environ.get("SOAK_LOG_FILE")
LOGGING = {{
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {{
        "plain": {{"format": "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"}}
    }},
    "handlers": {{
        "out": (
            {{"class": "logging.FileHandler", "filename": _log_file, "formatter": "plain"}}
            if _log_file
            else {{"class": "logging.StreamHandler", "formatter": "plain"}}
        )
    }},
    "loggers": {{
        "imagekit_bgremove": {{"handlers": ["out"], "level": "INFO"}},
        "django": {{"handlers": ["out"], "level": "WARNING"}},
    }},
}}
'''

RQ_SETTINGS = """
# RQ over Redis through django-tasks-rq; the queue's name is this run's own.
INSTALLED_APPS = [a for a in INSTALLED_APPS if a != "django_tasks_db"] + [
    "django_rq",
    "django_tasks_rq",
]
# "default" is listed only because imagekit_bgremove.tasks defines its tasks on that queue name
# at import (tests/test_soak_findings.py, finding 3); nothing is enqueued on it.
TASKS = {{
    "default": {{"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": [{queue!r}, "default"]}}
}}
RQ_QUEUES = {{
    {queue!r}: {{"URL": {redis_url!r}, "DEFAULT_TIMEOUT": 120}},
    "default": {{"URL": {redis_url!r}}},
}}
IMAGEKIT_BGREMOVE["TASK_QUEUE"] = {queue!r}
"""


CELERY_SETTINGS = """
# Celery over RabbitMQ through django-tasks-celery; the queue's name is this run's own.
INSTALLED_APPS = [a for a in INSTALLED_APPS if a != "django_tasks_db"]
TASKS = {{
    "default": {{
        "BACKEND": "django_tasks_celery.CeleryBackend",
        "QUEUES": [{queue!r}, "default"],
        "OPTIONS": {{"CELERY_APP": "bench.soak.celery_app.app"}},
    }}
}}
CELERY_BROKER_URL = {broker_url!r}
# A task is acknowledged when it ends, and given back when its worker dies: a SIGKILLed task
# runs again on another worker (the app's tasks are safe to run twice).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = {queue!r}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
IMAGEKIT_BGREMOVE["TASK_QUEUE"] = {queue!r}
"""

S3_SETTINGS = """
# Media in a bucket of moto's S3 server (a process of its own): no process shares a disk.
STORAGES = {{
    "staticfiles": {{"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}},
    "default": {{
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {{
            "bucket_name": {bucket!r},
            "endpoint_url": os.environ["SOAK_S3_URL"],
            "access_key": "soak",
            "secret_key": "soak",
            "region_name": "us-east-1",
            "file_overwrite": False,
            "querystring_auth": True,
        }},
    }},
}}
"""


def write_settings(run_dir: Path, config: SoakConfig, *, queue: str = "", bucket: str = "") -> None:
    engine = ""
    if config.engine == "rq":
        engine = RQ_SETTINGS.format(queue=queue, redis_url=config.redis_url)
    elif config.engine == "celery":
        engine = CELERY_SETTINGS.format(queue=queue, broker_url=config.broker_url)
    if config.media == "s3":
        engine += S3_SETTINGS.format(bucket=bucket)
    text = SETTINGS_TEMPLATE.format(overrides=config.app_settings(), engine=engine)
    (run_dir / f"{SETTINGS_MODULE}.py").write_text(text)
