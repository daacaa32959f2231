"""What the admin shows about jobs and images: badges, thumbnails, captions, advice.

Everything here works from each object's removal state, which the admins read for a whole page
at once (``state.prefetch_removal_state``), so rendering a row costs no query.
"""

from __future__ import annotations

import django
from django.contrib.auth import get_permission_codename
from django.db import models
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy as _l

from ..conf import app_settings
from ..defaults import EMULATOR_PRIVATE_KEY
from ..models import UNFINISHED, JobStatus, RemovalJob
from ..state import state_of

#: Django 6 draws breadcrumbs as ``<ol class="breadcrumbs">``, 5.2 as ``<div class="breadcrumbs">``.
BREADCRUMBS_AS_LIST = django.VERSION >= (6, 0)

#: Short badge texts (the full label is the badge's tooltip when it differs).
SHORT_LABELS = {
    JobStatus.WAITING: _l("Waiting"),
    JobStatus.PENDING: _l("Processing"),
    JobStatus.RECEIVED: _l("Saving result"),
}


def badge(text: str, css: str, *, title: str = "") -> SafeString:
    """A status badge: coloured by its class (ikbg.css), always with the state as text."""
    if title:
        return format_html(
            '<span class="ikbg-badge {}" title="{}">{}'
            '<span class="ikbg-visually-hidden">: {}</span></span>',
            css,
            title,
            text,
            title,
        )
    return format_html('<span class="ikbg-badge {}">{}</span>', css, text)


def status_badge(status: str | None, *, error: str = "", retried: bool = False) -> SafeString:
    """The badge of a job state; a failed job's reason is its tooltip (and screen-reader text)."""
    if not status:
        return badge(_("No removal"), "ikbg-s-none")
    if status in JobStatus.values:
        label = JobStatus(status).label
        text = SHORT_LABELS.get(status, label)
    else:
        label = text = status
    if status == JobStatus.FAILED and retried:
        text = _("Failed, retried")
    tooltip = error or (label if label != text else "")
    return badge(text, f"ikbg-s-{status}", title=tooltip)


def job_badge(job: RemovalJob | None, *, with_retry: bool = False) -> SafeString:
    if job is None:
        return status_badge(None)
    retried = False
    if with_retry and job.status == JobStatus.FAILED:
        retried = retry_of(job) is not None
    return status_badge(job.status, error=job_error(job), retried=retried)


def retry_of(job: RemovalJob) -> RemovalJob | None:
    """The job that retried ``job`` (the reverse one-to-one), None when there is none."""
    try:
        return job.retry
    except RemovalJob.DoesNotExist:
        return None


def job_error(job: RemovalJob) -> str:
    if job.status != JobStatus.FAILED:
        return ""
    return job.error_message or job.error_code


def is_emulator() -> bool:
    """Whether results come from the bundled emulator (no account, or the emulator's key)."""
    return app_settings.emulator_mode or app_settings.private_key == EMULATOR_PRIVATE_KEY


EMULATOR_NOTE = _l(
    "Cut-outs here are made by the offline ImageKit emulator, which uses classical "
    "segmentation (border colour and GrabCut), not remove.bg's model: plain backgrounds come out "
    "clean, busy ones rougher than with a real account."
)


def options_summary(options: dict | None) -> str:
    """A short readable form of a job's options: "blue background, shadow"."""
    options = options or {}
    parts = []
    if options.get("bg_color"):
        parts.append(_("background %(colour)s") % {"colour": colour_label(options["bg_color"])})
    elif options.get("bg_image_url"):
        parts.append(_("background image"))
    else:
        parts.append(_("transparent"))
    if options.get("add_shadow"):
        parts.append(_("shadow"))
    if options.get("semitransparency") is False:
        parts.append(_("no semi-transparency"))
    return ", ".join(parts)


def colour_label(value: str) -> str:
    """``0000ff`` → ``#0000ff``; colour names stay as they are."""
    if all(c in "0123456789abcdef" for c in value.lower()) and len(value) in (3, 4, 6, 8):
        return f"#{value.lower()}"
    return value


def result_caption(options: dict | None) -> SafeString:
    """What the cut-out shows, from the options it was made with (a blue background is not
    "without background")."""
    options = options or {}
    extra = _(", with a shadow") if options.get("add_shadow") else ""
    if options.get("bg_color"):
        colour = colour_label(options["bg_color"])
        return format_html(
            '{} <span class="ikbg-swatch" style="background:{}" aria-hidden="true"></span>{}',
            _("Background replaced by %(colour)s") % {"colour": colour},
            colour,
            extra,
        )
    if options.get("bg_image_url"):
        return format_html("{}{}", _("Background replaced by an image"), extra)
    return format_html("{}{}", _("Background removed (transparent)"), extra)


def result_alt(name: str, options: dict | None) -> str:
    options = options or {}
    if options.get("bg_color"):
        what = _("on a %(colour)s background") % {"colour": colour_label(options["bg_color"])}
    elif options.get("bg_image_url"):
        what = _("on a new background image")
    else:
        what = _("with the background removed")
    return f"{name} {what}"


#: What to do about a failed job, by error code. A job whose message already says what to do
#: (remove.bg's refusals: "Change the remove-bg options…") gets no advice repeating it.
ADVICE = {
    "invalid_options": _l("Change the options before retrying: the same ones would fail again."),
    "budget_spent": _l(
        "Today's budget of background removals was spent: retry tomorrow, or raise "
        "DAILY_REMOVAL_LIMIT."
    ),
    "source_missing": _l("The original file is missing from storage: upload the image again."),
    "source_not_image": _l(
        "The file is not an image ImageKit can read: upload a JPEG, PNG or WebP image."
    ),
    "source_too_large": _l("The image is too large for remove-bg: upload a smaller one."),
    "result_unconfirmed": _l("ImageKit did not confirm the result: retry."),
    "result_host_not_allowed": _l(
        "The result came from a host the settings do not allow (URL_ENDPOINT and the allowed "
        "result hosts): correct the settings, then retry."
    ),
    "result_too_large": _l(
        "The result is larger than RESULT_MAX_BYTES: raise the limit, then retry."
    ),
    "result_not_image": _l("ImageKit's result was not an image: retry."),
    "no_result": _l("ImageKit sent no result in time: retry."),
    "no_result_after_lost_answer": _l("ImageKit sent no result in time: retry."),
    "worker_lost": _l("The worker handling the job stopped: retry."),
    "object_deleted": _l("The object was deleted: there is nothing to retry."),
}


def needs_new_options(job: RemovalJob) -> bool:
    """Whether retrying with the same options would fail the same way."""
    if job.error_code == "invalid_options":
        return True
    message = (job.error_message or "").lower()
    return "change the" in message and "option" in message


def error_advice(job: RemovalJob) -> str:
    if job.status != JobStatus.FAILED:
        return ""
    if job.error_code in ADVICE:
        return ADVICE[job.error_code]
    if job.error_code == "removal_failed":
        return ""  # ImageKit's reason already says whether to change the options or retry
    return _("Retry if the problem was temporary.")


def is_unfinished(job: RemovalJob | None) -> bool:
    return job is not None and job.status in UNFINISHED


def file_url(file) -> str | None:
    try:
        return file.url if file else None
    except ValueError:
        return None


class RemovalState:
    """What the admin shows about one image field of one object, from its state in the jobs:
    the latest job (its state) and the current image's latest success (the cut-out that stays
    visible while a newer job for the same image runs, or after it failed)."""

    def __init__(self, obj: models.Model, field_name: str, *, label: str = ""):
        self.obj = obj
        self.field_name = field_name
        self.label = label  # shown only when the model has several removal fields
        self.file = getattr(obj, field_name, None)
        state = state_of(obj, field_name)
        self.job: RemovalJob | None = state.latest
        self.status: str | None = self.job.status if self.job is not None else None
        # The current image's latest success (never the cut-out of an earlier image).
        success = state.current_success
        if success is None or not self.file or success.source_name != self.file.name:
            success = None
        self.result_job: RemovalJob | None = success

    @property
    def has_image(self) -> bool:
        return bool(self.file) and bool(getattr(self.file, "name", ""))

    @property
    def original_url(self) -> str | None:
        return file_url(self.file)

    @property
    def result_url(self) -> str | None:
        """The stored copy of the shown cut-out when there is one, else ImageKit's URL."""
        if self.result_job is None:
            return None
        return file_url(self.file.result_file) or self.result_job.result_url or None

    @property
    def result_is_previous(self) -> bool:
        """The cut-out shown is from an earlier job than the latest (running, or failed)."""
        return self.result_job is not None and (
            self.job is None or self.job.pk != self.result_job.pk
        )

    @property
    def error(self) -> str:
        return job_error(self.job) if self.job is not None else ""

    @property
    def advice(self) -> str:
        return error_advice(self.job) if self.job is not None else ""

    @property
    def unfinished(self) -> bool:
        return is_unfinished(self.job)

    @property
    def failed(self) -> bool:
        return self.status == JobStatus.FAILED

    @property
    def badge(self) -> SafeString:
        return job_badge(self.job)

    @property
    def caption(self) -> SafeString:
        return result_caption(self.result_job.options if self.result_job else None)

    @property
    def result_alt(self) -> str:
        return result_alt(str(self.obj), self.result_job.options if self.result_job else None)

    @property
    def previous_note(self) -> str:
        if not self.result_is_previous:
            return ""
        if self.unfinished:
            return _("Previous result, shown until the new one is ready.")
        if self.failed:
            return _("Previous result: the latest attempt failed.")
        return _("Previous result.")


def admin_url(obj: models.Model, view: str = "change", *, site_name: str = "admin") -> str | None:
    opts = obj._meta
    try:
        return reverse(f"{site_name}:{opts.app_label}_{opts.model_name}_{view}", args=[obj.pk])
    except NoReverseMatch:
        return None


def admin_link(obj: models.Model | None, text: str | None = None, *, site_name="admin") -> str:
    if obj is None:
        return "-"
    url = admin_url(obj, site_name=site_name)
    if url is None:
        return str(text or obj)
    return format_html('<a href="{}">{}</a>', url, text or obj)


def has_model_perm(user, model: type[models.Model], action: str) -> bool:
    opts = model._meta
    return user.has_perm(f"{opts.app_label}.{get_permission_codename(action, opts)}")


def can_change_target(admin_site, request, obj: models.Model) -> bool:
    """Whether the user may change ``obj`` (and so start paid work on it): the object-level
    check of the ModelAdmin registered for its model, else the model permission."""
    model_admin = admin_site._registry.get(type(obj))
    if model_admin is not None:
        return bool(model_admin.has_change_permission(request, obj))
    return has_model_perm(request.user, type(obj), "change")
