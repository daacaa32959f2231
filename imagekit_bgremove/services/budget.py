"""The daily budget: at most ``DAILY_REMOVAL_LIMIT`` removal requests per day (site time zone).

Requests are counted when they are recorded, in the caller's transaction, with one conditional
UPDATE of the day's row, so the count is exact across processes: of two requests for the last
unit, one wins. A request refused for the budget raises ``BudgetExhausted`` (the API answers
429, the admin shows a message, commands exit non-zero; a save records a failed job that says
why). Requests that turn out to cost nothing (identical images sharing a result) still count:
the budget is a ceiling, never exceeded.
"""

from __future__ import annotations

from datetime import date

from django.db import IntegrityError, router, transaction
from django.db.models import F
from django.utils import timezone

from ..conf import app_settings
from ..models import DailyUsage


class BudgetExhausted(Exception):
    def __init__(self, limit: int, used: int, wanted: int = 1):
        self.limit, self.used, self.wanted = limit, used, wanted
        left = max(0, limit - used)
        super().__init__(
            f"The daily budget of {limit} background removals is spent ({left} left, "
            f"{wanted} asked for); try again tomorrow, or raise DAILY_REMOVAL_LIMIT."
        )


def limit() -> int | None:
    value = app_settings.DAILY_REMOVAL_LIMIT
    return None if value in (None, "") else int(value)


def today() -> date:
    return timezone.localdate()


def used(day: date | None = None) -> int:
    row = DailyUsage.objects.filter(day=day or today()).values_list("requests", flat=True)
    return next(iter(row), 0)


def remaining() -> int | None:
    """Requests left today, or None without a limit."""
    ceiling = limit()
    return None if ceiling is None else max(0, ceiling - used())


def reserve(count: int = 1) -> None:
    """Count ``count`` requests against today's budget, or raise BudgetExhausted. Call it in the
    transaction that records the requests: a rollback gives the units back."""
    ceiling = limit()
    if ceiling is None or count <= 0:
        return
    day = today()
    rows = DailyUsage.objects
    for _ in range(2):
        if rows.filter(day=day, requests__lte=ceiling - count).update(
            requests=F("requests") + count
        ):
            return
        if rows.filter(day=day).exists():
            raise BudgetExhausted(ceiling, used(day), count)
        if count > ceiling:
            raise BudgetExhausted(ceiling, 0, count)
        try:
            with transaction.atomic(using=router.db_for_write(DailyUsage)):
                rows.create(day=day, requests=count)
            return
        except IntegrityError:  # another process created today's row first: count on it
            continue
    raise BudgetExhausted(ceiling, used(day), count)
