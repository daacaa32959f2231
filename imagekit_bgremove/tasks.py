"""Task functions: JSON-safe ids in, one call into :mod:`imagekit_bgremove.services` out.

Every task is safe to run twice and to be killed at any line (the services claim their work with
atomic, leased state transitions), so any backend works: ``ImmediateBackend`` in development,
``django_tasks_db``'s ``DatabaseBackend`` (``manage.py db_worker``) in production, RQ, or another.

The tasks are defined on ``TASK_BACKEND`` and ``TASK_QUEUE`` when those are configured (see
``_bindable``), only so that defining them never fails; every enqueue picks the backend and
queue from the settings of that moment (``queueing.enqueue``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import connections

from . import queueing
from .compat import task
from .conf import app_settings


def _bindable() -> tuple[str, str]:
    """A backend alias and queue the tasks can be defined on without failing: TASK_BACKEND and
    TASK_QUEUE when configured (else "default", else the first backend, with one of its queues).
    Defining a task validates it against its backend; enqueueing picks the settings of the
    moment anyway."""
    configured = getattr(settings, "TASKS", None) or {"default": {}}
    wanted, queue = str(app_settings.TASK_BACKEND), str(app_settings.TASK_QUEUE)
    alias = wanted if wanted in configured else ("default" if "default" in configured else "")
    alias = alias or next(iter(configured))
    queues = list((configured.get(alias) or {}).get("QUEUES") or [])
    if queues and queue not in queues:
        queue = "default" if "default" in queues else queues[0]
    return alias, queue


_BACKEND, _QUEUE = _bindable()


def _usable_connections() -> None:
    """Drop the connections that broke (a database restart), as Django does before a request:
    a worker that runs every task in one long-lived process (rq's ``SimpleWorker``) would
    otherwise fail every task after a restart. A task may run inside its caller (an
    ``ImmediateBackend`` runs it on commit, while the caller may still be reading rows), so a
    connection that works is never closed here, not even past ``CONN_MAX_AGE``: it is only
    marked for the health check (``CONN_HEALTH_CHECKS``) at its next use, which reconnects
    before the first query instead of failing it."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is None or connection.in_atomic_block:
            continue
        if connection.errors_occurred:
            if not connection.is_usable():
                connection.close()
                continue
            connection.errors_occurred = False
        connection.health_check_done = False


@queueing.register
@task(backend=_BACKEND, queue_name=_QUEUE)
def submit_removal(job_id: int) -> str:
    from . import services

    _usable_connections()
    return services.submit(int(job_id))


@queueing.register
@task(backend=_BACKEND, queue_name=_QUEUE)
def finalize_removal(job_id: int) -> str:
    from . import services

    _usable_connections()
    return services.finalize(int(job_id))


@queueing.register
@task(backend=_BACKEND, queue_name=_QUEUE)
def check_removal(job_id: int) -> str:
    from . import services

    _usable_connections()
    return services.check(int(job_id))


@queueing.register
@task(backend=_BACKEND, queue_name=_QUEUE)
def reconcile_removals() -> dict[str, int]:
    from . import services

    _usable_connections()
    return services.reconcile()
