"""List filters: your objects by removal state, and the jobs by state and by model."""

from __future__ import annotations

from django.apps import apps
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.utils.translation import gettext_lazy as _

from .. import services
from ..models import UNFINISHED, JobStatus, owner_model
from ..state import with_removal_status

#: Choices of the removal-state filter of your objects (the state of each one's latest job).
OBJECT_STATES = (
    ("unfinished", _("In progress")),
    (JobStatus.SUCCEEDED, _("Succeeded")),
    (JobStatus.FAILED, _("Failed")),
    (JobStatus.CANCELLED, _("Cancelled")),
    ("none", _("No removal yet")),
)


def removal_status_filter(field_name: str, label: str = "") -> type[admin.SimpleListFilter]:
    """A filter on the state of ``field_name``'s latest removal job."""

    class RemovalStatusFilter(admin.SimpleListFilter):
        title = (
            _("background removal") if not label else f"{label}: " + str(_("background removal"))
        )
        parameter_name = f"{field_name}_removal_state"

        def lookups(self, request, model_admin):
            return OBJECT_STATES

        def queryset(self, request, queryset):
            value = self.value()
            status = f"{field_name}_removal_status"
            if value == "unfinished":
                lookup = {f"{status}__in": UNFINISHED}
            elif value == "none":
                lookup = {f"{status}__isnull": True}
            elif value in JobStatus.values:
                lookup = {status: value}
            else:
                return queryset
            return with_removal_status(queryset, field_name).filter(**lookup)

    RemovalStatusFilter.__name__ = f"{field_name.title().replace('_', '')}RemovalStatusFilter"
    return RemovalStatusFilter


class JobStatusFilter(admin.SimpleListFilter):
    """The jobs by state; failed jobs that were retried have their own choice, so "Failed"
    lists only what still needs attention."""

    title = _("status")
    parameter_name = "status"

    def lookups(self, request, model_admin):
        choices = [("unfinished", _("In progress (any)"))]
        for value, label in JobStatus.choices:
            if value == JobStatus.FAILED:
                choices.append((value, _("Failed, not retried")))
                choices.append(("retried", _("Failed, then retried")))
            else:
                choices.append((value, label))
        return choices

    def queryset(self, request, queryset):
        value = self.value()
        if value == "unfinished":
            return queryset.filter(status__in=UNFINISHED)
        if value == JobStatus.FAILED:
            return queryset.filter(status=JobStatus.FAILED, retry__isnull=True)
        if value == "retried":
            return queryset.filter(status=JobStatus.FAILED, retry__isnull=False)
        if value in JobStatus.values:
            return queryset.filter(status=value)
        return queryset


def removal_content_types() -> list[ContentType]:
    """The content types jobs can have: the concrete models that hold a removal field."""
    models = set()
    for model in apps.get_models():
        for name in services.removal_field_names(model):
            models.add(owner_model(model, name))
    found = ContentType.objects.get_for_models(*models) if models else {}
    return sorted(found.values(), key=lambda ct: str(ct))


class JobModelFilter(admin.SimpleListFilter):
    """By model: only the models that have a background-removal field (not every content
    type of the project)."""

    title = _("model")
    parameter_name = "model"

    def lookups(self, request, model_admin):
        return [
            (str(ct.pk), ct.model_class()._meta.verbose_name_plural.capitalize())
            for ct in removal_content_types()
            if ct.model_class() is not None
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value and value.isdigit():
            return queryset.filter(content_type_id=int(value))
        return queryset


class ObjectIdFilter(admin.SimpleListFilter):
    """Hidden helper: the history link of an object lists its jobs (``?object_id=``)."""

    title = _("object")
    parameter_name = "object_id"

    def lookups(self, request, model_admin):
        value = self.value()
        return [(value, value)] if value else []

    def queryset(self, request, queryset):
        value = self.value()
        return queryset.filter(object_id=value) if value else queryset
