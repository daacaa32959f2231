"""Enqueueing tasks, by name, on the configured backend and queue; and the one backoff policy.

Tasks register themselves here (``tasks.py`` at import, which the app config triggers), so the
service layer can enqueue work without importing ``tasks.py``, which imports the services.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, router, transaction
from django.utils import timezone

from .compat import task_backends
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


def _joins_transaction(using: str | None) -> bool:
    """Whether the configured backend stores tasks as rows of the database this transaction
    writes to (django-tasks-db's DatabaseBackend there): then the task row can be written in the
    transaction itself. Workers see it exactly when the job row commits, a rollback removes
    both, and no crash can fall between a commit and its enqueue."""
    try:
        backend = task_backends[app_settings.TASK_BACKEND]
    except Exception:
        return False
    if not type(backend).__module__.startswith("django_tasks_db."):
        return False
    from django_tasks_db.models import DBTaskResult

    return router.db_for_write(DBTaskResult) == (using or DEFAULT_DB_ALIAS)


#: Seconds without work after which the enqueue thread closes its database connections.
IDLE_CLOSE_SECONDS = 5.0


def _drop_broken_connections() -> None:
    """Close this thread's connections that an error left unusable or out of autocommit (what
    Django's per-request check does, without closing healthy ones)."""
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if connection.connection is None:
            continue
        if connection.get_autocommit() != connection.settings_dict["AUTOCOMMIT"]:
            connection.close()
        elif connection.errors_occurred:
            if connection.is_usable():
                connection.errors_occurred = False
            else:
                connection.close()


class _Dispatcher:
    """Enqueues, on a thread of this process, the tasks that commits hand over, so that a request
    never waits for the task queue (with ImmediateBackend, not for the task itself either).

    What it has not enqueued when the process dies (SIGKILL, a crash) is recorded as a queued
    job all the same; ``reconcile_removals`` enqueues it. A normal exit waits a few seconds for
    the queue to drain."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._pid = 0
        self._thread: threading.Thread | None = None

    def put(self, *item: Any) -> None:
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                # First use in this process (or after a fork): a thread of its own.
                self._pid = os.getpid()
                self._pending = 0
                self._thread = threading.Thread(
                    target=self._run, name="imagekit-bgremove-enqueue", daemon=True
                )
                self._thread.start()
            self._pending += 1
        self._items.put(item)

    def _run(self) -> None:
        from django.db import connections

        while True:
            try:
                item = self._items.get(timeout=IDLE_CLOSE_SECONDS)
            except queue.Empty:
                # Idle: give the connections back. While busy they are kept (closing after each
                # task, as a request does under CONN_MAX_AGE=0, cost a new PostgreSQL
                # connection per save).
                connections.close_all()
                item = self._items.get()
            name, args, run_after, on_error = item
            try:
                if name is None:  # release_connections()
                    connections.close_all()
                else:
                    enqueue_now(name, *args, run_after=run_after, on_error=on_error)
            finally:
                _drop_broken_connections()
                with self._lock:
                    self._pending -= 1
                    if self._pending <= 0:
                        self._idle.notify_all()

    def release_connections(self, timeout: float | None = None) -> bool:
        """Have the thread close its database connections now (before a database is dropped,
        say), once what was handed over before is enqueued."""
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                return True
        self.put(None, (), None, None)
        return self.flush(timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything handed over is enqueued; returns whether it was."""
        with self._lock:
            if self._pid != os.getpid():
                return True
            return self._idle.wait_for(lambda: self._pending <= 0, timeout=timeout)


_dispatcher = _Dispatcher()
atexit.register(_dispatcher.flush, 5.0)


def flush(timeout: float | None = None) -> bool:
    """Wait until the enqueues this process handed to its background thread are done."""
    return _dispatcher.flush(timeout)


def release_connections(timeout: float | None = None) -> bool:
    """Flush, then have the enqueue thread close its database connections (it keeps them while
    busy and closes them after ``IDLE_CLOSE_SECONDS`` without work)."""
    return _dispatcher.release_connections(timeout)


def enqueue_on_commit(
    name: str,
    *args: Any,
    run_after: datetime | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    using: str | None = None,
    with_transaction: bool = False,
) -> None:
    """Enqueue once the current transaction commits (at once outside a transaction); nothing on
    rollback. A crash between the commit and the enqueue leaves the job recorded but not
    enqueued: ``reconcile_removals`` enqueues it.

    With ``ENQUEUE_IN_BACKGROUND`` (the default) the commit only hands the task to this
    process's enqueue thread, so the request pays nothing for the queue. Without it the task is
    enqueued in the committing thread, and with a database task backend on the same database its
    row is even written in the transaction itself. ``with_transaction`` asks for the latter
    whatever the setting, where the caller's speed matters less than one commit instead of two
    (the webhook: the task row commits with the state it acts on)."""
    if with_transaction and _in_transaction_with_tasks(using):
        try:
            # In a savepoint: a task the backend refuses, or a task_enqueued receiver that
            # raises, must not undo the state the task follows. It is then tried once more at
            # commit (below), where a failure is only logged; reconcile enqueues what is lost.
            with transaction.atomic(using=using):
                enqueue(name, *args, run_after=run_after)
            return
        except Exception:
            logger.exception("could not enqueue %s%s with the transaction", name, args)
    elif app_settings.ENQUEUE_IN_BACKGROUND:
        transaction.on_commit(
            lambda: _dispatcher.put(name, args, run_after, on_error), using=using, robust=True
        )
        return
    elif _in_transaction_with_tasks(using):
        enqueue(name, *args, run_after=run_after)
        return
    transaction.on_commit(
        lambda: enqueue_now(name, *args, run_after=run_after, on_error=on_error),
        using=using,
        robust=True,
    )


def _in_transaction_with_tasks(using: str | None) -> bool:
    """In a transaction whose database also stores the tasks (``_joins_transaction``)."""
    return transaction.get_connection(using).in_atomic_block and _joins_transaction(using)


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
