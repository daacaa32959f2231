"""Delete webhook delivery records older than the retention period."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from imagekit_bgremove.conf import app_settings
from imagekit_bgremove.models import WebhookDelivery


class Command(BaseCommand):
    help = (
        "Delete WebhookDelivery rows received more than --days days ago "
        "(default: IMAGEKIT_BGREMOVE['WEBHOOK_DELIVERY_RETENTION_DAYS'])."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="Keep this many days of deliveries (default: WEBHOOK_DELIVERY_RETENTION_DAYS).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count what would be deleted."
        )

    def handle(self, *args, days: int | None, dry_run: bool, verbosity: int, **options) -> None:
        if days is None:
            days = int(app_settings.WEBHOOK_DELIVERY_RETENTION_DAYS)
        if days < 0:
            raise CommandError("--days must be 0 or more.")
        cutoff = timezone.now() - timedelta(days=days)
        old = WebhookDelivery.objects.filter(received_at__lt=cutoff)
        if dry_run:
            count = old.count()
            self.stdout.write(
                f"Would delete {count} webhook deliver{'y' if count == 1 else 'ies'} "
                f"received before {cutoff:%Y-%m-%d %H:%M} UTC."
            )
            return
        count = 0
        # In batches, so that a long-neglected table does not mean one huge transaction.
        while True:
            ids = list(old.order_by("pk").values_list("pk", flat=True)[:5000])
            if not ids:
                break
            count += WebhookDelivery.objects.filter(pk__in=ids).delete()[0]
        if verbosity:
            self.stdout.write(
                f"Deleted {count} webhook deliver{'y' if count == 1 else 'ies'} "
                f"received before {cutoff:%Y-%m-%d %H:%M} UTC."
            )
