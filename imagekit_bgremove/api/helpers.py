"""What the API's views and serializers share: models by label, job URLs, ETags."""

from __future__ import annotations

import contextlib
import hashlib
from datetime import datetime, time, timedelta

from django.apps import apps
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import (
    ObjectDoesNotExist,
)
from django.core.files.storage import default_storage
from django.db import models
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.http import parse_etags
from rest_framework.settings import api_settings

from ..models import RemovalJob
from ..removebg import NON_FIELD, OptionsError

# ---------------------------------------------------------------------------------------------
# Helpers shared by serializers and views


def model_label(model: type[models.Model]) -> str:
    return f"{model._meta.app_label}.{model._meta.model_name}"


def resolve_model(label: str) -> type[models.Model]:
    """``"catalogue.product"`` -> the model class; ValueError if there is none."""
    app_label, dot, model_name = (label or "").strip().lower().partition(".")
    if not dot or not app_label or not model_name:
        raise ValueError(f"{label!r} is not of the form app_label.model_name.")
    try:
        return apps.get_model(app_label, model_name)
    except LookupError as exc:
        raise ValueError(f"There is no model {label!r}.") from exc


def job_content_type(job: RemovalJob) -> ContentType:
    """The job's content type from ContentType's own cache: no query, and no join to make."""
    return ContentType.objects.get_for_id(job.content_type_id)


def result_file_url(job: RemovalJob, request=None) -> str | None:
    """The URL of the copy of the result in Django storage, if there is one."""
    if not job.result_name:
        return None
    storage = default_storage
    model = job_content_type(job).model_class()
    if model is not None:
        # A renamed or removed field: the default storage is the best guess.
        with contextlib.suppress(Exception):
            storage = model._meta.get_field(job.field_name).storage
    try:
        url = storage.url(job.result_name)
    except Exception:
        return None
    return absolute(url, request)


def absolute(url: str | None, request=None) -> str | None:
    if url and request is not None and url.startswith("/"):
        return request.build_absolute_uri(url)
    return url


def job_url(job: RemovalJob | int, request=None) -> str | None:
    """The job's URL in this app's API (None when the app's URLs are not included)."""
    pk = job if isinstance(job, int) else job.pk
    try:
        path = reverse("imagekit_bgremove:removal-detail", kwargs={"pk": pk})
    except NoReverseMatch:
        return None
    return absolute(path, request)


def options_errors(error: OptionsError) -> dict[str, list[str]]:
    """RemoveBgOptions' errors in DRF's shape (``__all__`` -> ``non_field_errors``)."""
    return {
        (api_settings.NON_FIELD_ERRORS_KEY if key == NON_FIELD else key): messages
        for key, messages in error.errors.items()
    }


def seconds_until_tomorrow() -> int:
    """Until the daily budget starts again (midnight in the site's time zone)."""
    now = timezone.localtime()
    midnight = datetime.combine(now.date() + timedelta(days=1), time(), tzinfo=now.tzinfo)
    return max(1, int((midnight - now).total_seconds()))


# ETags: a digest of everything the job's representation is made of. Bump the version when
# the representation changes, so that clients holding an old tag get the new shape.
ETAG_VERSION = 1


def job_etag(job: RemovalJob) -> str:
    """A weak ETag of ``job`` (loaded with ``requested_by`` and ``retry``), without rendering it:
    every column, the newer attempt and the requester's name. Any change to the row changes it."""
    values = [getattr(job, field.attname) for field in job._meta.concrete_fields]
    try:
        newer = job.retry.pk
    except ObjectDoesNotExist:
        newer = None
    user = job.requested_by.get_username() if job.requested_by_id else None
    digest = hashlib.blake2b(
        repr((ETAG_VERSION, values, newer, user)).encode(), digest_size=12
    ).hexdigest()
    return f'W/"{digest}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Weak comparison, as If-None-Match asks for (RFC 9110 13.1.2)."""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    return any(tag == "*" or tag.removeprefix("W/") == wanted for tag in parse_etags(if_none_match))
