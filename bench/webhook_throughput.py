"""Webhook endpoint throughput against a minimal one-UPDATE Django view, on the same stack.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/ikbg_bench \
        python bench/webhook_throughput.py

What it does:

1. drops and re-creates the PostgreSQL database named in BENCH_DATABASE_URL (default
   ``ikbg_bench``; DATABASE_URL is ignored on purpose, so that the project's own database is
   never dropped) and migrates the example project into it;
2. creates one product and one *succeeded* removal job;
3. starts gunicorn (2 sync workers, loopback only) serving the example project plus one extra
   view, ``POST /bench/baseline/``, that runs a single ``UPDATE`` of that job and answers 200;
4. in ``--rounds`` rounds (order alternating), ``--threads`` client threads post for
   ``--seconds`` seconds to each scenario:
   ``baseline``  the minimal view;
   ``webhook``   valid, signed (Standard Webhooks + legacy headers) duplicate SUCCESS callbacks
                 for the succeeded job: token check, signature check, delivery row recorded,
                 job row locked and compared, delivery row updated; answered 200 "duplicate";
5. prints requests/s and p50/p99 latency of each, and the throughput ratio webhook/baseline:
   the median of the rounds' ratios, so that load from other processes on the machine, which
   comes and goes, hits both sides of each ratio alike.

Exits 1 when the ratio is under ``--min-ratio`` (default 0.5), when p99 of the webhook is over
``--max-p99-ms`` (default 1000), or when any request did not get the expected answer.
"""

from __future__ import annotations

import argparse
import http.client
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
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for imagekit_bgremove.signatures when run from a checkout
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/ikbg_bench"
SECRET = "whsec_bench_secret_for_loopback_only"

BENCH_SETTINGS = """
from example_project.settings import *  # noqa: F403

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "ikbg_bench_urls"
DATABASES["default"]["CONN_MAX_AGE"] = 60  # noqa: F405 - persistent, as in production
LOGGING = {"version": 1, "disable_existing_loggers": False}
SILENCED_SYSTEM_CHECKS = ["imagekit_bgremove.W001"]  # the emulator is fine on loopback
IMAGEKIT_BGREMOVE = {
    **IMAGEKIT_BGREMOVE,  # noqa: F405
    "WEBHOOK_SECRETS": [%(secret)r],
    "EMULATOR_AUTOSTART": False,
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def recreate_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name.replace("_", "").isalnum():
        raise SystemExit(f"refusing odd database name {name!r}")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def run_manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env,
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def prepare(env: dict[str, str], workdir: Path) -> tuple[int, str]:
    """Create the succeeded job in the bench database; returns (job id, its webhook path)."""
    code = textwrap.dedent("""
        import django, json
        django.setup()
        from django.contrib.contenttypes.models import ContentType
        from django.utils import timezone
        from example_project.catalogue.models import Product
        from imagekit_bgremove.models import JobStatus, RemovalJob
        from imagekit_bgremove.services import webhook_url
        product = Product.objects.create(name="Bench product")
        job = RemovalJob.objects.create(
            content_type=ContentType.objects.get_for_model(Product), object_id=str(product.pk),
            field_name="photo", status=JobStatus.SUCCEEDED, file_id="file_bench",
            source_version_id="ver_0", result_version_id="ver_1",
            result_url="http://127.0.0.1:8790/ik/bgremove/bench.png?updatedAt=1",
            finished_at=timezone.now())
        print(json.dumps({"job": job.pk, "url": webhook_url(job)}))
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        check=True,
        cwd=workdir,
        capture_output=True,
        text=True,
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return int(data["job"]), urlsplit(data["url"]).path


def callback_body() -> bytes:
    return json.dumps(
        {
            "service": "remove-bg",
            "status": "SUCCESS",
            "fileObject": {
                "fileId": "file_bench",
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


class Signer:
    """Fresh signature headers every second (cheap on the client, realistic timestamps)."""

    def __init__(self, body: bytes):
        from imagekit_bgremove.signatures import signature_headers

        self._make = lambda: signature_headers(body, SECRET)
        self._lock = threading.Lock()
        self._headers = self._make()
        self._at = time.monotonic()

    def headers(self) -> dict[str, str]:
        with self._lock:
            if time.monotonic() - self._at > 1.0:
                self._headers, self._at = self._make(), time.monotonic()
            return self._headers


def load(
    port: int,
    path: str,
    body: bytes,
    *,
    threads: int,
    seconds: float,
    signer: Signer | None,
    expect: str,
) -> dict[str, Any]:
    stop_at = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []

    def worker(index: int) -> None:
        mine = latencies[index]
        while time.monotonic() < stop_at:
            headers = {"Content-Type": "application/json", "User-Agent": "ikbg-bench"}
            if signer is not None:
                headers.update(signer.headers())
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0, help="per scenario and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; median ratio counts")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--min-ratio", type=float, default=0.5)
    parser.add_argument("--max-p99-ms", type=float, default=1000.0)
    args = parser.parse_args(argv)
    if not (1 <= args.threads <= 64 and 0 < args.seconds <= 60 and 1 <= args.rounds <= 9):
        parser.error("keep it bounded: 1-64 threads, up to 60 s, 1-9 rounds")
    try:
        import gunicorn  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"the benchmark needs gunicorn and psycopg ({exc})") from exc

    database_url = os.environ.get("BENCH_DATABASE_URL") or DEFAULT_DB
    log(f"database: {database_url}")
    recreate_database(database_url)

    workdir = Path(tempfile.mkdtemp(prefix="ikbg-bench-"))
    gunicorn_proc: subprocess.Popen | None = None
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
        job_id, webhook_path = prepare(env, workdir)
        (workdir / "ikbg_bench_urls.py").write_text(BENCH_URLS % {"job_id": job_id})

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
        body = callback_body()
        signer = Signer(body)
        log(
            f"gunicorn: {args.workers} sync workers on 127.0.0.1:{port}; "
            f"{args.threads} client threads, {args.seconds:g} s x {args.rounds} rounds"
        )
        # Warm up both paths (imports, connections, caches).
        load(port, "/bench/baseline/", b"{}", threads=2, seconds=1, signer=None, expect="ok")
        load(port, webhook_path, body, threads=2, seconds=1, signer=signer, expect="duplicate")

        scenarios = {
            "baseline": ("/bench/baseline/", b"{}", None, '"ok"'),
            "webhook": (webhook_path, body, signer, '"duplicate"'),
        }
        runs: dict[str, list[dict]] = {"baseline": [], "webhook": []}
        for round_no in range(1, args.rounds + 1):
            # Alternate the order, so that a drift in machine load hits both alike.
            order = ["baseline", "webhook"] if round_no % 2 else ["webhook", "baseline"]
            for name in order:
                path, payload, sign, expect = scenarios[name]
                result = load(
                    port,
                    path,
                    payload,
                    threads=args.threads,
                    seconds=args.seconds,
                    signer=sign,
                    expect=expect,
                )
                log(
                    f"  round {round_no} {name:8s} {result['rps']:8.1f} req/s  "
                    f"p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms  "
                    f"({result['requests']} requests, {result['errors']} errors)"
                )
                if result["errors"]:
                    log(f"    first error: {result['first_error']}")
                runs[name].append(result)
    finally:
        if gunicorn_proc is not None and gunicorn_proc.poll() is None:
            gunicorn_proc.send_signal(signal.SIGTERM)
            try:
                gunicorn_proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                gunicorn_proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    # The ratio of each round's pair, then the median: robust to load from other processes.
    ratios = [w["rps"] / b["rps"] for w, b in zip(runs["webhook"], runs["baseline"], strict=True)]
    ratio = statistics.median(ratios)
    errors = sum(int(r["errors"]) for results in runs.values() for r in results)
    summary = {}
    for name, results in runs.items():
        latencies = sorted(x for r in results for x in r["latencies"])
        summary[name] = {
            "rps": statistics.median(r["rps"] for r in results),
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        }
    log("")
    log(
        f"baseline (one UPDATE): median {summary['baseline']['rps']:.1f} req/s, "
        f"p99 {summary['baseline']['p99_ms']:.1f} ms"
    )
    log(
        f"webhook (signed duplicate callback): median {summary['webhook']['rps']:.1f} req/s, "
        f"p99 {summary['webhook']['p99_ms']:.1f} ms"
    )
    log(
        f"throughput ratio webhook/baseline: {ratio:.2f} (median of rounds "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; target >= {args.min_ratio:g})"
    )
    failed = []
    if ratio < args.min_ratio:
        failed.append(f"ratio {ratio:.2f} < {args.min_ratio:g}")
    if summary["webhook"]["p99_ms"] > args.max_p99_ms:
        p99 = summary["webhook"]["p99_ms"]
        failed.append(f"webhook p99 {p99:.0f} ms > {args.max_p99_ms:g} ms")
    if errors:
        failed.append(f"{errors} unexpected responses")
    log("RESULT: " + ("FAIL (" + "; ".join(failed) + ")" if failed else "PASS"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
