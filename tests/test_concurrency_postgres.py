"""Two worker PROCESSES racing over the same jobs on PostgreSQL: each image is uploaded once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from imagekit_bgremove.models import JobStatus, RemovalJob
from tests.helpers import emulator_settings, make_image, task_backend, uploads
from tests.testapp.models import Product

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, os, sys, time
import django
from django.conf import settings

django.setup()
config = json.loads(os.environ["IKBG_WORKER_CONFIG"])
settings.DATABASES["default"]["NAME"] = config["database"]
settings.IMAGEKIT_BGREMOVE = config["imagekit"]
settings.STORAGES = config["storages"]
settings.TASKS = config["tasks"]
from imagekit_bgremove import services

while time.time() < config["start_at"]:
    time.sleep(0.001)
outcomes = [services.submit(job_id) for job_id in config["jobs"]]
print(json.dumps(outcomes))
"""


@pytest.fixture
def filesystem_storage(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }
    return settings.STORAGES


def test_two_processes_submit_each_job_exactly_once(emulator, settings, filesystem_storage):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    settings.TASKS = {"default": {"BACKEND": task_backend("dummy.DummyBackend")}}
    products = [
        Product.objects.create(name=f"race {n}", photo=make_image(f"race{n}.png", seed=n))
        for n in range(20)
    ]
    job_ids = [p.photo.removal.pk for p in products]
    assert all(job_ids)
    assert RemovalJob.objects.filter(status=JobStatus.QUEUED).count() == 20

    config = {
        "database": connection.settings_dict["NAME"],
        "imagekit": emulator_settings(emulator),
        "storages": filesystem_storage,
        "tasks": settings.TASKS,
        "start_at": time.time() + 2.0,
        "jobs": job_ids,
    }
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(REPO),
        "IKBG_WORKER_CONFIG": json.dumps(config),
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))

    # Every job was claimed by exactly one process; the other skipped it.
    for first, second in zip(*results, strict=True):
        assert sorted([first, second]) == ["pending", "skipped"]
    assert RemovalJob.objects.filter(status=JobStatus.PENDING).count() == 20
    # Ground truth: twenty uploads, one per job, no second file for any of them.
    stored = uploads(emulator)
    assert len(stored) == 20
    assert len({u["fileId"] for u in stored}) == 20
    assert {u["fileId"] for u in stored} == set(
        RemovalJob.objects.values_list("file_id", flat=True)
    )


def _in_parallel(*actions, hold: float = 0.3):
    """Run each action in its own thread, connection and transaction, started together; each
    transaction stays open ``hold`` seconds after its action, so that they overlap."""
    import threading

    from django.db import connections, transaction

    barrier = threading.Barrier(len(actions))
    results: list = [None] * len(actions)
    errors: list = []

    def run(index, action):
        try:
            with transaction.atomic():
                barrier.wait(timeout=10)
                results[index] = action()
                time.sleep(hold)
        except Exception as exc:  # reported by the test
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(actions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


def test_concurrent_requests_for_one_image_leave_one_live_job(emulator, settings):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    from imagekit_bgremove import services
    from imagekit_bgremove.models import UNFINISHED

    settings.TASKS = {"default": {"BACKEND": task_backend("dummy.DummyBackend")}}
    product = Product.objects.create(name="race", photo=make_image("race.png", seed=1))
    RemovalJob.objects.all().delete()

    def request():
        return services.request_removal(Product.objects.get(pk=product.pk), "photo").pk

    first, second = _in_parallel(request, request)
    live = RemovalJob.objects.filter(status__in=UNFINISHED)
    assert live.count() == 1
    loser = RemovalJob.objects.exclude(pk=live.get().pk).get()
    assert {first, second} == {live.get().pk, loser.pk}
    assert loser.status == JobStatus.SUPERSEDED and loser.superseded_by_id == live.get().pk
    assert Product.objects.get(pk=product.pk).photo.removal.pk == live.get().pk


def test_concurrent_saves_of_one_object_leave_one_live_job(emulator, settings):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    from imagekit_bgremove.models import UNFINISHED

    settings.TASKS = {"default": {"BACKEND": task_backends_dummy()}}
    product = Product.objects.create(name="race", photo=make_image("race.png", seed=2))

    def save(seed):
        def action():
            mine = Product.objects.get(pk=product.pk)
            mine.photo = make_image(f"new{seed}.png", seed=seed)
            mine.save()

        return action

    _in_parallel(save(3), save(4))
    assert RemovalJob.objects.filter(status__in=UNFINISHED).count() == 1
    assert RemovalJob.objects.filter(status=JobStatus.SUPERSEDED).count() == 2


def test_identical_images_submitted_at_once_are_uploaded_once(emulator, settings):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    from imagekit_bgremove import services

    settings.TASKS = {"default": {"BACKEND": task_backends_dummy()}}
    products = [
        Product.objects.create(name=f"twin {n}", photo=make_image(f"twin{n}.png", seed=5))
        for n in range(2)
    ]
    jobs = [p.photo.removal.pk for p in products]
    outcomes = _in_parallel(*[lambda job=job: services.submit(job) for job in jobs], hold=0)
    assert sorted(outcomes) == ["pending", "waiting"]
    assert len(uploads(emulator)) == 1


def task_backends_dummy() -> str:
    return task_backend("dummy.DummyBackend")
