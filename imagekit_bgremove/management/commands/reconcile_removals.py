"""Settle what lost callbacks, dead workers and broken queues left behind (run it from cron)."""

from django.core.management.base import BaseCommand

from imagekit_bgremove import services


class Command(BaseCommand):
    help = (
        "Check jobs pending at ImageKit for too long, fail those past the deadline, and queue "
        "again jobs whose retry time has come or whose submission was lost."
    )

    def handle(self, *args, **options):
        summary = services.reconcile()
        if options["verbosity"] < 1 or (options["verbosity"] == 1 and not any(summary.values())):
            return  # quiet when run every minute from cron with nothing to do
        width = max(len(key) for key in summary)
        for key, value in summary.items():
            self.stdout.write(f"{key.replace('_', ' '):<{width}}  {value}")
        self.stdout.write(self.style.SUCCESS("Reconciled."))
