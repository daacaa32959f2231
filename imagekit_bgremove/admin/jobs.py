"""Read-only admins of the app's own records: removal jobs and webhook deliveries.

Nobody edits a job by hand: no Save buttons, and a POST to a change page is refused. What staff
can do is what the service layer offers: retry a failed job (which needs the change permission
on the job's object, as for "Remove background…" there) and queue a reconcile run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.apps import apps
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.contrib.admin.views.main import ChangeList
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.defaultfilters import date as date_filter
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from .. import services
from ..compat import TaskResultStatus
from ..models import JobStatus, RemovalJob
from .display import (
    EMULATOR_NOTE,
    can_change_target,
    error_advice,
    file_url,
    has_model_perm,
    is_emulator,
    job_badge,
    job_error,
    needs_new_options,
    options_summary,
    result_alt,
    result_caption,
    retry_of,
)
from .filters import JobModelFilter, JobStatusFilter, ObjectIdFilter
from .forms import ADMIN_STATIC


def attach_targets(jobs: Sequence[RemovalJob]) -> None:
    """Load the objects of ``jobs`` with one query per model (not one per job) and cache each on
    its job for :func:`job_target` (``None`` for a deleted object)."""
    by_type: dict[int, list[RemovalJob]] = {}
    for job in jobs:
        by_type.setdefault(job.content_type_id, []).append(job)
    for content_type_id, group in by_type.items():
        model = ContentType.objects.get_for_id(content_type_id).model_class()
        if model is None:
            continue
        try:
            objects = model._default_manager.in_bulk({job.object_id for job in group})
        except (ValueError, TypeError, ValidationError):  # an id the primary key cannot take
            continue  # left uncached: job_target asks per job, as get_target does
        by_id = {str(pk): obj for pk, obj in objects.items()}
        for job in group:
            job._ikbg_target = by_id.get(job.object_id)


def job_target(job: RemovalJob) -> models.Model | None:
    """``job.get_target()``, from the cache :func:`attach_targets` filled when it did."""
    if not hasattr(job, "_ikbg_target"):
        job._ikbg_target = job.get_target()
    return job._ikbg_target


def job_storage(job: RemovalJob):
    model = job.content_type.model_class()
    if model is None:
        return None
    try:
        return services.removal_field(model, job.field_name).storage
    except services.RequestError:
        return None


class RemovalJobChangeList(ChangeList):
    def get_results(self, request) -> None:
        super().get_results(request)
        # The "object" column: one query per model on the page, not one per row.
        attach_targets(list(self.result_list))


class ReadOnlyAdmin(admin.ModelAdmin):
    """Nothing is added, changed or deleted by hand: Django then renders the change page as a
    view (no Save buttons) and refuses a POST to it with 403."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @property
    def media(self):
        from django import forms

        return super().media + forms.Media(css={"all": [ADMIN_STATIC + "ikbg.css"]})


@admin.register(RemovalJob)
class RemovalJobAdmin(ReadOnlyAdmin):
    list_display = [
        "job_column",
        "status_column",
        "object_column",
        "requested_column",
        "error_column",
    ]
    list_display_links = ["job_column"]
    list_filter = [JobStatusFilter, "trigger", JobModelFilter, ObjectIdFilter]
    search_fields = ["=id", "file_id", "object_id"]
    date_hierarchy = "created_at"
    list_select_related = ["content_type", "requested_by", "retry"]
    list_per_page = 50
    actions = ["retry_failed"]
    # "Reconcile now" concerns all jobs, not selected ones: an object tool, not an action.
    change_list_template = "admin/imagekit_bgremove/removaljob/change_list.html"

    def get_changelist(self, request, **kwargs: Any) -> type[ChangeList]:
        return RemovalJobChangeList

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("content_type", "requested_by", "retry")

    # -- the list ------------------------------------------------------------------------------
    @admin.display(description=gettext_lazy("job"), ordering="-id")
    def job_column(self, job: RemovalJob) -> str:
        return f"#{job.pk}"

    @admin.display(description=gettext_lazy("status"), ordering="status")
    def status_column(self, job: RemovalJob) -> str:
        retried = retry_of(job) if job.status == JobStatus.FAILED else None
        links = []
        if retried is not None:
            links.append(self._job_link(retried, _("retried as #%d") % retried.pk))
        if job.retry_of_id:
            links.append(self._job_link(job.retry_of_id, _("retry of #%d") % job.retry_of_id))
        return format_html(
            "{}{}",
            job_badge(job, with_retry=True),
            format_html_join("", '<span class="ikbg-sub">{}</span>', ((link,) for link in links)),
        )

    def _job_link(self, job_or_pk, text: str) -> str:
        pk = job_or_pk if isinstance(job_or_pk, int) else job_or_pk.pk
        url = reverse(f"{self.admin_site.name}:imagekit_bgremove_removaljob_change", args=[pk])
        return format_html('<a href="{}">{}</a>', url, text)

    @admin.display(description=gettext_lazy("object"))
    def object_column(self, job: RemovalJob) -> str:
        target = job_target(job)
        if target is None:
            text = format_html(
                "{} {} <em>({})</em>", job.content_type.name, job.object_id, _("deleted")
            )
        else:
            opts = target._meta
            try:
                url = reverse(
                    f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_change",
                    args=[quote(target.pk)],
                )
            except Exception:
                url = ""
            text = format_html('<a href="{}">{}</a>', url, target) if url else str(target)
        return format_html(
            '{}<span class="ikbg-sub">{} · {}</span>',
            text,
            job.field_name,
            options_summary(job.options),
        )

    @admin.display(description=gettext_lazy("requested"), ordering="created_at")
    def requested_column(self, job: RemovalJob) -> str:
        who = str(job.requested_by) if job.requested_by_id else ""
        how = job.get_trigger_display()
        return format_html(
            '<span class="ikbg-nowrap">{}</span><span class="ikbg-sub">{}</span>',
            date_filter(timezone.localtime(job.created_at), "DATETIME_FORMAT"),
            f"{how} · {who}" if who else how,
        )

    @admin.display(description=gettext_lazy("error"))
    def error_column(self, job: RemovalJob) -> str:
        text = job_error(job) or (job.error_message if job.error_code == "enqueue_failed" else "")
        if not text:
            return ""
        return format_html('<span class="ikbg-error-cell" title="{}">{}</span>', text, text)

    # -- the job's page --------------------------------------------------------------------------
    fieldsets_base = [
        (
            None,
            {
                "fields": [
                    "status_detail",
                    "object_column",
                    "options_detail",
                    "force",
                    "requested_column",
                    "retry_detail",
                ]
            },
        ),
        (gettext_lazy("Result"), {"fields": ["preview", "result_detail"]}),
        (
            gettext_lazy("Error"),
            {"fields": ["error_code", "error_message", "advice", "error_details_pretty"]},
        ),
        (
            gettext_lazy("Timing"),
            {
                "fields": [
                    "created_at",
                    "submitted_at",
                    "finished_at",
                    "attempts",
                    "finalize_attempts",
                    "next_attempt_at",
                ]
            },
        ),
        (
            gettext_lazy("ImageKit"),
            {
                "classes": ["collapse"],
                "fields": [
                    "file_id",
                    "file_path",
                    "source_version_id",
                    "result_file_id",
                    "result_version_id",
                    "result_url",
                ],
            },
        ),
        (
            gettext_lazy("Internals"),
            {
                "classes": ["collapse"],
                "fields": [
                    "source_name",
                    "source_hash",
                    "source_size",
                    "content_key",
                    "result_name",
                    "partial_result_name",
                    "duplicate_of",
                    "superseded_by",
                    "lease_expires_at",
                    "submission_uncertain",
                    "requeued_at",
                    "updated_at",
                ],
            },
        ),
    ]

    def get_fieldsets(self, request, obj=None):
        fieldsets = list(self.fieldsets_base)
        if obj is not None and not (obj.error_code or obj.error_message):
            fieldsets = [fs for fs in fieldsets if fs[0] != self.fieldsets_base[2][0]]
        return fieldsets

    def get_readonly_fields(self, request, obj=None):
        return [
            name for _, options in self.get_fieldsets(request, obj) for name in options["fields"]
        ]

    @admin.display(description=gettext_lazy("status"))
    def status_detail(self, job: RemovalJob) -> str:
        return job_badge(job, with_retry=True)

    @admin.display(description=gettext_lazy("options"))
    def options_detail(self, job: RemovalJob) -> str:
        return format_html(
            "{} <code>{}</code>",
            options_summary(job.options),
            json.dumps(job.options, sort_keys=True),
        )

    @admin.display(description=gettext_lazy("retries"))
    def retry_detail(self, job: RemovalJob) -> str:
        parts = []
        if job.retry_of_id:
            parts.append(
                self._job_link(job.retry_of_id, _("This job retries job #%d.") % job.retry_of_id)
            )
        newer = retry_of(job)
        if newer is not None:
            parts.append(self._job_link(newer, _("Retried as job #%d.") % newer.pk))
        return format_html_join(" ", "{}", ((p,) for p in parts)) if parts else "-"

    @admin.display(description=gettext_lazy("preview"))
    def preview(self, job: RemovalJob) -> str:
        storage = job_storage(job)
        original = result = None
        if storage is not None and job.source_name:
            try:
                original = storage.url(job.source_name)
            except (ValueError, NotImplementedError):
                original = None
        if storage is not None and job.result_name and job.status == JobStatus.SUCCEEDED:
            try:
                result = storage.url(job.result_name)
            except (ValueError, NotImplementedError):
                result = None
        if job.status == JobStatus.SUCCEEDED:
            result = result or job.result_url or None
        target = job_target(job)
        name = str(target) if target is not None else job.source_name
        return format_html(
            '<div class="ikbg-pair">{}{}</div>{}',
            figure(original, _("Original: %s") % name, _("Original")),
            figure(result, result_alt(name, job.options), result_caption(job.options))
            if result
            else figure(None, "", _("No result")),
            format_html('<p class="help">{}</p>', EMULATOR_NOTE)
            if result and is_emulator()
            else "",
        )

    @admin.display(description=gettext_lazy("result"))
    def result_detail(self, job: RemovalJob) -> str:
        if not job.result_url:
            return "-"
        size = f"{job.result_width} x {job.result_height} px" if job.result_width else ""
        return format_html(
            '<a href="{}">{}</a> {} {}',
            job.result_url,
            _("ImageKit URL"),
            size,
            job.result_mime,
        )

    @admin.display(description=gettext_lazy("what to do"))
    def advice(self, job: RemovalJob) -> str:
        return error_advice(job) or "-"

    @admin.display(description=gettext_lazy("details from ImageKit"))
    def error_details_pretty(self, job: RemovalJob) -> str:
        if not job.error_details:
            return "-"
        return format_html("<pre>{}</pre>", json.dumps(job.error_details, indent=2, sort_keys=True))

    # -- retrying ------------------------------------------------------------------------------
    def get_urls(self):
        info = "imagekit_bgremove_removaljob"
        return [
            path(
                "<path:object_id>/retry/",
                self.admin_site.admin_view(self.retry_view),
                name=f"{info}_retry",
            ),
            path(
                "<path:object_id>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name=f"{info}_cancel",
            ),
            path(
                "reconcile/",
                self.admin_site.admin_view(self.reconcile_view),
                name=f"{info}_reconcile",
            ),
            *super().get_urls(),
        ]

    def retryable_target(self, request, job: RemovalJob):
        """The job's object when the user may retry the job (failed, not retried yet, the
        object still there and changeable by the user), else None."""
        if job.status != JobStatus.FAILED or retry_of(job) is not None:
            return None
        target = job_target(job)
        if target is None or not can_change_target(self.admin_site, request, target):
            return None
        return target

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = dict(extra_context or {})
        job = self.get_object(request, unquote(object_id))
        if job is not None and self.retryable_target(request, job) is not None:
            extra["ikbg_retry_url"] = reverse(
                f"{self.admin_site.name}:imagekit_bgremove_removaljob_retry", args=[job.pk]
            )
        if job is not None and may_cancel(self.admin_site, request, job):
            extra["ikbg_cancel_url"] = cancel_url(self.admin_site, job)
        return super().change_view(request, object_id, form_url, extra)

    def cancel_view(self, request, object_id):
        """POST: cancel a queued, waiting or pending job (needs the change permission on its
        object, as starting one does); back to ``next`` (the page it was asked from)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        job = self.get_object(request, unquote(object_id))
        if job is None or not may_cancel(self.admin_site, request, job, any_status=True):
            raise PermissionDenied
        try:
            services.cancel(job, user=request.user)
        except services.NotCancellable as exc:
            self.message_user(request, str(exc), messages.WARNING)
        else:
            self.message_user(request, _("Job #%d is cancelled.") % job.pk, messages.SUCCESS)
        back = request.POST.get("next", "")
        if not url_has_allowed_host_and_scheme(
            back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            back = reverse(
                f"{self.admin_site.name}:imagekit_bgremove_removaljob_change", args=[job.pk]
            )
        return HttpResponseRedirect(back)

    def retry_view(self, request, object_id):
        from .pages import retry_page

        job = self.get_object(request, unquote(object_id))
        if job is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        done_url = reverse(
            f"{self.admin_site.name}:imagekit_bgremove_removaljob_change", args=[job.pk]
        )
        if job.status != JobStatus.FAILED or retry_of(job) is not None:
            self.message_user(
                request,
                _("Only a failed job that was not retried yet can be retried."),
                messages.WARNING,
            )
            return HttpResponseRedirect(done_url)
        target = job_target(job)
        if target is None:
            self.message_user(request, _("The job's object no longer exists."), messages.WARNING)
            return HttpResponseRedirect(done_url)
        if not can_change_target(self.admin_site, request, target):
            raise PermissionDenied
        return retry_page(self, request, job, target, job.field_name, done_url=done_url)

    def has_retry_permission(self, request) -> bool:
        """Retrying starts paid work: it needs the change permission on a model with a removal
        field (and, per job, on the job's object)."""
        return any(
            has_model_perm(request.user, model, "change")
            for model in apps.get_models()
            if services.removal_field_names(model)
        )

    def has_reconcile_permission(self, request) -> bool:
        return request.user.has_perm(
            "imagekit_bgremove.change_removaljob"
        ) or self.has_retry_permission(request)

    @admin.action(description=gettext_lazy("Retry failed jobs"), permissions=["retry"])
    def retry_failed(self, request, queryset):
        """One job: its retry page, where the options can be changed. Several: each retried
        with its own options, except those whose error says these options would fail again."""
        jobs = list(queryset.select_related("content_type", "retry"))
        attach_targets(jobs)
        if len(jobs) == 1 and self.retryable_target(request, jobs[0]) is not None:
            return HttpResponseRedirect(
                reverse(
                    f"{self.admin_site.name}:imagekit_bgremove_removaljob_retry", args=[jobs[0].pk]
                )
            )
        retried, refused, forbidden, left_alone, new_options = [], [], [], 0, []
        budget_error = None
        for job in jobs:
            if job.status != JobStatus.FAILED:
                left_alone += 1
                continue
            target = job_target(job)
            if target is not None and not can_change_target(self.admin_site, request, target):
                forbidden.append(f"#{job.pk}")
                continue
            if needs_new_options(job) and retry_of(job) is None:
                new_options.append(job)
                continue
            try:
                new = services.retry(job, user=request.user)
            except services.BudgetExhausted as exc:
                budget_error = exc
                break
            except (services.RequestError, services.OptionsError) as exc:
                refused.append(f"#{job.pk}: {exc}")
                continue
            retried.append(new.pk)
        if retried:
            self.message_user(
                request,
                ngettext("Retried %(n)d failed job.", "Retried %(n)d failed jobs.", len(retried))
                % {"n": len(retried)},
                messages.SUCCESS,
            )
        if forbidden:
            self.message_user(
                request,
                _("Not retried, because you may not change their objects: %s.")
                % ", ".join(forbidden),
                messages.ERROR,
            )
        if new_options:
            links = format_html_join(
                ", ",
                '<a href="{}">#{}</a>',
                (
                    (
                        reverse(
                            f"{self.admin_site.name}:imagekit_bgremove_removaljob_retry",
                            args=[job.pk],
                        ),
                        job.pk,
                    )
                    for job in new_options
                ),
            )
            self.message_user(
                request,
                format_html(
                    "{} {}",
                    _(
                        "Not retried, because the same options would fail again; retry each "
                        "with other options:"
                    ),
                    links,
                ),
                messages.WARNING,
            )
        for line in refused[:20]:
            self.message_user(request, line, messages.WARNING)
        if left_alone:
            self.message_user(
                request,
                ngettext(
                    "%(n)d selected job had not failed and was left alone.",
                    "%(n)d selected jobs had not failed and were left alone.",
                    left_alone,
                )
                % {"n": left_alone},
                messages.INFO,
            )
        if budget_error is not None:
            self.message_user(request, str(budget_error), messages.ERROR)
        if not (retried or forbidden or refused or left_alone or budget_error or new_options):
            self.message_user(request, _("Nothing was retried."), messages.WARNING)

    def changelist_view(self, request, extra_context=None):
        extra = dict(extra_context or {})
        if self.has_reconcile_permission(request):
            extra["ikbg_reconcile_url"] = reverse(
                f"{self.admin_site.name}:imagekit_bgremove_removaljob_reconcile"
            )
        return super().changelist_view(request, extra)

    def reconcile_view(self, request):
        """Queue the reconcile task, which settles what lost callbacks and queues left behind by
        asking ImageKit about jobs pending for longer than RECONCILE_AFTER_SECONDS. Queued, not
        run here: it talks to ImageKit, once per job."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_reconcile_permission(request):
            raise PermissionDenied
        self._reconcile(request)
        return HttpResponseRedirect(
            reverse(f"{self.admin_site.name}:imagekit_bgremove_removaljob_changelist")
        )

    def _reconcile(self, request) -> None:
        result = services.enqueue_reconcile()
        if result is None:
            self.message_user(
                request, _("Reconciliation could not be queued; see the log."), messages.ERROR
            )
            return
        if result.status == TaskResultStatus.FAILED:  # run at once (ImmediateBackend) and raised
            self.message_user(request, _("Reconciliation failed; see the log."), messages.ERROR)
            return
        if result.status != TaskResultStatus.SUCCESSFUL:
            self.message_user(request, _("Reconciliation queued."), messages.SUCCESS)
            return
        # A backend that runs tasks at once (ImmediateBackend) has the summary already.
        done = ", ".join(
            f"{key.replace('_', ' ')}: {value}"
            for key, value in result.return_value.items()
            if value
        ) or _("nothing to do")
        self.message_user(request, _("Reconciled pending jobs (%s).") % done, messages.SUCCESS)


def may_cancel(site, request, job: RemovalJob, *, any_status: bool = False) -> bool:
    """Whether the user may cancel ``job`` (now, unless ``any_status``): the change permission
    on its object, as for starting one."""
    if not any_status and job.status not in services.CANCELLABLE:
        return False
    target = job_target(job)
    return target is not None and can_change_target(site, request, target)


def cancel_url(site, job: RemovalJob) -> str:
    return reverse(f"{site.name}:imagekit_bgremove_removaljob_cancel", args=[job.pk])


def figure(url: str | None, alt: str, caption) -> str:
    if url:
        body = format_html('<img class="ikbg-checker" src="{}" alt="{}">', url, alt)
    else:
        body = format_html('<span class="ikbg-empty">{}</span>', _("none"))
    return format_html(
        '<figure class="ikbg-figure">{}<figcaption>{}</figcaption></figure>', body, caption
    )


__all__ = ["ReadOnlyAdmin", "RemovalJobAdmin", "attach_targets", "file_url", "job_target"]
