"""An object's removal state, read from the job table (the only truth; the app never writes the
user's rows): the latest job of each removal field, the latest that succeeded, and the cut-out of
the *current* image.

Which image is current: every save that stores a new image, when its trigger asks for a removal,
records a job with trigger ``save`` (docs/STATE.md says what a declining trigger leaves),
so the current image's jobs are the newest such job and those after it (admin, API, command and
retry requests are for the image the object holds). A success before it is an earlier image's,
even when a storage that keeps names (S3's ``file_overwrite``) gave both images one name.

The state is read at first use and cached on the instance (``BackgroundRemovalFieldFile.removal``,
``last_success``, ``result_url`` ...): two queries on the jobs' database, for one object or for
a whole page (:func:`prefetch_removal_state`, which the admin list, the status view and the DRF
viewset mixin use). :func:`with_removal_status` annotates a queryset with each object's latest
status, to filter or order by it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from django.db import models
from django.db.models import CharField, Max, OuterRef, Q, Subquery
from django.db.models.functions import Cast

from .models import JobStatus, RemovalJob, Trigger, owner_content_type


class FieldState(NamedTuple):
    latest: RemovalJob | None
    last_success: RemovalJob | None
    #: ``last_success`` when it belongs to the current image (callers still compare its
    #: ``source_name`` with the field's name).
    current_success: RemovalJob | None


_NONE = FieldState(None, None, None)


def _key(field_name: str) -> str:
    return f"_ikbg_state_{field_name}"


def state_of(instance: models.Model, field_name: str) -> FieldState:
    """``instance``'s state for ``field_name``: cached, else read (two queries)."""
    key = _key(field_name)
    if key not in instance.__dict__:
        prefetch_removal_state([instance], [field_name])
    return instance.__dict__[key]


def forget_state(instance: models.Model, field_name: str) -> None:
    """Drop the cached state, so that the next access reads the jobs again."""
    instance.__dict__.pop(_key(field_name), None)


def prefetch_removal_state(
    objects: Iterable[models.Model], field_names: Sequence[str] | None = None
) -> list[models.Model]:
    """Read the removal state of every object (all of one model) in two queries, whatever their
    number, and cache it on each. Returns the objects as a list."""
    objects = list(objects)
    if not objects:
        return objects
    model = type(objects[0])
    if field_names is None:
        field_names = [
            f.name for f in model._meta.fields if getattr(f, "removes_background", False)
        ]
    by_id = {str(obj.pk): obj for obj in objects if obj.pk is not None}
    for obj in objects:
        for name in field_names:
            obj.__dict__[_key(name)] = _NONE
    if not by_id or not field_names:
        return objects
    content_types = {owner_content_type(model, name).pk for name in field_names}
    rows = list(
        RemovalJob.objects.filter(
            content_type_id__in=content_types,
            object_id__in=list(by_id),
            field_name__in=field_names,
        )
        .order_by()
        .values("object_id", "field_name")
        .annotate(
            latest=Max("id"),
            last_success=Max("id", filter=Q(status=JobStatus.SUCCEEDED)),
            newest_save=Max("id", filter=Q(trigger=Trigger.SAVE)),
        )
    )
    wanted = {row[k] for row in rows for k in ("latest", "last_success")} - {None}
    jobs = RemovalJob.objects.select_related("content_type").in_bulk(wanted)
    for row in rows:
        success, latest = jobs.get(row["last_success"]), jobs.get(row["latest"])
        if latest is not None and latest.status == JobStatus.SUCCEEDED:
            # It succeeded between the two reads: its row is the newer word.
            success = latest
        current = success is not None and success.pk >= (row["newest_save"] or 0)
        by_id[row["object_id"]].__dict__[_key(row["field_name"])] = FieldState(
            latest, success, success if current else None
        )
    return objects


def with_removal_status(queryset: models.QuerySet, field_name: str) -> models.QuerySet:
    """``queryset`` annotated with ``<field_name>_removal_status``: the status of the field's
    latest job (None before the first request), to filter or order by (a subquery: the jobs
    must be in the objects' database)::

        with_removal_status(Product.objects.all(), "photo").filter(
            photo_removal_status__in=["failed", "cancelled"]
        )
    """
    latest = RemovalJob.objects.filter(
        content_type=owner_content_type(queryset.model, field_name),
        object_id=Cast(OuterRef("pk"), output_field=CharField()),
        field_name=field_name,
    ).order_by("-id")
    return queryset.annotate(
        **{f"{field_name}_removal_status": Subquery(latest.values("status")[:1])}
    )
