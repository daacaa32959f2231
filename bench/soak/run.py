"""One soak run, start to end: the database, the processes, the capacity probe, the workload
under chaos, and the verdict."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import capacity as capacity_probe
from . import snapshot as snapshots
from .chaos import Chaos, wait_web
from .config import (
    DEFAULT_DATABASE_URL,
    MIN_TIMEOUT,
    SETTINGS_MODULE,
    TIME_SCALE,
    SoakConfig,
    write_settings,
)
from .cpu import CpuMeter
from .database import _pg_config, create_database, drop_database
from .engines import make_engine
from .procs import (
    LOCALHOST,
    ROOT,
    Children,
    SoakError,
    free_port,
    http_json_retrying,
    wait_until_answers,
)
from .verify import verify, violations
from .web import ADMIN_PASSWORD, ADMIN_USER, Web
from .workload import FINAL, UNFINISHED, Driver, Plan, State


def say(message: str, *, quiet: bool = False) -> None:
    if not quiet:
        print(message, flush=True)


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
        self.join(120)


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
        ALLOWED_HOSTS="127.0.0.1,localhost",
        IMAGEKIT_EMULATOR_URL=emulator_url,
        PYTHONUNBUFFERED="1",
    )
    return env


def _own_disk(env: dict[str, str], run_dir: Path, name: str, config: SoakConfig) -> dict[str, str]:
    """With media on S3 each process has a folder of its own: nothing may rely on another's."""
    if config.media != "s3":
        return env
    return {**env, "VAR_DIR": str(run_dir / f"var-{name}")}


def _start_s3(children: Children, env: Mapping[str, str], bucket: str) -> str:
    """moto's S3 server as a child process, with the run's bucket; returns its URL."""
    import boto3

    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", LOCALHOST, "-p", str(port)]
    server = children.start("s3", argv, env)
    url = f"http://{LOCALHOST}:{port}"
    wait_until_answers(f"{url}/moto-api/", server, "moto's S3 server")
    boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="soak",
        aws_secret_access_key="soak",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    return url


def _setup_django(run_dir: Path, env: Mapping[str, str]) -> None:
    from django.conf import settings

    if settings.configured:
        raise SoakError("Django is already configured in this process; use run_in_subprocess().")
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


def _emulator_argv(config: SoakConfig, port: int, data_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "imagekit_emulator",
        "--host",
        LOCALHOST,
        "--port",
        str(port),
        "--seed",
        str(config.seed),
        "--workers",
        str(config.emulator_workers),
        "--data-dir",
        str(data_dir),
        "--time-scale",
        str(TIME_SCALE),
        "--min-timeout",
        str(MIN_TIMEOUT),
        "--faults",
        json.dumps(config.faults),
        "--log-level",
        "INFO",
    ]


def _create_admin() -> None:
    from django.contrib.auth import get_user_model

    get_user_model().objects.create_superuser(ADMIN_USER, "soak@example.com", ADMIN_PASSWORD)


def _status_counts() -> Counter[str]:
    from django.db.models import Count

    from imagekit_bgremove.models import RemovalJob

    rows = RemovalJob.objects.order_by().values_list("status").annotate(n=Count("pk"))
    return Counter(dict(rows))


def run(config: SoakConfig) -> dict[str, Any]:
    """Run the soak in this process (Django must not be configured yet); returns the report."""
    database_url = config.database_url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    _pg_config(database_url)
    engine = make_engine(config.engine, config.redis_url, config.rq_worker_class, config.broker_url)
    if hasattr(engine, "check_server"):
        engine.check_server()
    quiet = config.quiet
    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="ikbg-soak-"))
    (run_dir / "logs").mkdir()
    children = Children(run_dir / "logs")
    db_name: str | None = None
    reconciler: Reconciler | None = None
    chaos: Chaos | None = None
    driver: Driver | None = None
    report: dict[str, Any] = {"ok": False, "violations": [], "run_dir": str(run_dir)}
    failed = True
    crashed = False
    try:
        db_name, db_url = create_database(database_url)
        report["database"] = db_name
        say(f"soak: database {db_name}, {engine.label}, run directory {run_dir}", quiet=quiet)
        bucket = f"ikbg-soak-{db_name.rsplit('_', 1)[-1]}".lower().replace("_", "-")
        write_settings(run_dir, config, queue=getattr(engine, "queue", ""), bucket=bucket)
        emulator_port, web_port = free_port(), free_port()
        emulator_url = f"http://{LOCALHOST}:{emulator_port}"
        web_url = f"http://{LOCALHOST}:{web_port}"
        env = _child_env(run_dir, db_url, emulator_url, web_url)
        env.update(engine.env())
        if config.media == "s3":
            env["SOAK_S3_URL"] = _start_s3(children, env, bucket)
        _setup_django(run_dir, env)
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", verbosity=0, interactive=False)
        call_command("createcachetable", verbosity=0)  # the example's shared throttle counts
        _create_admin()
        connections.close_all()  # the children must not inherit an open connection
        emulator_argv = _emulator_argv(config, emulator_port, run_dir / "emulator-data")

        # -- the emulator's own capacity, before anything of the app runs
        capacity: dict[str, Any] = {}
        if config.capacity:
            say("soak: measuring the emulator's capacity (the emulator alone)...", quiet=quiet)
            capacity = capacity_probe.measure(
                children,
                emulator_argv,
                env,
                data_dir=run_dir / "capacity-data",
                images=min(config.images, config.capacity_images),
                seed=config.seed,
                clients=config.workers,
                in_flight=config.in_flight,
                image_size=config.image_size,
            )
            say(
                f"soak: capacity {capacity.get('images_per_s')} images/s "
                f"({capacity['completed']} images in {capacity.get('elapsed')} s, "
                f"{config.workers} clients, {config.emulator_workers} emulator workers)",
                quiet=quiet,
            )

        emulator = children.start("emulator", emulator_argv, env)
        wait_until_answers(f"{emulator_url}/_emulator/health", emulator, "the emulator")
        server_kind = _server_kind(config.server)
        web = children.start(
            "web", _web_server_argv(server_kind, web_port), _own_disk(env, run_dir, "web", config)
        )
        worker_names = []
        for number in range(1, config.workers + 1):
            name = f"worker-{number}"
            children.start(
                name, engine.worker_argv(number, 1), _own_disk(env, run_dir, name, config)
            )
            worker_names.append(name)
        web_probe = f"{web_url}/imagekit-bgremove/webhooks/imagekit/soak/"
        wait_until_answers(web_probe, web, f"the web server ({server_kind})")
        children.check_alive()
        say(
            f"soak: emulator {emulator_url}, {server_kind} {web_url}, {config.workers} "
            f"{engine.name} workers; {config.images} images, seed {config.seed}",
            quiet=quiet,
        )

        if capacity.get("images_per_s"):
            # Saves wait while this many jobs are unfinished: enough to keep the emulator busy,
            # and few enough that a job's wait at ImageKit stays under RECONCILE_AFTER even at
            # half the emulator's capacity (it shares the machine with the app). On a site the
            # deferred check is for a callback that was lost, not for a run still queued; a
            # backlog past it had every job checked two or three times, a third of the
            # workers' time and a tenth of the emulator's.
            bound = int(capacity["images_per_s"] * config.reconcile_after / 2)
            config.in_flight = max(20, min(config.in_flight, bound))
        meter = CpuMeter(children)
        say(f"soak: at most {config.in_flight} jobs unfinished at once", quiet=quiet)
        rng = random.Random(config.seed)
        plan = Plan()
        rate = capacity.get("images_per_s") or 3.0
        expected = max(30.0, config.images / rate)
        if config.chaos:
            events = [
                (expected * (0.2 + 0.5 * i / max(1, config.gunicorn_kills - 1)), "web")
                for i in range(config.gunicorn_kills)
            ]
            events += [(expected * 0.45, "emulator") for _ in range(config.emulator_restarts)]
            chaos = Chaos(
                children,
                engine,
                worker_names,
                rng=random.Random(config.seed + 1),
                kill_every=config.kill_every,
                events=events,
                web_probe=web_probe,
                emulator_probe=f"{emulator_url}/_emulator/health",
                started=time.monotonic(),
            )
        web_client = Web(web_url, is_up=wait_web(chaos))
        web_client.login()
        driver = Driver(config, plan, web_client, rng)
        reconciler = Reconciler(config.reconcile_every)
        reconciler.start()
        if chaos is not None:
            chaos.start()
        work_started = time.monotonic()
        plan.started_at = time.time()

        quiet_checks = 0
        last_progress = last_sample = 0.0
        timed_out = False
        deadline = started + config.timeout
        while True:
            state = State(plan)
            driver.step(state)
            producing = not driver.finished()
            if chaos is not None and chaos.active and not producing and not chaos.events:
                chaos.quiesce()  # the planned crashes are done and nothing more is saved
            if time.monotonic() - last_sample >= 2:
                meter.sample()
                last_sample = time.monotonic()
            counts = _status_counts()
            unfinished = sum(counts[s] for s in UNFINISHED)
            open_tasks = engine.open_tasks()
            idle = http_json_retrying("GET", f"{emulator_url}/_emulator/wait-idle?timeout=0")
            now = time.monotonic()
            if now - last_progress >= 10 and not quiet:
                last_progress = now
                shown = ", ".join(f"{s} {counts[s]}" for s in (*UNFINISHED, *FINAL) if counts[s])
                kills = dict(chaos.kills) if chaos else {}
                say(
                    f"soak: {now - work_started:6.1f} s  {shown}; open tasks {open_tasks}; "
                    f"emulator {idle.get('activity') or 'idle'}; kills {kills}"
                )
            chaos_done = chaos is None or not chaos.active
            if (
                not producing
                and chaos_done
                and not unfinished
                and not open_tasks
                and idle.get("idle")
            ):
                quiet_checks += 1
                if quiet_checks >= 2:
                    break
            else:
                quiet_checks = 0
            if now > deadline:
                timed_out = True
                say(f"soak: timed out after {config.timeout:g} s", quiet=quiet)
                break
            time.sleep(0.3)
        work_elapsed = time.monotonic() - work_started
        meter.sample()
        driver.close()
        if chaos is not None:
            chaos.quiesce()
        reconciler.stop()
        from imagekit_bgremove import services

        services.reconcile()  # cron goes on: the last run sees everything final

        state = http_json_retrying("GET", f"{emulator_url}/_emulator/state", timeout=120)
        snapshot = snapshots.take(plan)
        snapshot["tasks"] = engine.snapshot()
        snapshot["open_tasks"] = engine.open_tasks()
        totals = reconciler.totals
        snapshot["taken_back"] = totals["unstuck"] + totals["finalize_requeued"]
        snapshot["emulator_restarts"] = chaos.kills.get("emulator", 0) if chaos else 0
        snapshot["cut_off_uploads"] = list(driver.web.cut_off_uploads)
        checks = verify(snapshot, state, plan.as_dict(), tolerance=config.tolerance_seconds)
        found = violations(checks)
        extra: list[str] = []
        if timed_out:
            extra.append(f"the run did not settle within --timeout {config.timeout:g} s")
        extra += [f"reconcile raised {error}" for error in reconciler.errors]
        extra += [f"the workload: {error}" for error in plan.errors]
        if chaos is not None:
            extra += [f"chaos: {error}" for error in chaos.errors]
            if chaos.events:
                extra.append(f"chaos events never happened: {chaos.events}")
        report.update(
            _throughput(snapshot, state, plan, capacity, work_elapsed),
            ok=not (found or extra),
            violations=extra + found,
            checks=[c.as_dict() for c in checks],
            summary=_summary(snapshot, state, plan, driver, web_client),
            seed=config.seed,
            images=config.images,
            engine=engine.name,
            engine_label=engine.label,
            media=config.media,
            workers=config.workers,
            in_flight=config.in_flight,
            server=server_kind,
            faults=config.faults,
            app_settings=config.app_settings(),
            elapsed=round(work_elapsed, 2),
            total_elapsed=round(time.monotonic() - started, 2),
            capacity=capacity,
            cpu=meter.totals(),
            faults_fired=state.get("faultsFired"),
            chaos=chaos.summary() if chaos else {},
            reconcile={"runs": reconciler.runs, **dict(reconciler.totals)},
            tasks=snapshot["tasks"]["counts"],
            submit_outcomes=snapshot["tasks"]["outcomes"],
        )
        failed = not report["ok"]
        return report
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):
            crashed = True
        raise
    finally:
        if chaos is not None:
            chaos.quiesce()
        if reconciler is not None and reconciler.is_alive():
            reconciler.stop()
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        children.stop()
        if chaos is not None:
            chaos.stop()  # after the children: those it restarted die with its thread
        with contextlib.suppress(Exception):
            engine.cleanup()
        report["pids"] = dict(children.all_pids)
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


def _throughput(snapshot, state, plan: Plan, capacity, work_elapsed: float) -> dict[str, Any]:
    """Images per second, held against the emulator's capacity. Measured to the moment every
    job had settled except those that can only end at PENDING_DEADLINE_SECONDS (their FAILURE
    callback never came: ImageKit's API has no record of a failed run); the whole run's figure
    is given too."""
    finished = [
        j["finished_at"]
        for j in snapshot["jobs"]
        if j.get("finished_at") and j["error_code"] != "no_result"
    ]
    settled = (max(finished) - plan.started_at) if finished else None
    runs = int(state.get("removeBgRunCount", 0))
    rate = round(runs / settled, 3) if settled else None
    cap = capacity.get("images_per_s") if capacity else None
    return {
        "settled_after": round(settled, 2) if settled else None,
        "deadline_bound_jobs": sum(1 for j in snapshot["jobs"] if j["error_code"] == "no_result"),
        "runs": runs,
        "images_per_s": rate,
        "images_saved_per_s": round(plan.images_saved / settled, 3) if settled else None,
        "whole_run_images_per_s": round(runs / work_elapsed, 3) if work_elapsed else None,
        "capacity_ratio": round(rate / cap, 3) if rate and cap else None,
    }


def _summary(snapshot, state, plan: Plan, driver: Driver, web: Web) -> dict[str, Any]:
    jobs = snapshot["jobs"]
    callbacks = state["callbacks"]
    faults_seen = Counter(r["fault"] for r in state.get("requests", []) if r.get("fault"))
    return {
        "products": len(plan.products),
        "deleted": len(plan.deleted),
        "images_saved": plan.images_saved,
        "actions": dict(plan.done),
        "races": dict(Counter(r.get("outcome") for r in plan.identical_racing)),
        "triggers": dict(Counter(j["trigger"] for j in jobs)),
        "forced": sum(1 for j in jobs if j["force"]),
        "shared": sum(1 for j in jobs if j["duplicate_of_id"]),
        "failure_reasons": dict(
            Counter(
                "shared" if j["duplicate_of_id"] else j["error_code"]
                for j in jobs
                if j["status"] == "failed"
            )
        ),
        "cancel_reasons": dict(
            Counter(j["error_code"] for j in jobs if j["status"] == "cancelled")
        ),
        "emulator_jobs": dict(Counter(j["status"] for j in state["jobs"])),
        "results_as_new_file": sum(1 for j in state["jobs"] if j.get("resultFileId")),
        "synchronous": sum(1 for j in state["jobs"] if j.get("synchronous")),
        "callbacks": {
            "total": len(callbacks),
            "duplicated": sum(1 for c in callbacks if c["copies"] > 1),
            "attempts": sum(len(c["attempts"]) for c in callbacks),
            "app_verdicts": dict(Counter(d["verdict"] for d in snapshot["deliveries"])),
            "counted": snapshot["counted"],
        },
        "api_faults_seen_last_2000_requests": dict(faults_seen),
        "http_clients": {
            "retried_after_no_answer": web.retried,
            "took_effect_unanswered": web.answer_lost_but_done,
        },
    }
