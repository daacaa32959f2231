"""Stage 2: sending a queued job to ImageKit (the submit task).

A worker claims the job (``queued`` → ``submitting``) with a lease: a fresh token that every later
move of this attempt must present, and an expiry after which reconcile takes the job back. So a
worker that was only slow cannot move a job another worker has claimed since.

A request that starts paid work (an upload or a PATCH with the extension) is never sent again
blindly: when its answer was lost, the job is marked ``submission_uncertain`` and the next
attempt first asks ImageKit whether the first one took effect.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from .. import lifecycle, queueing
from ..conf import app_settings
from ..exceptions import ImageKitError
from ..images import HEAD_BYTES, sniff_image
from ..inputs import InputError, check_options, check_pixels
from ..models import JobStatus, RemovalJob
from ..removebg import OptionsError, RemoveBgOptions, extension_status
from . import dedupe, remote, results
from .reconciliation import schedule_check
from .request import file_id_of, removal_field, webhook_url

logger = logging.getLogger(__name__)

HASH_CHUNK = 1024 * 1024


def submit(job_id: int) -> str:
    """Send a queued job to ImageKit. Returns a short word saying what happened."""
    claimed = lifecycle.claim(
        job_id, JobStatus.QUEUED, become=JobStatus.SUBMITTING, attempts="attempts"
    )
    if claimed is None:
        return "skipped"
    job, lease = claimed
    try:
        return _submit(job, lease)
    except lifecycle.Refused as exc:
        lifecycle.fail(
            job.pk, [JobStatus.SUBMITTING], lease=lease, error_code=exc.code, error_message=str(exc)
        )
        return "failed"
    except OptionsError as exc:
        lifecycle.fail(
            job.pk,
            [JobStatus.SUBMITTING],
            lease=lease,
            error_code="invalid_options",
            error_message=f"The remove-bg options are invalid: {exc} Change the options.",
        )
        return "failed"
    except ImageKitError as exc:
        return _after_error(job, lease, exc, remote.readable(exc, "accept the image"))
    except Exception as exc:  # storage trouble, a bug: retried a bounded number of times
        logger.exception("submitting removal job %s failed", job_id)
        return _after_error(
            job, lease, exc, f"Submitting failed: {type(exc).__name__}: {exc}", retryable=True
        )


def _after_error(
    job: RemovalJob, lease: int, exc: BaseException, message: str, retryable: bool | None = None
) -> str:
    """Record the error; queue the job again with backoff while that may help, else fail it."""
    uncertain = bool(getattr(exc, "maybe_applied", False))
    retryable = bool(getattr(exc, "retryable", False) if retryable is None else retryable)
    details = getattr(exc, "body", None)
    if details is not None and not isinstance(details, dict | list):
        details = {"body": str(details)[:2000]}
    changes: dict[str, Any] = {
        "error_code": remote.error_code(exc),
        "error_message": message[:5000],
        "error_details": details,
    }
    if (retryable or uncertain) and job.attempts < int(app_settings.TASK_MAX_ATTEMPTS):
        run_after = timezone.now() + queueing.backoff(
            job.attempts, at_least=getattr(exc, "retry_after", None)
        )
        if lifecycle.transition(
            job.pk,
            [JobStatus.SUBMITTING],
            JobStatus.QUEUED,
            lease=lease,
            next_attempt_at=run_after,
            submission_uncertain=uncertain or job.submission_uncertain,
            **changes,
        ):
            logger.warning("removal job %s: %s; trying again after %s", job.pk, message, run_after)
            queueing.enqueue_on_commit(queueing.SUBMIT, job.pk, run_after=run_after)
        return "retry"
    if retryable or uncertain:
        changes["error_message"] = f"Gave up after {job.attempts} attempts. {message}"[:5000]
    lifecycle.fail(job.pk, [JobStatus.SUBMITTING], lease=lease, **changes)
    return "failed"


def _submit(job: RemovalJob, lease: int) -> str:
    instance = job.get_target()
    if instance is None:
        lifecycle.cancel(
            job.pk,
            [JobStatus.SUBMITTING],
            lease=lease,
            error_code="object_deleted",
            error_message="The object was deleted before its image was sent; nothing was sent.",
        )
        return "cancelled"
    field = removal_field(type(instance), job.field_name)
    options = RemoveBgOptions.from_dict(job.options)
    check_options(options)  # requests made in code were not checked where they were made
    file_id = file_id_of(field, instance)
    if file_id:
        return _submit_existing_file(job, lease, file_id, options)
    return _upload(job, lease, field, options)


def _guarded(job: RemovalJob, lease: int, **changes: Any) -> bool:
    """Write ``changes`` if this attempt still holds the job."""
    return bool(
        RemovalJob.objects.filter(pk=job.pk, status=JobStatus.SUBMITTING, lease_token=lease).update(
            **changes
        )
    )


def _inspect_source(storage: Any, name: str) -> tuple[str, int]:
    """sha256 and size of the stored original; Refused when ImageKit would refuse it."""
    limit = int(app_settings.MAX_UPLOAD_BYTES)
    try:
        size = storage.size(name)
    except (NotImplementedError, AttributeError):
        size = None
    if size is not None and size > limit:
        raise lifecycle.Refused(
            "source_too_large",
            f"The image is {size} bytes, over the {limit}-byte upload limit (MAX_UPLOAD_BYTES, "
            "your ImageKit plan's limit); nothing was sent.",
        )
    digest = hashlib.sha256()
    total = 0
    head = b""
    with storage.open(name, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            if isinstance(chunk, str):
                chunk = chunk.encode()
            if len(head) < HEAD_BYTES:
                head += chunk[: HEAD_BYTES - len(head)]
            digest.update(chunk)
            total += len(chunk)
    if total > limit:
        raise lifecycle.Refused(
            "source_too_large",
            f"The image is {total} bytes, over the {limit}-byte upload limit "
            "(MAX_UPLOAD_BYTES); nothing was sent.",
        )
    if sniff_image(head) is None:
        raise lifecycle.Refused(
            "source_not_image",
            f"{posixpath.basename(name)!r} is not an image ImageKit can work on (not PNG, JPEG, "
            "WebP, GIF, BMP, TIFF or AVIF); nothing was sent. Upload an image file.",
        )
    with storage.open(name, "rb") as fh:
        try:
            check_pixels(fh)
        except InputError as exc:
            raise lifecycle.Refused("too_many_pixels", f"{exc} Nothing was sent.") from exc
    return digest.hexdigest(), total


def _upload(job: RemovalJob, lease: int, field: Any, options: RemoveBgOptions) -> str:
    storage = field.storage
    if not job.source_name or not storage.exists(job.source_name):
        lifecycle.fail(
            job.pk,
            [JobStatus.SUBMITTING],
            lease=lease,
            error_code="source_missing",
            error_message=(
                f"The original image {job.source_name!r} is missing from storage; "
                "upload the image again."
            ),
        )
        return "failed"
    inspected: dict[str, Any] = {}
    if not job.source_hash:
        source_hash, size = _inspect_source(storage, job.source_name)
        job.source_hash, job.source_size = source_hash, size
        job.content_key = dedupe.content_key(source_hash, options)
        inspected = {
            "source_hash": source_hash,
            "source_size": size,
            "content_key": job.content_key,
        }
    if not job.upload_path:
        job.upload_path = remote.new_upload_path(job, field)
        inspected["upload_path"] = job.upload_path  # recorded before anything is sent
    folder, name = posixpath.split(job.upload_path)
    if job.submission_uncertain:
        if inspected and not _guarded(job, lease, **inspected):
            return "lost"
        inspected = {}
        stored = remote.find_upload(job)
        if stored:
            # The upload whose answer was lost did arrive: its callback will come to this job.
            found = {"fileId": stored.get("fileId"), "filePath": stored.get("filePath")}
            return _record_submission(job, lease, found, status="pending")
    # One transaction (one commit) records what the original is and decides who pays for it.
    with transaction.atomic():
        if inspected and not _guarded(job, lease, **inspected):
            return "lost"
        decision = "own" if job.force else dedupe.claim(job, job.content_key, lease=lease)
    if decision != "own":
        return "shared" if decision == "share" else "waiting"
    tags = list(app_settings.TAGS or []) + list(field.imagekit_tags or [])
    sent_at = timezone.now()
    with storage.open(job.source_name, "rb") as fh:
        response = remote.client().upload(
            fh,
            name,
            folder=folder,
            use_unique_file_name=False,
            overwrite_file=True,
            tags=tags,
            extensions=[options.to_extension()],
            webhook_url=_hook(job),
        )
    return _record_submission(job, lease, response, sent_at=sent_at)


def _hook(job: RemovalJob) -> str | None:
    if not app_settings.webhook_base_url:
        # ImageKit cannot call a relative URL back: the scheduled checks ask ImageKit instead.
        logger.warning("WEBHOOK_BASE_URL is not set: job %s relies on checks", job.pk)
        return None
    return webhook_url(job)


def _submit_existing_file(
    job: RemovalJob, lease: int, file_id: str, options: RemoveBgOptions
) -> str:
    """Update File Details on a file already in ImageKit, always from its original version
    (remove-bg works on the current version, which may be a cut-out already)."""
    client = remote.client()
    source = job.source_version_id
    if not source:
        source = remote.original_version(job, file_id)
        job.source_version_id = source
        if not _guarded(job, lease, file_id=file_id, source_version_id=source):
            return "lost"
    if job.submission_uncertain:
        job.file_id = file_id
        result = remote.find_result(job)
        if result is not None:
            results.apply_result(job.pk, result, source="check after a lost answer")
            return "received"
        # No result yet: the lost PATCH may still be running. Wait for its callback; the
        # scheduled check sends it again if no result has come by then.
        return _record_submission(job, lease, {"fileId": file_id}, status="pending", uncertain=True)
    current = remote.current_version(file_id)
    if source and current is not None and current.version_id != source:
        client.restore_version(file_id, source)
    sent_at = timezone.now()
    response = client.update_file_details(
        file_id, extensions=[options.to_extension()], webhook_url=_hook(job)
    )
    return _record_submission(
        job, lease, {**response, "versionInfo": {"id": source}}, sent_at=sent_at
    )


def _record_submission(
    job: RemovalJob,
    lease: int,
    response: dict[str, Any],
    status: str | None = None,
    sent_at: datetime | None = None,
    uncertain: bool = False,
) -> str:
    """Record ImageKit's answer. ``submitted_at`` is when the request was sent (``sent_at``):
    remove-bg may finish before the answer is read. An answer makes the submission certain,
    unless ``uncertain`` (a PATCH whose answer was lost and whose result is not there yet)."""
    now = sent_at or timezone.now()
    status = status or extension_status(response)
    # After a synchronous success the answer describes the result, not the version sent: the
    # original is then the file's first version (found by ``remote.find_new_version``).
    version = response.get("versionInfo") if status != "success" else None
    file_fields = {
        "file_id": str(response.get("fileId") or job.file_id or "")[:100],
        "file_path": str(response.get("filePath") or job.file_path or "")[:500],
        # The upload just answered is the version remove-bg starts from (a repeated upload
        # makes a new version of the same file); the fileId path passes its own.
        "source_version_id": str((version or {}).get("id") or "")[:100] or job.source_version_id,
        "submitted_at": now,
    }
    if status == "failed":
        lifecycle.fail(
            job.pk,
            [JobStatus.SUBMITTING],
            lease=lease,
            error_code="extension_failed",
            error_message=(
                "ImageKit accepted the image but said remove-bg will not run on it "
                "(extensionStatus 'failed'); check the image and your extension quota."
            ),
            error_details={"extensionStatus": response.get("extensionStatus")},
            **file_fields,
        )
        return "failed"
    with transaction.atomic():  # the move and the check it schedules, in one commit
        moved = lifecycle.transition(
            job.pk,
            [JobStatus.SUBMITTING],
            JobStatus.PENDING,
            lease=lease,
            next_attempt_at=None,
            submission_uncertain=uncertain,
            error_code="",
            error_message="",
            error_details=None,
            **file_fields,
        )
        if moved and status != "success":
            schedule_check(job.pk, now, now)
    if not moved:
        # A callback settled the job while we were submitting: only record what ImageKit said.
        RemovalJob.objects.filter(pk=job.pk, file_id="").update(
            file_id=file_fields["file_id"], file_path=file_fields["file_path"]
        )
        RemovalJob.objects.filter(pk=job.pk, source_version_id="").update(
            source_version_id=file_fields["source_version_id"], submitted_at=now
        )
        return "recorded"
    if status == "success":
        # Done before the answer: no callback will come; settle from the file's details, or
        # (not there yet) from the check.
        job.refresh_from_db()
        result = remote.find_result(job)
        if result is not None:
            results.apply_result(job.pk, result, source="upload answer")
            return "received"
        schedule_check(job.pk, now, now)
    return "pending"
