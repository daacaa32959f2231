"""The management commands: backfill_removals, reconcile_removals, retry_removals."""

from __future__ import annotations

import json
import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from imagekit_bgremove.compat import task_backends
from imagekit_bgremove.models import JobStatus, RemovalJob, Trigger
from tests.testapp.models import Document, Product

pytestmark = pytest.mark.django_db


def products(n: int, start: int = 0) -> list[Product]:
    # bulk_create: no save signals, like rows that existed before the field was added.
    return Product.objects.bulk_create(
        [Product(name=f"p{i}", photo=f"products/p{i}.png") for i in range(start, start + n)]
    )


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=out)
    return out.getvalue()


def test_backfill_requests_one_job_per_image_in_batches(dummy_tasks, run_on_commit):
    products(7)
    no_image = Product.objects.create(name="no image")
    with run_on_commit():
        output = run(
            "backfill_removals",
            "testapp.Product",
            "photo",
            "--batch-size",
            "3",
            "--options",
            json.dumps({"bg_color": "green"}),
        )
    assert "Requested 7 removal(s) for testapp.Product.photo in 3 batch(es)" in output
    assert output.count("row(s) in") == 3  # one progress line per batch
    jobs = RemovalJob.objects.order_by("pk")
    assert jobs.count() == 7
    assert {j.trigger for j in jobs} == {Trigger.COMMAND}
    assert {j.options["bg_color"] for j in jobs} == {"green"}
    for product in Product.objects.exclude(photo=""):
        assert product.photo.removal.object_id == str(product.pk)
        assert product.photo.removal.source_name == product.photo.name
    assert Product.objects.get(pk=no_image.pk).photo.removal is None
    enqueued = task_backends["default"].results
    assert sorted(r.args[0] for r in enqueued) == sorted(j.pk for j in jobs)


def test_backfill_only_missing_dry_run_limit_and_supersede(dummy_tasks):
    products(5)
    run("backfill_removals", "testapp.Product", "photo", "--limit", "2")
    assert RemovalJob.objects.count() == 2
    first = RemovalJob.objects.order_by("pk").first()
    RemovalJob.objects.filter(pk=first.pk).update(status=JobStatus.SUCCEEDED)
    output = run("backfill_removals", "testapp.Product", "photo", "--only-missing", "--dry-run")
    assert "Would request 3 removal(s)" in output
    assert RemovalJob.objects.count() == 2
    run("backfill_removals", "testapp.Product", "photo", "--only-missing")
    assert RemovalJob.objects.count() == 5
    # Everything again: unfinished older jobs are superseded by the new ones.
    run("backfill_removals", "testapp.Product", "photo", "--force")
    assert RemovalJob.objects.filter(status=JobStatus.QUEUED, force=True).count() == 5
    superseded = RemovalJob.objects.filter(status=JobStatus.SUPERSEDED)
    assert superseded.count() == 4
    for job in superseded:
        assert job.superseded_by.object_id == job.object_id
        assert job.superseded_by.pk > job.pk


def test_backfill_queries_per_batch_are_constant(dummy_tasks):
    products(40)
    counts = []
    for limit_batches in (1, 4):
        RemovalJob.objects.all().delete()
        with CaptureQueriesContext(connection) as ctx:
            run(
                "backfill_removals",
                "testapp.Product",
                "photo",
                "--batch-size",
                "10",
                "--limit",
                str(10 * limit_batches),
            )
        counts.append(len(ctx.captured_queries))
    per_batch = (counts[1] - counts[0]) / 3
    assert per_batch <= 8, counts
    assert counts[0] <= per_batch + 6


def test_backfill_uuid_pk_and_bad_input(dummy_tasks):
    Document.objects.bulk_create([Document(scan=f"scans/{i}.png") for i in range(3)])
    run("backfill_removals", "testapp.Document", "scan", "--batch-size", "2")
    for doc in Document.objects.all():
        assert doc.scan.removal.object_id == str(doc.pk)
    with pytest.raises(CommandError, match="bg_color"):
        run("backfill_removals", "testapp.Product", "photo", "--options", '{"bg_color": 5}')
    with pytest.raises(CommandError, match="not a BackgroundRemovalImageField"):
        run("backfill_removals", "testapp.Product", "name")
    with pytest.raises(CommandError, match="Unknown model"):
        run("backfill_removals", "testapp.Nope", "photo")


def test_retry_and_reconcile_commands(dummy_tasks):
    products(3)
    run("backfill_removals", "testapp.Product", "photo")
    failed = list(RemovalJob.objects.order_by("pk")[:2])
    RemovalJob.objects.filter(pk__in=[j.pk for j in failed]).update(
        status=JobStatus.FAILED, finished_at=timezone.now(), error_code="removal_failed"
    )
    with CaptureQueriesContext(connection) as ctx:
        output = run("retry_removals", "--dry-run")
    assert "Would retry 2 job(s)" in output
    assert not RemovalJob.objects.filter(trigger=Trigger.RETRY).exists()
    assert len(ctx.captured_queries) == 1  # one SELECT, however many failed jobs
    output = run("retry_removals", "--job", str(failed[0].pk))
    assert "Retried 1 job(s)" in output
    retried = RemovalJob.objects.filter(trigger=Trigger.RETRY)
    assert retried.count() == 1 and retried[0].object_id == failed[0].object_id
    output = run("retry_removals", "--failed-since", "2000-01-01", "--limit", "5")
    assert "Retried 1 job(s); 1 already superseded" in output
    with pytest.raises(CommandError):
        run("retry_removals", "--failed-since", "yesterday-ish")
    # From cron every minute: silent when there is nothing to do, a summary otherwise.
    assert run("reconcile_removals") == ""
    RemovalJob.objects.filter(pk=retried[0].pk).update(error_code="enqueue_failed")
    output = run("reconcile_removals")
    assert re.search(r"^requeued\s+1$", output, re.M) and "Reconciled." in output
