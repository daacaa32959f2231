"""Webhook endpoint throughput against a minimal one-UPDATE Django view, on the same stack.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/ikbg_bench \
        python bench/webhook_throughput.py

What it does:

1. drops and re-creates the PostgreSQL database named in BENCH_DATABASE_URL (default
   ``ikbg_bench``; DATABASE_URL is ignored on purpose, so that the project's own database is
   never dropped) and migrates the example project into it;
2. creates one *succeeded* removal job, and ``--first-jobs`` *pending* ones (each its own
   product, file and token);
3. starts gunicorn (2 sync workers, loopback only) serving the example project plus one extra
   view, ``POST /bench/baseline/``, that runs a single ``UPDATE`` of a job and answers 200;
4. in ``--rounds`` rounds (order rotating), ``--threads`` client threads post for ``--seconds``
   seconds to each scenario:
   ``baseline``  the minimal view;
   ``first``     a first delivery: a valid, signed (Standard Webhooks + legacy headers) SUCCESS
                 for a pending job, each request another job: token and signature checked,
                 the delivery recorded, the job moved to ``received`` under its row lock, the
                 finalize task enqueued (a row in the same transaction); answered "accepted";
   ``repeat``    a repeated delivery: the same signed SUCCESS for the succeeded job, as ImageKit
                 retries for a day: checked, answered "duplicate" from one read, counted;
   every request is signed on the client, the baseline's too, so the client's work is alike;
5. checks that every first delivery moved its job and enqueued exactly one finalize task;
6. prints requests/s and p50/p99 latency of each, then the ratios to the baseline, last: the
   median of the rounds' ratios, so that load from other processes on the machine, which comes
   and goes, hits both sides of each ratio alike.

Exits 1 when a ratio is under its goal (issue 14: first delivery >= 0.5, repeat >= 0.8), when
p99 of a webhook scenario is over ``--max-p99-ms`` (default 1000), or when any request did not
get the expected answer. ``--profile`` adds where each webhook request's time goes (in-process,
under cProfile, by area).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for imagekit_bgremove.signatures when run from a checkout
sys.path.insert(0, str(ROOT / "bench"))
from _postgres import free_port, recreate_database  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/ikbg_bench"
SECRET = "whsec_bench_secret_for_loopback_only"

BENCH_SETTINGS = """
from example_project.settings import *  # noqa: F403

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "ikbg_bench_urls"
DATABASES["default"]["CONN_MAX_AGE"] = 60  # noqa: F405 - persistent, as in production
LOGGING = {"version": 1, "disable_existing_loggers": False}
SILENCED_SYSTEM_CHECKS = ["imagekit_bgremove.W008"]  # the emulator is fine on loopback
IMAGEKIT_BGREMOVE = {
    **IMAGEKIT_BGREMOVE,  # noqa: F405
    "WEBHOOK_SECRETS": [%(secret)r],
}
"""

BENCH_URLS = """
from django.http import JsonResponse
from django.urls import path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from example_project.urls import urlpatterns as example_urlpatterns
from imagekit_bgremove.models import RemovalJob

JOB_ID = %(job_id)d


@csrf_exempt
@require_POST
def baseline(request):
    RemovalJob.objects.filter(pk=JOB_ID).update(updated_at=timezone.now())
    return JsonResponse({"ok": True})


urlpatterns = [path("bench/baseline/", baseline), *example_urlpatterns]
"""


def log(message: str) -> None:
    print(message, flush=True)


def run_manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def prepare(env: dict[str, str], workdir: Path, first_jobs: int) -> dict[str, Any]:
    """The succeeded job and ``first_jobs`` pending ones; returns their ids and webhook paths."""
    code = textwrap.dedent("""
        import django, json, sys
        django.setup()
        from django.contrib.contenttypes.models import ContentType
        from django.utils import timezone
        from example_project.catalogue.models import Product
        from imagekit_bgremove.models import JobStatus, RemovalJob
        from imagekit_bgremove.services import webhook_url
        count = int(sys.argv[1])
        now = timezone.now()
        products = Product.objects.bulk_create(
            [Product(name=f"Bench product {n}") for n in range(count + 1)]
        )
        kind = ContentType.objects.get_for_model(Product)
        done = RemovalJob.objects.create(
            content_type=kind, object_id=str(products[0].pk),
            field_name="photo", status=JobStatus.SUCCEEDED, file_id="file_bench",
            source_version_id="ver_0", result_version_id="ver_1",
            result_url="http://127.0.0.1:8790/ik/bgremove/bench.png?updatedAt=1",
            finished_at=now)
        pending = RemovalJob.objects.bulk_create([
            RemovalJob(
                content_type=kind, object_id=str(p.pk), field_name="photo",
                status=JobStatus.PENDING, file_id=f"file_{p.pk}", source_version_id="ver_0",
                submitted_at=now, created_at=now, updated_at=now)
            for p in products[1:]
        ])
        print(json.dumps({
            "job": done.pk, "url": webhook_url(done),
            "first": [[j.pk, j.file_id, webhook_url(j)] for j in pending],
        }))
    """)
    out = subprocess.run(
        [sys.executable, "-c", code, str(first_jobs)],
        env=env,
        check=True,
        cwd=workdir,
        capture_output=True,
        text=True,
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return {
        "job": int(data["job"]),
        "path": urlsplit(data["url"]).path,
        "first": [(job, file_id, urlsplit(url).path) for job, file_id, url in data["first"]],
    }


def callback_body(file_id: str = "file_bench") -> bytes:
    return json.dumps(
        {
            "service": "remove-bg",
            "status": "SUCCESS",
            "fileObject": {
                "fileId": file_id,
                "name": "bench.png",
                "filePath": "/bgremove/bench.png",
                "url": "http://127.0.0.1:8790/ik/bgremove/bench.png?updatedAt=1",
                "mime": "image/png",
                "width": 64,
                "height": 64,
                "size": 1234,
                "hasAlpha": True,
                "versionInfo": {"id": "ver_1", "name": "Version 2"},
            },
        },
        separators=(",", ":"),
    ).encode()


class Requests:
    """What one scenario posts: a fixed (path, body), or each request the next of ``items``
    (path, body) pairs (a first delivery is first only once). Every body is signed on the
    client when sent (fresh timestamps, as ImageKit's)."""

    def __init__(self, items: list[tuple[str, bytes]], *, repeat: bool):
        from imagekit_bgremove.signatures import signature_headers

        self._sign = signature_headers
        self._items = items
        self._repeat = repeat
        self._next = itertools.count()

    def take(self) -> tuple[str, bytes, dict[str, str]] | None:
        index = next(self._next)
        if self._repeat:
            path, body = self._items[0]
        elif index < len(self._items):
            path, body = self._items[index]
        else:
            return None  # out of pending jobs: the scenario ends early
        return path, body, self._sign(body, SECRET)


def load(
    port: int, requests: Requests, *, threads: int, seconds: float, expect: str
) -> dict[str, Any]:
    stop_at = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []

    def worker(index: int) -> None:
        mine = latencies[index]
        while time.monotonic() < stop_at:
            taken = requests.take()
            if taken is None:
                return
            path, body, signed = taken
            headers = {"Content-Type": "application/json", "User-Agent": "ikbg-bench", **signed}
            started = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except OSError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            finally:
                conn.close()
            mine.append(time.perf_counter() - started)
            if response.status != 200 or expect.encode() not in data:
                errors.append(f"{response.status} {data[:200]!r}")

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    began = time.monotonic()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.monotonic() - began
    flat = sorted(x for per in latencies for x in per)
    if not flat:
        if not errors:
            raise SystemExit("out of pending jobs before the scenario began: raise --first-jobs")
        raise SystemExit(f"no request succeeded; first errors: {errors[:3]}")
    return {
        "requests": len(flat),
        "rps": len(flat) / elapsed,
        "p50_ms": statistics.median(flat) * 1000,
        "p99_ms": flat[min(len(flat) - 1, int(len(flat) * 0.99))] * 1000,
        "latencies": flat,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def wait_for(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("gunicorn exited early")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("gunicorn did not start")


PROFILE = """
import cProfile, json, pstats, sys, time
import django
django.setup()
from django.test import Client
from imagekit_bgremove.signatures import signature_headers

from django.db import connection

cases, secret = json.loads(sys.stdin.read()), sys.argv[1]
client = Client()
out = {}


def commits():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return cursor.fetchone()[0]


for name, items in cases.items():
    def send(path, body):
        headers = {f"HTTP_{k.upper().replace('-', '_')}": v
                   for k, v in signature_headers(body.encode(), secret).items()}
        return client.post(
            path, body, content_type="application/json", HTTP_HOST="127.0.0.1", **headers
        )
    send(*items[0])  # warm
    items = items[1:] if len(items) > 1 else items * 200
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        for path, body in items[:20]:
            send(path, body)
    shapes = {}
    for query in queries.captured_queries:
        verb = query["sql"].split()[0].upper()
        shapes[verb] = shapes.get(verb, 0) + 1 / 20
    items = items[20:] if len(items) > 40 else items
    profile = cProfile.Profile()
    before = commits()
    started = time.perf_counter()
    profile.enable()
    for path, body in items:
        send(path, body)
    profile.disable()
    elapsed = time.perf_counter() - started
    time.sleep(0.6)  # the statistics collector's delay
    committed = (commits() - before) / len(items)
    areas = dict.fromkeys(["database", "signatures (hmac)", "JSON", "DRF", "the rest"], 0.0)
    for (filename, _, fn), (_, _, tottime, _, _) in pstats.Stats(profile).stats.items():
        if "psycopg" in filename or "/django/db/" in filename:
            areas["database"] += tottime
        elif "signatures" in filename or "hmac" in filename or "hmac" in fn or "sha256" in fn:
            areas["signatures (hmac)"] += tottime
        elif "/json/" in filename or "json" in fn:
            areas["JSON"] += tottime
        elif "rest_framework" in filename:
            areas["DRF"] += tottime
        else:
            areas["the rest"] += tottime
    total = sum(areas.values())
    out[name] = {"ms": elapsed / len(items) * 1000, "commits": committed, "queries": shapes,
                 "areas_ms": {k: v / total * elapsed / len(items) * 1000 for k, v in areas.items()}}
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0, help="per scenario and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; median ratio counts")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument(
        "--first-jobs",
        type=int,
        default=20000,
        help="pending jobs to deliver (enough for all rounds)",
    )
    parser.add_argument("--min-first", type=float, default=0.5, help="goal: first delivery")
    parser.add_argument("--min-repeat", type=float, default=0.8, help="goal: repeated delivery")
    parser.add_argument("--max-p99-ms", type=float, default=1000.0)
    parser.add_argument("--profile", action="store_true", help="where a request's time goes")
    args = parser.parse_args(argv)
    if not (1 <= args.threads <= 64 and 0 < args.seconds <= 60 and 1 <= args.rounds <= 9):
        parser.error("keep it bounded: 1-64 threads, up to 60 s, 1-9 rounds")
    try:
        import gunicorn  # noqa: F401
        import psycopg
    except ImportError as exc:
        raise SystemExit(f"the benchmark needs gunicorn and psycopg ({exc})") from exc

    database_url = os.environ.get("BENCH_DATABASE_URL") or DEFAULT_DB
    log(f"database: {database_url}")
    recreate_database(database_url)

    workdir = Path(tempfile.mkdtemp(prefix="ikbg-bench-"))
    gunicorn_proc: subprocess.Popen | None = None
    names = ["baseline", "first", "repeat"]
    expect = {"baseline": '"ok"', "first": '"accepted"', "repeat": '"duplicate"'}
    runs: dict[str, list[dict]] = {name: [] for name in names}
    profile: dict[str, Any] = {}
    try:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "DJANGO_SETTINGS_MODULE": "ikbg_bench_settings",
            "PYTHONPATH": os.pathsep.join(
                [str(workdir), str(ROOT), os.environ.get("PYTHONPATH", "")]
            ).rstrip(os.pathsep),
            "DEBUG": "false",
            "PUBLIC_BASE_URL": "http://127.0.0.1:8000",
        }
        (workdir / "ikbg_bench_settings.py").write_text(BENCH_SETTINGS % {"secret": SECRET})
        (workdir / "ikbg_bench_urls.py").write_text(BENCH_URLS % {"job_id": 0})
        run_manage(env, "migrate", "--noinput")
        made = prepare(env, workdir, args.first_jobs)
        (workdir / "ikbg_bench_urls.py").write_text(BENCH_URLS % {"job_id": made["job"]})
        first_items = [(path, callback_body(file_id)) for _, file_id, path in made["first"]]
        if args.profile:
            # Before the load: the profile takes the last pending jobs, the load the first ones.
            tail, first_items = first_items[-201:], first_items[:-201]
            cases = {
                "first": [(p, b.decode()) for p, b in tail],
                "repeat": [(made["path"], callback_body().decode())],
            }
            done = subprocess.run(
                [sys.executable, "-c", PROFILE, SECRET],
                input=json.dumps(cases),
                env=env,
                cwd=workdir,
                capture_output=True,
                text=True,
                check=True,
            )
            profile = json.loads(done.stdout.strip().splitlines()[-1])

        port = free_port()
        gunicorn_proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "django.core.wsgi:get_wsgi_application()",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(args.workers),
                "--worker-class",
                "sync",
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=workdir,
        )
        wait_for(port, gunicorn_proc)
        log(
            f"gunicorn: {args.workers} sync workers on 127.0.0.1:{port}; "
            f"{args.threads} client threads, {args.seconds:g} s x {args.rounds} rounds"
        )
        scenarios = {
            "baseline": Requests([("/bench/baseline/", b"{}")], repeat=True),
            "first": Requests(first_items[10:], repeat=False),
            "repeat": Requests([(made["path"], callback_body())], repeat=True),
        }
        # Warm up each path (imports, connections, caches).
        warm = {
            "baseline": scenarios["baseline"],
            "first": Requests(first_items[:10], repeat=False),
            "repeat": scenarios["repeat"],
        }
        accepted = 200 if profile else 0  # the profile's first deliveries
        for name in names:
            warmed = load(port, warm[name], threads=2, seconds=0.5, expect=expect[name])
            if name == "first":
                accepted += warmed["requests"] - warmed["errors"]
        for round_no in range(1, args.rounds + 1):
            # Rotate the order, so that a drift in machine load hits every scenario alike.
            shift = (round_no - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                result = load(
                    port,
                    scenarios[name],
                    threads=args.threads,
                    seconds=args.seconds,
                    expect=expect[name],
                )
                log(
                    f"  round {round_no} {name:8s} {result['rps']:8.1f} req/s  "
                    f"p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms  "
                    f"({result['requests']} requests, {result['errors']} errors)"
                )
                if result["errors"]:
                    log(f"    first error: {result['first_error']}")
                runs[name].append(result)
                if name == "first":
                    accepted += result["requests"] - result["errors"]
        with psycopg.connect(database_url, autocommit=True) as conn:
            received = conn.execute(
                "SELECT count(*) FROM imagekit_bgremove_removaljob WHERE status = 'received'"
            ).fetchone()[0]
            finalize = conn.execute(
                "SELECT count(*) FROM django_tasks_database_dbtaskresult WHERE task_path LIKE %s",
                ["%finalize_removal"],
            ).fetchone()[0]
    finally:
        if gunicorn_proc is not None and gunicorn_proc.poll() is None:
            gunicorn_proc.send_signal(signal.SIGTERM)
            try:
                gunicorn_proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                gunicorn_proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    failed = []
    # A request cut off after the server acted (a client timeout) is not counted as accepted.
    cut_off = sum(int(r["errors"]) for r in runs["first"])
    if not (received == finalize and accepted <= received <= accepted + cut_off + 2):
        failed.append(
            f"first deliveries: {accepted} accepted, {received} jobs received, "
            f"{finalize} finalize tasks"
        )
    summary = {}
    for name, results in runs.items():
        latencies = sorted(x for r in results for x in r["latencies"])
        summary[name] = {
            "rps": statistics.median(r["rps"] for r in results),
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        }
    log("")
    for name, label in (
        ("baseline", "baseline (one UPDATE)"),
        ("first", "first delivery (recorded, job moved, finalize enqueued)"),
        ("repeat", "repeated delivery (answered from one read, counted)"),
    ):
        log(
            f"{label}: median {summary[name]['rps']:.1f} req/s, "
            f"p99 {summary[name]['p99_ms']:.1f} ms"
        )
        if name != "baseline" and summary[name]["p99_ms"] > args.max_p99_ms:
            failed.append(f"{name} p99 {summary[name]['p99_ms']:.0f} ms > {args.max_p99_ms:g} ms")
    errors = sum(int(r["errors"]) for results in runs.values() for r in results)
    if errors:
        failed.append(f"{errors} unexpected responses")
    if profile:
        log("")
        log("where a webhook request's time goes (in-process, Django's test client, cProfile):")
        for name, found in profile.items():
            parts = ", ".join(f"{k} {v:.2f}" for k, v in found["areas_ms"].items())
            shapes = ", ".join(f"{k} {v:g}" for k, v in sorted(found["queries"].items()))
            log(
                f"  {name}: {found['ms']:.2f} ms per request, {found['commits']:.1f} "
                f"transactions, statements {shapes}: {parts} (ms)"
            )
    log("")
    for name, goal in (("first", args.min_first), ("repeat", args.min_repeat)):
        ratios = [w["rps"] / b["rps"] for w, b in zip(runs[name], runs["baseline"], strict=True)]
        ratio = statistics.median(ratios)
        ok = ratio >= goal
        if not ok:
            failed.append(f"{name} ratio {ratio:.2f} < {goal:g}")
        log(
            f"RATIO webhook {name} delivery / baseline: {ratio:.2f} (median of rounds "
            f"{', '.join(f'{r:.2f}' for r in ratios)}; goal >= {goal:g}) "
            + ("PASS" if ok else "FAIL")
        )
    if failed:
        log("FAILED: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
