"""Task functions: JSON-safe ids in, one call into :mod:`imagekit_bgremove.services` out.

Every task is safe to run twice (the services claim their work with atomic state transitions),
so any backend works: ``ImmediateBackend`` in development, ``django_tasks_db``'s
``DatabaseBackend`` (``manage.py db_worker``) in production, or any other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .compat import task
from .conf import app_settings


@task
def submit_removal(job_id: int) -> str:
    from . import services

    return services.submit(int(job_id))


@task
def finalize_removal(job_id: int) -> str:
    from . import services

    return services.finalize(int(job_id))


@task
def check_removal(job_id: int) -> str:
    from . import services

    return services.check(int(job_id))


@task
def reconcile_removals() -> dict[str, int]:
    from . import services

    return services.reconcile()


def enqueue(task_obj: Any, *args: Any, run_after: datetime | None = None) -> Any:
    """Enqueue ``task_obj`` on the configured backend alias and queue.

    With ``run_after`` the task is deferred when the backend supports it; when it does not, nothing
    is enqueued and ``None`` is returned (the job waits for ``reconcile_removals``)."""
    configured = task_obj.using(
        backend=app_settings.TASK_BACKEND, queue_name=app_settings.TASK_QUEUE
    )
    if run_after is not None:
        if not getattr(configured.get_backend(), "supports_defer", False):
            return None
        configured = configured.using(run_after=run_after)
    return configured.enqueue(*args)
