"""How much does BackgroundRemovalImageField add to save()?

    python bench/save_overhead.py [--saves 1500] [--target 1.10]

Saves testapp.Product (the field) and testapp.PlainProduct (a plain ImageField), each with a fresh
small PNG per save, inside ``transaction.atomic()`` as the admin does, on SQLite with files in a
temporary FileSystemStorage. The two are interleaved (A A B B ...) so that drift and whatever a
commit leaves behind hit both alike; the ratio compares median save() times.

Reported separately: the commit-time cost (the on-commit callback creating the job and enqueueing
the submit task on django-tasks-db's DatabaseBackend); no network is involved anywhere.
Exits 1 when save() with the field is slower than ``--target`` times the plain save().
"""

from __future__ import annotations

import argparse
import gc
import io
import statistics
import sys
import tempfile
import time
import uuid

from _django import configure


def png(seed: int) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (32, 24), (255, 255, 255))
    image.putpixel((seed % 32, (seed // 32) % 24), (seed % 251, 80, 160))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=1500, help="saves per model")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--target", type=float, default=1.10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as media:
        configure(
            {
                "BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": media},
            },
            WEBHOOK_BASE_URL="http://bench.invalid",
        )
        from django.core.files.uploadedfile import SimpleUploadedFile
        from django.db import transaction

        from imagekit_bgremove.models import RemovalJob
        from tests.testapp.models import PlainProduct, Product

        per_round = max(1, args.saves // args.rounds)
        images = [png(n) for n in range(per_round * 2 * args.rounds + 200)]
        counter = iter(range(len(images)))

        def save_one(model, saves: list[float], commits: list[float]) -> None:
            data = images[next(counter) % len(images)]
            upload = SimpleUploadedFile(f"{uuid.uuid4().hex}.png", data, "image/png")
            obj = model(name="bench", photo=upload)
            atomic = transaction.atomic()
            atomic.__enter__()
            t0 = time.perf_counter()
            obj.save()
            t1 = time.perf_counter()
            atomic.__exit__(None, None, None)  # commit: on-commit callbacks run here
            t2 = time.perf_counter()
            saves.append(t1 - t0)
            commits.append(t2 - t1)

        def run(sequence, sides) -> None:
            gc.collect()
            gc.disable()  # as timeit does: a collection must not land in one side's timings
            try:
                for model in sequence:
                    save_one(model, *sides[model])
            finally:
                gc.enable()

        field_save: list[float] = []
        plain_save: list[float] = []
        field_commit: list[float] = []
        plain_commit: list[float] = []
        sides = {Product: (field_save, field_commit), PlainProduct: (plain_save, plain_commit)}
        scratch: list[float] = []
        warm = {Product: (scratch, scratch), PlainProduct: (scratch, scratch)}
        run([Product, PlainProduct] * 50, warm)  # imports, caches, content types
        # A A B B A A B B ...: each model's save() follows each kind of commit equally often,
        # so what a commit leaves behind (caches, allocator) is shared fairly by both sides.
        pattern = [Product, Product, PlainProduct, PlainProduct]
        for r in range(args.rounds):
            start = r % 4
            sequence = [pattern[(start + i) % 4] for i in range(per_round * 2)]
            run(sequence, sides)

        jobs = RemovalJob.objects.count()
        saves = len(field_save) + 50
        ratio = statistics.median(field_save) / statistics.median(plain_save)
        mean_ratio = statistics.fmean(field_save) / statistics.fmean(plain_save)
        us = 1e6
        print(f"saves per model: {len(field_save)} measured (+50 warm-up), interleaved AABB")
        print(f"save() plain ImageField:          {statistics.median(plain_save) * us:8.1f} us")
        print(f"save() BackgroundRemovalImageField:{statistics.median(field_save) * us:8.1f} us")
        print(f"save() ratio of medians:           {ratio:8.3f}x   (target <= {args.target}x)")
        print(f"save() ratio of means:             {mean_ratio:8.3f}x")
        print(f"commit, plain:                     {statistics.median(plain_commit) * us:8.1f} us")
        print(
            f"commit, field (job + enqueue on    {statistics.median(field_commit) * us:8.1f} us"
            "  django-tasks-db)"
        )
        print(f"jobs created: {jobs} (one per field save)")
        if jobs != saves:
            print("FAIL: expected exactly one job per save with the field")
            return 1
        if ratio > args.target:
            print(f"FAIL: save() overhead {ratio:.3f}x exceeds {args.target}x")
            return 1
        print("OK")
        return 0


if __name__ == "__main__":
    sys.exit(main())
