"""Soak test: the whole removal loop on PostgreSQL, under faults, checked against ground truth.

    python bench/soak.py [--images 200] [--seed 1] [--timeout 900] [--keep-db]
    ./dev soak [same options]

It creates a throw-away PostgreSQL database (next to the one DATABASE_URL names, default
postgres://postgres@127.0.0.1:5432/imagekit_bgremove; dropped at the end) and starts, as separate
processes, the ImageKit emulator (with fault injection), the example project under gunicorn
(runserver when gunicorn is missing) serving the webhook, and two ``manage.py db_worker``. This
process then saves products with synthetic images through the ORM (save hook, on_commit, the
database task queue), re-saves some with a changed image (superseding their job), adds a few
products whose image is identical to one already done (the result is shared) and a few identical
to one still pending at ImageKit, whose original then gets a new image while the twin waits for
its result; and it runs ``services.reconcile()`` every couple of seconds, as cron would, so that
lost callbacks get repaired.

Faults: API 5xx, 429 (with X-RateLimit-Reset, uploads included), dropped connections and slow
answers; remove-bg failures; callbacks delivered more than once, delayed, out of order, the first
attempt of every callback counted as failed (so it is sent again), and some never sent at all.

Once every job is final, the task queue is empty and the emulator has nothing in flight, the
database is compared with the emulator's ground truth (``GET /_emulator/state``): every job is
final and agrees with what the emulator did; no image was uploaded twice; every callback the
emulator got a 200 for is on record, and the lost ones were made up for by reconcile; results
were copied byte for byte; originals are untouched. A summary is printed; the exit status is 1
with the list of violations when anything is wrong (and the tails of the processes' logs).

Importable: ``run(SoakConfig(...))`` runs it in this process (which must not have Django
configured yet); ``run_in_subprocess([...])`` runs it in a fresh interpreter and returns the
report (what the test suite does); ``verify(...)`` is the pure comparison.
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import hashlib
import io
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/imagekit_bgremove"
LOCALHOST = "127.0.0.1"

#: The emulator's faults during the run (knob names of imagekit_bgremove.emulator.faults.Faults).
FAULTS: dict[str, Any] = {
    # API: upload, file details, versions (the delivery of results under /ik/ never fails).
    "error_rate_5xx": 0.05,
    "error_statuses": [500, 502, 503],
    "rate_limit_rate": 0.05,
    "rate_limit_reset_ms": 500,
    "rate_limit_upload": True,
    "drop_rate": 0.01,
    "slow_rate": 0.02,
    "slow_seconds": 0.5,
    # remove-bg itself.
    "extension_failure_rate": 0.06,
    # Callbacks.
    "duplicate_rate": 0.25,
    "duplicate_max": 2,
    "delay_seconds": [0.0, 1.5],
    "reorder": True,
    "reorder_window": 3,
    "reorder_hold_seconds": 1.0,
    "fail_first_attempts": 1,
    "lost_rate": 0.08,
}

#: Why a job may end failed, short of a bug (``verify`` flags any other reason).
DOCUMENTED_FAILURES = {
    "removal_failed": "remove-bg failed at ImageKit (FAILURE callback)",
    "no_result": "the FAILURE callback was lost; reconcile gave up at PENDING_DEADLINE_SECONDS",
    "shared": "an identical earlier job failed, and this one shared its outcome",
}

FINAL = ("succeeded", "failed", "superseded", "cancelled")
UNFINISHED = ("queued", "submitting", "pending")

SETTINGS_MODULE = "soak_settings"
SETTINGS_TEMPLATE = '''"""Settings of one soak run (written by bench/soak.py): the example
project's, pointed at a throw-away database and emulator by the environment, with timings short
enough for the run."""

import os

from example_project.settings import *  # noqa: F403
from example_project.settings import IMAGEKIT_BGREMOVE

DEBUG = False
SILENCED_SYSTEM_CHECKS = ["imagekit_bgremove.W001"]  # the emulator, on purpose
IMAGEKIT_BGREMOVE = {{**IMAGEKIT_BGREMOVE, **{overrides!r}}}

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


class SoakError(RuntimeError):
    """The soak could not run (no PostgreSQL, a process did not start, ...)."""


@dataclass
class SoakConfig:
    images: int = 200
    seed: int = 1
    timeout: float = 900.0
    keep_db: bool = False
    #: The PostgreSQL server (and credentials) to create the throw-away database on.
    database_url: str = ""
    db_workers: int = 2
    server: str = "auto"  # gunicorn, runserver or auto
    #: services.reconcile() runs this often, for jobs quiet for RECONCILE_AFTER_SECONDS.
    reconcile_every: float = 1.5
    reconcile_after: float = 8.0
    #: PENDING_DEADLINE_SECONDS; None: 20 s + 0.1 s per image.
    pending_deadline: float | None = None
    #: Shares of the images: re-saved at once (superseding), re-saved once settled, and saved
    #: again as a new product with identical content.
    resave_fraction: float = 0.08
    late_resave_fraction: float = 0.04
    identical_fraction: float = 0.05
    #: twins of a pending original, which then gets a new image (superseding what they wait on)
    racing_fraction: float = 0.02
    faults: dict[str, Any] = field(default_factory=lambda: dict(FAULTS))
    quiet: bool = False

    def deadline(self) -> float:
        if self.pending_deadline is not None:
            return self.pending_deadline
        return 20.0 + 0.1 * self.images

    def app_settings(self) -> dict[str, Any]:
        """IMAGEKIT_BGREMOVE keys the soak changes (over the example project's)."""
        return {
            "MAX_RETRIES": 2,
            "RETRY_BACKOFF": 0.2,
            "RETRY_BACKOFF_MAX": 2.0,
            "CONNECT_TIMEOUT": 5.0,
            "READ_TIMEOUT": 30.0,
            "TASK_RETRY_DELAY": 0.5,
            "TASK_MAX_ATTEMPTS": 5,
            "WEBHOOK_CONFIRM_WITH_API": True,
            "RECONCILE_AFTER_SECONDS": self.reconcile_after,
            "PENDING_DEADLINE_SECONDS": self.deadline(),
        }


def say(message: str, *, quiet: bool = False) -> None:
    if not quiet:
        print(message, flush=True)


# ============================================================================ child processes


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM if this process dies without cleaning up (SIGKILL)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Children:
    """The processes of one run, each in its own process group, logging to its own file."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list[Any] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        proc = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches this process only; it stops the children
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise SoakError(
                    f"{name} (pid {proc.pid}) exited early with status {proc.returncode}"
                )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to each child's process group, SIGKILL to what is left after ``timeout``."""
        running = {name: p for name, p in self.procs.items() if p.poll() is None}
        for proc in running.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for proc in running.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        for log in self._logs:
            with contextlib.suppress(OSError):
                log.close()

    def tails(self, lines: int = 25) -> str:
        out = []
        for path in sorted(self.log_dir.glob("*.log")):
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            out.append(f"----- {path.name} (last {min(lines, len(text))} of {len(text)} lines)")
            out.extend(text[-lines:])
        return "\n".join(out)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def http_json(method: str, url: str, body: Any = None, timeout: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def wait_until_answers(url: str, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SoakError(f"{what} exited with status {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise SoakError(f"{what} did not answer {url} within {timeout:g} s")


# ============================================================================ the database


def _pg_config(url: str) -> dict[str, Any]:
    import environ

    config = environ.Env.db_url_config(url)
    if "postgresql" not in config["ENGINE"]:
        raise SoakError(f"the soak needs PostgreSQL; DATABASE_URL is {config['ENGINE']}")
    return config


def _pg_admin(url: str):
    import psycopg

    config = _pg_config(url)
    try:
        return psycopg.connect(
            dbname="postgres",
            user=config["USER"] or None,
            password=config["PASSWORD"] or None,
            host=config["HOST"] or None,
            port=config["PORT"] or None,
            autocommit=True,
            connect_timeout=5,
        )
    except psycopg.OperationalError as exc:
        raise SoakError(f"PostgreSQL is not reachable ({url}): {exc}".strip()) from None


def create_database(url: str) -> tuple[str, str]:
    """Create a fresh database on the server ``url`` names; returns (name, its URL)."""
    from psycopg import sql

    name = f"ikbg_soak_{os.getpid()}_{secrets.token_hex(3)}"
    with _pg_admin(url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(url)
    return name, urlunsplit(parts._replace(path=f"/{name}"))


def drop_database(url: str, name: str) -> None:
    from psycopg import sql

    with _pg_admin(url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# ============================================================================ images


def synthetic_image(rng: random.Random) -> tuple[bytes, str]:
    """A small product shot: a coloured object on a plain or gradient light background."""
    from PIL import Image, ImageDraw

    width, height = rng.randint(200, 400), rng.randint(200, 400)

    def light() -> tuple[int, int, int]:
        return tuple(rng.randint(200, 255) for _ in range(3))  # type: ignore[return-value]

    if rng.random() < 0.5:
        image = Image.new("RGB", (width, height), light())
    else:
        mask = Image.linear_gradient("L").rotate(rng.choice([0, 90, 180, 270]))
        image = Image.composite(
            Image.new("RGB", (width, height), light()),
            Image.new("RGB", (width, height), light()),
            mask.resize((width, height)),
        )
    red, green, blue = colorsys.hsv_to_rgb(
        rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.3, 0.8)
    )
    colour = (int(red * 255), int(green * 255), int(blue * 255))
    x0, y0 = int(width * rng.uniform(0.1, 0.3)), int(height * rng.uniform(0.1, 0.3))
    x1, y1 = int(width * rng.uniform(0.7, 0.9)), int(height * rng.uniform(0.7, 0.9))
    draw = ImageDraw.Draw(image)
    shape = rng.choice(["ellipse", "rectangle", "polygon"])
    if shape == "ellipse":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif shape == "rectangle":
        draw.rounded_rectangle((x0, y0, x1, y1), radius=rng.randint(0, 30), fill=colour)
    else:
        points = [(rng.randint(x0, x1), rng.randint(y0, y1)) for _ in range(rng.randint(3, 7))]
        draw.polygon(points, fill=colour)
        draw.ellipse(
            ((x0 + x1) // 2 - 30, (y0 + y1) // 2 - 30, (x0 + x1) // 2 + 30, (y0 + y1) // 2 + 30),
            fill=colour,
        )
    buffer = io.BytesIO()
    if rng.random() < 0.7:
        image.save(buffer, "JPEG", quality=rng.randint(80, 95))
        return buffer.getvalue(), ".jpg"
    image.save(buffer, "PNG")
    return buffer.getvalue(), ".png"


class ImageSource:
    """Distinct synthetic images (no two byte-identical), repeatable from the seed."""

    def __init__(self, seed: int):
        self._rng = random.Random(seed)
        self._seen: set[str] = set()

    def next(self) -> tuple[bytes, str]:
        while True:
            data, ext = synthetic_image(self._rng)
            digest = sha256(data)
            if digest not in self._seen:
                self._seen.add(digest)
                return data, ext


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ============================================================================ the run


class Reconciler(threading.Thread):
    """``services.reconcile()`` every ``every`` seconds, as cron would run reconcile_removals."""

    def __init__(self, every: float):
        super().__init__(name="soak-reconcile", daemon=True)
        self.every = every
        self.stop_event = threading.Event()
        self.runs = 0
        self.totals: Counter[str] = Counter()
        self.errors: list[str] = []

    def run(self) -> None:
        from django.db import connection

        from imagekit_bgremove import services

        try:
            while not self.stop_event.wait(self.every):
                try:
                    summary = services.reconcile()
                except Exception as exc:  # a bug: reported as a violation
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                else:
                    self.runs += 1
                    self.totals.update(summary)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(60)


@dataclass
class Plan:
    """What the run did, for the report and for ``verify``."""

    products: list[int] = field(default_factory=list)
    resaved_early: list[int] = field(default_factory=list)
    resaved_late: list[int] = field(default_factory=list)
    #: {"product": new product id, "original_product": id, "original_job": job id}
    identical: list[dict[str, int]] = field(default_factory=list)
    #: the same, for twins of a pending original that was then given a new image
    identical_racing: list[dict[str, Any]] = field(default_factory=list)
    resaved_racing: list[int] = field(default_factory=list)
    #: races not decided yet, by original product id
    racing_pending: dict[int, dict[str, Any]] = field(default_factory=dict)
    twins: int = 0
    #: storage name -> sha256 of every original saved
    originals: dict[str, str] = field(default_factory=dict)
    images_saved: int = 0
    #: time.time() when the first product was saved
    started_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "products": list(self.products),
            "resaved_early": list(self.resaved_early),
            "resaved_late": list(self.resaved_late),
            "identical": list(self.identical),
            "identical_racing": list(self.identical_racing),
            "resaved_racing": list(self.resaved_racing),
            "images_saved": self.images_saved,
            "started_at": self.started_at,
        }


def _write_settings(run_dir: Path, config: SoakConfig) -> None:
    text = SETTINGS_TEMPLATE.format(overrides=config.app_settings())
    (run_dir / f"{SETTINGS_MODULE}.py").write_text(text)


def _child_env(run_dir: Path, db_url: str, emulator_url: str, web_url: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("IMAGEKIT_") and key not in ("SOAK_LOG_FILE", "PYTHONPATH")
    }
    env.update(
        DJANGO_SETTINGS_MODULE=SETTINGS_MODULE,
        PYTHONPATH=os.pathsep.join([str(run_dir), str(ROOT)]),
        DATABASE_URL=db_url,
        VAR_DIR=str(run_dir / "var"),
        PUBLIC_BASE_URL=web_url,
        IMAGEKIT_EMULATOR_URL=emulator_url,
        IMAGEKIT_EMULATOR_AUTOSTART="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def _setup_django(run_dir: Path, env: Mapping[str, str]) -> None:
    from django.conf import settings

    if settings.configured:
        raise SoakError(
            "Django is already configured in this process; use run_in_subprocess() instead."
        )
    for key in [k for k in os.environ if k.startswith("IMAGEKIT_") and k not in env]:
        del os.environ[key]  # no real ImageKit account: the run's emulator only
    os.environ.update(env)
    os.environ["SOAK_LOG_FILE"] = str(run_dir / "logs" / "soak-process.log")
    for entry in (str(ROOT), str(run_dir)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    import django

    django.setup()


def _web_server_argv(kind: str, port: int) -> list[str]:
    if kind == "gunicorn":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "example_project.wsgi:application",
            "--bind",
            f"{LOCALHOST}:{port}",
            "--workers",
            "2",
            "--threads",
            "4",
            "--worker-class",
            "gthread",
            "--timeout",
            "60",
            "--graceful-timeout",
            "5",
            "--log-level",
            "warning",
        ]
    return [sys.executable, "manage.py", "runserver", f"{LOCALHOST}:{port}", "--noreload"]


def _server_kind(requested: str) -> str:
    if requested != "auto":
        return requested
    import importlib.util

    return "gunicorn" if importlib.util.find_spec("gunicorn") else "runserver"


def _emulator_argv(config: SoakConfig, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "imagekit_bgremove.emulator",
        "--host",
        LOCALHOST,
        "--port",
        str(port),
        "--seed",
        str(config.seed),
        "--workers",
        "2",
        "--callback-timeout",
        "20",
        "--callback-retry-seconds",
        "120",
        "--callback-backoff-base",
        "0.25",
        "--callback-backoff-max",
        "2",
        "--faults",
        json.dumps(config.faults),
        "--log-level",
        "INFO",
    ]


def _status_counts() -> Counter[str]:
    from django.db.models import Count

    from imagekit_bgremove.models import RemovalJob

    rows = RemovalJob.objects.order_by().values_list("status").annotate(n=Count("pk"))
    return Counter(dict(rows))


def _open_tasks() -> int:
    from django_tasks_db.models import DBTaskResult

    from imagekit_bgremove.compat import TaskResultStatus

    return DBTaskResult.objects.filter(
        status__in=[TaskResultStatus.READY, TaskResultStatus.RUNNING]
    ).count()


def _latest_jobs(product_ids: Sequence[int]) -> dict[int, Any]:
    from django.db.models import Max

    from imagekit_bgremove.models import RemovalJob

    rows = (
        RemovalJob.objects.filter(object_id__in=[str(p) for p in product_ids])
        .order_by()
        .values("object_id")
        .annotate(latest=Max("pk"))
    )
    latest = {int(r["object_id"]): r["latest"] for r in rows}
    jobs = RemovalJob.objects.in_bulk(list(latest.values()))
    return {pid: jobs[jid] for pid, jid in latest.items()}


def _lost_callbacks(emulator_url: str) -> set[str]:
    """fileIds whose callback the emulator lost (ground truth)."""
    state = http_json("GET", f"{emulator_url}/_emulator/state", timeout=60)
    return {c["fileId"] for c in state["callbacks"] if c["status"] == "lost"}


def _produce(config: SoakConfig, plan: Plan, images: ImageSource, rng: random.Random) -> None:
    """Save the products, then re-save some of them at once (their job is still unfinished)."""
    from django.core.files.base import ContentFile

    from example_project.catalogue.models import Product

    for n in range(config.images):
        data, ext = images.next()
        product = Product.objects.create(
            name=f"soak {n:05d}", photo=ContentFile(data, name=f"soak-{n:05d}{ext}")
        )
        plan.products.append(product.pk)
        plan.originals[product.photo.name] = sha256(data)
        plan.images_saved += 1
    count = max(2, round(config.images * config.resave_fraction))
    for pk in rng.sample(plan.products, min(count, len(plan.products))):
        _resave(pk, plan, images, "b")
        plan.resaved_early.append(pk)


def _resave(pk: int, plan: Plan, images: ImageSource, tag: str) -> None:
    from django.core.files.base import ContentFile

    from example_project.catalogue.models import Product

    product = Product.objects.get(pk=pk)
    data, ext = images.next()
    product.photo = ContentFile(data, name=f"soak-{pk:05d}-{tag}{ext}")
    product.save()
    plan.originals[product.photo.name] = sha256(data)
    plan.images_saved += 1


def _twin(pid: int, plan: Plan) -> int:
    """A new product whose image is byte-identical to product ``pid``'s."""
    from django.core.files.base import ContentFile

    from example_project.catalogue.models import Product

    product = Product.objects.get(pk=pid)
    with product.photo.open("rb") as fh:
        data = fh.read()
    plan.twins += 1
    number = plan.twins
    twin = Product.objects.create(
        name=f"soak twin {number:05d}",
        photo=ContentFile(
            data, name=f"soak-twin-{number:05d}{os.path.splitext(product.photo.name)[1]}"
        ),
    )
    plan.products.append(twin.pk)
    plan.originals[twin.photo.name] = sha256(data)
    plan.images_saved += 1
    return twin.pk


def _second_wave(config: SoakConfig, plan: Plan, images: ImageSource, rng: random.Random) -> bool:
    """Once enough jobs are settled: save new products with images identical to ones that
    succeeded (they must share the result), and re-save some settled products. Returns False
    while it is too early."""
    latest = _latest_jobs(plan.products)
    succeeded = [pid for pid, job in latest.items() if job.status == "succeeded"]
    settled = [pid for pid, job in latest.items() if job.status in FINAL]
    want_identical = max(2, round(config.images * config.identical_fraction))
    want_late = max(1, round(config.images * config.late_resave_fraction))
    if len(succeeded) < want_identical + want_late or len(settled) < len(plan.products) // 2:
        return False
    chosen = rng.sample(succeeded, want_identical)
    for pid in chosen:
        twin = _twin(pid, plan)
        plan.identical.append(
            {"product": twin, "original_product": pid, "original_job": latest[pid].pk}
        )
    racing = set(plan.racing_pending) | {r["original_product"] for r in plan.identical_racing}
    others = [pid for pid in settled if pid not in chosen and pid not in racing]
    for pid in rng.sample(others, min(want_late, len(others))):
        _resave(pid, plan, images, "c")
        plan.resaved_late.append(pid)
    return True


def _start_races(
    config: SoakConfig, plan: Plan, rng: random.Random, lost_callbacks: Callable[[], set[str]]
) -> bool:
    """Race identical images against a pending original: save twins of products whose job is
    pending at ImageKit, preferring those whose callback the emulator lost (``lost_callbacks()``
    gives their fileIds: they stay pending until reconcile). ``_advance_races`` then gives the
    original a new image once its twin waits for it. Starts once every job has been submitted
    (so that the twins are submitted at once); returns False until then."""
    from imagekit_bgremove.models import RemovalJob

    if RemovalJob.objects.filter(status__in=["queued", "submitting"]).exists():
        return False
    latest = _latest_jobs(plan.products)
    in_flight = [
        pid
        for pid, job in latest.items()
        if job.status == "pending"
        and job.file_id
        and not job.result_url
        and not job.duplicate_of_id
    ]
    want = max(1, round(config.images * config.racing_fraction))
    lost = lost_callbacks() if in_flight else set()
    racing = [pid for pid in in_flight if latest[pid].file_id in lost][:want]
    rest = [pid for pid in in_flight if pid not in racing]
    racing += rng.sample(rest, min(want - len(racing), len(rest)))
    for pid in racing:
        plan.racing_pending[pid] = {
            "product": _twin(pid, plan),
            "original_product": pid,
            "original_job": latest[pid].pk,
        }
    return True


def _advance_races(plan: Plan, images: ImageSource) -> None:
    """For each race: once the twin waits for the original's result, and the original still
    has none, give the original a new image (its job is superseded). A race ends there, or
    when the original got its result first (the twin then simply shares it)."""
    from imagekit_bgremove.models import RemovalJob

    for pid, race in list(plan.racing_pending.items()):
        original_open = RemovalJob.objects.filter(
            pk=race["original_job"], status="pending", result_url=""
        ).exists()
        twin = _latest_jobs([race["product"]]).get(race["product"])
        waits = (
            twin is not None
            and twin.status == "pending"
            and twin.duplicate_of_id == race["original_job"]
            and not twin.result_url
        )
        if waits and original_open:
            _resave(pid, plan, images, "d")
            plan.resaved_racing.append(pid)
            race["outcome"] = "original superseded while its twin waited"
        elif original_open and twin is not None and twin.status in ("queued", "submitting"):
            continue  # the twin is not submitted yet
        elif not original_open:
            race["outcome"] = "the original settled first"
        else:
            race["outcome"] = f"the twin is {twin.status if twin else 'missing'}, not waiting"
        plan.identical_racing.append(race)
        del plan.racing_pending[pid]


def _snapshot(plan: Plan) -> dict[str, Any]:
    """Everything of the database ``verify`` needs, as plain data."""
    from django.core.files.storage import default_storage
    from django.db.models import Sum
    from django_tasks_db.models import DBTaskResult

    from example_project.catalogue.models import Product
    from imagekit_bgremove.models import RemovalJob, WebhookCount, WebhookDelivery

    storage = Product._meta.get_field("photo").storage or default_storage

    def digest(name: str) -> str | None:
        if not name or not storage.exists(name):
            return None
        with storage.open(name, "rb") as fh:
            return sha256(fh.read())

    jobs = list(
        RemovalJob.objects.order_by("pk").values(
            "id",
            "status",
            "object_id",
            "file_id",
            "source_name",
            "source_hash",
            "result_version_id",
            "result_url",
            "result_name",
            "error_code",
            "error_message",
            "duplicate_of_id",
            "superseded_by_id",
            "attempts",
            "trigger",
            "finished_at",
        )
    )
    for job in jobs:
        job["result_sha256"] = digest(job["result_name"])
        job["finished_at"] = job["finished_at"].timestamp() if job["finished_at"] else None
    deliveries = [
        {
            "id": row["id"],
            "job_id": row["job_id"],
            "status_code": row["status_code"],
            "verdict": row["verdict"],
            "webhook_id": (row["headers"] or {}).get("webhook-id"),
            "error": row["error"],
        }
        for row in WebhookDelivery.objects.order_by("pk").values(
            "id", "job_id", "status_code", "verdict", "headers", "error"
        )
    ]
    tasks = [
        {
            "task": row["task_path"].rsplit(".", 1)[-1],
            "status": str(row["status"]),
            "args": (row["args_kwargs"] or {}).get("args"),
            "return_value": row["return_value"],
            "exception": row["exception_class_path"],
            "traceback": (row["traceback"] or "").strip().splitlines()[-1:] or [""],
        }
        for row in DBTaskResult.objects.values(
            "task_path",
            "status",
            "args_kwargs",
            "return_value",
            "exception_class_path",
            "traceback",
        )
    ]
    products = list(
        Product.objects.order_by("pk").values("id", "name", "photo", "photo_removal_id")
    )
    originals = {
        name: {"expected": expected, "actual": digest(name)}
        for name, expected in plan.originals.items()
    }
    known = set(plan.originals) | {j["result_name"] for j in jobs if j["result_name"]}
    folders = {os.path.dirname(name) for name in known}
    stray = sorted(
        name
        for folder in folders
        for name in (f"{folder}/{f}" if folder else f for f in storage.listdir(folder)[1])
        if name not in known
    )
    counted = dict(WebhookCount.objects.values_list("kind").annotate(total=Sum("count")).order_by())
    return {
        "stray_files": stray,
        "jobs": jobs,
        "deliveries": deliveries,
        "counted": counted,
        "tasks": tasks,
        "products": products,
        "originals": originals,
    }


def run(config: SoakConfig) -> dict[str, Any]:
    """Run the soak in this process (Django must not be configured yet); returns the report."""
    database_url = config.database_url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    _pg_config(database_url)
    quiet = config.quiet
    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="ikbg-soak-"))
    (run_dir / "logs").mkdir()
    children = Children(run_dir / "logs")
    db_name: str | None = None
    reconciler: Reconciler | None = None
    report: dict[str, Any] = {"ok": False, "violations": [], "run_dir": str(run_dir)}
    failed = True
    crashed = False
    try:
        db_name, db_url = create_database(database_url)
        report["database"] = db_name
        say(f"soak: database {db_name}, run directory {run_dir}", quiet=quiet)
        _write_settings(run_dir, config)
        emulator_port, web_port = free_port(), free_port()
        emulator_url = f"http://{LOCALHOST}:{emulator_port}"
        web_url = f"http://{LOCALHOST}:{web_port}"
        env = _child_env(run_dir, db_url, emulator_url, web_url)

        emulator = children.start("emulator", _emulator_argv(config, emulator_port), env)
        _setup_django(run_dir, env)
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", verbosity=0, interactive=False)
        connections.close_all()  # the children must not inherit an open connection
        wait_until_answers(f"{emulator_url}/_emulator/health", emulator, "the emulator")
        server_kind = _server_kind(config.server)
        web = children.start("web", _web_server_argv(server_kind, web_port), env)
        for number in range(1, config.db_workers + 1):
            children.start(
                f"db_worker-{number}",
                [
                    sys.executable,
                    "manage.py",
                    "db_worker",
                    "--no-reload",
                    "--no-startup-delay",
                    "--interval",
                    "0.1",
                    "--worker-id",
                    f"soak-{number}",
                ],
                env,
            )
        # A GET of the webhook route answers 405: the server is up and routes to the app.
        wait_until_answers(
            f"{web_url}/imagekit-bgremove/webhooks/imagekit/soak/",
            web,
            f"the web server ({server_kind})",
        )
        children.check_alive()
        say(
            f"soak: emulator {emulator_url}, {server_kind} {web_url}, "
            f"{config.db_workers} db_worker processes; {config.images} images, seed {config.seed}",
            quiet=quiet,
        )

        rng = random.Random(config.seed)
        images = ImageSource(config.seed)
        plan = Plan()
        reconciler = Reconciler(config.reconcile_every)
        reconciler.start()
        work_started = time.monotonic()
        plan.started_at = time.time()
        _produce(config, plan, images, rng)
        say(
            f"soak: saved {config.images} products and re-saved {len(plan.resaved_early)} "
            f"in {time.monotonic() - work_started:.1f} s",
            quiet=quiet,
        )

        second_wave_done = races_started = False
        quiet_checks = 0
        last_progress = 0.0
        timed_out = False
        deadline = started + config.timeout
        while True:
            children.check_alive()
            if not second_wave_done:
                second_wave_done = _second_wave(config, plan, images, rng)
            if not races_started:
                races_started = _start_races(
                    config, plan, rng, lambda: _lost_callbacks(emulator_url)
                )
            _advance_races(plan, images)
            counts = _status_counts()
            unfinished = sum(counts[s] for s in UNFINISHED)
            open_tasks = _open_tasks()
            idle = http_json("GET", f"{emulator_url}/_emulator/wait-idle?timeout=0")
            now = time.monotonic()
            if now - last_progress >= 5 and not quiet:
                last_progress = now
                shown = ", ".join(f"{s} {counts[s]}" for s in (*UNFINISHED, *FINAL) if counts[s])
                say(
                    f"soak: {now - work_started:5.1f} s  {shown}; open tasks {open_tasks}; "
                    f"emulator {idle.get('activity') or 'idle'}"
                )
            waves_done = second_wave_done and races_started and not plan.racing_pending
            if waves_done and not unfinished and not open_tasks and idle.get("idle"):
                quiet_checks += 1
                if quiet_checks >= 2:
                    break
            else:
                quiet_checks = 0
            if now > deadline:
                timed_out = True
                say(f"soak: timed out after {config.timeout:g} s", quiet=quiet)
                break
            time.sleep(0.5)
        work_elapsed = time.monotonic() - work_started
        reconciler.stop()

        state = http_json("GET", f"{emulator_url}/_emulator/state", timeout=60)
        faults_state = http_json("GET", f"{emulator_url}/_emulator/faults")
        snapshot = _snapshot(plan)
        violations = verify(snapshot, state, plan.as_dict())
        if timed_out:
            violations.insert(0, f"the run did not settle within --timeout {config.timeout:g} s")
        if not second_wave_done:
            violations.append("the second wave (late re-saves, identical images) never ran")
        if not races_started or plan.racing_pending:
            violations.append("the races of identical images against pending ones did not end")
        violations.extend(f"reconcile raised {error}" for error in reconciler.errors)
        report.update(
            summarize(snapshot, state, plan.as_dict()),
            ok=not violations,
            violations=violations,
            seed=config.seed,
            faults=config.faults,
            app_settings=config.app_settings(),
            server=server_kind,
            db_workers=config.db_workers,
            elapsed=round(work_elapsed, 2),
            total_elapsed=round(time.monotonic() - started, 2),
            throughput=round(plan.images_saved / work_elapsed, 2) if work_elapsed else None,
            api_faults_fired=faults_state.get("_api_faults_fired"),
            reconcile={
                "runs": reconciler.runs,
                **dict(reconciler.totals),
                "repaired_lost_callbacks": _repaired(snapshot, state),
            },
        )
        failed = not report["ok"]
        return report
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):
            crashed = True
        raise
    finally:
        if reconciler is not None and reconciler.is_alive():
            reconciler.stop()
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        children.stop()
        report["pids"] = {name: proc.pid for name, proc in children.procs.items()}
        if crashed:
            print(children.tails(), file=sys.stderr)
        elif failed:
            report["log_tails"] = children.tails()
        if db_name is not None and not config.keep_db:
            try:
                drop_database(database_url, db_name)
            except Exception as exc:
                print(f"soak: could not drop database {db_name}: {exc}", file=sys.stderr)
        if config.keep_db:
            report["kept"] = f"database {db_name}, run directory {run_dir}"
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


# ============================================================================ ground truth


def _emulator_index(state: Mapping[str, Any]) -> dict[str, Any]:
    files = {f["fileId"]: f for f in state["files"]}
    versions = {v["id"]: (f, v) for f in state["files"] for v in f["versions"]}
    jobs_by_file: dict[str, list[dict]] = defaultdict(list)
    for job in state["jobs"]:
        jobs_by_file[job["fileId"]].append(job)
    callbacks_by_job = {c["jobId"]: c for c in state["callbacks"]}
    return {
        "files": files,
        "versions": versions,
        "jobs_by_file": jobs_by_file,
        "callbacks_by_job": callbacks_by_job,
    }


def _own_jobs(snapshot: Mapping[str, Any]) -> dict[str, dict]:
    """DB jobs that made their own upload, by ImageKit fileId."""
    return {j["file_id"]: j for j in snapshot["jobs"] if j["file_id"] and not j["duplicate_of_id"]}


def verify(
    snapshot: Mapping[str, Any], state: Mapping[str, Any], plan: Mapping[str, Any]
) -> list[str]:
    """Compare the database (``snapshot``) with the emulator's ground truth (``state``);
    returns the violations, each a sentence (empty: all is well)."""
    v: list[str] = []
    emu = _emulator_index(state)
    jobs = {j["id"]: j for j in snapshot["jobs"]}
    by_file: dict[str, list[dict]] = defaultdict(list)
    for job in snapshot["jobs"]:
        if job["file_id"] and not job["duplicate_of_id"]:
            by_file[job["file_id"]].append(job)

    # -- every job final; no task crashed
    for job in snapshot["jobs"]:
        if job["status"] not in FINAL:
            v.append(f"job #{job['id']} (product {job['object_id']}) is still {job['status']}")
        elif job["status"] == "cancelled":
            v.append(f"job #{job['id']} was cancelled, but no product was deleted")
    for task in snapshot["tasks"]:
        if task["status"] == "FAILED":
            v.append(
                f"task {task['task']}{tuple(task['args'] or ())} raised {task['exception']}: "
                f"{task['traceback'][0]}"
            )

    # -- uploads: one per submitted job, never twice, exactly the original's bytes
    for name, count in sorted(state.get("uploadsByFileName", {}).items()):
        if count != 1:
            v.append(f"{name!r} was uploaded {count} times")
    removed_contents: dict[str, list[int]] = defaultdict(list)
    for file_id, record in emu["files"].items():
        uploads = [x for x in record["versions"] if x["source"] in ("upload", "overwrite")]
        if len(uploads) != 1:
            v.append(f"emulator file {file_id} ({record['name']}) has {len(uploads)} uploads")
        owners = by_file.get(file_id, [])
        if not owners:
            v.append(
                f"emulator file {file_id} ({record['requestedName']}) belongs to no job: an "
                "upload whose submission was never recorded"
            )
            continue
        if len(owners) > 1:
            v.append(f"jobs {[j['id'] for j in owners]} all claim emulator file {file_id}")
        owner = owners[0]
        if uploads and owner["status"] == "succeeded":
            removed_contents[uploads[0]["sha256"]].append(owner["id"])
        if f"__ikbg{owner['id']}." not in record["requestedName"]:
            v.append(
                f"job #{owner['id']} recorded file {file_id}, uploaded as "
                f"{record['requestedName']!r} (another job's name)"
            )
        if uploads and owner["source_hash"] and uploads[0]["sha256"] != owner["source_hash"]:
            v.append(f"job #{owner['id']}: ImageKit got other bytes than the original image")
    for digest, owners in removed_contents.items():
        if len(owners) > 1:
            v.append(
                f"jobs {owners} each had the same image ({digest[:12]}) removed at ImageKit; "
                "identical images should share one result"
            )
    for file_id in by_file:
        if file_id not in emu["files"]:
            v.append(f"job(s) {[j['id'] for j in by_file[file_id]]}: no emulator file {file_id}")
    for file_id, emulator_jobs in emu["jobs_by_file"].items():
        if len(emulator_jobs) != 1:
            v.append(f"emulator file {file_id} had remove-bg run {len(emulator_jobs)} times")

    # -- each job's outcome agrees with what the emulator did
    def emulator_job_of(file_id: str) -> dict | None:
        found = emu["jobs_by_file"].get(file_id) or []
        return found[0] if found else None

    for job in snapshot["jobs"]:
        label = f"job #{job['id']} (product {job['object_id']})"
        if job["status"] == "succeeded":
            source = jobs.get(job["duplicate_of_id"]) if job["duplicate_of_id"] else job
            if source is None:
                v.append(f"{label} shares the result of job #{job['duplicate_of_id']}, now gone")
                continue
            found = emu["versions"].get(job["result_version_id"])
            if found is None or found[0]["fileId"] != source["file_id"]:
                v.append(
                    f"{label} succeeded with result version {job['result_version_id']!r}, which "
                    f"the emulator does not have for file {source['file_id']}"
                )
                continue
            record, version = found
            if version["source"] != "remove-bg":
                v.append(f"{label}: result version {version['id']} is not a remove-bg result")
            if job["duplicate_of_id"] and job["result_version_id"] != source["result_version_id"]:
                v.append(f"{label} shares job #{source['id']} but not its result version")
            if job["error_code"]:
                v.append(
                    f"{label} succeeded with a note: {job['error_code']} {job['error_message']}"
                )
            if job["result_sha256"] is None:
                v.append(f"{label}: the result {job['result_name']!r} is not in storage")
            elif job["result_sha256"] != version["sha256"]:
                v.append(f"{label}: the stored result differs from ImageKit's version")
        elif job["status"] == "failed":
            if job["duplicate_of_id"]:
                source = jobs.get(job["duplicate_of_id"])
                if source is None or source["status"] != "failed":
                    v.append(
                        f"{label} failed as a copy of job #{job['duplicate_of_id']}, which did "
                        f"not fail (it is {source['status'] if source else 'gone'})"
                    )
                continue
            emulator_job = emulator_job_of(job["file_id"]) if job["file_id"] else None
            code = job["error_code"]
            if code == "removal_failed":
                if emulator_job is None or emulator_job["status"] != "failed":
                    v.append(
                        f"{label} failed with removal_failed, but the emulator's remove-bg "
                        f"{'never ran' if emulator_job is None else emulator_job['status']}"
                    )
            elif code == "no_result":
                callback = emu["callbacks_by_job"].get(emulator_job["id"]) if emulator_job else None
                if emulator_job is None or emulator_job["status"] != "failed":
                    v.append(
                        f"{label} failed with no_result, but the emulator's remove-bg "
                        f"{'never ran' if emulator_job is None else emulator_job['status']}"
                    )
                elif callback is not None and callback["deliveries"]:
                    v.append(f"{label} failed with no_result although its callback was delivered")
            else:
                v.append(
                    f"{label} failed for an undocumented reason: {code}: {job['error_message']} "
                    f"(documented: {', '.join(DOCUMENTED_FAILURES)})"
                )
        elif job["status"] == "superseded":
            newer = jobs.get(job["superseded_by_id"])
            if newer is None or newer["id"] <= job["id"] or newer["object_id"] != job["object_id"]:
                v.append(f"{label} is superseded by {job['superseded_by_id']}, not a newer job")
    for file_id, emulator_jobs in emu["jobs_by_file"].items():
        owner = (by_file.get(file_id) or [None])[0]
        for emulator_job in emulator_jobs:
            if owner is None or owner["status"] == "superseded":
                continue
            if emulator_job["status"] == "success" and owner["status"] != "succeeded":
                v.append(
                    f"job #{owner['id']} is {owner['status']} ({owner['error_code']}), but "
                    "the emulator removed its background "
                    f"(version {emulator_job['resultVersionId']})"
                )

    # -- products: each points at its newest job, which settled
    by_product: dict[str, list[dict]] = defaultdict(list)
    for job in snapshot["jobs"]:
        by_product[job["object_id"]].append(job)
    for product in snapshot["products"]:
        own = by_product.get(str(product["id"]), [])
        if not own:
            v.append(f"product {product['id']} ({product['name']}) has no removal job")
            continue
        newest = max(own, key=lambda j: j["id"])
        if product["photo_removal_id"] != newest["id"]:
            v.append(
                f"product {product['id']} points at job #{product['photo_removal_id']}, "
                f"not at its newest job #{newest['id']}"
            )
        if newest["status"] not in ("succeeded", "failed"):
            v.append(
                f"product {product['id']}: its newest job #{newest['id']} is {newest['status']}"
            )
    for twin in plan.get("identical", []):
        own = by_product.get(str(twin["product"]), [])
        newest = max(own, key=lambda j: j["id"]) if own else None
        if newest is None or newest["duplicate_of_id"] is None:
            v.append(
                f"product {twin['product']} has the same image as product "
                f"{twin['original_product']} (job #{twin['original_job']}, succeeded), but was "
                "sent to ImageKit again instead of sharing that result"
            )

    # -- callbacks: every one answered 200 is on record; none reflected wrongly; lost ones repaired
    recorded: Counter[str] = Counter()
    answered_in_all = 0
    for delivery in snapshot["deliveries"]:
        if delivery["status_code"] != 200:
            v.append(
                f"webhook delivery #{delivery['id']} (job {delivery['job_id']}) was answered "
                f"{delivery['status_code']} {delivery['verdict']}: {delivery['error']}"
            )
        elif delivery["webhook_id"]:
            recorded[delivery["webhook_id"]] += 1
    for callback in state["callbacks"]:
        label = (
            f"callback {callback['id']} ({callback['reportedStatus']} "
            f"for file {callback['fileId']})"
        )
        if callback["status"] not in ("delivered", "lost"):
            v.append(f"{label} is {callback['status']} at the emulator")
        for attempt in callback["attempts"]:
            if attempt["status"] != 200:
                v.append(
                    f"{label}: attempt {attempt['attempt']} got "
                    f"{attempt['status'] or attempt['error']} from the webhook"
                )
        answered = sum(1 for a in callback["attempts"] if a["status"] == 200)
        answered_in_all += answered
        # An answer acted upon is stored; a repeat of a recorded result (recorded by an earlier
        # attempt, or by a check that found the result first) is only counted.
        if recorded[callback["webhookId"]] > answered:
            v.append(
                f"{label}: the webhook answered 200 {answered} time(s), the app recorded "
                f"{recorded[callback['webhookId']]}"
            )
        owner = (by_file.get(callback["fileId"]) or [None])[0]
        if owner is None or owner["status"] == "superseded":
            continue
        payload = callback["payload"]
        if callback["reportedStatus"] == "SUCCESS":
            version = payload["fileObject"]["versionInfo"]["id"]
            if owner["status"] != "succeeded" or owner["result_version_id"] != version:
                how = "delivered" if callback["deliveries"] else "lost (reconcile should repair it)"
                v.append(
                    f"{label} was {how}, but job #{owner['id']} is {owner['status']} with "
                    f"version {owner['result_version_id']!r}, not {version!r}"
                )
        elif owner["status"] != "failed":
            v.append(f"{label}: job #{owner['id']} is {owner['status']}, not failed")

    stored_200 = sum(1 for d in snapshot["deliveries"] if d["status_code"] == 200)
    repeats = snapshot["counted"].get("duplicate", 0)
    if answered_in_all != stored_200 + repeats:
        v.append(
            f"the webhook answered 200 {answered_in_all} time(s), but the app stored "
            f"{stored_200} and counted {repeats} repeat(s)"
        )
    refused = {k: n for k, n in snapshot["counted"].items() if k != "duplicate"}
    if refused:
        v.append(f"the webhook refused genuine callbacks: {refused}")

    # -- the originals are untouched
    for name, digests in sorted(snapshot["originals"].items()):
        if digests["actual"] is None:
            v.append(f"original {name} is missing from storage")
        elif digests["actual"] != digests["expected"]:
            v.append(f"original {name} was modified")
    return v


def _repaired(snapshot: Mapping[str, Any], state: Mapping[str, Any]) -> int:
    """Lost SUCCESS callbacks whose job succeeded all the same (reconcile found the result)."""
    by_file = _own_jobs(snapshot)
    repaired = 0
    for callback in state["callbacks"]:
        owner = by_file.get(callback["fileId"])
        if (
            callback["status"] == "lost"
            and callback["reportedStatus"] == "SUCCESS"
            and owner is not None
            and owner["status"] == "succeeded"
        ):
            repaired += 1
    return repaired


def summarize(
    snapshot: Mapping[str, Any], state: Mapping[str, Any], plan: Mapping[str, Any]
) -> dict[str, Any]:
    jobs = snapshot["jobs"]
    statuses = Counter(j["status"] for j in jobs)
    latest: dict[str, dict] = {}
    for job in jobs:
        if job["object_id"] not in latest or job["id"] > latest[job["object_id"]]["id"]:
            latest[job["object_id"]] = job
    uploads = [
        x for f in state["files"] for x in f["versions"] if x["source"] in ("upload", "overwrite")
    ]
    callbacks = state["callbacks"]
    attempts = [a for c in callbacks for a in c["attempts"]]
    tasks = Counter(f"{t['task']}:{t['status'].lower()}" for t in snapshot["tasks"])
    submit_outcomes = Counter(
        str(t["return_value"]) for t in snapshot["tasks"] if t["task"] == "submit_removal"
    )
    faults_seen = Counter(r["fault"] for r in state.get("requests", []) if r.get("fault"))
    # When the last job settled that did not have to wait for PENDING_DEADLINE_SECONDS.
    finished = [
        j["finished_at"] for j in jobs if j.get("finished_at") and j["error_code"] != "no_result"
    ]
    settled = max(finished) - plan["started_at"] if finished and plan.get("started_at") else None
    return {
        "settled_without_deadline": round(settled, 2) if settled is not None else None,
        "stray_files": list(snapshot.get("stray_files", [])),
        "images": len(plan["products"])
        - len(plan.get("identical", []))
        - len(plan.get("identical_racing", [])),
        "products": len(plan["products"]),
        "images_saved": plan["images_saved"],
        "resaves": sum(
            len(plan.get(key, [])) for key in ("resaved_early", "resaved_late", "resaved_racing")
        ),
        "identical": len(plan.get("identical", [])),
        "identical_racing": len(plan.get("identical_racing", [])),
        "racing_originals_superseded": len(plan.get("resaved_racing", [])),
        "race_outcomes": dict(Counter(r.get("outcome") for r in plan.get("identical_racing", []))),
        "jobs": {
            "total": len(jobs),
            **{s: statuses[s] for s in (*FINAL, *UNFINISHED) if statuses[s]},
            "shared": sum(1 for j in jobs if j["duplicate_of_id"]),
        },
        "products_settled": {
            "succeeded": sum(1 for j in latest.values() if j["status"] == "succeeded"),
            "failed": sum(1 for j in latest.values() if j["status"] == "failed"),
        },
        "failure_reasons": dict(
            Counter(
                "shared" if j["duplicate_of_id"] else j["error_code"]
                for j in jobs
                if j["status"] == "failed"
            )
        ),
        "uploads": len(uploads),
        "unique_upload_contents": len({x["sha256"] for x in uploads}),
        "submitted_jobs": len(_own_jobs(snapshot)),
        "emulator_jobs": dict(Counter(j["status"] for j in state["jobs"])),
        "callbacks": {
            "total": len(callbacks),
            "delivered": sum(1 for c in callbacks if c["status"] == "delivered"),
            "lost": sum(1 for c in callbacks if c["status"] == "lost"),
            "gave_up": sum(1 for c in callbacks if c["status"] == "gave_up"),
            "duplicated": sum(1 for c in callbacks if c["copies"] > 1),
            "attempts": len(attempts),
            "answered_200": sum(1 for a in attempts if a["status"] == 200),
            "counted_failed_on_purpose": sum(1 for a in attempts if a["simulatedFailure"]),
            "app_verdicts": dict(Counter(d["verdict"] for d in snapshot["deliveries"])),
            "counted_repeats": snapshot["counted"].get("duplicate", 0),
        },
        "api_faults_seen": dict(faults_seen),
        "tasks": dict(sorted(tasks.items())),
        "submit_outcomes": dict(submit_outcomes),
    }


# ============================================================================ output


RECONCILE_SHOWN = ("runs", "repaired_lost_callbacks")


def format_summary(report: Mapping[str, Any]) -> str:
    if "jobs" not in report:
        return "soak: no summary (the run did not get that far)"
    jobs = report["jobs"]
    cb = report["callbacks"]
    rec = report.get("reconcile", {})
    rows = [
        ("images (products saved)", report["images"]),
        ("  + re-saved with a new image", report["resaves"]),
        ("  + identical image, new product", report["identical"]),
        (
            "  + identical to a pending one",
            f"{report['identical_racing']} (original then re-saved: "
            f"{report['racing_originals_superseded']})",
        ),
        ("images saved in all", report["images_saved"]),
        (
            "jobs",
            f"{jobs['total']}: "
            + ", ".join(f"{k} {jobs[k]}" for k in (*FINAL, *UNFINISHED) if jobs.get(k))
            + f" (shared {jobs['shared']})",
        ),
        (
            "products settled",
            f"succeeded {report['products_settled']['succeeded']}, "
            f"failed {report['products_settled']['failed']} of {report['products']}",
        ),
        ("failure reasons", report["failure_reasons"] or "-"),
        (
            "uploads",
            f"{report['uploads']} ({report['unique_upload_contents']} distinct images, "
            f"{report['submitted_jobs']} submitted jobs)",
        ),
        ("emulator remove-bg jobs", report["emulator_jobs"]),
        (
            "callbacks",
            f"{cb['total']}: delivered {cb['delivered']}, lost {cb['lost']}, "
            f"gave up {cb['gave_up']}, duplicated {cb['duplicated']}",
        ),
        (
            "callback attempts",
            f"{cb['attempts']} sent, {cb['answered_200']} answered 200, "
            f"{cb['counted_failed_on_purpose']} counted failed on purpose",
        ),
        ("webhook verdicts", cb["app_verdicts"]),
        ("API faults injected", f"{report.get('api_faults_fired')} {report['api_faults_seen']}"),
        (
            "reconcile",
            f"{rec.get('runs', 0)} runs, repaired {rec.get('repaired_lost_callbacks', 0)} lost "
            "callbacks; "
            + ", ".join(f"{k} {v}" for k, v in rec.items() if v and k not in RECONCILE_SHOWN),
        ),
        ("submit outcomes", report["submit_outcomes"]),
        ("server / workers", f"{report['server']}, {report['db_workers']} db_worker processes"),
        ("stray files in storage", len(report["stray_files"])),
        ("elapsed", f"{report['elapsed']:.1f} s (whole run {report['total_elapsed']:.1f} s)"),
        ("throughput", f"{report['throughput']} images/s"),
    ]
    settled = report.get("settled_without_deadline")
    if settled:
        rows.append(
            (
                "  without the deadline wait",
                f"all else settled at {settled:.1f} s: "
                f"{report['images_saved'] / settled:.2f} images/s",
            )
        )
    width = max(len(label) for label, _ in rows)
    lines = [f"  {label:<{width}}  {value}" for label, value in rows]
    return "soak summary (seed {}):\n{}".format(report.get("seed"), "\n".join(lines))


def run_in_subprocess(
    args: Sequence[str], *, timeout: float = 600.0, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run ``bench/soak.py ARGS`` in a fresh interpreter; returns its report, plus
    ``returncode`` and ``output`` (stdout and stderr)."""
    with tempfile.TemporaryDirectory(prefix="ikbg-soak-report-") as tmp:
        report_path = Path(tmp) / "report.json"
        proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                *args,
                "--report-json",
                str(report_path),
            ],
            cwd=ROOT,
            env=dict(env if env is not None else os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # lets it stop its children and drop its database
            try:
                output, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report["returncode"] = proc.returncode
    report["output"] = output
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Soak test on PostgreSQL under faults, checked against the emulator's "
        "ground truth."
    )
    parser.add_argument("--images", type=int, default=200, help="products to save (%(default)s)")
    parser.add_argument(
        "--seed", type=int, default=1, help="images, choices and faults (%(default)s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="give up after this many seconds (%(default)s)"
    )
    parser.add_argument(
        "--keep-db", action="store_true", help="keep the database and the run directory"
    )
    parser.add_argument(
        "--database-url",
        help="PostgreSQL server to use (default: DATABASE_URL, else " + DEFAULT_DATABASE_URL + ")",
    )
    parser.add_argument(
        "--db-workers", type=int, default=2, help="db_worker processes (%(default)s)"
    )
    parser.add_argument("--server", choices=["auto", "gunicorn", "runserver"], default="auto")
    parser.add_argument(
        "--reconcile-after", type=float, default=8.0, help="RECONCILE_AFTER_SECONDS (%(default)s)"
    )
    parser.add_argument(
        "--pending-deadline",
        type=float,
        help="PENDING_DEADLINE_SECONDS (default 20 s + 0.1 s per image)",
    )
    parser.add_argument("--faults", metavar="JSON", help="fault knobs to change, as a JSON object")
    parser.add_argument("--report-json", metavar="PATH", help="also write the report here")
    parser.add_argument("--quiet", action="store_true", help="only the summary")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    faults = dict(FAULTS)
    if args.faults:
        faults.update(json.loads(args.faults))
    config = SoakConfig(
        images=args.images,
        seed=args.seed,
        timeout=args.timeout,
        keep_db=args.keep_db,
        database_url=args.database_url or "",
        db_workers=args.db_workers,
        server=args.server,
        reconcile_after=args.reconcile_after,
        pending_deadline=args.pending_deadline,
        faults=faults,
        quiet=args.quiet,
    )

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    report: dict[str, Any] = {}
    code = 1
    try:
        report = run(config)
        code = 0 if report["ok"] else 1
    except KeyboardInterrupt:
        print("soak: interrupted; stopped the processes", file=sys.stderr)
        report = {"ok": False, "violations": ["interrupted"]}
        code = 130
    except SoakError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        report = {"ok": False, "violations": [f"could not run: {exc}"]}
        code = 2
    except Exception as exc:  # a crash of the soak itself (the processes were stopped)
        traceback.print_exc()
        report = {"ok": False, "violations": [f"the soak crashed: {exc!r}"]}
        code = 1
    if args.report_json:
        Path(args.report_json).write_text(json.dumps(report, indent=2, default=str))
    if "jobs" in report:
        print(format_summary(report))
    if report.get("violations"):
        if report.get("log_tails"):
            print(report["log_tails"], file=sys.stderr)
        print(f"\nsoak FAILED with {len(report['violations'])} violation(s):", file=sys.stderr)
        for violation in report["violations"]:
            print(f"  - {violation}", file=sys.stderr)
    elif code == 0:
        print("soak passed: every job matches the emulator's ground truth")
    if report.get("kept"):
        print(f"kept: {report['kept']}")
    return code


if __name__ == "__main__":
    sys.exit(main())
