"""The service layer: the one place entry points call, and the only caller of the ImageKit client.

Every state change of a :class:`~imagekit_bgremove.models.RemovalJob` goes through
``RemovalJob.objects.transition`` (one conditional UPDATE), so two workers, or a worker and a
webhook, can never both make the same move; every function here is therefore safe to run twice.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import FieldDoesNotExist
from django.core.files.base import ContentFile
from django.db import models, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from .conf import app_settings
from .exceptions import ImageKitError, ResponseTooLargeError
from .models import FINISHED, UNFINISHED, JobStatus, RemovalJob, Trigger
from .options import OptionsError, RemoveBgOptions
from .signals import removal_failed, removal_succeeded
from .tokens import make_token

__all__ = [
    "CallbackError",
    "CallbackOutcome",
    "OptionsError",
    "apply_callback",
    "enqueue_submit",
    "finalize",
    "reconcile",
    "request_removal",
    "retry",
    "submit",
    "webhook_url",
]

logger = logging.getLogger(__name__)

HASH_CHUNK = 1024 * 1024
SERVICE = "remove-bg"


class CallbackError(ValueError):
    """The payload is not a remove-bg callback of the documented shape (answered with 400)."""


@dataclass
class CallbackOutcome:
    verdict: str  # "accepted", "duplicate" or "ignored"
    message: str
    job: RemovalJob | None = None


# ------------------------------------------------------------------------------------ helpers


def removal_field_names(model: type[models.Model]) -> list[str]:
    """The image fields of ``model`` whose backgrounds this app can remove."""
    from .fields import BackgroundRemovalImageField

    return [f.name for f in model._meta.get_fields() if isinstance(f, BackgroundRemovalImageField)]


def removal_field(model: type[models.Model], field_name: str):
    """``model``'s BackgroundRemovalImageField ``field_name``; ValueError naming the problem."""
    from .fields import BackgroundRemovalImageField

    try:
        field = model._meta.get_field(field_name)
    except FieldDoesNotExist:
        raise ValueError(f"{model._meta.label} has no field {field_name!r}.") from None
    if not isinstance(field, BackgroundRemovalImageField):
        raise ValueError(
            f"{model._meta.label}.{field_name} is a {type(field).__name__}, "
            "not a BackgroundRemovalImageField."
        )
    return field


def base_options() -> RemoveBgOptions:
    """The site-wide defaults (settings ``DEFAULT_OPTIONS``) over remove.bg's own."""
    return RemoveBgOptions.coerce(app_settings.DEFAULT_OPTIONS or {})


def field_options(field) -> RemoveBgOptions:
    """A field's effective options: its ``remove_bg_options`` merged over ``DEFAULT_OPTIONS``."""
    return RemoveBgOptions.from_dict(field.remove_bg_options, base=base_options())


def _file_id_of(field, instance: models.Model | None) -> str:
    if instance is None or not field.imagekit_file_id_field:
        return ""
    value = getattr(instance, field.imagekit_file_id_field, "") or ""
    return str(value).strip()


def webhook_url(job: RemovalJob | int) -> str:
    """The callback URL for ``job``: ``WEBHOOK_BASE_URL`` + the webhook route + a signed token."""
    job_id = job if isinstance(job, int) else job.pk
    path = reverse("imagekit_bgremove:webhook", kwargs={"token": make_token(job_id)})
    return f"{app_settings.webhook_base_url}{path}"


def _client():
    from .client import get_client

    return get_client()


def _record_enqueue_error(job_id: int, exc: BaseException) -> None:
    try:
        RemovalJob.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
            error_code="enqueue_failed",
            error_message=(
                f"The job could not be queued ({type(exc).__name__}: {exc}); "
                "reconcile_removals will queue it again."
            )[:2000],
            updated_at=timezone.now(),
        )
    except Exception:
        logger.exception("could not record the enqueue failure of removal job %s", job_id)


def _enqueue_now(task_name: str, job_id: int | None = None, *, run_after: datetime | None = None):
    """Enqueue a task; never raises (a failure is logged and noted on a queued job)."""
    from . import tasks

    task_obj = getattr(tasks, task_name)
    args = () if job_id is None else (job_id,)
    try:
        return tasks.enqueue(task_obj, *args, run_after=run_after)
    except Exception as exc:
        logger.exception("could not enqueue %s(%s)", task_name, job_id or "")
        if job_id is not None and task_name == "submit_removal":
            _record_enqueue_error(job_id, exc)
        return None


def enqueue_submit(job_id: int) -> Any:
    """Enqueue the submit task of ``job_id`` now (outside a transaction); never raises."""
    return _enqueue_now("submit_removal", job_id)


def enqueue_reconcile() -> Any:
    """Queue one ``reconcile_removals`` run now; never raises (None when it could not)."""
    return _enqueue_now("reconcile_removals")


def _enqueue_on_commit(task_name: str, job_id: int, *, run_after: datetime | None = None) -> None:
    transaction.on_commit(lambda: _enqueue_now(task_name, job_id, run_after=run_after), robust=True)


def _send_on_commit(signal, job_id: int) -> None:
    def send() -> None:
        job = RemovalJob.objects.select_related("content_type").filter(pk=job_id).first()
        if job is None:
            return
        instance = job.get_target()
        sender = type(instance) if instance is not None else RemovalJob
        signal.send_robust(sender=sender, job=job, instance=instance)

    transaction.on_commit(send, robust=True)


def _point_at(job: RemovalJob) -> None:
    """Point the object's ``<field>_removal`` at ``job`` unless it already points at a newer one
    (a stale in-memory instance saved meanwhile may have written an older pointer)."""
    model = job.content_type.model_class()
    if model is None:
        return
    attname = f"{job.field_name}_removal"
    try:
        model._meta.get_field(attname)
    except FieldDoesNotExist:
        return
    newer = RemovalJob.objects.filter(
        content_type_id=job.content_type_id,
        object_id=job.object_id,
        field_name=job.field_name,
        pk__gt=job.pk,
    ).exclude(status__in=[JobStatus.SUPERSEDED, JobStatus.CANCELLED])
    if newer.exists():
        return
    model._base_manager.filter(pk=job.object_id).filter(
        Q(**{f"{attname}__isnull": True}) | Q(**{f"{attname}__lt": job.pk})
    ).update(**{attname: job.pk})


# ------------------------------------------------------------------------------------ request


def request_removal(
    instance: models.Model,
    field_name: str,
    *,
    options: RemoveBgOptions | Mapping[str, Any] | str | None = None,
    trigger: str = Trigger.API,
    user: Any = None,
    force: bool = False,
) -> RemovalJob:
    """Ask for the background of ``instance.<field_name>`` to be removed.

    Creates a ``queued`` job, supersedes older unfinished jobs of the same object and field,
    points ``<field_name>_removal`` at it and enqueues the submit task once the transaction
    commits. Raises ``OptionsError`` for invalid options and ``ValueError`` for anything else."""
    if instance is None or instance.pk is None:
        raise ValueError("Save the object before requesting a background removal.")
    field = removal_field(type(instance), field_name)
    defaults = field_options(field)
    merged = RemoveBgOptions.coerce(options, base=defaults) if options else defaults
    file = getattr(instance, field.attname)
    if file and not file._committed:
        raise ValueError(
            f"{type(instance)._meta.label}.{field_name} holds a new image that has not been "
            "saved yet; save the object first."
        )
    source_name = (file.name or "") if file else ""
    if not source_name and not _file_id_of(field, instance):
        raise ValueError(
            f"{type(instance)._meta.label}.{field_name} has no image to remove the background of."
        )
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    content_type = ContentType.objects.get_for_model(instance, for_concrete_model=False)
    now = timezone.now()
    with transaction.atomic():
        job = RemovalJob.objects.create(
            content_type=content_type,
            object_id=str(instance.pk),
            field_name=field_name,
            status=JobStatus.QUEUED,
            options=merged.to_dict(),
            force=bool(force),
            trigger=trigger,
            requested_by=user,
            source_name=source_name,
            created_at=now,
            updated_at=now,
        )
        RemovalJob.objects.filter(
            content_type=content_type,
            object_id=job.object_id,
            field_name=field_name,
            status__in=UNFINISHED,
            pk__lt=job.pk,
        ).update(status=JobStatus.SUPERSEDED, superseded_by=job, updated_at=now, finished_at=now)
        pointer = f"{field_name}_removal"
        type(instance)._base_manager.filter(pk=instance.pk).update(**{pointer: job.pk})
        setattr(instance, pointer, job)
        _enqueue_on_commit("submit_removal", job.pk)
    return job


def retry(job: RemovalJob, *, user: Any = None) -> RemovalJob:
    """Request a failed job again: a new job (trigger RETRY, same options) from the original
    image (the app never modifies the original; on the fileId path the original version is
    restored before resubmitting)."""
    if job.status != JobStatus.FAILED:
        raise ValueError(f"Only failed jobs can be retried; job #{job.pk} is {job.status}.")
    instance = job.get_target()
    if instance is None:
        raise ValueError(f"The object of job #{job.pk} no longer exists.")
    return request_removal(
        instance,
        job.field_name,
        options=job.options,
        trigger=Trigger.RETRY,
        user=user,
        force=job.force,
    )


# ------------------------------------------------------------------------------------ submit


def _hash_source(storage, name: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with storage.open(name, "rb") as fh:
        while True:
            chunk = fh.read(HASH_CHUNK)
            if not chunk:
                break
            if isinstance(chunk, str):
                chunk = chunk.encode()
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _upload_name(job: RemovalJob) -> str:
    base = posixpath.basename(job.source_name.replace("\\", "/")) or f"image{job.pk}.jpg"
    stem, ext = posixpath.splitext(base)
    return f"{stem or 'image'}__ikbg{job.pk}{ext or '.jpg'}"


def _readable(exc: ImageKitError, action: str) -> str:
    text = f"ImageKit refused to {action}"
    if exc.status:
        text += f" (HTTP {exc.status})"
    text += f": {exc.message.rstrip('.')}."
    if exc.help:
        text += f" {exc.help}"
    if exc.request_id:
        text += f" Request id {exc.request_id}."
    return text


def _error_code(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    name = type(exc).__name__
    return f"{name}:{status}" if status else name


def _find_original(job: RemovalJob, options_key: str) -> RemovalJob | None:
    """An earlier job with the same source content and options that is pending or succeeded."""
    candidates = (
        RemovalJob.objects.filter(
            source_hash=job.source_hash,
            status__in=[JobStatus.SUCCEEDED, JobStatus.PENDING],
            duplicate_of__isnull=True,
        )
        .exclude(pk=job.pk)
        .exclude(file_id="")
        .order_by("-status", "-pk")  # "succeeded" sorts after "pending": prefer it
    )
    for candidate in candidates[:50]:
        try:
            key = RemoveBgOptions.from_dict(candidate.options).cache_key()
        except OptionsError:
            continue
        if key == options_key:
            return candidate
    return None


def _copy_result_fields(source: RemovalJob) -> dict[str, Any]:
    return {
        "result_version_id": source.result_version_id,
        "result_url": source.result_url,
        "result_mime": source.result_mime,
        "result_size": source.result_size,
        "result_width": source.result_width,
        "result_height": source.result_height,
    }


def submit(job_id: int) -> str:
    """Send a queued job to ImageKit. Returns a short word saying what happened."""
    now = timezone.now()
    if not RemovalJob.objects.transition(
        job_id,
        [JobStatus.QUEUED],
        JobStatus.SUBMITTING,
        attempts=models.F("attempts") + 1,
        error_code="",
        error_message="",
        updated_at=now,
    ):
        return "skipped"
    job = RemovalJob.objects.select_related("content_type").get(pk=job_id)
    try:
        return _submit(job)
    except ImageKitError as exc:
        return _submit_failed(job, exc, _readable(exc, "accept the image"))
    except Exception as exc:  # storage trouble, a bug: retry a bounded number of times
        logger.exception("submitting removal job %s failed", job_id)
        return _submit_failed(
            job, exc, f"Submitting failed: {type(exc).__name__}: {exc}", retryable=True
        )


def _submit_failed(
    job: RemovalJob, exc: BaseException, message: str, retryable: bool | None = None
) -> str:
    retryable = getattr(exc, "retryable", False) if retryable is None else retryable
    details = getattr(exc, "body", None)
    if details is not None and not isinstance(details, dict | list):
        details = {"body": str(details)[:2000]}
    changes = {
        "error_code": _error_code(exc)[:100],
        "error_message": message[:5000],
        "error_details": details,
    }
    max_attempts = int(app_settings.TASK_MAX_ATTEMPTS)
    if retryable and job.attempts < max_attempts:
        delay = float(app_settings.TASK_RETRY_DELAY) * (2 ** max(0, job.attempts - 1))
        server_delay = getattr(exc, "retry_after", None)
        if server_delay:
            delay = max(delay, float(server_delay))
        run_after = timezone.now() + timedelta(seconds=delay)
        if RemovalJob.objects.transition(
            job.pk,
            [JobStatus.SUBMITTING],
            JobStatus.QUEUED,
            next_attempt_at=run_after,
            **changes,
        ):
            logger.warning("removal job %s: %s; retrying after %s", job.pk, message, run_after)
            _enqueue_on_commit("submit_removal", job.pk, run_after=run_after)
        return "retry"
    if retryable:
        changes["error_message"] = (f"Gave up after {job.attempts} attempts. {message}")[:5000]
    _fail(job.pk, [JobStatus.SUBMITTING], **changes)
    return "failed"


def _submit(job: RemovalJob) -> str:
    instance = job.get_target()
    if instance is None:
        RemovalJob.objects.transition(
            job.pk,
            [JobStatus.SUBMITTING],
            JobStatus.CANCELLED,
            error_code="object_deleted",
            error_message="The object was deleted before its image was sent; nothing was sent.",
        )
        return "cancelled"
    field = removal_field(type(instance), job.field_name)
    options = RemoveBgOptions.from_dict(job.options)
    file_id = _file_id_of(field, instance)

    source_hash, source_size = "", None
    if job.source_name:
        storage = field.storage
        if not storage.exists(job.source_name):  # storage trouble raises: retried
            if not file_id:
                _fail(
                    job.pk,
                    [JobStatus.SUBMITTING],
                    error_code="source_missing",
                    error_message=(
                        f"The original image {job.source_name!r} is missing from storage; "
                        "upload the image again."
                    ),
                )
                return "failed"
        else:
            source_hash, source_size = _hash_source(storage, job.source_name)
    RemovalJob.objects.filter(pk=job.pk).update(source_hash=source_hash, source_size=source_size)
    job.source_hash, job.source_size = source_hash, source_size

    if source_hash and not job.force and not file_id:
        original = _find_original(job, options.cache_key())
        if original is not None:
            return _share(job, original)

    client = _client()
    extensions = [options.to_extension()]
    hook: str | None = webhook_url(job)
    if not app_settings.webhook_base_url:
        # ImageKit cannot call a relative URL back; reconcile_removals polls for the result.
        logger.warning("WEBHOOK_BASE_URL is not set: job %s relies on reconcile_removals", job.pk)
        hook = None
    if file_id:
        response = _submit_existing_file(client, job, file_id, extensions, hook)
    else:
        folder = field.imagekit_folder or app_settings.FOLDER
        tags = list(app_settings.TAGS or []) + list(field.imagekit_tags or [])
        with field.storage.open(job.source_name, "rb") as fh:
            response = client.upload(
                fh,
                _upload_name(job),
                folder=folder,
                use_unique_file_name=False,
                overwrite_file=True,
                tags=tags,
                extensions=extensions,
                webhook_url=hook,
            )
    return _record_submission(job, response)


def _submit_existing_file(
    client, job: RemovalJob, file_id: str, extensions: list, hook: str | None
) -> dict:
    """Update File Details on an existing ImageKit file, from its original version."""
    earliest = (
        RemovalJob.objects.filter(file_id=file_id)
        .exclude(source_version_id="")
        .exclude(pk=job.pk)
        .order_by("pk")
        .first()
    )
    if earliest is not None:
        # Reprocessing: remove-bg works on the current version, which may be a cut-out already.
        current = client.get_file_details(file_id)
        current_version = (current.get("versionInfo") or {}).get("id")
        if current_version != earliest.source_version_id:
            client.restore_version(file_id, earliest.source_version_id)
    return client.update_file_details(file_id, extensions=extensions, webhook_url=hook)


def _record_submission(job: RemovalJob, response: Mapping[str, Any]) -> str:
    file_fields = {
        "file_id": str(response.get("fileId") or "")[:100],
        "file_path": str(response.get("filePath") or "")[:500],
        "source_version_id": str((response.get("versionInfo") or {}).get("id") or "")[:100],
        "submitted_at": timezone.now(),
    }
    status = str((response.get("extensionStatus") or {}).get(SERVICE, "pending")).lower()
    if status == "failed":
        _fail(
            job.pk,
            [JobStatus.SUBMITTING],
            error_code="extension_failed",
            error_message=(
                "ImageKit accepted the image but said remove-bg will not run on it "
                "(extensionStatus 'failed'); check the image and your extension quota."
            ),
            error_details={"extensionStatus": response.get("extensionStatus")},
            **file_fields,
        )
        return "failed"
    if RemovalJob.objects.transition(
        job.pk, [JobStatus.SUBMITTING], JobStatus.PENDING, next_attempt_at=None, **file_fields
    ):
        _schedule_check(job.pk, file_fields["submitted_at"], file_fields["submitted_at"])
        return "pending"
    # A callback settled the job while we were submitting: only record what ImageKit told us.
    RemovalJob.objects.filter(pk=job.pk).update(
        **{k: v for k, v in file_fields.items() if k != "file_id"},
    )
    RemovalJob.objects.filter(pk=job.pk, file_id="").update(file_id=file_fields["file_id"])
    return "recorded"


def _share(job: RemovalJob, original: RemovalJob) -> str:
    """Reuse ``original``'s result (succeeded) or wait for it (pending) instead of paying twice."""
    if original.status == JobStatus.SUCCEEDED:
        if RemovalJob.objects.transition(
            job.pk,
            [JobStatus.SUBMITTING],
            JobStatus.PENDING,
            duplicate_of=original,
            submitted_at=timezone.now(),
            next_attempt_at=None,
            **_copy_result_fields(original),
        ):
            _enqueue_on_commit("finalize_removal", job.pk)
        return "shared"
    RemovalJob.objects.transition(
        job.pk,
        [JobStatus.SUBMITTING],
        JobStatus.PENDING,
        duplicate_of=original,
        submitted_at=timezone.now(),
        next_attempt_at=None,
    )
    # The original may have settled between our look-up and our write.
    _settle_duplicate(job.pk)
    return "waiting"


def _settle_duplicate(job_id: int) -> bool:
    """Give a pending duplicate its original's result or fate. Returns whether it moved."""
    job = RemovalJob.objects.select_related("duplicate_of").filter(pk=job_id).first()
    if job is None or job.status != JobStatus.PENDING or job.duplicate_of is None:
        return False
    original = job.duplicate_of
    if original.result_url and original.status in (JobStatus.PENDING, JobStatus.SUCCEEDED):
        if job.result_url:
            return False
        copied = RemovalJob.objects.filter(pk=job.pk, status=JobStatus.PENDING).update(
            **_copy_result_fields(original), updated_at=timezone.now()
        )
        _enqueue_on_commit("finalize_removal", job.pk)
        return bool(copied)
    if original.status in (JobStatus.SUPERSEDED, JobStatus.CANCELLED):
        # The original will never take its result (a newer image replaced it), but nothing
        # is wrong with this job's image: send it on its own instead of failing it.
        if RemovalJob.objects.transition(
            job.pk,
            [JobStatus.PENDING],
            JobStatus.QUEUED,
            duplicate_of=None,
            submitted_at=None,
            next_attempt_at=None,
        ):
            _enqueue_on_commit("submit_removal", job.pk)
            return True
        return False
    if original.status in FINISHED and original.status != JobStatus.SUCCEEDED:
        return _fail_duplicate(job.pk, original)
    return False


def _fail_duplicate(job_id: int, original: RemovalJob) -> bool:
    return _fail(
        job_id,
        [JobStatus.PENDING],
        error_code=original.error_code or "original_failed",
        error_message=(
            f"The identical job #{original.pk} ended {original.status}: "
            f"{original.error_message or 'no reason given'}"
        )[:5000],
        error_details=original.error_details,
    )


def _fail(job_id: int, from_statuses: list[str], **changes: Any) -> bool:
    """Move the job to ``failed`` if it is still in one of ``from_statuses``; then tell the
    receivers of ``removal_failed`` (after commit) and fail the duplicates waiting on it."""
    if not RemovalJob.objects.transition(job_id, from_statuses, JobStatus.FAILED, **changes):
        return False
    _send_on_commit(removal_failed, job_id)
    _settle_duplicates_failed(job_id)
    return True


def _settle_duplicates_failed(job_id: int) -> None:
    original = RemovalJob.objects.filter(pk=job_id).first()
    if original is None:
        return
    for dup_id in RemovalJob.objects.filter(
        duplicate_of_id=job_id, status=JobStatus.PENDING
    ).values_list("pk", flat=True):
        _fail_duplicate(dup_id, original)


# ------------------------------------------------------------------------------------ callbacks


def _result_fields(file_object: Mapping[str, Any]) -> dict[str, Any]:
    def integer(value: Any) -> int | None:
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    version = file_object.get("versionInfo") or {}
    return {
        "result_version_id": str(version.get("id") or "")[:100],
        "result_url": str(file_object.get("url") or "")[:2000],
        "result_mime": str(file_object.get("mime") or file_object.get("fileType") or "")[:100],
        "result_size": integer(file_object.get("size")),
        "result_width": integer(file_object.get("width")),
        "result_height": integer(file_object.get("height")),
    }


def _validate_payload(payload: Any) -> tuple[str, str, dict[str, Any] | None]:
    if not isinstance(payload, Mapping):
        raise CallbackError("The callback body must be a JSON object.")
    service = payload.get("service")
    if service != SERVICE:
        raise CallbackError(f"Not a remove-bg callback (service {service!r}).")
    status = str(payload.get("status") or "").upper()
    if status not in ("SUCCESS", "FAILURE"):
        raise CallbackError(
            f"Unknown callback status {payload.get('status')!r}; expected SUCCESS or FAILURE."
        )
    file_object = payload.get("fileObject")
    if status == "SUCCESS":
        if not isinstance(file_object, Mapping) or not file_object.get("fileId"):
            raise CallbackError("A SUCCESS callback must carry a fileObject with a fileId.")
        if not isinstance(file_object.get("versionInfo") or {}, Mapping):
            raise CallbackError("fileObject.versionInfo must be an object.")
        if not file_object.get("url"):
            raise CallbackError("A SUCCESS callback's fileObject must carry the result url.")
        file_id = str(file_object["fileId"])
    else:
        file_id = str(payload.get("fileId") or "")
        if isinstance(file_object, Mapping) and not file_id:
            file_id = str(file_object.get("fileId") or "")
    return status, file_id, dict(file_object) if isinstance(file_object, Mapping) else None


def _already_recorded(job_result_url: str, job_version: str, version: str) -> bool:
    return bool(job_result_url) and bool(version) and job_version == version


def recorded_result_version(job_id: int, payload: Any) -> str | None:
    """The result version id when ``payload`` is a well-formed SUCCESS callback whose result job
    ``job_id`` has already recorded, else None.

    A read-only shortcut for repeated callbacks (ImageKit retries for a day): ``apply_callback``
    would answer "duplicate" for these without changing anything, so the webhook can answer from
    one read instead of a locked transaction."""
    try:
        status, file_id, file_object = _validate_payload(payload)
    except CallbackError:
        return None
    if status != "SUCCESS" or file_object is None:
        return None
    version = _result_fields(file_object)["result_version_id"]
    rows = list(
        RemovalJob.objects.filter(pk=job_id)
        .order_by()  # one row by primary key: no ORDER BY (which .first() would add)
        .values_list("status", "file_id", "result_version_id", "result_url")[:1]
    )
    if not rows:
        return None
    job_status, job_file_id, job_version, job_result_url = rows[0]
    if job_status not in (JobStatus.PENDING, JobStatus.SUCCEEDED) or job_file_id != file_id:
        return None
    return version if _already_recorded(job_result_url, job_version, version) else None


def apply_callback(job_id: int, payload: dict) -> CallbackOutcome:
    """Apply ImageKit's callback for job ``job_id`` (the id comes from the verified token)."""
    status, file_id, file_object = _validate_payload(payload)
    with transaction.atomic():
        job = RemovalJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None:
            return CallbackOutcome("ignored", f"Job #{job_id} does not exist (deleted?).")
        if job.status in (JobStatus.SUPERSEDED, JobStatus.CANCELLED):
            return CallbackOutcome(
                "ignored", f"Job #{job.pk} is {job.status}; its late callback is ignored.", job
            )
        if job.file_id and file_id and job.file_id != file_id:
            return CallbackOutcome(
                "ignored",
                f"The callback is about file {file_id}, job #{job.pk} about {job.file_id}.",
                job,
            )
        if status == "SUCCESS":
            assert file_object is not None
            return _accept_success(job, file_id, file_object)
        return _accept_failure(job, file_id, payload)


def _accept_success(
    job: RemovalJob, file_id: str, file_object: Mapping[str, Any], *, source: str = "callback"
) -> CallbackOutcome:
    fields = _result_fields(file_object)
    version = fields["result_version_id"]
    if _already_recorded(job.result_url, job.result_version_id, version):
        return CallbackOutcome(
            "duplicate", f"Result version {version} of job #{job.pk} is already recorded.", job
        )
    if job.status == JobStatus.SUCCEEDED:
        return CallbackOutcome(
            "duplicate", f"Job #{job.pk} has already succeeded; nothing changed.", job
        )
    changes: dict[str, Any] = dict(fields)
    if not job.file_id:
        changes["file_id"] = file_id[:100]
    if file_object.get("filePath") and not job.file_path:
        changes["file_path"] = str(file_object["filePath"])[:500]
    if job.status == JobStatus.FAILED:
        changes.update(error_code="", error_message="", error_details=None, finished_at=None)
    moved = RemovalJob.objects.transition(
        job.pk,
        [JobStatus.QUEUED, JobStatus.SUBMITTING, JobStatus.PENDING, JobStatus.FAILED],
        JobStatus.PENDING,
        **changes,
    )
    if not moved:  # superseded or cancelled since the caller read it (reconcile, check)
        return CallbackOutcome("ignored", f"Job #{job.pk} is no longer waiting for a result.", job)
    _enqueue_on_commit("finalize_removal", job.pk)
    for dup_id in RemovalJob.objects.filter(
        duplicate_of_id=job.pk, status=JobStatus.PENDING
    ).values_list("pk", flat=True):
        _settle_duplicate(dup_id)
    job.refresh_from_db()
    return CallbackOutcome(
        "accepted",
        f"Result version {version or '?'} recorded for job #{job.pk} ({source}).",
        job,
    )


def failure_reason(error: Any) -> str:
    """A readable reason from ImageKit's error object (whatever shape it has)."""
    if isinstance(error, Mapping):
        for key in ("message", "reason", "detail", "title", "code"):
            if error.get(key):
                return str(error[key])
    if isinstance(error, str) and error:
        return error
    return "no reason given"


def _accept_failure(job: RemovalJob, file_id: str, payload: Mapping[str, Any]) -> CallbackOutcome:
    if job.status == JobStatus.SUCCEEDED or (job.status == JobStatus.PENDING and job.result_url):
        return CallbackOutcome(
            "ignored", f"FAILURE after a SUCCESS of job #{job.pk} is ignored.", job
        )
    if job.status == JobStatus.FAILED:
        return CallbackOutcome("duplicate", f"Job #{job.pk} has already failed.", job)
    error = payload.get("error")
    changes: dict[str, Any] = {
        "error_code": "removal_failed",
        "error_message": (
            f"ImageKit could not remove the background: {failure_reason(error).rstrip('.')}. "
            "Try another image or retry the removal."
        )[:5000],
        "error_details": {"error": error} if not isinstance(error, dict) else error,
    }
    if file_id and not job.file_id:
        changes["file_id"] = file_id[:100]
    _fail(job.pk, [JobStatus.QUEUED, JobStatus.SUBMITTING, JobStatus.PENDING], **changes)
    job.refresh_from_db()
    return CallbackOutcome("accepted", f"Job #{job.pk} failed at ImageKit.", job)


# ------------------------------------------------------------------------------------ finalize


def _result_name(job: RemovalJob, content_type: str) -> str:
    """``<dir>/<stem><RESULT_SUFFIX>_<job id><ext>``: the original's stem followed by text with a
    dot in it, so never the original's own name (whose extension has no dot)."""
    directory, base = posixpath.split(job.source_name.replace("\\", "/"))
    stem = posixpath.splitext(base)[0] or "image"
    ext = ".png"
    guessed = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ""
    if guessed in (".jpg", ".jpeg", ".webp", ".png", ".avif", ".gif"):
        ext = guessed
    name = f"{stem}{app_settings.RESULT_SUFFIX}_{job.pk}{ext}"
    return posixpath.join(directory, name) if directory else name


def finalize(job_id: int) -> str:
    """Confirm (optionally) and copy the result of a job whose callback arrived; → succeeded."""
    job = RemovalJob.objects.select_related("content_type").filter(pk=job_id).first()
    if job is None or job.status != JobStatus.PENDING or not job.result_url:
        return "skipped"
    changes: dict[str, Any] = {"error_code": "", "error_message": "", "error_details": None}
    try:
        confirm = app_settings.WEBHOOK_CONFIRM_WITH_API and job.file_id and not job.duplicate_of_id
        if confirm and not _version_exists(job):
            _fail(
                job.pk,
                [JobStatus.PENDING],
                error_code="result_unconfirmed",
                error_message=(
                    f"ImageKit does not know result version {job.result_version_id} of "
                    f"file {job.file_id}; the callback was not confirmed."
                ),
            )
            return "failed"
        if app_settings.COPY_RESULT:
            changes.update(_copy_result(job))
    except ImageKitError as exc:
        details = job.error_details if isinstance(job.error_details, dict) else {}
        tries = int(details.get("finalize_attempts", 0)) + 1
        if exc.retryable and tries < int(app_settings.TASK_MAX_ATTEMPTS):
            RemovalJob.objects.filter(pk=job.pk, status=JobStatus.PENDING).update(
                error_code=_error_code(exc)[:100],
                error_message=_readable(exc, "deliver the result")[:5000],
                error_details={"finalize_attempts": tries},
                updated_at=timezone.now(),
            )
            delay = float(app_settings.TASK_RETRY_DELAY) * (2 ** (tries - 1))
            run_after = timezone.now() + timedelta(seconds=delay)
            _enqueue_now("finalize_removal", job.pk, run_after=run_after)
            return "retry"
        changes.update(
            error_code="result_not_copied",
            error_message=(
                f"The background was removed at ImageKit ({job.result_url}) but the result "
                f"could not be copied: {exc.message}"
            )[:5000],
        )
    with transaction.atomic():
        if RemovalJob.objects.transition(
            job.pk, [JobStatus.PENDING], JobStatus.SUCCEEDED, **changes
        ):
            _point_at(job)
            _send_on_commit(removal_succeeded, job.pk)
            return "succeeded"
    return "skipped"


def _version_exists(job: RemovalJob) -> bool:
    client = _client()
    details = client.get_file_details(job.file_id)
    if (details.get("versionInfo") or {}).get("id") == job.result_version_id:
        return True
    versions = client.list_versions(job.file_id)
    return any(
        (v.get("versionInfo") or {}).get("id") == job.result_version_id
        or v.get("versionId") == job.result_version_id
        for v in versions or []
    )


def _copy_result(job: RemovalJob) -> dict[str, Any]:
    """Download the result and store it next to the original. Raises ImageKitError for
    transient trouble; returns the job changes (result_name or a result_not_copied note)."""
    instance = job.get_target()
    if instance is None:
        return {
            "error_code": "result_not_copied",
            "error_message": "The object was deleted; the result was not copied.",
        }
    field = removal_field(type(instance), job.field_name)
    max_bytes = int(app_settings.RESULT_MAX_BYTES)
    try:
        data, content_type = _client().download(job.result_url, max_bytes=max_bytes)
    except ResponseTooLargeError:
        return {
            "error_code": "result_not_copied",
            "error_message": (
                f"The result is larger than RESULT_MAX_BYTES ({max_bytes} bytes); it stays at "
                f"ImageKit ({job.result_url}) and was not copied."
            ),
        }
    if not content_type.lower().startswith("image/"):
        return {
            "error_code": "result_not_copied",
            "error_message": (
                f"ImageKit served {content_type or 'no content type'} instead of an image for "
                f"{job.result_url}; the result was not copied."
            ),
        }
    name = _result_name(job, content_type)
    storage = field.storage
    if storage.exists(name):  # our own name, left by an interrupted earlier run
        storage.delete(name)
    stored = storage.save(name, ContentFile(data))
    return {"result_name": stored, "result_size": job.result_size or len(data)}


# ------------------------------------------------------------------------------------ reconcile


def _ask_imagekit(job: RemovalJob, deadline: datetime) -> str:
    """Settle a pending job whose callback has not come by asking ImageKit for the file: a new
    version is its result; past ``deadline`` it fails. Returns "succeeded", "failed", "error"
    (ImageKit unreachable for now), "waiting" or "unchanged" (settled meanwhile by a callback)."""
    try:
        if job.file_id:
            details = _client().get_file_details(job.file_id)
            version = str((details.get("versionInfo") or {}).get("id") or "")
            if version and version != job.source_version_id and details.get("url"):
                with transaction.atomic():
                    locked = RemovalJob.objects.select_for_update().get(pk=job.pk)
                    outcome = _accept_success(locked, job.file_id, details, source="reconcile")
                return "succeeded" if outcome.verdict == "accepted" else "unchanged"
    except ImageKitError as exc:
        if exc.retryable:
            return "error"
        failed = _fail(
            job.pk,
            [JobStatus.PENDING],
            error_code=_error_code(exc)[:100],
            error_message=_readable(exc, "report on the file"),
            error_details=exc.body if isinstance(exc.body, dict) else None,
        )
        return "failed" if failed else "unchanged"
    if (job.submitted_at or job.updated_at) < deadline:
        hours = float(app_settings.PENDING_DEADLINE_SECONDS) / 3600
        failed = _fail(
            job.pk,
            [JobStatus.PENDING],
            error_code="no_result",
            error_message=f"No result from ImageKit after {hours:g} hours.",
        )
        return "failed" if failed else "unchanged"
    return "waiting"


#: The longest wait between two checks of one job with ImageKit.
CHECK_INTERVAL_MAX = timedelta(hours=1)


def _schedule_check(job_id: int, submitted_at: datetime, now: datetime) -> None:
    """Check with ImageKit later whether a pending job's callback was lost: first after
    RECONCILE_AFTER_SECONDS, then after as long again as it has waited (so checks thin out), at
    most CHECK_INTERVAL_MAX apart, and at the deadline. Needs a backend that can defer tasks
    (django-tasks-db's can); with others, ``reconcile_removals`` from cron does the same."""
    first = timedelta(seconds=float(app_settings.RECONCILE_AFTER_SECONDS))
    deadline = submitted_at + timedelta(seconds=float(app_settings.PENDING_DEADLINE_SECONDS))
    wait = min(max(first, now - submitted_at), CHECK_INTERVAL_MAX)
    # A second past the deadline, so that the last check finds the job overdue.
    run_after = min(now + wait, deadline + timedelta(seconds=1))
    _enqueue_on_commit("check_removal", job_id, run_after=run_after)


def check(job_id: int, now: datetime | None = None) -> str:
    """The deferred check of one pending job (see ``_schedule_check``); safe to run twice."""
    now = now or timezone.now()
    job = RemovalJob.objects.filter(pk=job_id).first()
    if (
        job is None
        or job.status != JobStatus.PENDING
        or job.result_url
        or job.duplicate_of_id
        or job.submitted_at is None
    ):
        return "skipped"
    if now - job.submitted_at < timedelta(seconds=float(app_settings.RECONCILE_AFTER_SECONDS)):
        return "early"  # a stray early run: the scheduled one is still to come
    deadline = now - timedelta(seconds=float(app_settings.PENDING_DEADLINE_SECONDS))
    outcome = _ask_imagekit(job, deadline)
    if outcome in ("waiting", "error"):
        _schedule_check(job.pk, job.submitted_at, now)
    return outcome


def reconcile(now: datetime | None = None) -> dict[str, int]:
    """Settle what callbacks and queues left behind. Returns counts of what was done."""
    now = now or timezone.now()
    after = now - timedelta(seconds=float(app_settings.RECONCILE_AFTER_SECONDS))
    deadline = now - timedelta(seconds=float(app_settings.PENDING_DEADLINE_SECONDS))
    summary = dict.fromkeys(
        (
            "checked",
            "succeeded",
            "failed",
            "finalize_requeued",
            "requeued",
            "unstuck",
            "duplicates_settled",
            "errors",
        ),
        0,
    )

    # Results recorded but not finalized (a lost finalize task).
    for job_id in (
        RemovalJob.objects.filter(status=JobStatus.PENDING, updated_at__lt=after)
        .exclude(result_url="")
        .values_list("pk", flat=True)
    ):
        _enqueue_now("finalize_removal", job_id)
        summary["finalize_requeued"] += 1

    # Duplicates waiting for an original.
    for job_id in RemovalJob.objects.filter(
        status=JobStatus.PENDING, result_url="", duplicate_of__isnull=False
    ).values_list("pk", flat=True):
        if _settle_duplicate(job_id):
            summary["duplicates_settled"] += 1

    # Pending at ImageKit with no callback yet.
    stale = RemovalJob.objects.filter(
        status=JobStatus.PENDING, result_url="", duplicate_of__isnull=True
    ).filter(Q(submitted_at__lt=after) | Q(submitted_at__isnull=True, updated_at__lt=after))
    for job in stale.order_by("pk").iterator(chunk_size=200):
        summary["checked"] += 1
        outcome = _ask_imagekit(job, deadline)
        if outcome in ("succeeded", "failed"):
            summary[outcome] += 1
        elif outcome == "error":
            summary["errors"] += 1

    # Submitting for too long: the worker died mid-way. The upload is idempotent (same name,
    # overwriteFile), so send it again.
    for job_id in RemovalJob.objects.filter(
        status=JobStatus.SUBMITTING, updated_at__lt=after
    ).values_list("pk", flat=True):
        if RemovalJob.objects.transition(
            job_id,
            [JobStatus.SUBMITTING],
            JobStatus.QUEUED,
            error_code="worker_lost",
            error_message="Submission did not finish; queued again.",
        ):
            summary["unstuck"] += 1
            _enqueue_now("submit_removal", job_id)

    # Queued jobs whose retry time has come, whose enqueue failed, or that waited too long.
    for job_id in (
        RemovalJob.objects.filter(status=JobStatus.QUEUED)
        .filter(
            Q(next_attempt_at__lte=now)
            | Q(error_code="enqueue_failed")
            | Q(next_attempt_at__isnull=True, updated_at__lt=after)
        )
        .values_list("pk", flat=True)
    ):
        summary["requeued"] += 1
        _enqueue_now("submit_removal", job_id)
    return summary
