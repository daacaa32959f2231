"""backfill_removals over 10,000 rows: bounded memory and a constant number of queries per batch.

    python bench/backfill.py [--rows 10000] [--batch-size 500]

Runs on SQLite with django-tasks-db's DatabaseBackend (one enqueued task row per job, nothing
executes). Two passes:

1. tracemalloc peak for the first 2,000 rows;
2. all rows: tracemalloc peak, which must not grow with the number of rows (it is bounded by the
   batch size), and CaptureQueriesContext around each batch: every full batch costs the same.

Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

from _django import configure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--max-peak-mb", type=float, default=16.0)
    args = parser.parse_args()
    configure({"BACKEND": "django.core.files.storage.InMemoryStorage"})

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from imagekit_bgremove import services
    from imagekit_bgremove.management.commands.backfill_removals import backfill
    from imagekit_bgremove.models import RemovalJob
    from imagekit_bgremove.state import with_removal_status
    from tests.testapp.models import Product

    Product.objects.bulk_create(
        (Product(name=f"p{n}", photo=f"products/p{n}.png") for n in range(args.rows)),
        batch_size=1000,
    )
    field = Product._meta.get_field("photo")
    options = services.field_options(field)
    ok = True

    def reset() -> None:
        RemovalJob.objects.all().delete()
        connection.queries_log.clear()

    # 1. memory with a small run
    small_rows = min(2000, args.rows)
    reset()
    tracemalloc.start()
    backfill(Product, field, options=options, limit=small_rows, batch_size=args.batch_size)
    small_peak = tracemalloc.get_traced_memory()[1] / 1024 / 1024
    tracemalloc.stop()

    # 2. the full run: memory, and the queries of each batch
    reset()
    per_batch: list[int] = []

    def progress(done: int, batches: int) -> None:
        per_batch.append(len(connection.queries_log))
        connection.queries_log.clear()  # the log (max 9000 entries) holds one batch at a time

    tracemalloc.start()
    with CaptureQueriesContext(connection):  # records every query into queries_log
        started = time.perf_counter()
        summary = backfill(
            Product, field, options=options, batch_size=args.batch_size, progress=progress
        )
        elapsed = time.perf_counter() - started
    full_peak = tracemalloc.get_traced_memory()[1] / 1024 / 1024
    tracemalloc.stop()

    print(f"rows: {args.rows}, batch size: {args.batch_size}")
    print(f"peak traced memory, {small_rows:>6} rows: {small_peak:6.2f} MB")
    print(
        f"peak traced memory, {args.rows:>6} rows: {full_peak:6.2f} MB "
        "(includes one batch of captured queries)"
    )
    if full_peak > max(small_peak * 1.5, small_peak + 2) or full_peak > args.max_peak_mb:
        print("FAIL: peak memory grows with the number of rows")
        ok = False
    jobs = RemovalJob.objects.count()
    full = per_batch[:-1] if args.rows % args.batch_size else per_batch
    print(
        f"batches: {summary['batches']}, jobs: {jobs}, wall time: {elapsed:.2f} s under "
        f"tracemalloc "
        f"({elapsed / max(jobs, 1) * 1e6:.0f} us per row)"
    )
    print(
        f"queries per batch: {sorted(set(per_batch))} "
        f"(= 1 SELECT + INSERT jobs + UPDATE supersede + UPDATE pointers "
        f"+ {args.batch_size} enqueues + transaction bookkeeping)"
    )
    if len(set(full)) != 1:
        print("FAIL: queries per batch are not constant")
        ok = False
    if jobs != args.rows:
        print(f"FAIL: expected {args.rows} jobs, got {jobs}")
        ok = False
    pointed = with_removal_status(Product.objects.all(), "photo")
    pointed = pointed.filter(photo_removal_status__isnull=False).count()
    if pointed != args.rows:
        print(f"FAIL: {pointed} rows have a job")
        ok = False
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
