"""Submit throughput of one task worker against what a user would write instead: a loop calling
ImageKit's official Python SDK (``imagekitio``, the ``bench`` extra) ``files.upload`` with the
same options and ``webhookUrl``, both against the same local stand-in that takes ImageKit-like
time (``--upload-ms`` 150 per upload plus the transfer at ``--mb-per-s`` 50).

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/ikbg_bench_submit \\
        python bench/submit_throughput.py [--jobs 40] [--rounds 3] [--min-ratio 0.9]

What it does, in one run:

1. drops and re-creates the PostgreSQL database of BENCH_DATABASE_URL (default
   ``ikbg_bench_submit``; DATABASE_URL is ignored on purpose) and migrates the example project;
2. starts the stand-in (``bench/_standin.py``, its own process: it answers every upload with a
   remove-bg "pending" file object after ImageKit-like time and keeps nothing);
3. in each round, saves ``--jobs`` products with catalogue-sized photos (JPEG, about 150-250 KB:
   what a shop uploads), which records their jobs and submit tasks, then
   ``worker``  starts ONE ``manage.py db_worker`` (the production worker) and times it from the
               first submit task's start to the last one's end (everything a submit does: the
               task claim, the job's lease, hashing the original, the content claim, the
               multipart upload, recording ImageKit's answer, scheduling the check);
   ``sdk``     a fresh interpreter uploads the very same stored files to the same stand-in with
               the SDK (one client, the same form fields), one after another;
4. prints jobs/s of each and the ratio worker/SDK per round (the sides alternate who goes
   first), then the median ratio last; exits 1 below ``--min-ratio``.

``--profile`` adds where a submit's time goes: the same work in-process under cProfile, by area
(the database, the upload, hashing and storage, the rest), with the queries per submit.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from _postgres import drop_database, free_port, recreate_database  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/ikbg_bench_submit"
PRIVATE_KEY = "private_bench_standin"

SETTINGS = """
from example_project.settings import *  # noqa: F403

DEBUG = False
LOGGING = {"version": 1, "disable_existing_loggers": False}
# The emulator-style local setup, on purpose: no real account, a loopback webhook.
SILENCED_SYSTEM_CHECKS = [
    "imagekit_bgremove.W009",
    "imagekit_bgremove.W004",
    "imagekit_bgremove.W005",
]
IMAGEKIT_BGREMOVE = {
    "PRIVATE_KEY": %(key)r,
    "UPLOAD_BASE_URL": %(url)r,
    "API_BASE_URL": %(url)r,
    "URL_ENDPOINT": %(url)r + "/ik",
    "WEBHOOK_BASE_URL": "http://127.0.0.1:9",
    "WEBHOOK_SECRETS": ["whsec_bench"],
    "MAX_RETRIES": 0,
}
"""

SDK_LOOP = """
import json, sys, time
from imagekitio import ImageKit

url, key, files = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())
client = ImageKit(private_key=key, base_url=url, max_retries=0)
extensions = [{"name": "remove-bg", "options": {"add_shadow": False, "semitransparency": True}}]
started = time.perf_counter()
for path, name in files:
    with open(path, "rb") as fh:
        client.files.upload(
            file=(name, fh),
            file_name=name,
            folder="/bgremove",
            use_unique_file_name=False,
            overwrite_file=True,
            extensions=extensions,
            webhook_url="http://127.0.0.1:9/imagekit-bgremove/webhooks/imagekit/x/",
            timeout=30,
        )
print(json.dumps({"elapsed": time.perf_counter() - started}))
"""

PREPARE = """
import django, json, sys
django.setup()
from django.core.files.base import ContentFile
from example_project.catalogue.models import Product
from django.conf import settings

paths, tag = json.loads(sys.stdin.read()), sys.argv[1]
jobs, files = [], []
for number, path in enumerate(paths):
    with open(path, "rb") as fh:
        product = Product.objects.create(
            name=f"bench {tag} {number}", photo=ContentFile(fh.read(), name=f"bench-{number}.jpg")
        )
    jobs.append(product.photo.removal.pk)
    files.append([str(settings.MEDIA_ROOT / product.photo.name), product.photo.name.split("/")[-1]])
print(json.dumps({"jobs": jobs, "files": files}))
"""

PROFILE = """
import cProfile, django, json, pstats, sys, time
django.setup()
from django.core.files.base import ContentFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from example_project.catalogue.models import Product
from imagekit_bgremove import services

paths = json.loads(sys.stdin.read())
jobs = []
for number, path in enumerate(paths):
    with open(path, "rb") as fh:
        product = Product.objects.create(
            name=f"bench profile {number}", photo=ContentFile(fh.read(), name=f"prof-{number}.jpg")
        )
    jobs.append(product.photo.removal.pk)
services.submit(jobs.pop())  # warm
def commits():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return cursor.fetchone()[0]
before = commits()
profile = cProfile.Profile()
with CaptureQueriesContext(connection) as queries:
    started = time.perf_counter()
    profile.enable()
    for job in jobs:
        assert services.submit(job) == "pending"
    profile.disable()
    elapsed = time.perf_counter() - started
time.sleep(0.6)  # the statistics collector's delay
committed = commits() - before
DB, UPLOAD, FILES = "database (psycopg, Django ORM)", "the upload (requests, sockets)", "files"
areas = {DB: 0.0, UPLOAD: 0.0, FILES: 0.0}
NET = ("requests", "urllib3", "http/client", "socket", "ssl")
NET_BUILTINS = ("recv_into", "sendall", "_socket")
FILE_BUILTINS = ("hashlib", "BufferedReader", "posix.stat", "io.open")
stats = pstats.Stats(profile).stats
total = 0.0
for (filename, _, name), (_, _, tottime, _, _) in stats.items():
    total += tottime
    if "psycopg" in filename or "/django/db/" in filename:
        areas[DB] += tottime
    elif any(k in filename for k in NET) or any(k in name for k in NET_BUILTINS):
        areas[UPLOAD] += tottime
    elif "/django/core/files/" in filename or any(k in name for k in FILE_BUILTINS):
        areas[FILES] += tottime
areas["the rest (the app, Django, Python)"] = total - sum(areas.values())
print(json.dumps({"jobs": len(jobs), "ms_per_submit": elapsed / len(jobs) * 1000,
                  "queries_per_submit": len(queries) / len(jobs),
                  "commits_per_submit": committed / len(jobs),
                  "areas_ms": {k: v / len(jobs) * 1000 for k, v in areas.items()}}))
"""


def log(message: str = "") -> None:
    print(message, flush=True)


def photos(directory: Path, count: int, seed: int = 1) -> list[str]:
    """Catalogue-sized JPEGs (about 150-250 KB): a product on a textured background."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    paths = []
    for number in range(count):
        width, height = rng.randint(900, 1100), rng.randint(700, 900)
        base = noise.normal(200, 18, (height, width, 3)).clip(0, 255).astype("uint8")
        image = Image.fromarray(base)
        draw = ImageDraw.Draw(image)
        colour = tuple(rng.randint(20, 200) for _ in range(3))
        draw.ellipse((width * 0.25, height * 0.2, width * 0.75, height * 0.85), fill=colour)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=rng.randint(70, 80))
        path = directory / f"photo-{number:04d}.jpg"
        path.write_bytes(buffer.getvalue())
        paths.append(str(path))
    return paths


def child(env: dict, code: str, stdin: object, *args: str, timeout: float = 600) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        input=json.dumps(stdin),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise SystemExit(f"a child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_worker(env: dict, database_url: str, jobs: list[int], number: int) -> dict:
    import psycopg

    worker = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "db_worker",
            "--no-reload",
            "--no-startup-delay",
            "--interval",
            "0.05",
            "--worker-id",
            f"bench-{number}",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ids = [str(j) for j in jobs]
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                pending = conn.execute(
                    "SELECT count(*) FROM imagekit_bgremove_removaljob "
                    "WHERE status = 'pending' AND id = ANY(%s::bigint[])",
                    [ids],
                ).fetchone()[0]
                if pending == len(jobs):
                    break
                if worker.poll() is not None:
                    raise SystemExit("the db_worker exited")
                time.sleep(0.2)
            else:
                raise SystemExit(f"only {pending} of {len(jobs)} jobs were submitted")
            first, last, tasks = conn.execute(
                "SELECT min(started_at), max(finished_at), count(*) "
                "FROM django_tasks_database_dbtaskresult "
                "WHERE task_path LIKE %s AND args_kwargs->'args'->>0 = ANY(%s)",
                ["%submit_removal", ids],
            ).fetchone()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    span = (last - first).total_seconds()
    return {"jobs": len(jobs), "tasks": tasks, "elapsed": span, "rate": len(jobs) / span}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=40, help="submits per round (%(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-ratio", type=float, default=0.9)
    parser.add_argument("--upload-ms", type=float, default=150.0, help="ImageKit's time per upload")
    parser.add_argument("--mb-per-s", type=float, default=50.0, help="ImageKit's transfer rate")
    parser.add_argument("--profile", action="store_true", help="also show where a submit goes")
    args = parser.parse_args(argv)
    if not (10 <= args.jobs <= 2000 and 1 <= args.rounds <= 9):
        parser.error("keep it bounded: 10-2000 jobs, 1-9 rounds")
    try:
        import imagekitio  # noqa: F401
    except ImportError:
        raise SystemExit("the SDK side needs imagekitio: pip install -e '.[bench]'") from None
    database_url = os.environ.get("BENCH_DATABASE_URL") or DEFAULT_DB
    log(f"database: {database_url}")
    recreate_database(database_url)
    workdir = Path(tempfile.mkdtemp(prefix="ikbg-bench-submit-"))
    standin = None
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        standin = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "_standin.py"),
                str(port),
                str(args.upload_ms),
                str(args.mb_per_s),
            ],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert standin.stdout is not None and standin.stdout.readline().strip() == "ready"
        (workdir / "ikbg_submit_settings.py").write_text(
            SETTINGS % {"key": PRIVATE_KEY, "url": url}
        )
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "DJANGO_SETTINGS_MODULE": "ikbg_submit_settings",
            "PYTHONPATH": os.pathsep.join([str(workdir), str(ROOT)]),
            "VAR_DIR": str(workdir / "var"),
            "DEBUG": "false",
        }
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            env=env,
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (workdir / "photos").mkdir()
        # Distinct photos for every round (and the profile): an identical image would wait for
        # the first one's result instead of being uploaded.
        files = photos(workdir / "photos", args.jobs * args.rounds + 60)
        sizes = [os.path.getsize(f) for f in files]
        log(
            f"stand-in {url}; {args.jobs} photos a round, {min(sizes) // 1024}-"
            f"{max(sizes) // 1024} KB; stand-in {args.upload_ms:g} ms + {args.mb_per_s:g} MB/s per "
            f"upload; one db_worker vs an imagekitio SDK loop, {args.rounds} rounds"
        )
        ratios = []
        for round_no in range(1, args.rounds + 1):
            batch = files[(round_no - 1) * args.jobs : round_no * args.jobs]
            made = child(env, PREPARE, batch, f"r{round_no}")
            order = ["sdk", "worker"] if round_no % 2 else ["worker", "sdk"]
            result = {}
            for side in order:
                if side == "worker":
                    result[side] = run_worker(env, database_url, made["jobs"], round_no)
                else:
                    sdk = child(env, SDK_LOOP, made["files"], url, PRIVATE_KEY)
                    result[side] = {"rate": args.jobs / sdk["elapsed"], "elapsed": sdk["elapsed"]}
            ratio = result["worker"]["rate"] / result["sdk"]["rate"]
            ratios.append(ratio)
            log(
                f"  round {round_no}: worker {result['worker']['rate']:7.1f} jobs/s "
                f"({result['worker']['elapsed'] * 1000 / args.jobs:.1f} ms each), SDK "
                f"{result['sdk']['rate']:7.1f} uploads/s "
                f"({result['sdk']['elapsed'] * 1000 / args.jobs:.1f} ms each): {ratio:.2f}x"
            )
        if args.profile:
            prof = child(env, PROFILE, files[-60:])
            log("")
            log(
                f"where a submit goes (in-process, cProfile, {prof['jobs']} submits): "
                f"{prof['ms_per_submit']:.1f} ms each, {prof['queries_per_submit']:.1f} queries "
                f"in {prof['commits_per_submit']:.1f} transactions (each commit a WAL flush)"
            )
            for area, ms in prof["areas_ms"].items():
                log(f"  {area:<42} {ms:6.2f} ms")
    finally:
        if standin is not None:
            os.killpg(standin.pid, signal.SIGTERM)
            standin.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
        drop_database(database_url)
    ratio = statistics.median(ratios)
    log("")
    passed = ratio >= args.min_ratio
    log(
        f"RATIO submit throughput, one worker / imagekitio SDK loop: {ratio:.2f} (median of "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; goal >= {args.min_ratio:g}) "
        + ("PASS" if passed else "FAIL")
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
