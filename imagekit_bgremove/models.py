"""What the app remembers: every removal request (RemovalJob) and every webhook delivery."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone

from .options import RemoveBgOptions


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    SUBMITTING = "submitting", "Submitting"
    PENDING = "pending", "Pending at ImageKit"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SUPERSEDED = "superseded", "Superseded"
    CANCELLED = "cancelled", "Cancelled"


UNFINISHED = (JobStatus.QUEUED, JobStatus.SUBMITTING, JobStatus.PENDING)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SUPERSEDED, JobStatus.CANCELLED)


class Trigger(models.TextChoices):
    SAVE = "save", "Model save"
    ADMIN = "admin", "Admin"
    API = "api", "REST API"
    COMMAND = "command", "Management command"
    RETRY = "retry", "Retry"


class RemovalJobQuerySet(models.QuerySet):
    def for_object(
        self, instance: models.Model, field_name: str | None = None
    ) -> RemovalJobQuerySet:
        qs = self.filter(
            content_type=ContentType.objects.get_for_model(instance, for_concrete_model=False),
            object_id=str(instance.pk),
        )
        return qs if field_name is None else qs.filter(field_name=field_name)

    def unfinished(self) -> RemovalJobQuerySet:
        return self.filter(status__in=UNFINISHED)

    def transition(self, pk: int, sources: Iterable[str], target: str, **changes: Any) -> bool:
        """Move job ``pk`` from one of ``sources`` to ``target`` in one UPDATE.

        The database decides the race: of two workers (or a worker and a webhook) trying the
        same move, exactly one sees a row count of 1. Returns whether this caller won."""
        changes.setdefault("updated_at", timezone.now())
        if target in FINISHED:
            changes.setdefault("finished_at", changes["updated_at"])
        return bool(self.filter(pk=pk, status__in=list(sources)).update(status=target, **changes))


class RemovalJob(models.Model):
    """One request to remove the background of one image field of one object."""

    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE, related_name="+")
    # A string so that objects with UUID or text primary keys work too.
    object_id = models.CharField(max_length=255)
    field_name = models.CharField(max_length=100)

    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.QUEUED)
    options = models.JSONField(default=dict, blank=True)
    force = models.BooleanField(
        default=False, help_text="Submit even if an identical result exists."
    )
    trigger = models.CharField(max_length=20, choices=Trigger.choices, default=Trigger.SAVE)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    # The original image as it was when the job was requested (never modified by the app).
    source_name = models.CharField(max_length=500, blank=True)
    source_hash = models.CharField(max_length=64, blank=True, db_index=True)
    source_size = models.BigIntegerField(null=True, blank=True)

    # ImageKit's side.
    file_id = models.CharField(max_length=100, blank=True, db_index=True)
    file_path = models.CharField(max_length=500, blank=True)
    source_version_id = models.CharField(max_length=100, blank=True)
    result_version_id = models.CharField(max_length=100, blank=True)
    result_url = models.URLField(max_length=2000, blank=True)
    result_mime = models.CharField(max_length=100, blank=True)
    result_size = models.BigIntegerField(null=True, blank=True)
    result_width = models.PositiveIntegerField(null=True, blank=True)
    result_height = models.PositiveIntegerField(null=True, blank=True)
    # The copy of the result in Django storage, next to the original.
    result_name = models.CharField(max_length=500, blank=True)

    # Why it failed (or why the result could not be copied), for a staff user to act on.
    error_code = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    error_details = models.JSONField(null=True, blank=True)

    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    duplicate_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="duplicates",
        help_text="An identical earlier job whose result this job shares.",
    )
    superseded_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)
    submitted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = RemovalJobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(
                fields=["content_type", "object_id", "field_name", "-created_at"],
                name="ikbg_job_object_idx",
            ),
            models.Index(fields=["status", "updated_at"], name="ikbg_job_status_idx"),
        ]

    def __str__(self) -> str:
        target = f"{self.content_type.model} {self.object_id}.{self.field_name}"
        return f"Removal #{self.pk} of {target} ({self.status})"

    @property
    def remove_bg_options(self) -> RemoveBgOptions:
        return RemoveBgOptions.from_dict(self.options)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    def get_target(self) -> models.Model | None:
        """The object this job belongs to, or None if it has been deleted."""
        model = self.content_type.model_class()
        if model is None:
            return None
        return model._default_manager.filter(pk=self.object_id).first()


class DeliveryVerdict(models.TextChoices):
    ACCEPTED = "accepted", "Accepted"
    DUPLICATE = "duplicate", "Duplicate"
    IGNORED = "ignored", "Ignored"
    MALFORMED = "malformed", "Malformed"
    UNAUTHENTIC = "unauthentic", "Failed authenticity"
    ERROR = "error", "Error (ImageKit will retry)"


class WebhookDelivery(models.Model):
    """One HTTP request to the webhook endpoint, kept whatever became of it."""

    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    headers = models.JSONField(default=dict, blank=True)
    body = models.TextField(blank=True, help_text="The body as received, capped.")
    body_size = models.PositiveIntegerField(default=0)
    job = models.ForeignKey(
        RemovalJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    signature_scheme = models.CharField(max_length=20, blank=True)
    verdict = models.CharField(max_length=20, choices=DeliveryVerdict.choices, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    outcome = models.TextField(blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        when = f"{self.received_at:%Y-%m-%d %H:%M:%S}"
        return f"Delivery #{self.pk} at {when} ({self.verdict or 'open'})"
