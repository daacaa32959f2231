"""Request failed background removals again (a new job each, from the original image)."""

from datetime import datetime, time

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Exists, OuterRef
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from imagekit_bgremove import services
from imagekit_bgremove.models import JobStatus, RemovalJob


def _since(value: str) -> datetime:
    parsed = parse_datetime(value)
    if parsed is None:
        day = parse_date(value)
        if day is None:
            raise CommandError(f"--failed-since: {value!r} is not a date or an ISO datetime.")
        parsed = datetime.combine(day, time.min)
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    return parsed


class Command(BaseCommand):
    help = "Retry failed background removals: the latest failed job of each image, or --job IDs."

    def add_arguments(self, parser):
        parser.add_argument(
            "--job",
            type=int,
            action="append",
            dest="jobs",
            default=[],
            metavar="ID",
            help="Retry this job (repeatable).",
        )
        parser.add_argument(
            "--failed-since",
            type=_since,
            default=None,
            help="Only jobs that failed at or after this date or ISO datetime.",
        )
        parser.add_argument("--limit", type=int, default=None, help="Retry at most N jobs.")
        parser.add_argument("--dry-run", action="store_true", help="Only list what would run.")

    def handle(self, *args, jobs, failed_since, limit, dry_run, **options):
        qs = RemovalJob.objects.filter(status=JobStatus.FAILED).select_related("content_type")
        if jobs:
            qs = qs.filter(pk__in=jobs)
            missing = set(jobs) - set(qs.values_list("pk", flat=True))
            for job_id in sorted(missing):
                self.stderr.write(f"Job #{job_id} does not exist or has not failed; skipped.")
        if failed_since is not None:
            qs = qs.filter(finished_at__gte=failed_since)
        newer = RemovalJob.objects.filter(
            content_type_id=OuterRef("content_type_id"),
            object_id=OuterRef("object_id"),
            field_name=OuterRef("field_name"),
            pk__gt=OuterRef("pk"),
        )
        qs = qs.annotate(has_newer=Exists(newer))
        retried = skipped = errors = 0
        seen: set[tuple[int, str, str]] = set()
        for job in qs.order_by("-pk").iterator(chunk_size=200):
            key = (job.content_type_id, job.object_id, job.field_name)
            if key in seen:
                continue
            seen.add(key)
            if job.has_newer:
                skipped += 1
                continue
            if limit is not None and retried >= limit:
                break
            if dry_run:
                self.stdout.write(f"Would retry job #{job.pk} ({job.error_code})")
                retried += 1
                continue
            try:
                new = services.retry(job)
            except services.BudgetExhausted as exc:
                raise CommandError(f"Stopped after {retried} retried job(s): {exc}") from exc
            except ValueError as exc:
                errors += 1
                self.stderr.write(f"Job #{job.pk}: {exc}")
                continue
            retried += 1
            self.stdout.write(f"Job #{job.pk} -> new job #{new.pk}")
        verb = "Would retry" if dry_run else "Retried"
        self.stdout.write(
            self.style.SUCCESS(
                f"{verb} {retried} job(s); {skipped} already superseded by a newer request; "
                f"{errors} could not be retried."
            )
        )
