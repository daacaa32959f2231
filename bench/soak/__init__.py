"""The soak test: the whole removal loop at scale, under every emulator fault and real crashes,
checked against the emulator's ground truth.

    ./dev soak [--images 1000] [--engine db|rq] [--seed 1] [--workers 4] [--keep-db] ...
    python -m bench.soak [same options]

One run creates a throw-away PostgreSQL database (``ikbg_soak_*``, dropped at the end) and
starts, as separate processes, the ImageKit emulator (every fault knob on, ``--data-dir``,
ImageKit's timings compressed), the example project under gunicorn, and the task workers of
one engine: ``manage.py db_worker`` (django-tasks-db, the production backend) or
``manage.py rqworker`` (RQ over Redis through django-tasks-rq, on a queue of its own).

Before the app starts, the emulator's own capacity is measured: the emulator alone, the same
images, as many clients as workers (``capacity.py``). Then products are saved through the ORM,
the admin's add and change forms (a logged-in session over HTTP) and the REST API, re-saved
with new images and with the same bytes, twinned (identical images on other objects: after a
success, while the first is at ImageKit, after its object was deleted), forced, and deleted
mid-flight (``workload.py``); ``reconcile()`` runs as cron would. Meanwhile a random worker is
SIGKILLed every few seconds and started again, gunicorn is killed and restarted twice, and the
emulator once (``chaos.py``).

When everything is final the database and storage are compared with the emulator's state
(``verify.py``) and printed as a table (``report.py``), the images/s ratio against the
emulator's capacity last. Exit status 1 on any violation, or with ``--min-ratio`` when the
ratio is below it.

Importable: ``run(SoakConfig(...))`` runs in this process (Django must not be configured yet);
``run_in_subprocess([...])`` in a fresh interpreter, returning the report (what the tests do);
``verify(...)`` is the pure comparison.
"""

from .config import FAULTS, SoakConfig
from .database import _pg_admin
from .main import main, run_in_subprocess
from .report import format_report
from .run import run
from .verify import CHECKS, Check, verify, violations

__all__ = [
    "CHECKS",
    "FAULTS",
    "Check",
    "SoakConfig",
    "_pg_admin",
    "format_report",
    "main",
    "run",
    "run_in_subprocess",
    "verify",
    "violations",
]
