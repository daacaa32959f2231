"""The latency the app adds: from the commit of a save to the cut-out stored, minus ImageKit's own
time, with the default settings of the app and of the engine (one ``db_worker``, its default
polling interval), gunicorn and PostgreSQL, against the emulator without faults.

    python bench/latency.py [--images 30] [--every 1.0] [--max-p95 2.5]

For each image: t0 when ``Product.objects.create`` returns (autocommit: the save has committed),
t1 the job's ``finished_at`` (the cut-out stored in Django storage), and ImageKit's own time
from the emulator's ground truth: from the upload accepted (its job's ``createdAt``) to the
first callback sent. The app's share is t1 - t0 - ImageKit's time: the submit task's wait in the
queue and its work, the webhook, the finalize task's wait and its copy. Prints p50/p95 of it and
of the whole; exits 1 when the p95 is over ``--max-p95`` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.soak.database import create_database, drop_database  # noqa: E402
from bench.soak.procs import LOCALHOST, Children, free_port, wait_until_answers  # noqa: E402
from bench.soak.run import _child_env, _web_server_argv  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/imagekit_bgremove"
SETTINGS = """
from example_project.settings import *  # noqa: F403

DEBUG = False
SILENCED_SYSTEM_CHECKS = ["imagekit_bgremove.W001"]  # the emulator, on purpose
LOGGING = {"version": 1, "disable_existing_loggers": False}
"""


def photo(number: int) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (800, 600), (235, 235, 235))
    ImageDraw.Draw(image).ellipse((200, 120, 600, 500), fill=(40 + number % 200, 90, 160))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def ms(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between saves")
    parser.add_argument("--max-p95", type=float, default=2.5, help="goal, seconds")
    args = parser.parse_args(argv)
    server_url = (
        os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL") or DEFAULT_DB
    )
    db_name, db_url = create_database(server_url, prefix="ikbg_latency")
    run_dir = Path(tempfile.mkdtemp(prefix="ikbg-latency-"))
    (run_dir / "logs").mkdir()
    children = Children(run_dir / "logs")
    try:
        (run_dir / "ikbg_latency_settings.py").write_text(SETTINGS)
        emulator_port, web_port = free_port(), free_port()
        emulator_url = f"http://{LOCALHOST}:{emulator_port}"
        env = _child_env(run_dir, db_url, emulator_url, f"http://{LOCALHOST}:{web_port}")
        env["DJANGO_SETTINGS_MODULE"] = "ikbg_latency_settings"
        os.environ.update(env)
        sys.path.insert(0, str(run_dir))
        import django

        django.setup()
        from django.core.files.base import ContentFile
        from django.core.management import call_command
        from django.db import connections

        from example_project.catalogue.models import Product
        from imagekit_bgremove.models import RemovalJob

        call_command("migrate", verbosity=0, interactive=False)
        connections.close_all()
        emulator = children.start(
            "emulator",
            [
                sys.executable,
                "-m",
                "imagekit_emulator",
                "--host",
                LOCALHOST,
                "--port",
                str(emulator_port),
                "--data-dir",
                str(run_dir / "emulator"),
            ],
            env,
        )
        wait_until_answers(f"{emulator_url}/_emulator/health", emulator, "the emulator")
        web = children.start("web", _web_server_argv("gunicorn", web_port), env)
        wait_until_answers(f"http://{LOCALHOST}:{web_port}/", web, "gunicorn")
        children.start("worker", [sys.executable, "manage.py", "db_worker"], env)
        time.sleep(2)  # the worker's start, not a save's latency

        saved: dict[int, float] = {}
        for number in range(args.images):
            product = Product.objects.create(
                name=f"latency {number}", photo=ContentFile(photo(number), name=f"l{number}.jpg")
            )
            saved[product.pk] = time.time()
            time.sleep(args.every)
        deadline = time.monotonic() + 120
        final = ("succeeded", "failed", "cancelled", "superseded")
        while time.monotonic() < deadline:
            if not RemovalJob.objects.exclude(status__in=final).exists():
                break
            time.sleep(0.2)
        with urllib.request.urlopen(f"{emulator_url}/_emulator/state", timeout=60) as answer:
            state = json.load(answer)
        first_callback = {}
        for attempt in state["callbackAttempts"]:
            first_callback.setdefault(attempt["jobId"], attempt["sentAtMs"])
        imagekit_ms = {
            job["fileId"]: first_callback[job["id"]] - ms(job["createdAt"])
            for job in state["jobs"]
            if job["id"] in first_callback
        }
        totals, added = [], []
        for job in RemovalJob.objects.filter(status="succeeded"):
            t0 = saved[int(job.object_id)]
            total = job.finished_at.timestamp() - t0
            totals.append(total)
            added.append(total - imagekit_ms[job.file_id] / 1000)
        not_done = args.images - len(totals)
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        children.stop()
        drop_database(server_url, db_name)
    if not_done:
        print(f"FAIL: {not_done} of {args.images} images did not succeed")
        return 1
    p50, p95 = statistics.median(added), percentile(added, 0.95)
    print(
        f"{args.images} images, one every {args.every:g} s; save committed -> cut-out stored: "
        f"p50 {statistics.median(totals):.2f} s, p95 {percentile(totals, 0.95):.2f} s"
    )
    passed = p95 <= args.max_p95
    print(
        f"RATIO latency the app adds (minus ImageKit's own time): p50 {p50:.2f} s, p95 "
        f"{p95:.2f} s (goal p95 <= {args.max_p95:g} s) " + ("PASS" if passed else "FAIL")
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
