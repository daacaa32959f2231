"""``python -m bench.soak`` / ``./dev soak``: the command line, and running it in a subprocess."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import (
    DEFAULT_BROKER_URL,
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    ENGINES,
    FAULTS,
    MEDIA,
    SoakConfig,
)
from .procs import ROOT, SoakError
from .report import format_report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="./dev soak",
        description="Soak test on PostgreSQL under every emulator fault and real crashes, "
        "checked against the emulator's ground truth.",
    )
    add = parser.add_argument
    add("--images", type=int, default=200, help="products to save (%(default)s)")
    add(
        "--engine",
        choices=ENGINES,
        default="db",
        help="task engine: db_worker, rqworker or celery worker",
    )
    add(
        "--media",
        choices=MEDIA,
        default="local",
        help="local: one MEDIA_ROOT; s3: a bucket on moto's S3 server, no shared disk",
    )
    add("--workers", type=int, default=4, help="task worker processes (%(default)s)")
    add("--seed", type=int, default=1, help="images, choices, faults and kills (%(default)s)")
    add("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    add("--keep-db", action="store_true", help="keep the database and the run directory")
    add(
        "--database-url",
        help="PostgreSQL server to use (default: DATABASE_URL, else " + DEFAULT_DATABASE_URL + ")",
    )
    add(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help="Redis for --engine rq, and the ledger of --engine celery (%(default)s)",
    )
    add("--broker-url", default=DEFAULT_BROKER_URL, help="RabbitMQ for --engine celery")
    add(
        "--rq-worker-class",
        default="",
        help="rqworker --worker-class, e.g. rq.SimpleWorker (default: rq's own, forking)",
    )
    add("--server", choices=["auto", "gunicorn", "runserver"], default="auto")
    add("--in-flight", type=int, default=150, help="most jobs unfinished at once (%(default)s)")
    add("--pending-deadline", type=float, default=100.0, help="PENDING_DEADLINE_SECONDS")
    add("--image-size", default="400,800", help="min,max sides of the images (%(default)s)")
    add("--no-chaos", action="store_true", help="no kills and restarts")
    add("--no-capacity", action="store_true", help="do not measure the emulator's capacity")
    add("--capacity-images", type=int, default=200, help="images of the probe (%(default)s)")
    add("--min-ratio", type=float, help="exit 1 when images/s / capacity is below this")
    add("--faults", metavar="JSON", help="fault knobs to change, as a JSON object")
    add("--report-json", metavar="PATH", help="also write the report here")
    add("--quiet", action="store_true", help="only the report")
    return parser


def config_from(args: argparse.Namespace) -> SoakConfig:
    faults = dict(FAULTS)
    if args.faults:
        faults.update(json.loads(args.faults))
    return SoakConfig(
        images=args.images,
        engine=args.engine,
        workers=args.workers,
        seed=args.seed,
        timeout=args.timeout,
        keep_db=args.keep_db,
        database_url=args.database_url or "",
        redis_url=args.redis_url,
        rq_worker_class=args.rq_worker_class,
        broker_url=args.broker_url,
        media=args.media,
        server=args.server,
        in_flight=args.in_flight,
        pending_deadline=args.pending_deadline,
        image_size=tuple(int(x) for x in args.image_size.split(",")),  # type: ignore[arg-type]
        chaos=not args.no_chaos,
        capacity=not args.no_capacity,
        capacity_images=args.capacity_images,
        faults=faults,
        quiet=args.quiet,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from .run import run

    args = build_parser().parse_args(argv)
    config = config_from(args)

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
    if report.get("violations"):
        if report.get("log_tails"):
            print(report["log_tails"], file=sys.stderr)
        print(f"\nsoak FAILED with {len(report['violations'])} violation(s):", file=sys.stderr)
        for violation in report["violations"][:200]:
            print(f"  - {violation}", file=sys.stderr)
    if "checks" in report:
        print(format_report(report))
    ratio = report.get("capacity_ratio")
    if code == 0 and args.min_ratio is not None and (ratio is None or ratio < args.min_ratio):
        print(f"soak: images/s ratio {ratio} is below --min-ratio {args.min_ratio}")
        code = 1
    if code == 0:
        print("soak passed: every check holds against the emulator's ground truth")
    if report.get("kept"):
        print(f"kept: {report['kept']}")
    return code


def run_in_subprocess(
    args: Sequence[str], *, timeout: float = 900.0, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run ``python -m bench.soak ARGS`` in a fresh interpreter; returns its report, plus
    ``returncode`` and ``output`` (stdout and stderr)."""
    with tempfile.TemporaryDirectory(prefix="ikbg-soak-report-") as tmp:
        report_path = Path(tmp) / "report.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.soak", *args, "--report-json", str(report_path)],
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
