"""``BackgroundRemovalAdminMixin``: background removal in the admin of your own models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets, quote, unquote
from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpResponseRedirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from .. import services
from ..models import JobStatus, RemovalJob
from ..removebg import OptionsError, RemoveBgOptions
from ..state import prefetch_removal_state, state_of
from . import pages
from .display import (
    EMULATOR_NOTE,
    RemovalState,
    error_advice,
    is_emulator,
    job_badge,
    job_error,
    options_summary,
)
from .filters import removal_status_filter
from .forms import ADMIN_STATIC, RemoveBackgroundForm, upload_option_fields, upload_prefix
from .jobs import cancel_url
from .pages import retry_page, wrap_template

OPTION_NAMES = RemoveBgOptions.field_names()


class UploadOptionsForm(forms.BaseForm):
    """Mixed into the change form when it offers options for a new image: validates them per
    image field into ``removal_options``."""

    ikbg_removal_fields: tuple[str, ...] = ()

    def clean(self) -> dict[str, Any]:
        from .forms import options_from

        cleaned = super().clean()
        self.removal_options: dict[str, RemoveBgOptions] = {}
        for name in self.ikbg_removal_fields:
            options = options_from(self, upload_prefix(name))
            if options is not None:
                self.removal_options[name] = options
        return cleaned

    def removal_options_changed(self, name: str) -> bool:
        prefix = upload_prefix(name)
        return any(prefix + option in self.changed_data for option in OPTION_NAMES)


class BackgroundRemovalAdminMixin:
    """Background removal in a ModelAdmin (put it before ``admin.ModelAdmin``):

    - the list: original and cut-out thumbnails with a status badge (updated live while jobs
      run), a filter by removal state, and the action "Remove background…";
    - the change form: original and cut-out side by side, "Remove background…" and "Retry…"
      buttons, options for a newly uploaded image, and the history of the object's jobs.

    ``removal_fields`` limits it to some fields (default: every BackgroundRemovalImageField).
    """

    removal_fields: Sequence[str] | None = None
    removal_list_column = True
    removal_list_filter = True
    removal_upload_options = True
    removal_history_size = 10
    removal_poll_interval_ms = 2000
    removal_thumbnail_size = 56
    removal_preview_size = 280
    removal_form_class = RemoveBackgroundForm
    removal_action_template = "admin/imagekit_bgremove/remove_background.html"
    removal_preview_template = "admin/imagekit_bgremove/mixin/removal_preview.html"
    removal_cell_template = "admin/imagekit_bgremove/mixin/removal_cell.html"
    removal_change_form_template = "admin/imagekit_bgremove/mixin/change_form.html"

    # -- set-up ------------------------------------------------------------------------------
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

    def get_removal_fields(self) -> list[str]:
        if self.removal_fields is not None:
            return list(self.removal_fields)
        return services.removal_field_names(self.model)  # type: ignore[attr-defined]

    def removal_field_label(self, name: str) -> str:
        field = self.model._meta.get_field(name)  # type: ignore[attr-defined]
        return str(field.verbose_name)

    @property
    def media(self):
        return super().media + forms.Media(  # type: ignore[misc]
            css={"all": [ADMIN_STATIC + "ikbg.css"]}, js=[ADMIN_STATIC + "live.js"]
        )

    def get_changelist(self, request, **kwargs):
        fields = self.get_removal_fields()

        class RemovalChangeList(super().get_changelist(request, **kwargs)):  # type: ignore[misc]
            def get_results(self, request):
                super().get_results(request)
                # The page's removal states in two queries, not one per row.
                self.result_list = prefetch_removal_state(self.result_list, fields)

        return RemovalChangeList

    def removal_states(self, obj: models.Model) -> list[RemovalState]:
        names = self.get_removal_fields()
        return [
            RemovalState(obj, name, label=self.removal_field_label(name) if len(names) > 1 else "")
            for name in names
        ]

    def _removal_url(self, view: str, *args: Any) -> str:
        opts = self.model._meta  # type: ignore[attr-defined]
        return reverse(
            f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_{view}",  # type: ignore[attr-defined]
            args=args,
        )

    def get_urls(self):
        opts = self.model._meta  # type: ignore[attr-defined]
        info = f"{opts.app_label}_{opts.model_name}"
        wrap = self.admin_site.admin_view  # type: ignore[attr-defined]
        return [
            path(
                "removal-status/",
                wrap(self.removal_status_view),
                name=f"{info}_removal_status",
            ),
            path(
                "<path:object_id>/remove-background/",
                wrap(self.remove_background_view),
                name=f"{info}_remove_background",
            ),
            path(
                "<path:object_id>/remove-background/retry/",
                wrap(self.retry_removal_view),
                name=f"{info}_retry_removal",
            ),
            *super().get_urls(),  # type: ignore[misc]
        ]

    # -- the list ----------------------------------------------------------------------------
    @admin.display(description=gettext_lazy("Background removal"))
    def removal_status_column(self, obj: models.Model) -> str:
        return self.render_removal_cell(obj)

    def render_removal_cell(self, obj: models.Model, states: list[RemovalState] | None = None):
        states = states if states is not None else self.removal_states(obj)
        return render_to_string(
            self.removal_cell_template,
            {
                "pk": str(obj.pk),
                "obj": obj,
                "states": states,
                "unfinished": any(s.unfinished for s in states),
                "status_url": self._removal_url("removal_status") + "?kind=cell",
                "size": self.removal_thumbnail_size,
                "poll_ms": self.removal_poll_interval_ms,
            },
        )

    def get_list_display(self, request) -> Sequence[Any]:
        display = list(super().get_list_display(request))  # type: ignore[misc]
        if self.removal_list_column and "removal_status_column" not in display:
            display.append("removal_status_column")
        return display

    def get_list_filter(self, request) -> Sequence[Any]:
        filters = list(super().get_list_filter(request))  # type: ignore[misc]
        if self.removal_list_filter:
            names = self.get_removal_fields()
            for name in names:
                label = self.removal_field_label(name) if len(names) > 1 else ""
                filters.append(removal_status_filter(name, label))
        return filters

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)  # type: ignore[misc]
        if isinstance(response, TemplateResponse) and is_emulator():
            wrap_template(response, "admin/imagekit_bgremove/mixin/change_list.html")
            response.context_data["ikbg_emulator_note"] = EMULATOR_NOTE
        return response

    # -- live updates --------------------------------------------------------------------------
    def removal_status_view(self, request):
        """JSON for live.js: the current cell (or change-form preview) of the objects asked
        for, and whether each is still unfinished. One query, whatever the number of rows."""
        from .status import status_response

        return status_response(self, request)

    # -- the change form -----------------------------------------------------------------------
    @admin.display(description=gettext_lazy("Background removal"))
    def removal_preview(self, obj: models.Model | None) -> str:
        if obj is None or obj.pk is None:
            return _("The background is removed once the object is saved with an image.")
        return self.render_removal_preview(obj)

    def render_removal_preview(self, obj: models.Model, states=None) -> str:
        states = states if states is not None else self.removal_states(obj)
        return render_to_string(
            self.removal_preview_template,
            {
                "pk": str(obj.pk),
                "obj": obj,
                "states": states,
                "unfinished": any(s.unfinished for s in states),
                "failed": any(s.failed for s in states),
                "status_url": self._removal_url("removal_status") + "?kind=preview",
                "size": self.removal_preview_size,
                "poll_ms": self.removal_poll_interval_ms,
                "emulator_note": EMULATOR_NOTE if is_emulator() else "",
            },
        )

    def get_readonly_fields(self, request, obj=None) -> Sequence[str]:
        fields = list(super().get_readonly_fields(request, obj))  # type: ignore[misc]
        if "removal_preview" not in fields:
            fields.append("removal_preview")
        return fields

    def removal_upload_fields(self, request, obj) -> list[str]:
        """The image fields whose change-form fieldset offers options for a new image."""
        if not self.removal_upload_options:
            return []
        allowed = (
            self.has_add_permission(request)  # type: ignore[attr-defined]
            if obj is None
            else self.has_change_permission(request, obj)  # type: ignore[attr-defined]
        )
        if not allowed:
            return []
        names = []
        for name in self.get_removal_fields():
            field = self.model._meta.get_field(name)  # type: ignore[attr-defined]
            if getattr(field, "remove_bg_trigger", "changed") not in ("manual", "never"):
                names.append(name)
        return names

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)  # type: ignore[misc]
        return [f for f in fields if not (isinstance(f, str) and f.startswith("ikbg_"))]

    def get_fieldsets(self, request, obj=None):
        fieldsets = list(super().get_fieldsets(request, obj))  # type: ignore[misc]
        names = self.removal_upload_fields(request, obj)
        for name in names:
            title = _("Background removal options")
            if len(names) > 1:
                title = _("Background removal options: %s") % self.removal_field_label(name)
            fieldsets.append(
                (
                    title,
                    {
                        "fields": [
                            upload_prefix(name) + option
                            for option in (
                                "bg_color",
                                "bg_image_url",
                                "add_shadow",
                                "semitransparency",
                            )
                        ],
                        "classes": ["collapse"] if obj is not None else [],
                        "description": _(
                            "Used when a new image is uploaded with this form. To process the "
                            "current image again, use “Remove background…” above."
                        )
                        if obj is not None
                        else _("Used for the removal of the image uploaded with this form."),
                    },
                )
            )
        return fieldsets

    def get_form(self, request, obj=None, change=False, **kwargs):
        if kwargs.get("fields") is None and "fields" not in kwargs:
            kwargs["fields"] = flatten_fieldsets(self.get_fieldsets(request, obj))
        if kwargs.get("fields") is not None:
            kwargs["fields"] = [f for f in kwargs["fields"] if not str(f).startswith("ikbg_")]
        form = super().get_form(request, obj, change=change, **kwargs)  # type: ignore[misc]
        names = self.removal_upload_fields(request, obj)
        if not names:
            return form
        attrs: dict[str, Any] = {"ikbg_removal_fields": tuple(names)}
        for name in names:
            field = self.model._meta.get_field(name)  # type: ignore[attr-defined]
            try:
                base = services.field_options(field)
            except OptionsError:
                base = RemoveBgOptions()
            attrs.update(upload_option_fields(name, base))
        return type(form.__name__, (UploadOptionsForm, form), attrs)

    def save_model(self, request, obj, form, change) -> None:
        for name in self.get_removal_fields():
            if name in form.changed_data and getattr(obj, name):
                getattr(obj, name).next_removal_user = request.user
        for name, options in getattr(form, "removal_options", {}).items():
            if name in form.changed_data and getattr(obj, name):
                getattr(obj, name).next_removal_options = options
            elif change and form.removal_options_changed(name):
                self.message_user(  # type: ignore[attr-defined]
                    request,
                    _(
                        "The background removal options apply to a newly uploaded image only; "
                        "nothing was sent. Use “Remove background…” to process the current "
                        "image with other options."
                    ),
                    messages.WARNING,
                )
        super().save_model(request, obj, form, change)  # type: ignore[misc]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        response = super().render_change_form(  # type: ignore[misc]
            request, context, add=add, change=change, form_url=form_url, obj=obj
        )
        if isinstance(response, TemplateResponse) and self.get_removal_fields():
            wrap_template(response, self.removal_change_form_template)
            response.context_data["ikbg"] = self.removal_change_context(request, obj)
        return response

    def removal_change_context(self, request, obj) -> dict[str, Any]:
        if obj is None or obj.pk is None:
            return {}
        states = self.removal_states(obj)
        can_change = self.has_change_permission(request, obj)  # type: ignore[attr-defined]
        pk = quote(obj.pk)
        context: dict[str, Any] = {
            "can_change": can_change,
            "remove_url": self._removal_url("remove_background", pk)
            if can_change and any(s.has_image for s in states)
            else "",
            "retry_url": self._removal_url("retry_removal", pk) if can_change else "",
            "failed": any(s.failed for s in states),
            "cancel_url": "",
        }
        running = [s.job for s in states if s.job is not None]
        running = [job for job in running if job.status in services.CANCELLABLE]
        if can_change and running:
            context["cancel_url"] = cancel_url(self.admin_site, running[0])  # type: ignore[attr-defined]
        context.update(self.removal_history(request, obj))
        return context

    def render_removal_history(self, request, obj) -> str:
        return render_to_string(
            "admin/imagekit_bgremove/mixin/removal_history.html",
            {"ikbg": self.removal_history(request, obj)},
        )

    def removal_history(self, request, obj) -> dict[str, Any]:
        """The object's jobs, newest first: one query (two when there are more than shown)."""
        size = self.removal_history_size
        jobs_qs = RemovalJob.objects.for_object(obj).filter(
            field_name__in=self.get_removal_fields()
        )
        jobs = list(
            jobs_qs.select_related("requested_by", "retry").order_by("-created_at", "-pk")[
                : size + 1
            ]
        )
        total = jobs_qs.count() if len(jobs) > size else len(jobs)
        jobs = jobs[:size]
        job_admin = self.admin_site._registry.get(RemovalJob)  # type: ignore[attr-defined]
        can_view_jobs = job_admin is not None and job_admin.has_view_permission(request)
        multiple = len(self.get_removal_fields()) > 1
        rows = []
        for job in jobs:
            rows.append(
                {
                    "job": job,
                    "url": reverse(
                        f"{self.admin_site.name}:imagekit_bgremove_removaljob_change",  # type: ignore[attr-defined]
                        args=[job.pk],
                    )
                    if can_view_jobs
                    else "",
                    "badge": job_badge(job, with_retry=True),
                    "field": self.removal_field_label(job.field_name) if multiple else "",
                    "options": options_summary(job.options),
                    "who": str(job.requested_by) if job.requested_by else "",
                    "error": job_error(job),
                    "advice": error_advice(job),
                }
            )
        all_url = ""
        if can_view_jobs and total > len(jobs):
            all_url = (
                reverse(f"{self.admin_site.name}:imagekit_bgremove_removaljob_changelist")  # type: ignore[attr-defined]
                + f"?object_id={quote(obj.pk)}&model={jobs[0].content_type_id}"
            )
        return {"history": rows, "history_total": total, "history_all_url": all_url}

    # -- "Remove background…": the action, and the same page for one object ----------------------
    @admin.action(description=gettext_lazy("Remove background…"), permissions=["change"])
    def remove_background_action(self, request, queryset):
        return self._removal_page(request, list(queryset), mode="action")

    def removal_default_options(self, field_name: str) -> RemoveBgOptions:
        """The options the form starts from: the field's own over the site-wide defaults."""
        try:
            return services.field_options(self.model._meta.get_field(field_name))  # type: ignore[attr-defined]
        except OptionsError:
            return RemoveBgOptions()

    def _field_choices(self) -> list[tuple[str, str]]:
        return [(name, self.removal_field_label(name)) for name in self.get_removal_fields()]

    def _chosen_field(self, request) -> str:
        names = self.get_removal_fields()
        wanted = request.POST.get("field") or request.GET.get("field")
        return wanted if wanted in names else names[0]

    def _removal_page(self, request, objects: list, *, mode: str, obj=None):
        names = self.get_removal_fields()
        if not names:
            raise PermissionDenied
        field_name = self._chosen_field(request)
        bound = request.method == "POST" and ("apply" in request.POST or "_recount" in request.POST)
        form = self.removal_form_class(
            request.POST if bound else None,
            field_choices=self._field_choices(),
            base=self.removal_default_options(field_name),
        )
        if bound and form.is_valid():
            options, force = form.cleaned_data["options"], form.cleaned_data["force"]
        elif bound:
            options, force = None, False
        else:
            options, force = self.removal_default_options(field_name), False
        plan = pages.make_plan(
            objects,
            field_name,
            options,
            force=force,
            allowed=lambda o: self.has_change_permission(request, o),  # type: ignore[attr-defined]
        )
        if bound and "apply" in request.POST and form.is_valid():
            if plan.over_budget:
                form.add_error(
                    None,
                    _(
                        "Only %(left)d background removals are left in today's budget and "
                        "%(count)d would be sent: select fewer objects, or raise "
                        "DAILY_REMOVAL_LIMIT."
                    )
                    % {"left": plan.remaining, "count": len(plan.to_send)},
                )
            else:
                pages.send(self, request, plan, field_name, options, force=force)
                if mode == "action":
                    return None  # back to the list, as Django's own actions do
                return HttpResponseRedirect(self._change_url(obj))
        count = len(objects)
        return pages.render(
            self,
            request,
            form=form,
            plan=plan,
            mode=mode,
            title=_("Remove background"),
            objects_name=pages.objects_label(self, count),
            submit_label=_("Remove background"),
            extra={
                "cancel_url": self._change_url(obj) if obj is not None else "",
                "crumb_obj": obj,
            },
        )

    def _change_url(self, obj) -> str:
        return self._removal_url("change", quote(obj.pk))

    def _get_removal_object(self, request, object_id):
        obj = self.get_object(request, unquote(object_id))  # type: ignore[attr-defined]
        if obj is None:
            return None
        if not self.has_change_permission(request, obj):  # type: ignore[attr-defined]
            raise PermissionDenied
        return obj

    def remove_background_view(self, request, object_id):
        obj = self._get_removal_object(request, object_id)
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.model._meta, object_id)  # type: ignore[attr-defined]
        return self._removal_page(request, [obj], mode="object", obj=obj)

    def retry_removal_view(self, request, object_id):
        """Retry the object's failed removal, with its options or changed ones."""
        obj = self._get_removal_object(request, object_id)
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.model._meta, object_id)  # type: ignore[attr-defined]
        field_name = self._chosen_field(request)
        job = state_of(obj, field_name).latest
        if job is None or job.status != JobStatus.FAILED:
            self.message_user(  # type: ignore[attr-defined]
                request, _("There is no failed background removal to retry."), messages.WARNING
            )
            return HttpResponseRedirect(self._change_url(obj))
        return retry_page(self, request, job, obj, field_name, done_url=self._change_url(obj))
