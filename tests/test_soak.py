"""The soak test (bench/soak.py), small: PostgreSQL, the emulator, gunicorn and two db_worker
processes, under faults, checked against the emulator's ground truth. ``./dev soak`` runs the
full one (200 images).

The checker itself (``soak.verify``) is tested here too, on a hand-made run, so that a soak that
passes means something."""

from __future__ import annotations

import copy
import os

import pytest
from django.db import connection

from bench import soak

SOAK_ARGS = ["--images", "30", "--seed", "7", "--timeout", "150", "--quiet"]


@pytest.mark.postgres
@pytest.mark.slow
def test_small_soak_matches_the_ground_truth():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    database_url = os.environ["DATABASE_URL"]
    report = soak.run_in_subprocess(
        SOAK_ARGS, timeout=300, env={**os.environ, "DATABASE_URL": database_url}
    )
    assert report["returncode"] == 0 and report["violations"] == [], report["output"]

    # Every product ends with a settled removal; jobs are one per image saved.
    settled = report["products_settled"]
    assert settled["succeeded"] + settled["failed"] == report["products"]
    assert report["jobs"]["total"] == report["images_saved"]
    assert (
        report["jobs"].get("succeeded", 0)
        + report["jobs"].get("failed", 0)
        + report["jobs"].get("superseded", 0)
        == report["jobs"]["total"]
    )
    # One upload per submitted job and per distinct image; identical images shared a result
    # instead (only a twin whose original was superseded while it waited is sent on its own).
    assert report["uploads"] == report["submitted_jobs"]
    reuploads = report["uploads"] - report["unique_upload_contents"]
    assert 0 <= reuploads <= report["racing_originals_superseded"]
    assert report["identical"] >= 2 and report["jobs"]["shared"] >= report["identical"]
    # Every callback attempt the webhook answered is on record; each delivered callback was
    # repeated (its first attempt is counted as failed), and the repeats changed nothing.
    callbacks = report["callbacks"]
    # Repeats of a recorded result are counted rather than stored.
    repeats = callbacks["counted_repeats"]
    assert callbacks["answered_200"] == sum(callbacks["app_verdicts"].values()) + repeats
    assert callbacks["counted_failed_on_purpose"] >= callbacks["delivered"] > 0
    assert callbacks["app_verdicts"].get("duplicate", 0) + repeats >= callbacks["delivered"]
    assert callbacks["gave_up"] == 0
    # Lost callbacks were made up for by reconcile: a result found, or no result by the deadline.
    repaired = report["reconcile"]["repaired_lost_callbacks"]
    assert repaired + report["failure_reasons"].get("no_result", 0) <= callbacks["lost"]

    # Nothing is left behind: the database is dropped, the processes are gone.
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


def good_run() -> tuple[dict, dict, dict]:
    """One product, one job, uploaded once, remove-bg succeeded, the callback delivered twice."""
    snapshot = {
        "counted": {"duplicate": 1},
        "jobs": [
            {
                "id": 1,
                "status": "succeeded",
                "object_id": "10",
                "file_id": "f1",
                "source_name": "products/a.jpg",
                "source_hash": "src",
                "result_version_id": "v2",
                "result_url": "http://ik/a.jpg",
                "result_name": "products/a_nobg_1.png",
                "result_sha256": "res",
                "error_code": "",
                "error_message": "",
                "duplicate_of_id": None,
                "superseded_by_id": None,
                "attempts": 1,
                "trigger": "save",
                "finished_at": 2.0,
            }
        ],
        "deliveries": [
            {
                "id": n,
                "job_id": 1,
                "status_code": 200,
                "verdict": verdict,
                "webhook_id": WEBHOOK_ID,
                "error": "",
            }
            for n, verdict in ((1, "accepted"),)
        ],
        "tasks": [{"task": "submit_removal", "status": "SUCCESSFUL", "args": [1]}],
        "products": [{"id": 10, "name": "a", "photo": "products/a.jpg", "photo_removal_id": 1}],
        "originals": {"products/a.jpg": {"expected": "src", "actual": "src"}},
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
        "jobs": [{"id": "job_1", "fileId": "f1", "status": "success", "resultVersionId": "v2"}],
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
    assert soak.verify(*good_run()) == []


def _uploaded_twice(snapshot, state, plan):
    state["uploadsByFileName"]["a__ikbg1.jpg"] = 2
    state["files"][0]["versions"].insert(1, {"id": "o", "source": "overwrite", "sha256": "src"})


def _callback_not_recorded(snapshot, state, plan):
    snapshot["deliveries"].pop()


def _unknown_result(snapshot, state, plan):
    snapshot["jobs"][0]["result_version_id"] = "v9"


def _result_not_copied(snapshot, state, plan):
    snapshot["jobs"][0]["result_sha256"] = None


def _undocumented_failure(snapshot, state, plan):
    snapshot["jobs"][0].update(status="failed", error_code="ServerError:500")


def _failed_but_removed(snapshot, state, plan):
    snapshot["jobs"][0].update(status="failed", error_code="no_result")


def _still_pending(snapshot, state, plan):
    snapshot["jobs"][0]["status"] = "pending"


def _original_modified(snapshot, state, plan):
    snapshot["originals"]["products/a.jpg"]["actual"] = "other"


def _orphan_upload(snapshot, state, plan):
    orphan = copy.deepcopy(state["files"][0])
    orphan.update(fileId="f2", requestedName="b__ikbg2.jpg")
    orphan["versions"] = [{"id": "f2", "source": "upload", "sha256": "other"}]
    state["files"].append(orphan)


def _twin_failed_with_superseded_original(snapshot, state, plan):
    snapshot["jobs"][0]["status"] = "superseded"
    snapshot["jobs"][0]["superseded_by_id"] = 2
    snapshot["jobs"].append(
        {
            **snapshot["jobs"][0],
            "id": 2,
            "status": "failed",
            "object_id": "10",
            "file_id": "",
            "duplicate_of_id": 1,
            "superseded_by_id": None,
            "error_code": "original_failed",
        }
    )
    snapshot["products"][0]["photo_removal_id"] = 2


def _identical_image_removed_twice(snapshot, state, plan):
    second = copy.deepcopy(state["files"][0])
    second.update(fileId="f2", requestedName="b__ikbg2.jpg")
    second["versions"][1]["id"] = "v3"
    state["files"].append(second)
    state["jobs"].append({"id": "job_2", "fileId": "f2", "status": "success"})
    snapshot["jobs"].append(
        {
            **snapshot["jobs"][0],
            "id": 2,
            "object_id": "11",
            "file_id": "f2",
            "result_version_id": "v3",
        }
    )
    snapshot["products"].append({"id": 11, "name": "b", "photo": "b", "photo_removal_id": 2})


def _webhook_error(snapshot, state, plan):
    state["callbacks"][0]["attempts"].append(
        {"attempt": 3, "status": 500, "error": None, "simulatedFailure": False}
    )


def _task_crashed(snapshot, state, plan):
    snapshot["tasks"].append(
        {
            "task": "finalize_removal",
            "status": "FAILED",
            "args": [1],
            "exception": "builtins.KeyError",
            "traceback": ["KeyError: 'x'"],
        }
    )


def _product_points_at_an_old_job(snapshot, state, plan):
    snapshot["products"][0]["photo_removal_id"] = 0


def _identical_image_sent_again(snapshot, state, plan):
    plan["identical"] = [{"product": 10, "original_product": 9, "original_job": 0}]


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (_uploaded_twice, "uploaded 2 times"),
        (_callback_not_recorded, "but the app stored 0 and counted 1 repeat(s)"),
        (_unknown_result, "which the emulator does not have"),
        (_result_not_copied, "is not in storage"),
        (_undocumented_failure, "undocumented reason: ServerError:500"),
        (_failed_but_removed, "the emulator removed its background"),
        (_still_pending, "is still pending"),
        (_original_modified, "was modified"),
        (_orphan_upload, "belongs to no job"),
        (_webhook_error, "got 500 from the webhook"),
        (
            _twin_failed_with_superseded_original,
            "copy of job #1, which did not fail (it is superseded)",
        ),
        (_identical_image_removed_twice, "should share one result"),
        (_task_crashed, "raised builtins.KeyError"),
        (_product_points_at_an_old_job, "not at its newest job #1"),
        (_identical_image_sent_again, "sent to ImageKit again instead of sharing"),
    ],
)
def test_the_checker_reports_what_went_wrong(break_it, expected):
    snapshot, state, plan = good_run()
    break_it(snapshot, state, plan)
    violations = soak.verify(snapshot, state, plan)
    assert any(expected in v for v in violations), violations
