"""The soak test (bench/soak), small, in CI: PostgreSQL, the emulator with every fault, gunicorn
and four task workers, with the crashes (workers SIGKILLed every few seconds, gunicorn twice,
the emulator once), checked against the emulator's ground truth; once on django-tasks-db's
db_worker, once on RQ over Redis through django-tasks-rq, once on Celery over RabbitMQ through
django-tasks-celery, and once in the production shape (Celery, media on moto's S3 server, no
shared disk). ``./dev soak --images 1000`` runs the full one.

Switches for CI's budget: SOAK_CI_IMAGES (60 by default) sizes every run;
SOAK_CI_PRODUCTION=0 leaves out the production shape.

The checker itself (``soak.verify``) is tested here too, on a hand-made run, so that a soak that
passes means something."""

from __future__ import annotations

import copy
import os

import django
import pytest
from django.db import connection

from bench import soak

#: 60 images each (the CI budget): small images, a deadline to match, no capacity probe.
CI_ARGS = [
    "--images",
    os.environ.get("SOAK_CI_IMAGES", "60"),
    "--image-size",
    "200,400",
    "--pending-deadline",
    "75",
    "--no-capacity",
    "--quiet",
]


def _redis_url() -> str | None:
    url = os.environ.get("SOAK_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        from redis import Redis

        Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception:
        return None
    return url


CELERY_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


def _needs_celery() -> None:
    for module in ("django_tasks_celery", "storages", "moto"):
        try:
            __import__(module)
        except ImportError:
            pytest.skip(f"{module} is not installed (the dev extra)")
    from kombu import Connection

    try:
        with Connection(CELERY_BROKER, connect_timeout=2) as broker:
            broker.ensure_connection(max_retries=1)
    except Exception:
        if os.environ.get("CI") == "true":
            pytest.fail("RabbitMQ is needed for the Celery soak in CI (127.0.0.1:5672)")
        pytest.skip("RabbitMQ is not reachable")
    if _redis_url() is None:
        pytest.skip("Redis (the Celery soak's ledger) is not reachable")


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["db", "rq", "celery", "celery-s3"])
def test_the_ci_soak_matches_the_ground_truth(engine):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    if django.VERSION < (6,):
        pytest.skip("the soak runs on the Django 6 leg (the CI budget)")
    seed = {"db": "7", "rq": "8", "celery": "9", "celery-s3": "10"}[engine]
    args = [*CI_ARGS, "--seed", seed]
    if engine == "celery-s3":
        if os.environ.get("SOAK_CI_PRODUCTION") == "0":
            pytest.skip("SOAK_CI_PRODUCTION=0")
        engine = "celery"
        args += ["--media", "s3"]
    args += ["--engine", engine]
    if engine == "celery":
        _needs_celery()
    if engine == "rq":
        redis_url = _redis_url()
        if redis_url is None:
            if os.environ.get("CI") == "true":
                pytest.fail("Redis is needed for the RQ soak in CI (127.0.0.1:6379)")
            pytest.skip("Redis is not reachable")
        try:
            import django_tasks_rq  # noqa: F401
        except ImportError:
            pytest.skip("django-tasks-rq is not installed (the rq extra)")
        args += ["--redis-url", redis_url]
    database_url = os.environ["DATABASE_URL"]
    report = soak.run_in_subprocess(
        args, timeout=600, env={**os.environ, "DATABASE_URL": database_url}
    )
    assert report["returncode"] == 0 and report["violations"] == [], report["output"][-20000:]
    print(report["output"][-6000:])  # the table, in the test log (pytest -s, or -rA)

    checks = {c["check"]: c for c in report["checks"]}
    assert set(checks) == set(soak.CHECKS.values())
    assert all(c["ok"] for c in checks.values())
    # The crashes happened: workers killed, gunicorn twice, the emulator once.
    kills = report["chaos"]["kills"]
    assert kills.get("worker", 0) >= 2 and kills.get("web") == 2 and kills.get("emulator") == 1
    # Every path was taken: ORM, admin (add and change forms), API (options, repeat, force),
    # deletes mid-flight, identical images.
    actions = report["summary"]["actions"]
    for kind in ("admin_add", "admin_resave", "admin_same", "api_options", "api_force", "delete"):
        assert actions.get(kind, 0) >= 1, actions
    assert report["summary"]["triggers"].get("api", 0) >= 2
    assert report["summary"]["deleted"] >= 1 and report["summary"]["shared"] >= 1

    # Nothing is left behind: the database is dropped, every process (each generation) gone.
    with soak._pg_admin(database_url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", [report["database"]]
        ).fetchone()[0]
    assert left == 0
    for name, pid in report["pids"].items():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
            pytest.fail(f"{name} (pid {pid}) is still running")


# ------------------------------------------------------------------------------ the checker

WEBHOOK_ID = "msg_1"
OPTIONS = {"add_shadow": False, "semitransparency": True}


def good_run() -> tuple[dict, dict, dict]:
    """One product, one job, uploaded once, remove-bg run once, the callback delivered (its
    first attempt counted as failed, so it came twice: stored once, counted once)."""
    job = {
        "id": 1,
        "status": "succeeded",
        "object_id": "10",
        "file_id": "f1",
        "source_name": "products/a.jpg",
        "source_hash": "src",
        "result_file_id": "",
        "result_version_id": "v2",
        "result_url": "http://ik/a.jpg",
        "result_name": "products/a_nobg_1.png",
        "partial_result_name": "",
        "result_sha256": "res",
        "error_code": "",
        "error_message": "",
        "duplicate_of_id": None,
        "superseded_by_id": None,
        "attempts": 1,
        "trigger": "save",
        "force": False,
        "options": {},
        "requested_options": OPTIONS,
        "took": 3.0,
        "finished_at": 2.0,
    }
    snapshot = {
        "jobs": [job],
        "deliveries": [
            {
                "id": 1,
                "job_id": 1,
                "status_code": 200,
                "verdict": "accepted",
                "webhook_id": WEBHOOK_ID,
                "error": "",
            }
        ],
        "counted": {"duplicate": 1},
        "tasks": {"counts": {}, "failed": [], "abandoned": 0, "outcomes": {}},
        "open_tasks": 0,
        "products": [
            {
                "id": 10,
                "name": "a",
                "photo": "products/a.jpg",
                "photo_sha256": "src",
                "photo_removal_id": 1,
                "result": {"job": 1, "name": "products/a_nobg_1.png", "sha256": "res"},
            }
        ],
        "deleted": [],
        "originals": {"products/a.jpg": {"expected": "src", "actual": "src"}},
        "storage_files": 2,
        "stray_files": [],
    }
    state = {
        "files": [
            {
                "fileId": "f1",
                "name": "a__ikbg1.jpg",
                "requestedName": "a__ikbg1.jpg",
                "versions": [
                    {"id": "f1", "source": "upload", "sha256": "src"},
                    {"id": "v2", "source": "remove-bg", "sha256": "res"},
                ],
            }
        ],
        "uploadsByFileName": {"a__ikbg1.jpg": 1},
        "jobs": [
            {
                "id": "job_1",
                "fileId": "f1",
                "status": "success",
                "resultVersionId": "v2",
                "resultFileId": None,
            }
        ],
        "removeBgRuns": [
            {
                "jobId": "job_1",
                "fileId": "f1",
                "inputSha256": "src",
                "options": OPTIONS,
                "requestedOptions": OPTIONS,
            }
        ],
        "removeBgRunCount": 1,
        "callbacks": [
            {
                "id": "cb_1",
                "jobId": "job_1",
                "fileId": "f1",
                "reportedStatus": "SUCCESS",
                "webhookId": WEBHOOK_ID,
                "status": "delivered",
                "copies": 1,
                "deliveries": 1,
                "payload": {"fileObject": {"versionInfo": {"id": "v2"}}},
                "attempts": [
                    {"attempt": 1, "status": 200, "error": None, "simulatedFailure": True},
                    {"attempt": 2, "status": 200, "error": None, "simulatedFailure": False},
                ],
            }
        ],
    }
    plan = {"products": [10], "identical": [], "images_saved": 1, "started_at": 1.0}
    return snapshot, state, plan


def test_a_good_run_has_no_violations():
    checks = soak.verify(*good_run())
    assert soak.violations(checks) == []
    assert [c.key for c in checks] == list(soak.CHECKS)


def _uploaded_twice_by_nobody(snapshot, state, plan):
    state["uploadsByFileName"]["stranger.jpg"] = 2


def _callback_not_recorded(snapshot, state, plan):
    snapshot["deliveries"].pop()


def _unknown_result(snapshot, state, plan):
    snapshot["jobs"][0]["result_version_id"] = "v9"


def _result_not_copied(snapshot, state, plan):
    snapshot["jobs"][0]["result_sha256"] = None


def _shows_another_cut_out(snapshot, state, plan):
    snapshot["products"][0]["result"]["sha256"] = "other"


def _cut_out_of_an_old_image(snapshot, state, plan):
    snapshot["products"][0]["photo_sha256"] = "newer"


def _undocumented_failure(snapshot, state, plan):
    snapshot["jobs"][0].update(status="failed", error_code="ServerError:500")
    snapshot["products"][0]["result"] = None


def _failed_but_removed(snapshot, state, plan):
    snapshot["jobs"][0].update(status="failed", error_code="no_result")
    snapshot["products"][0]["result"] = None


def _still_pending(snapshot, state, plan):
    snapshot["jobs"][0]["status"] = "pending"


def _original_modified(snapshot, state, plan):
    snapshot["originals"]["products/a.jpg"]["actual"] = "other"


def _stray_file(snapshot, state, plan):
    snapshot["stray_files"].append("products/a_nobg_1_partial.png")


def _orphan_upload(snapshot, state, plan):
    orphan = copy.deepcopy(state["files"][0])
    orphan.update(fileId="f2", requestedName="b.jpg")
    orphan["versions"] = [{"id": "f2", "source": "upload", "sha256": "other"}]
    state["files"].append(orphan)


def _paid_twice(snapshot, state, plan):
    second = copy.deepcopy(state["files"][0])
    second.update(fileId="f2", requestedName="b__ikbg2.jpg")
    second["versions"][1]["id"] = "v3"
    state["files"].append(second)
    state["jobs"].append({"id": "job_2", "fileId": "f2", "status": "success"})
    state["removeBgRuns"].append({**state["removeBgRuns"][0], "jobId": "job_2", "fileId": "f2"})
    snapshot["jobs"].append({**snapshot["jobs"][0], "id": 2, "object_id": "11", "file_id": "f2"})


def _webhook_error(snapshot, state, plan):
    state["callbacks"][0]["attempts"].append(
        {"attempt": 3, "status": 500, "error": None, "simulatedFailure": False}
    )


def _fresh_signature_refused(snapshot, state, plan):
    state["callbacks"][0]["attempts"].append(
        {"attempt": 3, "status": 401, "sentAtMs": 10_500, "signatureTimestamp": "10"}
    )


def _task_crashed(snapshot, state, plan):
    snapshot["tasks"]["failed"].append(
        {"task": "finalize_removal", "args": [1], "exception": "KeyError", "traceback": ["x"]}
    )


def _product_points_at_an_old_job(snapshot, state, plan):
    snapshot["products"][0]["photo_removal_id"] = 0


def _cancelled_without_a_delete(snapshot, state, plan):
    snapshot["jobs"][0]["status"] = "cancelled"


def _identical_image_sent_again(snapshot, state, plan):
    plan["identical"] = [{"product": 10, "original_product": 9, "original_job": 0}]


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (_uploaded_twice_by_nobody, "uploaded 2 times"),
        (_callback_not_recorded, "the app stored 0"),
        (_unknown_result, "which the emulator does not have"),
        (_result_not_copied, "is not in storage"),
        (_shows_another_cut_out, "differs from ImageKit's version"),
        (_cut_out_of_an_old_image, "of another image than its current photo"),
        (_undocumented_failure, "undocumented reason: ServerError:500"),
        (_failed_but_removed, "the emulator removed its background"),
        (_still_pending, "is still pending"),
        (_original_modified, "was modified"),
        (_stray_file, "no job or product owns it"),
        (_orphan_upload, "belongs to no job"),
        (_paid_twice, "paid 2 times"),
        (_webhook_error, "got 500 from the webhook"),
        (_fresh_signature_refused, "a fresh signature refused"),
        (_task_crashed, "raised KeyError"),
        (_product_points_at_an_old_job, "not its newest"),
        (_cancelled_without_a_delete, "its product was not deleted"),
        (_identical_image_sent_again, "was sent to ImageKit again"),
    ],
)
def test_the_checker_reports_what_went_wrong(break_it, expected):
    snapshot, state, plan = good_run()
    break_it(snapshot, state, plan)
    found = soak.violations(soak.verify(snapshot, state, plan))
    assert any(expected in v for v in found), found


def test_the_upload_of_a_request_the_killed_server_cut_off_is_known_not_stray():
    """Seen in a CI soak: gunicorn was killed during an admin change form's POST, after Django
    had written the upload but before its row committed; the client sent it again."""
    snapshot, state, plan = good_run()
    snapshot["cut_off_uploads"] = ["admin-00007.jpg"]
    snapshot["stray_files"] += ["products/admin-00007.jpg", "products/admin-00007_AbC12dE.jpg"]
    storage = next(c for c in soak.verify(snapshot, state, plan) if c.key == "storage")
    assert storage.ok and storage.known and storage.known[0].startswith("2 x the upload")
    snapshot["stray_files"].append("products/admin-00008.jpg")  # no request cut off for it
    storage = next(c for c in soak.verify(snapshot, state, plan) if c.key == "storage")
    assert storage.violations == [
        "products/admin-00008.jpg is in storage, but no job or product owns it"
    ]


def test_a_twin_of_a_result_made_with_other_options_pays_for_its_own():
    """Seen at 1,000 images: the twin of a product whose result came from an API request with
    other options was uploaded, rightly (another (image, options))."""
    snapshot, state, plan = good_run()
    original = {**snapshot["jobs"][0], "id": 2, "object_id": "9"}
    original["requested_options"] = {**OPTIONS, "bg_color": "FF0000"}
    snapshot["jobs"].append(original)
    plan["identical"] = [{"product": 10, "original_product": 9, "original_job": 2}]
    sent_again = "has the image of product 9 (succeeded), but was sent to ImageKit again"
    found = soak.violations(soak.verify(snapshot, state, plan))
    assert not any(sent_again in v for v in found), found
    original["requested_options"] = OPTIONS  # the same options: it should have shared
    found = soak.violations(soak.verify(snapshot, state, plan))
    assert any(sent_again in v for v in found), found


def test_a_waiter_fails_as_the_superseded_run_it_waited_for_failed():
    """Seen at 1,000 images: job #392 waited on job #338, superseded while its run was at
    ImageKit; that run failed, so the identical image failed the same way."""
    snapshot, state, plan = good_run()
    source = snapshot["jobs"][0]
    source.update(status="superseded", error_code="removal_failed", result_url="")
    waiter = {**source, "id": 2, "object_id": "11", "status": "failed", "duplicate_of_id": 1}
    snapshot["jobs"].append(waiter)
    state["jobs"][0]["status"] = "failed"
    copy_of = "failed as a copy of job #1"
    found = soak.violations(soak.verify(snapshot, state, plan))
    assert not any(copy_of in v for v in found), found
    state["jobs"][0]["status"] = "success"  # the run it waited for did not fail
    found = soak.violations(soak.verify(snapshot, state, plan))
    assert any(copy_of in v for v in found), found


def test_paid_again_after_a_superseded_run_the_app_could_not_learn_of_is_known():
    """Seen at 1,000 images: the superseded payer's result was stored as a new file (an
    emulator fault: a result counts only for the job's own file, so the app does not take it,
    whether its callback came or not), so the identical image waiting on it was sent on its own
    after the deadline."""
    snapshot, state, plan = good_run()
    _paid_twice(snapshot, state, plan)
    snapshot["jobs"][0].update(status="superseded", error_code="no_result", superseded_by_id=3)
    state["jobs"][0]["resultFileId"] = "f9"
    state["callbacks"][0]["deliveries"] = 0
    paid = next(c for c in soak.verify(snapshot, state, plan) if c.key == "paid_once")
    assert paid.ok and paid.known and "could not learn of" in paid.known[0]
    state["callbacks"][0]["deliveries"] = 1  # its callback came: still not the job's own file
    paid = next(c for c in soak.verify(snapshot, state, plan) if c.key == "paid_once")
    assert paid.ok and "could not learn of" in paid.known[0]


def test_a_run_paid_again_after_a_superseded_payer_is_a_violation():
    """Finding 2 (fixed; its test is in tests/test_soak_findings.py): a second paid run of an
    image whose first payer was superseded is reported as a violation."""
    snapshot, state, plan = good_run()
    _paid_twice(snapshot, state, plan)
    snapshot["jobs"][0]["status"] = "superseded"
    snapshot["jobs"][0]["superseded_by_id"] = 2
    snapshot["jobs"][1]["object_id"] = "10"
    snapshot["products"][0]["photo_removal_id"] = 2
    snapshot["products"][0]["result"]["job"] = 2
    state["removeBgRuns"][1]["jobId"] = "job_2"
    checks = soak.verify(snapshot, state, plan)
    paid = next(c for c in checks if c.key == "paid_once")
    assert not paid.ok and any("finding 2" in v for v in paid.violations)


def test_a_job_paying_twice_is_a_violation_and_a_forced_request_is_not():
    """Seen at 1,000 images: job #13 paid twice (finding 1, fixed), then an API request with
    force=True paid for the same image once more (allowed)."""
    snapshot, state, plan = good_run()
    # The same job's second upload (an overwrite) and second run.
    state["uploadsByFileName"]["a__ikbg1.jpg"] = 2
    state["removeBgRuns"].append({**state["removeBgRuns"][0], "jobId": "job_1b"})
    state["jobs"].append({**state["jobs"][0], "id": "job_1b"})
    # A forced API request for the same image and options.
    forced = copy.deepcopy(state["files"][0])
    forced.update(fileId="f3", requestedName="a__ikbg3.jpg")
    forced["versions"][1]["id"] = "v3"
    state["files"].append(forced)
    state["uploadsByFileName"]["a__ikbg3.jpg"] = 1
    state["jobs"].append({"id": "job_3", "fileId": "f3", "status": "success"})
    state["removeBgRuns"].append({**state["removeBgRuns"][0], "jobId": "job_3", "fileId": "f3"})
    snapshot["jobs"].append(
        {
            **snapshot["jobs"][0],
            "id": 3,
            "file_id": "f3",
            "trigger": "api",
            "force": True,
            "result_version_id": "v3",
        }
    )
    snapshot["products"][0].update(
        photo_removal_id=3, result={"job": 3, "name": "x", "sha256": "res"}
    )
    checks = soak.verify(snapshot, state, plan)
    paid = next(c for c in checks if c.key == "paid_once")
    assert not paid.ok and all("forced" not in v or "finding 1" in v for v in paid.violations)
    assert any("finding 1" in v for v in paid.violations)
    assert "1 more forced" in paid.detail
