"""Admin for the app's own models, and a mixin for your ModelAdmins.

``RemovalJobAdmin`` and ``WebhookDeliveryAdmin`` are read-only views of what happened; the jobs
list has two actions: "Retry failed jobs" and "Reconcile now" (ask ImageKit about pending jobs
whose callback has not come).

``BackgroundRemovalAdminMixin`` goes in front of ``admin.ModelAdmin`` for models with a
:class:`~imagekit_bgremove.fields.BackgroundRemovalImageField`::

    @admin.register(Product)
    class ProductAdmin(BackgroundRemovalAdminMixin, admin.ModelAdmin):
        list_display = ["name", "removal_status_column"]

It adds a list column (status + thumbnail of the cut-out), a read-only preview on the change form
(original and result side by side, status and error) and the action "Remove background…", which
asks for the remove-bg options on an intermediate page and queues one job per selected object.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import FieldDoesNotExist, PermissionDenied, ValidationError
from django.db import models
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import services
from .compat import TaskResultStatus
from .models import DeliveryVerdict, JobStatus, RemovalJob, Trigger, WebhookDelivery
from .options import NON_FIELD, OptionsError, RemoveBgOptions

STATUS_COLOURS = {
    JobStatus.QUEUED: "#6c757d",
    JobStatus.SUBMITTING: "#0d6efd",
    JobStatus.WAITING: "#6f42c1",
    JobStatus.PENDING: "#0d6efd",
    JobStatus.RECEIVED: "#0d6efd",
    JobStatus.SUCCEEDED: "#198754",
    JobStatus.FAILED: "#dc3545",
    JobStatus.SUPERSEDED: "#adb5bd",
    JobStatus.CANCELLED: "#adb5bd",
}
VERDICT_COLOURS = {
    DeliveryVerdict.ACCEPTED: "#198754",
    DeliveryVerdict.DUPLICATE: "#6c757d",
    DeliveryVerdict.IGNORED: "#adb5bd",
    DeliveryVerdict.MALFORMED: "#fd7e14",
    DeliveryVerdict.UNAUTHENTIC: "#dc3545",
    DeliveryVerdict.ERROR: "#dc3545",
}


def badge(text: str, colour: str) -> str:
    return format_html(
        '<span class="ikbg-badge" style="background:{};color:#fff;padding:1px 7px;'
        'border-radius:9px;font-size:11px;white-space:nowrap">{}</span>',
        colour,
        text,
    )


def status_badge(status: str | None) -> str:
    if not status:
        return badge(_("no removal"), "#ced4da")
    return badge(
        JobStatus(status).label if status in JobStatus.values else status,
        STATUS_COLOURS.get(status, "#6c757d"),
    )


def admin_link(obj: models.Model | None, text: str | None = None) -> str:
    if obj is None:
        return "-"
    opts = obj._meta
    try:
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
    except NoReverseMatch:
        return str(text or obj)
    return format_html('<a href="{}">{}</a>', url, text or obj)


class RemovalState:
    """What the admin shows about one image field of one object: its latest job, read from the
    ``<field>_removal`` pointer (``select_related`` by the mixin's queryset, so no query here)."""

    def __init__(self, obj: models.Model, field_name: str):
        self.field_name = field_name
        self.file = getattr(obj, field_name, None)
        self.job: RemovalJob | None = getattr(obj, f"{field_name}_removal", None)
        self.status: str | None = self.job.status if self.job is not None else None

    @property
    def original_url(self) -> str | None:
        try:
            return self.file.url if self.file else None
        except ValueError:
            return None

    @property
    def result_url(self) -> str | None:
        """The stored copy of the cut-out when there is one, else ImageKit's URL."""
        if not self.file or self.job is None:
            return None
        result_file = getattr(self.file, "result_file", None)
        if result_file:
            try:
                return result_file.url
            except ValueError:
                pass
        return self.job.result_url or None

    @property
    def error(self) -> str:
        if self.job is None or self.job.status != JobStatus.FAILED:
            return ""
        return self.job.error_message or self.job.error_code

    @property
    def finished(self) -> bool:
        return self.job is None or self.job.is_finished


# ---------------------------------------------------------------------------------------------
# The "Remove background…" form and the mixin


class RemoveBackgroundForm(forms.Form):
    """The remove-bg options, validated by RemoveBgOptions (errors land on their fields)."""

    field = forms.ChoiceField(label=_("Image field"), required=True)
    add_shadow = forms.BooleanField(
        required=False, help_text=_("Add an artificial shadow (remove.bg: car photos only).")
    )
    semitransparency = forms.BooleanField(
        required=False,
        initial=True,
        help_text=_("Keep semi-transparent regions (remove.bg: car windows only)."),
    )
    bg_color = forms.CharField(
        label=_("Background colour"),
        required=False,
        max_length=40,
        help_text=_("Hex (81d4fa, #fff) or a colour name (green). Empty for transparent."),
    )
    bg_image_url = forms.CharField(
        label=_("Background image URL"),
        required=False,
        max_length=2048,
        help_text=_("An http(s) URL of an image to put behind the subject."),
    )
    force = forms.BooleanField(
        required=False,
        help_text=_("Submit even if this image was already processed with the same options."),
    )

    def __init__(
        self,
        *args: Any,
        field_choices: Sequence[str] = (),
        base: RemoveBgOptions | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.base = base
        self.fields["field"].choices = [(name, name) for name in field_choices]
        if len(field_choices) == 1:
            self.fields["field"].initial = field_choices[0]
            self.fields["field"].widget = forms.HiddenInput()
        if base is not None and not self.is_bound:
            for name, value in base.to_dict().items():
                self.fields[name].initial = value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        picked = {
            name: cleaned.get(name)
            for name in RemoveBgOptions.field_names()
            if name not in self.errors
        }
        try:
            cleaned["options"] = RemoveBgOptions.from_form(picked)
        except OptionsError as exc:
            for key, messages_ in exc.errors.items():
                self.add_error(
                    None if key == NON_FIELD or key not in self.fields else key, messages_
                )
        return cleaned


class BackgroundRemovalAdminMixin:
    """Add background-removal status, preview and the "Remove background…" action to a
    ModelAdmin. ``removal_fields`` limits it to some fields (default: every
    BackgroundRemovalImageField of the model)."""

    removal_fields: Sequence[str] | None = None
    removal_thumbnail_size = 60
    removal_preview_size = 280
    removal_list_column = True
    removal_form_class = RemoveBackgroundForm
    removal_action_template = "admin/imagekit_bgremove/remove_background.html"
    removal_preview_template = "admin/imagekit_bgremove/removal_preview.html"

    def get_removal_fields(self) -> list[str]:
        if self.removal_fields is not None:
            return list(self.removal_fields)
        return services.removal_field_names(self.model)

    def get_queryset(self, request):
        qs = super().get_queryset(request)  # type: ignore[misc]
        pointers = []
        for name in self.get_removal_fields():
            pointer = f"{name}_removal"
            with contextlib.suppress(FieldDoesNotExist):
                if self.model._meta.get_field(pointer).is_relation:  # type: ignore[attr-defined]
                    pointers.append(pointer)
        # One query for the list, not one per row for each object's latest job.
        return qs.select_related(*pointers) if pointers else qs

    # -- list column ---------------------------------------------------------------------------
    @admin.display(description=_("Background removal"))
    def removal_status_column(self, obj: models.Model) -> str:
        cells = []
        size = self.removal_thumbnail_size
        field_names = self.get_removal_fields()
        for name in field_names:
            state = RemovalState(obj, name)
            thumb = ""
            if state.status == JobStatus.SUCCEEDED and state.result_url:
                thumb = format_html(
                    '<img src="{}" alt="" style="max-width:{}px;max-height:{}px;'
                    "vertical-align:middle;margin-right:6px;background:repeating-conic-gradient("
                    '#ddd 0 25%,#fff 0 50%) 50%/12px 12px">',
                    state.result_url,
                    size,
                    size,
                )
            label = f"{name}: " if len(field_names) > 1 else ""
            cells.append(
                format_html(
                    '<div class="ikbg-cell">{}{}{}</div>', thumb, label, status_badge(state.status)
                )
            )
        return mark_safe("".join(cells))  # noqa: S308 - each cell is built by format_html

    def get_list_display(self, request) -> Sequence[Any]:
        display = list(super().get_list_display(request))  # type: ignore[misc]
        if self.removal_list_column and "removal_status_column" not in display:
            display.append("removal_status_column")
        return display

    # -- change form preview ---------------------------------------------------------------------
    @admin.display(description=_("Background removal"))
    def removal_preview(self, obj: models.Model | None) -> str:
        if obj is None or obj.pk is None:
            return _("Save the object to remove its background.")
        states = [RemovalState(obj, name) for name in self.get_removal_fields()]
        api_urls = {}
        for state in states:
            if state.job is not None and not state.finished:
                with contextlib.suppress(NoReverseMatch):  # the API's URLs are not included
                    api_urls[state.field_name] = reverse(
                        "imagekit_bgremove:removal-detail", kwargs={"pk": state.job.pk}
                    )
        return render_to_string(
            self.removal_preview_template,
            {
                "states": [
                    {
                        "state": s,
                        "badge": status_badge(s.status),
                        "api_url": api_urls.get(s.field_name),
                        "job_link": admin_link(s.job, f"#{s.job.pk}") if s.job else "",
                    }
                    for s in states
                ],
                "size": self.removal_preview_size,
            },
        )

    def get_readonly_fields(self, request, obj=None) -> Sequence[str]:
        fields = list(super().get_readonly_fields(request, obj))  # type: ignore[misc]
        if "removal_preview" not in fields:
            fields.append("removal_preview")
        return fields

    # -- the action ------------------------------------------------------------------------------
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Added per instance, so that a subclass's own ``actions = [...]`` keeps it too.
        actions = self.actions  # type: ignore[has-type]
        if (
            actions is not None
            and "remove_background_action" not in actions
            and self.get_removal_fields()
        ):
            self.actions = [*actions, "remove_background_action"]

    @admin.action(description=_("Remove background…"), permissions=["change"])
    def remove_background_action(self, request, queryset):
        if not self.has_change_permission(request):  # type: ignore[attr-defined]
            raise PermissionDenied
        field_names = self.get_removal_fields()
        base = self.removal_default_options(field_names[0]) if field_names else None
        if "apply" in request.POST:
            form = self.removal_form_class(request.POST, field_choices=field_names, base=base)
            if form.is_valid():
                field = form.cleaned_data["field"]
                queued, skipped = 0, []
                for obj in queryset:
                    if not getattr(obj, field, None):
                        skipped.append(f"{obj}: no image")
                        continue
                    try:
                        services.request_removal(
                            obj,
                            field,
                            options=form.cleaned_data["options"],
                            trigger=Trigger.ADMIN,
                            user=request.user,
                            force=form.cleaned_data["force"],
                        )
                    except (ValueError, OptionsError) as exc:
                        skipped.append(f"{obj}: {exc}")
                        continue
                    queued += 1
                self.message_user(  # type: ignore[attr-defined]
                    request,
                    ngettext(
                        "Queued %(count)d background removal.",
                        "Queued %(count)d background removals.",
                        queued,
                    )
                    % {"count": queued},
                    messages.SUCCESS if queued else messages.WARNING,
                )
                if skipped:
                    self.message_user(  # type: ignore[attr-defined]
                        request, _("Skipped: %s") % "; ".join(skipped[:20]), messages.WARNING
                    )
                return None
        else:
            form = self.removal_form_class(field_choices=field_names, base=base)
        opts = self.model._meta  # type: ignore[attr-defined]
        context = {
            **self.admin_site.each_context(request),  # type: ignore[attr-defined]
            "title": _("Remove background"),
            "opts": opts,
            "form": form,
            "queryset": queryset,
            "count": queryset.count(),
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "action_name": "remove_background_action",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media + form.media,  # type: ignore[attr-defined]
        }
        return TemplateResponse(request, self.removal_action_template, context)

    def removal_default_options(self, field_name: str) -> RemoveBgOptions:
        """The options the form starts from: the field's own over the site-wide defaults."""
        try:
            return services.field_options(self.model._meta.get_field(field_name))  # type: ignore[attr-defined]
        except OptionsError:
            return RemoveBgOptions()


# ---------------------------------------------------------------------------------------------
# The app's own models


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


class RemovalJobChangeList(ChangeList):
    def get_results(self, request) -> None:
        super().get_results(request)
        # The "object" column: one query per model on the page, not one per row.
        attach_targets(list(self.result_list))


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request) -> bool:
        return False

    def get_readonly_fields(self, request, obj=None) -> list[str]:
        return [f.name for f in self.model._meta.fields] + list(self.readonly_fields)


@admin.register(RemovalJob)
class RemovalJobAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "status_badge",
        "object_link",
        "field_name",
        "trigger",
        "attempts",
        "created_at",
        "finished_at",
        "short_error",
    ]
    list_display_links = ["id"]
    list_filter = ["status", "trigger", "content_type"]
    search_fields = ["file_id", "object_id"]
    date_hierarchy = "created_at"
    list_select_related = ["content_type"]
    readonly_fields = ["object_link"]
    actions = ["retry_failed", "reconcile_now"]

    def get_changelist(self, request, **kwargs: Any) -> type[ChangeList]:
        return RemovalJobChangeList

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, job: RemovalJob) -> str:
        return status_badge(job.status)

    @admin.display(description=_("object"))
    def object_link(self, job: RemovalJob) -> str:
        target = job_target(job)
        if target is None:
            return f"{job.content_type} {job.object_id} (deleted)"
        return admin_link(target)

    @admin.display(description=_("error"))
    def short_error(self, job: RemovalJob) -> str:
        text = job.error_message or job.error_code
        return text if len(text) <= 80 else text[:77] + "…"

    @admin.action(description=_("Retry failed jobs"), permissions=["change"])
    def retry_failed(self, request, queryset):
        retried = 0
        for job in queryset.filter(status=JobStatus.FAILED):
            try:
                services.retry(job, user=request.user)
            except ValueError as exc:
                self.message_user(request, f"#{job.pk}: {exc}", messages.WARNING)
                continue
            retried += 1
        self.message_user(
            request,
            ngettext("Retried %(n)d failed job.", "Retried %(n)d failed jobs.", retried)
            % {"n": retried},
            messages.SUCCESS if retried else messages.WARNING,
        )

    @admin.action(description=_("Reconcile now"), permissions=["change"])
    def reconcile_now(self, request, queryset):
        """Queue the reconcile task, which settles what lost callbacks and queues left behind (all
        jobs, not only the selected) by asking ImageKit about jobs pending for longer than
        RECONCILE_AFTER_SECONDS. Queued, not run here: it talks to ImageKit, once per job."""
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


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "received_at",
        "verdict_badge",
        "status_code",
        "job_link",
        "remote_addr",
        "body_size",
        "signature_scheme",
    ]
    list_filter = ["verdict", "status_code", "signature_scheme"]
    search_fields = ["job__file_id", "outcome", "error"]
    date_hierarchy = "received_at"
    list_select_related = ["job"]
    readonly_fields = ["pretty_headers"]

    @admin.display(description=_("verdict"), ordering="verdict")
    def verdict_badge(self, delivery: WebhookDelivery) -> str:
        if not delivery.verdict:
            return badge(_("open"), "#ced4da")
        return badge(
            delivery.get_verdict_display(), VERDICT_COLOURS.get(delivery.verdict, "#6c757d")
        )

    @admin.display(description=_("job"))
    def job_link(self, delivery: WebhookDelivery) -> str:
        return admin_link(delivery.job, f"#{delivery.job_id}") if delivery.job_id else "-"

    @admin.display(description=_("headers"))
    def pretty_headers(self, delivery: WebhookDelivery) -> str:
        return format_html(
            "<table>{}</table>",
            format_html_join(
                "", "<tr><th>{}</th><td><code>{}</code></td></tr>", sorted(delivery.headers.items())
            ),
        )
