"""The task engines the soak runs on: django-tasks-db (``manage.py db_worker``), RQ over Redis
through django-tasks-rq (``manage.py rqworker``) and Celery over RabbitMQ through
django-tasks-celery (``celery worker``). Each says how to start a worker, how
much work is still open, and what became of the tasks, knowing which workers were killed: a
task whose worker was SIGKILLed mid-run is *abandoned* (no engine finishes it), and the app's
leases and reconcile must make up for it."""

from __future__ import annotations

import secrets
import sys
from collections import Counter
from typing import Any


class Engine:
    name = ""
    label = ""

    def __init__(self) -> None:
        #: worker ids of killed workers
        self.dead: set[str] = set()

    def worker_id(self, number: int, generation: int) -> str:
        return f"soak-{number}-{generation}"

    def worker_argv(self, number: int, generation: int) -> list[str]:
        raise NotImplementedError

    def open_tasks(self) -> int:
        """Tasks still to run or running on a live worker."""
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        """``{"counts": {...}, "failed": [...], "abandoned": n, "outcomes": {...}}``."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """What every process of the run needs in its environment for this engine."""
        return {}

    def cleanup(self) -> None:
        pass


class DbEngine(Engine):
    name = "db"
    label = "django-tasks-db (db_worker)"

    def worker_argv(self, number: int, generation: int) -> list[str]:
        return [
            sys.executable,
            "manage.py",
            "db_worker",
            "--no-reload",
            "--no-startup-delay",
            "--worker-id",
            self.worker_id(number, generation),
        ]

    def _running_on_dead(self, worker_ids: list[str] | None) -> bool:
        return bool(worker_ids) and worker_ids[-1] in self.dead

    def open_tasks(self) -> int:
        from django_tasks_db.models import DBTaskResult

        from imagekit_bgremove.compat import TaskResultStatus

        ready = DBTaskResult.objects.filter(status=TaskResultStatus.READY).count()
        running = DBTaskResult.objects.filter(status=TaskResultStatus.RUNNING).values_list(
            "worker_ids", flat=True
        )
        return ready + sum(1 for ids in running if not self._running_on_dead(ids))

    def snapshot(self) -> dict[str, Any]:
        from django_tasks_db.models import DBTaskResult

        rows = list(
            DBTaskResult.objects.values(
                "task_path",
                "status",
                "args_kwargs",
                "return_value",
                "exception_class_path",
                "traceback",
                "worker_ids",
            )
        )
        counts: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        failed = []
        abandoned = 0
        for row in rows:
            task = row["task_path"].rsplit(".", 1)[-1]
            status = str(row["status"])
            if status == "RUNNING" and self._running_on_dead(row["worker_ids"]):
                status = "ABANDONED"
                abandoned += 1
            counts[f"{task}:{status.lower()}"] += 1
            if status == "SUCCESSFUL" and task == "submit_removal":
                outcomes[str(row["return_value"])] += 1
            if status == "FAILED":
                failed.append(
                    {
                        "task": task,
                        "args": (row["args_kwargs"] or {}).get("args"),
                        "exception": row["exception_class_path"],
                        "traceback": (row["traceback"] or "").strip().splitlines()[-1:] or [""],
                    }
                )
        return {
            "counts": dict(sorted(counts.items())),
            "failed": failed,
            "abandoned": abandoned,
            "outcomes": dict(outcomes),
        }


class RQEngine(Engine):
    name = "rq"
    label = "RQ over Redis (django-tasks-rq, rqworker)"

    def __init__(self, redis_url: str, worker_class: str = "") -> None:
        super().__init__()
        self.redis_url = redis_url
        #: rqworker's --worker-class ("" for rq's default, a work horse forked per task).
        self.worker_class = worker_class
        #: This run's own queue: other runs may share the Redis server.
        self.queue = f"ikbg_soak_{secrets.token_hex(4)}"

    def worker_id(self, number: int, generation: int) -> str:
        # rq's worker names are global in Redis (and outlive a killed worker for its TTL): this
        # run's own, so that another run's, or a killed one's, never collides.
        return f"{self.queue}-{number}-{generation}"

    def worker_argv(self, number: int, generation: int) -> list[str]:
        return [
            sys.executable,
            "manage.py",
            "rqworker",
            self.queue,
            "--with-scheduler",
            "--job-class",
            "django_tasks_rq.Job",
            "--name",
            self.worker_id(number, generation),
        ] + (["--worker-class", self.worker_class] if self.worker_class else [])

    def check_server(self) -> None:
        from redis import Redis

        from .procs import SoakError

        try:
            Redis.from_url(self.redis_url, socket_connect_timeout=3).ping()
        except Exception as exc:
            raise SoakError(f"Redis is not reachable at {self.redis_url}: {exc}") from None

    def _connection(self):
        import django_rq

        return django_rq.get_connection(self.queue)

    def _registries(self) -> dict[str, Any]:
        from rq import Queue
        from rq.registry import (
            DeferredJobRegistry,
            FailedJobRegistry,
            FinishedJobRegistry,
            ScheduledJobRegistry,
            StartedJobRegistry,
        )

        connection = self._connection()
        queue = Queue(self.queue, connection=connection)
        return {
            "queue": queue,
            "started": StartedJobRegistry(queue=queue),
            "scheduled": ScheduledJobRegistry(queue=queue),
            "deferred": DeferredJobRegistry(queue=queue),
            "failed": FailedJobRegistry(queue=queue),
            "finished": FinishedJobRegistry(queue=queue),
        }

    @staticmethod
    def _ids(registry: Any) -> list[str]:
        # The started registry holds "<job id>:<execution id>"; cleanup=False: counting must not
        # move abandoned jobs (that is the workers' maintenance's business).
        return [i.split(":", 1)[0] for i in registry.get_job_ids(cleanup=False)]

    def _started_by(self, registry: Any) -> dict[str, str]:
        """The started tasks' workers, by task id; "" for a task
        whose entry has expired (its worker stopped sending heartbeats: killed)."""
        import time

        from rq.job import Job

        entries = registry.connection.zrange(registry.key, 0, -1, withscores=True)
        now = time.time()
        expiry = {
            (raw.decode() if isinstance(raw, bytes) else raw).split(":", 1)[0]: score
            for raw, score in entries
        }
        jobs = Job.fetch_many(list(expiry), connection=self._connection())
        workers = {job.id: (job.worker_name or "") for job in jobs if job is not None}
        return {
            job_id: ("" if expiry[job_id] < now or not workers.get(job_id) else workers[job_id])
            for job_id in expiry
        }

    #: A deferred task this late has no scheduler to move it (see ``_scheduled``).
    STALLED_AFTER = 5.0

    def _scheduled(self, registry: Any) -> tuple[int, int]:
        """(deferred tasks still to come, deferred tasks overdue with no scheduler to run them).

        RQ moves due tasks with the scheduler of one worker, the holder of a lock. When that
        worker is SIGKILLed, the lock expires but the other workers take it over only at their
        maintenance, every 10 minutes (django-rq's rqworker has no option to change it):
        deferred tasks stall until then."""
        import time

        now = time.time()
        entries = registry.connection.zrange(registry.key, 0, -1, withscores=True)
        late = sum(1 for _, due in entries if due < now - self.STALLED_AFTER)
        return len(entries) - late, late

    def open_tasks(self) -> int:
        r = self._registries()
        started = self._started_by(r["started"])
        live = sum(1 for worker in started.values() if worker and worker not in self.dead)
        to_come, _ = self._scheduled(r["scheduled"])
        return len(r["queue"]) + live + to_come + len(self._ids(r["deferred"]))

    def snapshot(self) -> dict[str, Any]:
        from rq.job import Job

        r = self._registries()
        connection = self._connection()
        started = self._started_by(r["started"])
        abandoned = sum(1 for worker in started.values() if not worker or worker in self.dead)
        counts: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        failed = []
        finished_ids = self._ids(r["finished"])
        for job in Job.fetch_many(finished_ids, connection=connection):
            if job is None:
                continue
            task = job.func_name.rsplit(".", 1)[-1]
            counts[f"{task}:successful"] += 1
            if task == "submit_removal":
                outcomes[str(job.return_value())] += 1
        for job in Job.fetch_many(self._ids(r["failed"]), connection=connection):
            if job is None:
                continue
            task = job.func_name.rsplit(".", 1)[-1]
            text = (job.exc_info or "").strip().splitlines()[-1:] or [""]
            info = job.exc_info or ""
            # rq's words for a task whose worker died: abandoned while running, or taken off
            # the queue by a worker killed before it started it.
            if (
                job.worker_name in self.dead
                or "AbandonedJobError" in info
                or "stuck in intermediate queue" in info
            ):
                counts[f"{task}:abandoned"] += 1
                abandoned += 1
                continue
            counts[f"{task}:failed"] += 1
            failed.append(
                {"task": task, "args": list(job.args), "exception": "", "traceback": text}
            )
        to_come, stalled = self._scheduled(r["scheduled"])
        counts["open:queued"] = len(r["queue"])
        counts["open:scheduled"] = to_come
        counts["deferred, stalled with the scheduler's worker"] = stalled
        return {
            "counts": dict(sorted(counts.items())),
            "failed": failed,
            "abandoned": abandoned,
            "stalled": stalled,
            "outcomes": dict(outcomes),
        }

    def cleanup(self) -> None:
        """Remove this run's queue, registries and jobs from Redis."""
        try:
            connection = self._connection()
        except Exception:
            return
        keys = list(connection.scan_iter(match=f"rq:*{self.queue}*", count=1000))
        for name in ("rq:workers", f"rq:workers:{self.queue}"):
            for member in connection.smembers(name):
                if self.queue in (member.decode() if isinstance(member, bytes) else member):
                    connection.srem(name, member)
        job_ids: set[str] = set()
        try:
            r = self._registries()
            for name in ("started", "scheduled", "deferred", "failed", "finished"):
                job_ids.update(self._ids(r[name]))
            job_ids.update(r["queue"].get_job_ids())
        except Exception:
            pass
        keys += [f"rq:job:{job_id}" for job_id in job_ids]
        keys += [f"rq:results:{job_id}" for job_id in job_ids]
        for start in range(0, len(keys), 500):
            connection.delete(*keys[start : start + 500])


class CeleryEngine(Engine):
    name = "celery"
    label = "Celery over RabbitMQ (django-tasks-celery, celery worker --pool solo)"

    def __init__(self, broker_url: str, redis_url: str) -> None:
        super().__init__()
        self.broker_url = broker_url
        #: The ledger of bench.soak.celery_app (Redis; RabbitMQ carries the tasks).
        self.redis_url = redis_url
        #: This run's own queue (and the ledger's key prefix): other runs may share the broker.
        self.queue = f"ikbg_soak_{secrets.token_hex(4)}"

    def worker_id(self, number: int, generation: int) -> str:
        return f"{self.queue}-{number}-{generation}@soak"

    def worker_argv(self, number: int, generation: int) -> list[str]:
        # The solo pool runs the task in the worker process: its SIGKILL is the task's, as with
        # the other engines (a prefork pool's children would outlive their parent's kill).
        return [
            sys.executable,
            "-m",
            "celery",
            "--app",
            "bench.soak.celery_app",
            "worker",
            "--pool",
            "solo",
            "--queues",
            self.queue,
            "--hostname",
            self.worker_id(number, generation),
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "WARNING",
        ]

    def env(self) -> dict[str, str]:
        return {"SOAK_LEDGER_URL": self.redis_url, "SOAK_LEDGER": self.queue}

    def check_server(self) -> None:
        from kombu import Connection
        from redis import Redis

        from .procs import SoakError

        try:
            with Connection(self.broker_url, connect_timeout=3) as connection:
                connection.ensure_connection(max_retries=1)
        except Exception as exc:
            raise SoakError(f"RabbitMQ is not reachable at {self.broker_url}: {exc}") from None
        try:
            Redis.from_url(self.redis_url, socket_connect_timeout=3).ping()
        except Exception as exc:
            raise SoakError(
                f"Redis (the ledger) is unreachable at {self.redis_url}: {exc}"
            ) from None

    def _ledger(self) -> tuple[dict[str, str], dict[str, Any], dict[str, str], dict[str, int]]:
        import json

        from redis import Redis

        redis = Redis.from_url(self.redis_url, decode_responses=True)
        published = redis.hgetall(f"{self.queue}:published")
        finished = {k: json.loads(v) for k, v in redis.hgetall(f"{self.queue}:finished").items()}
        running = redis.hgetall(f"{self.queue}:running")
        starts = {k: int(v) for k, v in redis.hgetall(f"{self.queue}:starts").items()}
        return published, finished, running, starts

    def open_tasks(self) -> int:
        """Published and not finished. With late acknowledgement a killed worker's task goes
        back to the queue (RabbitMQ requeues what an closed connection had not acknowledged),
        so no task is lost: it runs again on another worker."""
        published, finished, _, _ = self._ledger()
        return sum(1 for task_id in published if task_id not in finished)

    def snapshot(self) -> dict[str, Any]:
        published, finished, running, starts = self._ledger()
        counts: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        failed = []
        for task_id, name in published.items():
            task = name.rsplit(".", 1)[-1]
            if task_id not in finished:
                counts[f"{task}:open"] += 1
                continue
            _, state, outcome = finished[task_id]
            counts[f"{task}:{state.lower()}"] += 1
            if state == "SUCCESS" and task == "submit_removal":
                outcomes[str(outcome)] += 1
            if state != "SUCCESS":
                failed.append(
                    {"task": task, "args": [], "exception": state, "traceback": [outcome]}
                )
        # A start beyond the first is the same task run again after its worker was killed.
        rerun = sum(n - 1 for n in starts.values() if n > 1)
        counts["run again after a killed worker"] = rerun
        return {
            "counts": dict(sorted(counts.items())),
            "failed": failed,
            "abandoned": rerun,
            "outcomes": dict(outcomes),
            "running_on_dead": sum(1 for w in running.values() if w in self.dead),
        }

    def cleanup(self) -> None:
        """Remove this run's ledger from Redis and its queue from RabbitMQ."""
        from kombu import Connection
        from redis import Redis

        redis = Redis.from_url(self.redis_url)
        redis.delete(*(f"{self.queue}:{k}" for k in ("published", "finished", "running", "starts")))
        with Connection(self.broker_url, connect_timeout=3) as connection:
            connection.default_channel.queue_delete(self.queue)


def make_engine(
    name: str, redis_url: str, rq_worker_class: str = "", broker_url: str = ""
) -> Engine:
    if name == "rq":
        return RQEngine(redis_url, rq_worker_class)
    if name == "celery":
        return CeleryEngine(broker_url, redis_url)
    return DbEngine()
