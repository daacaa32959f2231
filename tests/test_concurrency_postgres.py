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
from tests.conftest import emulator_settings, make_image, task_backend, uploads
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
    job_ids = [p.photo_removal_id for p in products]
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
