"""Asking ImageKit: the client, readable error texts, and what a file's versions say about a job.

The only module of the service layer that builds requests from job rows; the stages call these
functions instead of the client directly where they need ImageKit's view of a job.
"""

from __future__ import annotations

import logging
import posixpath
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

from .. import removebg
from ..callback import CallbackError, RemoteFile, parse_file
from ..conf import app_settings
from ..exceptions import ImageKitError
from ..models import RemovalJob

logger = logging.getLogger(__name__)

_IMAGEKIT_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def client() -> Any:
    from ..client import get_client

    return get_client()


def new_upload_path(job: RemovalJob, field: Any) -> str:
    """Where ``job``'s upload goes at ImageKit (folder and name), chosen once and recorded on
    the job before the first attempt: every attempt overwrites the same file instead of adding
    one, and a lost answer is looked up there whatever the settings say by then. The random
    part keeps apart the jobs of other sites, or of a reset database, sharing the account."""
    base = posixpath.basename(job.source_name.replace("\\", "/")) or "image.jpg"
    stem, ext = posixpath.splitext(base)
    # ImageKit replaces other characters with "_": use the name it will store.
    stem, ext = _IMAGEKIT_UNSAFE.sub("_", stem), _IMAGEKIT_UNSAFE.sub("_", ext)
    name = f"{stem or 'image'}__ikbg{job.pk}-{secrets.token_hex(4)}{ext or '.jpg'}"
    return posixpath.join(field.imagekit_folder or app_settings.FOLDER or "/", name)


def find_upload(job: RemovalJob) -> dict[str, Any] | None:
    """The file that ``job``'s upload stored at ImageKit, looked up where it was sent (for an
    upload whose answer was lost), or None when it was never sent."""
    if not job.upload_path:
        return None
    folder, name = posixpath.split(job.upload_path)
    return client().find_file(folder, name)


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


def find_new_version(
    file_id: str, source_version: str, source_size: int | None = None
) -> RemoteFile | None:
    """The current version of ``file_id`` if it is remove-bg's result (``removebg.is_result``),
    else None. With no ``source_version`` known, the file's first version is taken for the
    original."""
    current = current_version(file_id)
    if current is None or not current.version_id:
        return None
    if not source_version:
        listed = sorted(versions(file_id), key=lambda v: v.created_at)
        source_version = listed[0].version_id if listed else ""
    if source_version and removebg.is_result(current, source_version, source_size):
        return current
    return None


def find_result(job: RemovalJob) -> RemoteFile | None:
    """The result of ``job`` if ImageKit has it yet (None while there is none)."""
    if not job.file_id:
        return None
    return find_new_version(job.file_id, job.source_version_id, job.source_size)


def confirm(job: RemovalJob) -> RemoteFile | None:
    """ImageKit's own record of the result the job recorded (from a callback): the version's
    details as the API has them, or None when ImageKit does not know that version."""
    if not job.file_id:
        return None
    current = current_version(job.file_id)
    if current is not None and job.result_version_id in ("", current.version_id):
        if current.version_id == job.source_version_id:
            return None  # still the original: no result to confirm
        return current
    listed = versions(job.file_id)
    sent = next((v for v in listed if v.version_id == job.source_version_id), None)
    for version in listed:
        # The recorded version, made after the one the job sent (an older one is not its result).
        if version.version_id == job.result_version_id != job.source_version_id and (
            sent is None or version.created_at > sent.created_at
        ):
            return version
    return None
