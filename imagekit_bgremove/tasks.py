"""Task functions: JSON-safe ids in, one call into :mod:`imagekit_bgremove.services` out.

Every task is safe to run twice and to be killed at any line (the services claim their work with
atomic, leased state transitions), so any backend works: ``ImmediateBackend`` in development,
``django_tasks_db``'s ``DatabaseBackend`` (``manage.py db_worker``) in production, RQ, or another.

The tasks are bound to ``TASK_BACKEND`` when that alias exists (else to ``default``, else to the
first configured one), only so that defining them never fails; every enqueue picks the backend
and queue from the settings of that moment (``queueing.enqueue``).
"""

from __future__ import annotations

from django.conf import settings

from . import queueing
from .compat import task
from .conf import app_settings


def _bindable_backend() -> str:
    configured = list(getattr(settings, "TASKS", None) or {"default": None})
    wanted = str(app_settings.TASK_BACKEND)
    if wanted in configured:
        return wanted
    return "default" if "default" in configured else configured[0]


_BACKEND = _bindable_backend()


@queueing.register
@task(backend=_BACKEND)
def submit_removal(job_id: int) -> str:
    from . import services

    return services.submit(int(job_id))


@queueing.register
@task(backend=_BACKEND)
def finalize_removal(job_id: int) -> str:
    from . import services

    return services.finalize(int(job_id))


@queueing.register
@task(backend=_BACKEND)
def check_removal(job_id: int) -> str:
    from . import services

    return services.check(int(job_id))


@queueing.register
@task(backend=_BACKEND)
def reconcile_removals() -> dict[str, int]:
    from . import services

    return services.reconcile()
