"""The "Remove background…" page: an intermediate admin page like Django's delete confirmation.

One page serves three uses: the list action (many objects), the "Remove background…" button of
one object, and "Retry…" of a failed job (the same page, its options filled in from the failed
job). Before anything is sent it shows, for the options in the form, which objects will be sent
and which skipped and why, and what is left of today's budget.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import model_ngettext
from django.db import models
from django.http import HttpResponseRedirect
from django.template.loader import get_template, select_template
from django.template.response import TemplateResponse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from .. import services
from ..models import RemovalJob, Trigger
from ..removebg import OptionsError, RemoveBgOptions
from .display import (
    BREADCRUMBS_AS_LIST,
    EMULATOR_NOTE,
    RemovalState,
    error_advice,
    is_emulator,
    job_error,
    needs_new_options,
    options_summary,
)
from .forms import RemoveBackgroundForm

#: Why an object is not sent (shown per object and counted in the summary).
SEND = "send"
NO_IMAGE = "no_image"
DONE = "done"
RUNNING = "running"
FORBIDDEN = "forbidden"
REASONS = {
    NO_IMAGE: gettext_lazy("no image"),
    DONE: gettext_lazy("already done with these options"),
    RUNNING: gettext_lazy("already being processed with these options"),
    FORBIDDEN: gettext_lazy("you may not change it"),
}
#: Objects listed on the page; the counts always cover every selected object.
MAX_LISTED = 100
TEMPLATE = "admin/imagekit_bgremove/remove_background.html"


@dataclass
class PlanRow:
    obj: models.Model
    state: RemovalState
    verdict: str

    @property
    def send(self) -> bool:
        return self.verdict == SEND

    @property
    def reason(self) -> str:
        return str(REASONS.get(self.verdict, ""))


@dataclass
class Plan:
    rows: list[PlanRow]
    remaining: int | None  # today's budget left, None without a limit
    limit: int | None

    @property
    def to_send(self) -> list[PlanRow]:
        return [row for row in self.rows if row.send]

    @property
    def skipped(self) -> list[tuple[str, int]]:
        counts = Counter(row.verdict for row in self.rows if not row.send)
        return [(str(REASONS[v]), counts[v]) for v in REASONS if counts[v]]

    @property
    def over_budget(self) -> bool:
        return self.remaining is not None and len(self.to_send) > self.remaining


def verdict(
    state: RemovalState, options: RemoveBgOptions | None, *, force: bool, allowed: bool
) -> str:
    if not allowed:
        return FORBIDDEN
    if not state.has_image:
        return NO_IMAGE
    if options is None or force:
        return SEND
    wanted = options.to_dict()
    if state.result_job is not None and state.result_job.options == wanted:
        return DONE  # the cut-out shown is this image with these options
    if state.unfinished and state.job.options == wanted:
        return RUNNING
    return SEND


def make_plan(
    objects: Iterable[models.Model],
    field_name: str,
    options: RemoveBgOptions | None,
    *,
    force: bool,
    allowed,  # callable(obj) -> bool
) -> Plan:
    rows = []
    for obj in objects:
        state = RemovalState(obj, field_name)
        rows.append(PlanRow(obj, state, verdict(state, options, force=force, allowed=allowed(obj))))
    return Plan(rows, services.budget.remaining(), services.budget.limit())


def send(
    model_admin,
    request,
    plan: Plan,
    field_name: str,
    options: RemoveBgOptions,
    *,
    force: bool,
) -> int:
    """Request a removal for each object the plan sends; tell the user what happened.
    Returns how many were queued."""
    queued: list[int] = []
    refused: list[str] = []
    budget_error = None
    for row in plan.to_send:
        try:
            job = services.request_removal(
                row.obj,
                field_name,
                options=options,
                trigger=Trigger.ADMIN,
                user=request.user,
                force=force,
            )
        except services.BudgetExhausted as exc:
            budget_error = exc
            break
        except (services.RequestError, OptionsError) as exc:
            refused.append(f"{row.obj}: {exc}")
            continue
        queued.append(job.pk)
    report(model_admin, request, plan, queued, refused, budget_error)
    return len(queued)


def report(model_admin, request, plan: Plan, queued, refused, budget_error) -> None:
    count = len(queued)
    if count:
        model_admin.message_user(
            request,
            ngettext(
                "Queued %(count)d background removal (job #%(first)s); its state updates "
                "in the list as it progresses.",
                "Queued %(count)d background removals (jobs #%(first)s to #%(last)s); their "
                "states update in the list as they progress.",
                count,
            )
            % {"count": count, "first": min(queued), "last": max(queued)},
            messages.SUCCESS,
        )
    skipped = plan.skipped
    if skipped:
        parts = [f"{n} {reason}" for reason, n in skipped]
        model_admin.message_user(
            request,
            _("Not sent: %(parts)s.") % {"parts": "; ".join(parts)},
            messages.INFO if count else messages.WARNING,
        )
    for line in refused[:20]:
        model_admin.message_user(request, _("Not sent: %s") % line, messages.WARNING)
    if budget_error is not None:
        left = len(plan.to_send) - count - len(refused)
        model_admin.message_user(
            request,
            ngettext(
                "%(budget)s %(left)d image was not sent.",
                "%(budget)s %(left)d images were not sent.",
                left,
            )
            % {"budget": budget_error, "left": left},
            messages.ERROR,
        )
    elif not count and not skipped and not refused:
        model_admin.message_user(request, _("Nothing was sent."), messages.WARNING)


def render(
    model_admin,
    request,
    *,
    form,
    plan: Plan,
    mode: str,
    title: str,
    objects_name: str,
    submit_label: str,
    job=None,
    extra: dict[str, Any] | None = None,
) -> TemplateResponse:
    """The page. ``mode``: "action" (POSTs back to the list), "object" or "retry"."""
    opts = model_admin.model._meta
    rows = plan.rows
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "subtitle": None,
        "opts": opts,
        "mode": mode,
        "form": form,
        "adminform": helpers.AdminForm(form, form.admin_fieldsets(), {}, model_admin=model_admin),
        "plan": plan,
        "listed_rows": rows[:MAX_LISTED],
        "unlisted": max(0, len(rows) - MAX_LISTED),
        "objects_name": objects_name,
        "submit_label": submit_label,
        "job": job,
        "emulator_note": EMULATOR_NOTE if is_emulator() else "",
        "breadcrumbs_as_list": BREADCRUMBS_AS_LIST,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across", "0"),
        "action_name": request.POST.get("action", ""),
        "media": model_admin.media + form.media,
        **(extra or {}),
    }
    request.current_app = model_admin.admin_site.name
    template = getattr(model_admin, "removal_action_template", TEMPLATE)
    return TemplateResponse(request, template, context)


def objects_label(model_admin, count: int) -> str:
    return str(model_ngettext(model_admin.model._meta, count))


def wrap_template(response: TemplateResponse, template: str) -> None:
    """Render ``template`` instead, extending the template the response would have used (so
    project and app overrides of Django's templates keep working)."""
    names = response.template_name
    parent = get_template(names) if isinstance(names, str) else select_template(names)
    response.context_data["ikbg_parent_template"] = parent
    response.template_name = template


def retry_page(model_admin, request, job: RemovalJob, obj, field_name: str, *, done_url: str):
    """The retry page of a failed job (from the object's change form or the jobs admin): the
    failed job's error and options, editable; POST retries it."""
    bound = request.method == "POST" and ("apply" in request.POST or "_recount" in request.POST)
    form = RemoveBackgroundForm(
        request.POST if bound else None,
        field_choices=[(field_name, field_name)],
        base=job.remove_bg_options,
    )
    form.fields.pop("force")
    valid = bound and form.is_valid()
    options = form.cleaned_data["options"] if valid else job.remove_bg_options
    plan = make_plan([obj], field_name, options, force=True, allowed=lambda o: True)
    if valid and "apply" in request.POST:
        try:
            new = services.retry(job, user=request.user, options=options)
        except services.BudgetExhausted as exc:
            form.add_error(None, str(exc))
        except (services.NotRetryable, services.AlreadyRetried) as exc:
            model_admin.message_user(request, str(exc), messages.WARNING)
            return HttpResponseRedirect(done_url)
        except (services.RequestError, OptionsError) as exc:
            form.add_error(None, str(exc))
        else:
            model_admin.message_user(
                request,
                _("Job #%(old)d is being retried as job #%(new)d.")
                % {"old": job.pk, "new": new.pk},
                messages.SUCCESS,
            )
            return HttpResponseRedirect(done_url)
    return render(
        model_admin,
        request,
        form=form,
        plan=plan,
        mode="retry",
        title=_("Retry background removal"),
        objects_name=str(obj._meta.verbose_name),
        submit_label=_("Retry"),
        job=job,
        extra={
            "cancel_url": done_url,
            "crumb_obj": obj if isinstance(obj, model_admin.model) else job,
            "job_error": job_error(job),
            "job_advice": error_advice(job),
            "job_needs_new_options": needs_new_options(job),
            "job_options": options_summary(job.options),
        },
    )
