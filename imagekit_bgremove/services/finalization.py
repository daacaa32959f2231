"""Stage 4: storing a received result next to the original (the finalize task) → ``succeeded``.

What is downloaded, and from where, is decided here and nowhere else:

- with ``WEBHOOK_CONFIRM_WITH_API`` (the default) the result's URL comes from ImageKit's own file
  details (or the version the callback named), never from the callback body;
- the URL must point at a delivery host the settings allow (``result_hosts``: the
  ``URL_ENDPOINT`` host plus ``RESULT_HOSTS``), every redirect hop included; anything else is
  refused before a connection is made, and the job fails with a clear error;
- it is fetched with ``tr=orig-true``, so the stored copy is exactly what remove-bg produced, and
  named by the type its bytes really have.

The copy is written under a name unique to this job and attempt, recorded on the job before the
write, so an interrupted write can be removed by the next attempt; a copy that loses a race
(superseded meanwhile, or a newer result arrived) is deleted again. Files the app did not write
for this job are never touched.
"""

from __future__ import annotations

import logging
import posixpath
import secrets
from typing import Any

from django.core.files.base import ContentFile
from django.utils import timezone

from .. import lifecycle, queueing
from ..callback import RemoteFile
from ..conf import app_settings
from ..exceptions import DisallowedURLError, ImageKitError, ResponseTooLargeError
from ..images import HEAD_BYTES, MIME_TYPES, extension, sniff_image
from ..models import JobStatus, RemovalJob
from . import remote
from .request import removal_field

logger = logging.getLogger(__name__)


def finalize(job_id: int) -> str:
    """Store the result of a ``received`` job. Returns a short word saying what happened."""
    claimed = lifecycle.claim(job_id, JobStatus.RECEIVED, attempts="finalize_attempts", free=True)
    if claimed is None:
        return "skipped"
    job, lease = claimed
    try:
        instance = job.get_target()
        if instance is None:
            lifecycle.cancel(
                job.pk,
                [JobStatus.RECEIVED],
                lease=lease,
                error_code="object_deleted",
                error_message="The object was deleted; the result was not stored.",
            )
            return "cancelled"
        storage = removal_field(type(instance), job.field_name).storage
        _remove_partial(job, storage)
        return _finalize(job, lease, storage)
    except lifecycle.Refused as exc:
        lifecycle.fail(
            job.pk, [JobStatus.RECEIVED], lease=lease, error_code=exc.code, error_message=str(exc)
        )
        return "failed"
    except Exception as exc:
        if not isinstance(exc, ImageKitError):
            logger.exception("storing the result of removal job %s failed", job_id)
        return _after_error(job, lease, exc)


def _remove_partial(job: RemovalJob, storage: Any) -> None:
    """Delete a copy an interrupted earlier attempt of this job was writing."""
    partial = job.partial_result_name
    if partial and partial != job.result_name:
        if storage.exists(partial):
            storage.delete(partial)
        RemovalJob.objects.filter(pk=job.pk, partial_result_name=partial).update(
            partial_result_name=""
        )


def _finalize(job: RemovalJob, lease: int, storage: Any) -> str:
    result = _result_to_fetch(job)
    if not app_settings.COPY_RESULT:
        return "succeeded" if _succeed(job, lease, result) else "lost"
    data, fmt = fetch_result(result.url)
    name = _result_name(job, extension(fmt))
    if not RemovalJob.objects.filter(
        pk=job.pk, status=JobStatus.RECEIVED, lease_token=lease
    ).update(partial_result_name=name):
        return "lost"
    stored = storage.save(name, ContentFile(data))
    if stored != name:  # the storage chose another name: that one is ours to clean up
        RemovalJob.objects.filter(pk=job.pk, partial_result_name=name).update(
            partial_result_name=stored
        )
    if _succeed(
        job,
        lease,
        result,
        result_name=stored,
        partial_result_name="",
        result_mime=MIME_TYPES[fmt],
        result_size=len(data),
    ):
        return "succeeded"
    storage.delete(stored)
    RemovalJob.objects.filter(pk=job.pk, partial_result_name=stored).update(partial_result_name="")
    return "lost"


def fetch_result(url: str) -> tuple[bytes, str]:
    """The bytes of a result and their image format (``png``...): fetched with ``tr=orig-true``
    from an allowed delivery host only, at most ``RESULT_MAX_BYTES``; Refused otherwise."""
    max_bytes = int(app_settings.RESULT_MAX_BYTES)
    try:
        data, _ = remote.client().download(
            remote.original_bytes_url(url),
            max_bytes=max_bytes,
            allowed_hosts=app_settings.result_hosts,
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, DisallowedURLError):
            raise lifecycle.Refused(
                "result_host_not_allowed",
                f"The result's URL is not on an allowed ImageKit delivery host "
                f"({exc.host or 'none'}); nothing was fetched. If it is yours, add it to "
                "RESULT_HOSTS.",
            ) from None
        raise lifecycle.Refused(
            "result_host_not_allowed",
            "The result's URL is not an http(s) URL on an allowed ImageKit delivery host; "
            "nothing was fetched.",
        ) from None
    except ResponseTooLargeError:
        raise lifecycle.Refused(
            "result_too_large",
            f"The result is larger than RESULT_MAX_BYTES ({max_bytes} bytes); it stays at "
            f"ImageKit ({url}) and was not stored.",
        ) from None
    fmt = sniff_image(data[:HEAD_BYTES])
    if fmt is None:
        raise lifecycle.Refused(
            "result_not_image",
            f"ImageKit served something that is not an image for {url}; nothing was stored.",
        )
    return data, fmt


def _succeed(job: RemovalJob, lease: int, result: RemoteFile, **changes: Any) -> bool:
    """The stored copy and the recorded version move together, or not at all."""
    fields = {**result.job_fields(), **changes}
    return lifecycle.succeed(
        job, lease=lease, error_code="", error_message="", error_details=None, **fields
    )


def _result_to_fetch(job: RemovalJob) -> RemoteFile:
    recorded = RemoteFile(
        file_id=job.file_id,
        version_id=job.result_version_id,
        url=job.result_url,
        mime=job.result_mime,
        size=job.result_size,
        width=job.result_width,
        height=job.result_height,
    )
    if not app_settings.WEBHOOK_CONFIRM_WITH_API:
        return recorded
    confirmed = remote.confirm(job)
    if confirmed is None:
        raise lifecycle.Refused(
            "result_unconfirmed",
            f"ImageKit does not know result version {job.result_version_id or '?'} of file "
            f"{recorded.file_id}; the callback was not confirmed and nothing was stored.",
        )
    return confirmed


def _result_name(job: RemovalJob, ext: str) -> str:
    """``<dir>/<stem><RESULT_SUFFIX>_<job>_<random><ext>``: never the original's name, and never
    a name another file already has, so nothing but this job's own copy is ever written."""
    directory, base = posixpath.split(job.source_name.replace("\\", "/"))
    stem = posixpath.splitext(base)[0] or "image"
    name = f"{stem}{app_settings.RESULT_SUFFIX}_{job.pk}_{secrets.token_hex(4)}{ext}"
    return posixpath.join(directory, name) if directory else name


def _after_error(job: RemovalJob, lease: int, exc: BaseException) -> str:
    """Retry with backoff while that may help (transient ImageKit or storage trouble), then
    fail; every outcome is recorded on the job."""
    if isinstance(exc, ImageKitError):
        message = remote.readable(exc, "deliver the result")
        retryable = exc.retryable
    else:
        message = f"Storing the result failed: {type(exc).__name__}: {exc}"
        retryable = True
    changes: dict[str, Any] = {
        "error_code": remote.error_code(exc),
        "error_message": message[:5000],
    }
    if retryable and job.finalize_attempts < int(app_settings.TASK_MAX_ATTEMPTS):
        run_after = timezone.now() + queueing.backoff(
            job.finalize_attempts, at_least=getattr(exc, "retry_after", None)
        )
        if RemovalJob.objects.filter(
            pk=job.pk, status=JobStatus.RECEIVED, lease_token=lease
        ).update(
            lease_token=0,
            lease_expires_at=None,
            next_attempt_at=run_after,
            updated_at=timezone.now(),
            **changes,
        ):
            queueing.enqueue_on_commit(queueing.FINALIZE, job.pk, run_after=run_after)
        return "retry"
    if retryable:
        changes["error_message"] = (
            f"Gave up storing the result after {job.finalize_attempts} attempts. {message}"
        )[:5000]
    lifecycle.fail(job.pk, [JobStatus.RECEIVED], lease=lease, **changes)
    return "failed"
