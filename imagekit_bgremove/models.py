"""What the app remembers: every removal request (RemovalJob) and every webhook delivery."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone

from .removebg import RemoveBgOptions


class JobStatus(models.TextChoices):
    """Where a job stands. Each unfinished state has exactly one thing that moves it on:

    queued      a worker's submit task (claims it: → submitting)
    submitting  the worker holding the lease; reconcile takes it back when the lease expires
    waiting     the identical job it shares a result with (``duplicate_of``)
    pending     ImageKit: its callback, or the scheduled check asking ImageKit
    received    a worker's finalize task, which stores the result (→ succeeded)
    """

    QUEUED = "queued", "Queued"
    SUBMITTING = "submitting", "Submitting"
    WAITING = "waiting", "Waiting for an identical image"
    PENDING = "pending", "Processing at ImageKit"
    RECEIVED = "received", "Result received, saving"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SUPERSEDED = "superseded", "Superseded"
    CANCELLED = "cancelled", "Cancelled"


UNFINISHED = (
    JobStatus.QUEUED,
    JobStatus.SUBMITTING,
    JobStatus.WAITING,
    JobStatus.PENDING,
    JobStatus.RECEIVED,
)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SUPERSEDED, JobStatus.CANCELLED)


class Trigger(models.TextChoices):
    SAVE = "save", "Model save"
    ADMIN = "admin", "Admin"
    API = "api", "REST API"
    COMMAND = "command", "Management command"
    RETRY = "retry", "Retry"


def owner_model(model: type[models.Model], field_name: str) -> type[models.Model]:
    """The concrete model whose table holds ``field_name``: jobs are keyed by it, so that a proxy,
    a multi-table child and the parent all share one job history per image."""
    return model._meta.get_field(field_name).model._meta.concrete_model


def owner_content_type(model: type[models.Model], field_name: str) -> ContentType:
    return ContentType.objects.get_for_model(owner_model(model, field_name))


def new_lease() -> int:
    """A fresh ownership token: only the holder of the current token moves a leased job."""
    return secrets.randbits(62) or 1


class RemovalJobQuerySet(models.QuerySet):
    def for_object(
        self, instance: models.Model, field_name: str | None = None
    ) -> RemovalJobQuerySet:
        model = type(instance)
        names = [field_name] if field_name else _removal_field_names(model)
        content_types = {owner_content_type(model, name).pk for name in names}
        qs = self.filter(content_type_id__in=content_types, object_id=str(instance.pk))
        return qs if field_name is None else qs.filter(field_name=field_name)

    def unfinished(self) -> RemovalJobQuerySet:
        return self.filter(status__in=UNFINISHED)


def _removal_field_names(model: type[models.Model]) -> list[str]:
    return [f.name for f in model._meta.fields if getattr(f, "removes_background", False)]


class RemovalJob(models.Model):
    """One request to remove the background of one image field of one object."""

    # Each index below is one more B-tree every save with the field writes to, so a column gets
    # one only where a query needs it, and a partial one where most rows leave it empty.
    content_type = models.ForeignKey(
        ContentType,
        on_delete=models.CASCADE,
        related_name="+",
        db_index=False,  # ikbg_job_object_idx starts with it
    )
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
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,  # ikbg_job_requested_by_idx, partial
    )
    # A failed job is tried again at most once: a second retry must start from the newest one.
    retry_of = models.OneToOneField(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="retry",
        help_text="The failed job this one tries again.",
    )

    # The original image as it was when the job was requested (never modified by the app).
    source_name = models.CharField(max_length=500, blank=True)
    source_hash = models.CharField(max_length=64, blank=True)
    source_size = models.BigIntegerField(null=True, blank=True)
    # sha256 of the source content and the options: identical work has the same key.
    content_key = models.CharField(max_length=64, blank=True)

    # ImageKit's side. Where the upload goes (folder/name), fixed before the first attempt.
    upload_path = models.CharField(max_length=600, blank=True)
    file_id = models.CharField(max_length=100, blank=True)  # ikbg_job_file_idx, partial
    file_path = models.CharField(max_length=500, blank=True)
    # When prune_removal_results --imagekit-originals deleted the uploaded file at ImageKit.
    original_deleted_at = models.DateTimeField(null=True, blank=True)
    source_version_id = models.CharField(max_length=100, blank=True)
    # The result: normally a new version of ``file_id``; ImageKit may also name another file.
    result_file_id = models.CharField(max_length=100, blank=True)
    result_version_id = models.CharField(max_length=100, blank=True)
    result_url = models.URLField(max_length=2000, blank=True)
    result_mime = models.CharField(max_length=100, blank=True)
    result_size = models.BigIntegerField(null=True, blank=True)
    result_width = models.PositiveIntegerField(null=True, blank=True)
    result_height = models.PositiveIntegerField(null=True, blank=True)
    # The copy of the result in Django storage, next to the original.
    result_name = models.CharField(max_length=500, blank=True)
    # A copy being written: named here first, so an interrupted write can be cleaned up.
    partial_result_name = models.CharField(max_length=500, blank=True)

    # Why it failed (or why the result could not be copied), for a staff user to act on.
    error_code = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    error_details = models.JSONField(null=True, blank=True)

    attempts = models.PositiveIntegerField(default=0, help_text="Submissions started.")
    finalize_attempts = models.PositiveIntegerField(default=0, help_text="Result copies started.")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Ownership of a job a worker is busy with (submitting, or storing a received result).
    lease_token = models.BigIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # The last paid request got no answer: ask ImageKit what became of it before sending again.
    submission_uncertain = models.BooleanField(default=False)
    # When reconcile last enqueued this job's task (so a backlog is not enqueued again and again).
    requeued_at = models.DateTimeField(null=True, blank=True)
    # When ImageKit was last asked about this job (so checks and reconcile do not ask twice).
    checked_at = models.DateTimeField(null=True, blank=True)
    # When the job started over: a job that waited on an identical job's run, which never came,
    # and is then sent on its own. Its deadline counts from here, not from its creation.
    restarted_at = models.DateTimeField(null=True, blank=True)
    duplicate_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="duplicates",
        db_index=False,  # ikbg_job_duplicate_idx, partial
        help_text="An identical earlier job whose result this job shares.",
    )
    superseded_by = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,  # only ever read from the job that was superseded
    )

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    submitted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = RemovalJobQuerySet.as_manager()

    class Meta:
        # Newest first: ids grow with time, and the primary key's index serves the order.
        ordering = ["-id"]
        indexes = [
            models.Index(
                fields=["content_type", "object_id", "field_name", "-id"],
                name="ikbg_job_object_idx",
            ),
            models.Index(fields=["status", "updated_at"], name="ikbg_job_status_idx"),
            models.Index(
                fields=["file_id"], condition=~models.Q(file_id=""), name="ikbg_job_file_idx"
            ),
            models.Index(
                fields=["duplicate_of"],
                condition=models.Q(duplicate_of__isnull=False),
                name="ikbg_job_duplicate_idx",
            ),
            models.Index(
                fields=["requested_by"],
                condition=models.Q(requested_by__isnull=False),
                name="ikbg_job_requested_by_idx",
            ),
        ]
        constraints = [
            # At most one live job per image: a newer request supersedes the older one first.
            models.UniqueConstraint(
                fields=["content_type", "object_id", "field_name"],
                condition=models.Q(status__in=UNFINISHED),
                name="ikbg_one_unfinished_job_per_image",
            )
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
        return model._base_manager.filter(pk=self.object_id).first()


class ContentClaim(models.Model):
    """Which job pays for a given (image content, options): identical work is done once.

    The unique key makes the choice race-free: of two identical jobs submitted at the same
    instant, one inserts the claim and uploads, the other waits for its result."""

    key = models.CharField(max_length=64, unique=True)
    job = models.ForeignKey(RemovalJob, on_delete=models.CASCADE, related_name="+")
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.key[:12]}… → job #{self.job_id}"


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


class WebhookCount(models.Model):
    """How many webhook requests ended a given way, per minute: refusals by reason, and repeats.

    These requests are counted, not stored one by one: whoever floods the endpoint with bad
    tokens, bad signatures or repeats costs at most one row per kind and minute."""

    minute = models.DateTimeField()
    kind = models.CharField(max_length=40)
    count = models.PositiveIntegerField(default=0)
    last_remote_addr = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-minute", "kind"]
        constraints = [
            models.UniqueConstraint(fields=["minute", "kind"], name="ikbg_webhook_count_minute")
        ]

    def __str__(self) -> str:
        return f"{self.count} x {self.kind} at {self.minute:%Y-%m-%d %H:%M}"


class DailyUsage(models.Model):
    """How many removals were requested on a day: the budget ``DAILY_REMOVAL_LIMIT`` counts
    against it, in the database, so every process and worker shares one count."""

    day = models.DateField(unique=True)
    requests = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-day"]
        verbose_name_plural = "daily usage"

    def __str__(self) -> str:
        return f"{self.day}: {self.requests} removal request(s)"
