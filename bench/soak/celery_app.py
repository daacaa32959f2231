"""The soak's Celery app (``celery -A bench.soak.celery_app worker``), configured from the run's
Django settings (``CELERY_*``), and its ledger: every task published, started and finished, kept
in Redis under the run's queue name, so that the soak can tell open work from done without
asking RabbitMQ (whose counts need its management plugin or ``rabbitmqctl``)."""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery
from celery.signals import before_task_publish, task_postrun, task_prerun

app = Celery("ikbg_soak")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

_ledger: Any = None


def ledger() -> Any:
    global _ledger
    if _ledger is None:
        from redis import Redis

        _ledger = Redis.from_url(os.environ["SOAK_LEDGER_URL"])
    return _ledger


def key(name: str) -> str:
    return f"{os.environ['SOAK_LEDGER']}:{name}"


@before_task_publish.connect
def _published(sender: str | None = None, headers: dict | None = None, **_: Any) -> None:
    # Before the message leaves: a task never finishes before it is known to be published.
    ledger().hset(key("published"), (headers or {})["id"], str(sender))


@task_prerun.connect
def _started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    ledger().hset(key("running"), str(task_id), task.request.hostname or "")
    ledger().hincrby(key("starts"), str(task_id), 1)


@task_postrun.connect
def _finished(
    task_id: str | None = None, task: Any = None, retval: Any = None, state: str = "", **_: Any
) -> None:
    outcome = retval if isinstance(retval, str | int | None) else repr(retval)
    if isinstance(retval, BaseException):
        outcome = f"{type(retval).__module__}.{type(retval).__qualname__}: {retval}"
    ledger().hset(key("finished"), str(task_id), json.dumps([task.name, state, outcome]))
    ledger().hdel(key("running"), str(task_id))
