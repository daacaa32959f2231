"""Enqueueing tasks, by name, on the configured backend and queue; and the one backoff policy.

Tasks register themselves here (``tasks.py`` at import, which the app config triggers), so the
service layer can enqueue work without importing ``tasks.py``, which imports the services.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from .conf import app_settings

logger = logging.getLogger(__name__)

SUBMIT = "submit_removal"
FINALIZE = "finalize_removal"
CHECK = "check_removal"
RECONCILE = "reconcile_removals"

_tasks: dict[str, Any] = {}


def register(task_obj: Any) -> Any:
    """Make ``task_obj`` enqueueable by its function's name; returns it (usable as decorator)."""
    _tasks[task_obj.name] = task_obj
    return task_obj


def enqueue(name: str, *args: Any, run_after: datetime | None = None) -> Any:
    """Enqueue task ``name`` on ``TASK_BACKEND`` / ``TASK_QUEUE`` (read now, so
    ``override_settings`` applies). With ``run_after`` the task is deferred when the backend can
    defer; when it cannot, nothing is enqueued and None is returned: the scheduled work is then
    done by ``reconcile_removals`` from cron. Raises whatever the backend raises."""
    configured = _tasks[name].using(
        backend=app_settings.TASK_BACKEND, queue_name=app_settings.TASK_QUEUE
    )
    if run_after is not None and run_after > timezone.now():
        if not getattr(configured.get_backend(), "supports_defer", False):
            return None
        configured = configured.using(run_after=run_after)
    return configured.enqueue(*args)


def enqueue_now(
    name: str,
    *args: Any,
    run_after: datetime | None = None,
    on_error: Callable[[BaseException], None] | None = None,
) -> Any:
    """``enqueue`` that never raises: a failure is logged and handed to ``on_error``."""
    try:
        return enqueue(name, *args, run_after=run_after)
    except Exception as exc:
        logger.exception("could not enqueue %s%s", name, args)
        if on_error is not None:
            try:
                on_error(exc)
            except Exception:
                logger.exception("could not record the enqueue failure of %s%s", name, args)
        return None


def enqueue_on_commit(
    name: str,
    *args: Any,
    run_after: datetime | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    using: str | None = None,
) -> None:
    """Enqueue once the transaction on ``using`` commits (at once outside a transaction);
    nothing on rollback. A crash between the commit and the enqueue leaves the job recorded but
    not enqueued: ``reconcile_removals`` enqueues it."""
    transaction.on_commit(
        lambda: enqueue_now(name, *args, run_after=run_after, on_error=on_error),
        using=using,
        robust=True,
    )


def backoff(
    attempt: int,
    *,
    base: float | None = None,
    cap: float = 3600.0,
    at_least: float | None = None,
) -> timedelta:
    """How long to wait before attempt ``attempt + 1``: ``base`` (``TASK_RETRY_DELAY``) doubled
    per attempt made, at most ``cap`` seconds, and never less than what a server asked for."""
    first = float(app_settings.TASK_RETRY_DELAY if base is None else base)
    delay = min(cap, first * 2 ** max(0, min(attempt - 1, 30)))
    if at_least:
        delay = max(delay, float(at_least))
    return timedelta(seconds=delay)
