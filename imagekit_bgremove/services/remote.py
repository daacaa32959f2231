"""Asking ImageKit: the client, readable error texts, and what a file's versions say about a job.

The only module of the service layer that builds requests from job rows; the stages call these
functions instead of the client directly where they need ImageKit's view of a job.
"""

from __future__ import annotations

import logging
import posixpath
import re
from datetime import datetime, timedelta
from typing import Any

from .. import lifecycle
from ..callback import CallbackError, RemoteFile, parse_file
from ..conf import app_settings
from ..exceptions import ImageKitError
from ..models import RemovalJob
from .request import RequestError, removal_field

logger = logging.getLogger(__name__)

_IMAGEKIT_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def client() -> Any:
    from ..client import get_client

    return get_client()


def upload_name(job: RemovalJob) -> str:
    """The file name at ImageKit: the same for every attempt of a job, so a repeated upload
    overwrites instead of adding a file, and a lost answer can be looked up by name."""
    base = posixpath.basename(job.source_name.replace("\\", "/")) or f"image{job.pk}.jpg"
    stem, ext = posixpath.splitext(base)
    # ImageKit replaces other characters with "_": use the name it will store.
    stem, ext = _IMAGEKIT_UNSAFE.sub("_", stem), _IMAGEKIT_UNSAFE.sub("_", ext)
    return f"{stem or 'image'}__ikbg{job.pk}{ext or '.jpg'}"


def is_upload_of(job: RemovalJob, found: RemoteFile) -> bool:
    """Whether ``found`` is the file that ``job``'s upload stored (its name carries the job's
    mark from ``upload_name``), not a result that ImageKit stored as a file of its own."""
    name = found.name or posixpath.basename(found.file_path)
    return re.search(rf"__ikbg{job.pk}\.[A-Za-z0-9_-]*$", name) is not None


def upload_folder(field: Any) -> str:
    return field.imagekit_folder or app_settings.FOLDER


def find_upload(job: RemovalJob) -> dict[str, Any] | None:
    """The file that ``job``'s upload stored at ImageKit, looked up by its name (for an upload
    whose answer was lost), or None; the job's object may be gone, its model is enough."""
    model = lifecycle.target_model(job)
    try:
        folder = upload_folder(removal_field(model, job.field_name)) if model else None
    except RequestError:
        folder = None
    # The model or its field is gone since: the default folder is the best guess, and a miss
    # only means that the identical image waiting on this job pays for its own run.
    return client().find_file(folder or app_settings.FOLDER, upload_name(job))


def record_lost_original(job: RemovalJob) -> bool:
    """Look up the file ``job``'s upload made at ImageKit and record it on the job (and the
    identical jobs that took its result), for a job that got its result without it: the
    upload's answer was lost and the result came as a file of its own. A job that knows its
    file, uploaded nothing (a fileId job) or shares another's result is left alone. Best
    effort: a failed lookup is logged. Returns whether the file was found."""
    if job.file_id or not job.source_name or job.duplicate_of_id is not None:
        return False
    try:
        stored = find_upload(job)
    except ImageKitError as exc:
        logger.warning("job %s: its upload could not be looked up: %s", job.pk, exc)
        return False
    if not (stored and stored.get("fileId")):
        return False
    lifecycle.record_source_file(job.pk, str(stored["fileId"]), str(stored.get("filePath") or ""))
    return True


def original_bytes_url(url: str) -> str:
    """``url`` with ImageKit's ``tr=orig-true``: the stored bytes, not an automatic conversion."""
    from ..client import original_url

    return original_url(url)


def readable(exc: ImageKitError, action: str) -> str:
    """``ImageKit refused to <action> (HTTP 400): <message>. <help> Request id <id>.``, or, when
    no answer came, ``Could not reach ImageKit to <action>: <what happened>.``"""
    if exc.status:
        text = f"ImageKit refused to {action} (HTTP {exc.status})"
    else:
        text = f"Could not reach ImageKit to {action}"
    text += f": {exc.message.rstrip('.')}."
    if exc.help:
        text += f" {exc.help}"
    if exc.request_id:
        text += f" Request id {exc.request_id}."
    return text


def error_code(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    name = type(exc).__name__
    return (f"{name}:{status}" if status else name)[:100]


def _file(data: Any, what: str) -> RemoteFile | None:
    try:
        return parse_file(data, what)
    except CallbackError:
        return None


def current_version(file_id: str) -> RemoteFile | None:
    return _file(client().get_file_details(file_id), "details")


def versions(file_id: str) -> list[RemoteFile]:
    found = client().list_versions(file_id) or []
    parsed = [_file(item, "version") for item in found if isinstance(item, dict)]
    return [item for item in parsed if item is not None]


#: How far ImageKit's clock and ours may disagree when comparing their timestamps.
CLOCK_SKEW = timedelta(minutes=1)


def _made_at(remote_file: RemoteFile) -> datetime | None:
    """When this version was made: a file's ``updatedAt`` changes with each new version."""
    try:
        return datetime.fromisoformat(remote_file.updated_at or remote_file.created_at)
    except ValueError:
        return None


def original_version(job: RemovalJob, file_id: str) -> str:
    """The version remove-bg must start from, for a job on a file already in ImageKit.

    The current version, unless it is a cut-out of ours: a result an earlier job recorded, or a
    version made after an earlier job was submitted (its callback may never have come). Then
    the original that earlier job started from."""
    current = current_version(file_id)
    if current is None:
        return ""
    earlier = (
        RemovalJob.objects.filter(file_id=file_id)
        .exclude(pk=job.pk)
        .exclude(source_version_id="")
        .order_by("-pk")
        .first()
    )
    if earlier is None or current.version_id == earlier.source_version_id:
        return current.version_id
    ours = RemovalJob.objects.filter(file_id=file_id, result_version_id=current.version_id)
    made = _made_at(current)
    sent = earlier.submitted_at and earlier.submitted_at - CLOCK_SKEW
    if ours.exists() or (sent and made and made >= sent):
        return earlier.source_version_id
    return current.version_id  # replaced at ImageKit since: the new upload is the original


def find_new_version(file_id: str, source_version: str) -> RemoteFile | None:
    """The current version of ``file_id`` if it is not ``source_version`` (remove-bg's result is
    a new version of the file), else None. With no ``source_version`` known, the file's first
    version is taken for the original."""
    current = current_version(file_id)
    if current is None or not current.version_id:
        return None
    if not source_version:
        listed = sorted(versions(file_id), key=lambda v: v.created_at)
        source_version = listed[0].version_id if listed else ""
    if source_version and current.version_id != source_version:
        return current
    return None


def find_result(job: RemovalJob) -> RemoteFile | None:
    """The result of ``job`` if ImageKit has it yet (None while there is none).

    A new version the size of the original is not taken for the result: it is the original
    uploaded again (a repeated upload overwrites the file with a new version), not a cut-out."""
    if not job.file_id:
        return None
    found = find_new_version(job.file_id, job.source_version_id)
    if found is not None and job.source_size and found.size == job.source_size:
        return None
    return found


def confirm(job: RemovalJob) -> RemoteFile | None:
    """ImageKit's own record of the result the job recorded (from a callback): the version's
    details as the API has them, or None when ImageKit does not know that version."""
    file_id = job.result_file_id or job.file_id
    if not file_id:
        return None
    current = current_version(file_id)
    if current is not None and job.result_version_id in ("", current.version_id):
        if file_id == job.file_id and current.version_id == job.source_version_id:
            return None  # still the original: no result to confirm
        return current
    for version in versions(file_id):
        if version.version_id == job.result_version_id:
            return version
    return None
