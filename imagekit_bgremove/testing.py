"""Test your own code that uses the field without any server: a fake ImageKit and a helper that
delivers ImageKit's callback through Django's test client.

```python
from imagekit_bgremove.testing import FakeImageKit

with FakeImageKit() as imagekit:           # every ImageKit call of the app goes to it
    with django_capture_on_commit_callbacks(execute=True):
        product = Product.objects.create(photo=uploaded_file)
    [upload] = imagekit.uploads              # what was sent, options included
    imagekit.deliver(upload, "SUCCESS")      # the signed callback, as ImageKit would send it
```

The fake answers like ImageKit (file details, versions, a remove-bg result as a new version of
the same file) and keeps everything in memory. ``script()`` makes the next call of a method fail,
or lose its answer after the work was done (as a dropped connection does), or report remove-bg
as failed. Callbacks are signed with ``WEBHOOK_SECRETS`` (or the emulator's well-known secret when
only ``EMULATOR_URL`` is set); with no secret they are sent unsigned.
"""

from __future__ import annotations

import io
import itertools
import json
import mimetypes
import posixpath
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import client as client_module
from . import removebg
from .conf import app_settings
from .exceptions import ImageKitError, TransportError
from .signatures import signature_headers

#: Where the fake's files are "delivered" from; its ``download`` serves these URLs.
URL_ENDPOINT = "https://ik.imagekit.io/fake"


@dataclass
class Call:
    """One upload or update the fake received."""

    method: str  # "upload" or "update_file_details"
    file_id: str
    file_name: str
    folder: str
    #: Every argument the app passed (``extensions``, ``tags``, ``webhook_url``...).
    arguments: dict[str, Any]
    data: bytes = b""  # what was uploaded (empty for an update)

    @property
    def options(self) -> dict[str, Any] | None:
        """The remove-bg options sent, or None when remove-bg was not asked for."""
        for item in self.arguments.get("extensions") or ():
            if isinstance(item, Mapping) and item.get("name") == removebg.NAME:
                return dict(item.get("options") or {})
        return None

    @property
    def webhook_url(self) -> str:
        return self.arguments.get("webhook_url") or ""


@dataclass
class _Version:
    id: str
    data: bytes
    mime: str
    created_at: str


@dataclass
class _File:
    id: str
    name: str
    folder: str
    versions: list[_Version] = field(default_factory=list)
    current: int = 0
    tags: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return posixpath.join(self.folder.rstrip("/") or "/", self.name)


@dataclass
class _Script:
    error: ImageKitError | None = None
    lost: bool = False
    extension_status: str | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _read(file: Any) -> bytes:
    if isinstance(file, bytes | bytearray):
        return bytes(file)
    if hasattr(file, "read"):
        return file.read()
    with open(file, "rb") as fh:
        return fh.read()


def _size(data: bytes) -> tuple[int | None, int | None]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return None, None


def cut_out(data: bytes) -> bytes:
    """A stand-in result: the image as an RGBA PNG (the fake removes nothing)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        out = io.BytesIO()
        image.convert("RGBA").save(out, format="PNG")
        return out.getvalue()


class FakeImageKit:
    """An in-memory ImageKit that the app uses instead of its HTTP client while installed
    (``with FakeImageKit() as imagekit:``, or ``install()`` / ``uninstall()``)."""

    upload_base_url = "https://upload.imagekit.io"
    api_base_url = "https://api.imagekit.io"
    closed = False

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._files: dict[str, _File] = {}
        self._ids = itertools.count(1)
        self._scripts: dict[str, deque[_Script]] = {}

    # -- installing -------------------------------------------------------------------------
    def install(self) -> FakeImageKit:
        client_module._fake = self
        return self

    def uninstall(self) -> None:
        if client_module._fake is self:
            client_module._fake = None

    def __enter__(self) -> FakeImageKit:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()

    def close(self) -> None:
        """The app's client interface; the fake stays usable."""

    # -- what the test looks at and scripts -------------------------------------------------
    @property
    def uploads(self) -> list[Call]:
        return [call for call in self.calls if call.method == "upload"]

    @property
    def updates(self) -> list[Call]:
        return [call for call in self.calls if call.method == "update_file_details"]

    def script(
        self,
        method: str,
        *,
        error: ImageKitError | None = None,
        lost: bool = False,
        extension_status: str | None = None,
    ) -> None:
        """What the next call of ``method`` (``"upload"``, ``"update_file_details"``,
        ``"get_file_details"``...) does instead of answering normally: raise ``error`` without
        doing anything; or, with ``lost=True``, do the work and then lose the answer: raise
        ``error`` if given (make it ``maybe_applied=True``, as the client does for a paid request)
        or else a dropped connection; or answer with remove-bg's ``extension_status``
        (``"failed"``: ImageKit will not run it). Scripts queue up, one per call."""
        if not hasattr(self, method):
            raise ValueError(f"the fake has no method {method!r}")
        self._scripts.setdefault(method, deque()).append(
            _Script(error=error, lost=lost, extension_status=extension_status)
        )

    def _next_script(self, method: str) -> _Script:
        queue = self._scripts.get(method)
        script = queue.popleft() if queue else _Script()
        if script.error is not None and not script.lost:
            raise script.error
        return script

    def _answer(self, method: str, script: _Script, answer: Any) -> Any:
        if script.lost:
            raise script.error or TransportError(
                "connection dropped after the request was sent (FakeImageKit)",
                retryable=False,
                method=method,
                maybe_applied=True,
            )
        return answer

    # -- the client's interface -------------------------------------------------------------
    def upload(self, file: Any, file_name: str, *, folder: str | None = None, **kwargs: Any):
        script = self._next_script("upload")
        data = _read(file)
        folder = "/" + (folder or "/").strip("/")
        existing = next(
            (f for f in self._files.values() if f.name == file_name and f.folder == folder), None
        )
        if existing is not None and kwargs.get("overwrite_file") is not False:
            stored = existing
        else:
            stored = _File(id=f"fake{next(self._ids):04d}", name=file_name, folder=folder)
            self._files[stored.id] = stored
        self._add_version(stored, data, mimetypes.guess_type(file_name)[0] or "image/jpeg")
        stored.tags = list(kwargs.get("tags") or [])
        call = Call("upload", stored.id, file_name, folder, dict(kwargs), data)
        self.calls.append(call)
        answer = self._details(stored)
        if call.options is not None:
            answer["extensionStatus"] = {removebg.NAME: script.extension_status or "pending"}
        return self._answer("upload", script, answer)

    def update_file_details(self, file_id: str, **kwargs: Any) -> dict[str, Any]:
        script = self._next_script("update_file_details")
        stored = self._file(file_id)
        if kwargs.get("tags") is not None:
            stored.tags = list(kwargs["tags"])
        call = Call("update_file_details", file_id, stored.name, stored.folder, dict(kwargs))
        self.calls.append(call)
        answer = self._details(stored)
        if call.options is not None:
            answer["extensionStatus"] = {removebg.NAME: script.extension_status or "pending"}
        return self._answer("update_file_details", script, answer)

    def get_file_details(self, file_id: str) -> dict[str, Any]:
        script = self._next_script("get_file_details")
        return self._answer("get_file_details", script, self._details(self._file(file_id)))

    def delete_file(self, file_id: str) -> None:
        script = self._next_script("delete_file")
        self._files.pop(file_id, None)  # like the client: a file already gone counts as deleted
        return self._answer("delete_file", script, None)

    def list_versions(self, file_id: str) -> list[dict[str, Any]]:
        script = self._next_script("list_versions")
        stored = self._file(file_id)
        versions = [self._details(stored, i) for i in range(len(stored.versions))]
        return self._answer("list_versions", script, versions)

    def restore_version(self, file_id: str, version_id: str) -> dict[str, Any]:
        script = self._next_script("restore_version")
        stored = self._file(file_id)
        ids = [v.id for v in stored.versions]
        if version_id not in ids:
            raise ImageKitError("The requested file version does not exist.", status=404)
        stored.current = ids.index(version_id)
        return self._answer("restore_version", script, self._details(stored))

    def list_files(self, **kwargs: Any) -> list[dict[str, Any]]:
        script = self._next_script("list_files")
        return self._answer("list_files", script, [self._details(f) for f in self._files.values()])

    def find_file(self, folder: str, name: str) -> dict[str, Any] | None:
        script = self._next_script("find_file")
        folder = "/" + folder.strip("/")
        found = next(
            (f for f in self._files.values() if f.name == name and f.folder == folder), None
        )
        return self._answer("find_file", script, self._details(found) if found else None)

    def download(
        self, url: str, *, max_bytes: int, allowed_hosts: Iterable[str] = ()
    ) -> tuple[bytes, str]:
        script = self._next_script("download")
        parts = urlsplit(url)
        wanted = parse_qs(parts.query).get("ik-obj-version", [None])[0]
        for stored in self._files.values():
            if f"{URL_ENDPOINT}{stored.path}" != f"{parts.scheme}://{parts.netloc}{parts.path}":
                continue
            for version in stored.versions:
                if version.id == (wanted or stored.versions[stored.current].id):
                    return self._answer("download", script, (version.data, version.mime))
        raise ImageKitError(f"no such file at the fake's URL endpoint: {url}", status=404)

    # -- callbacks --------------------------------------------------------------------------
    def deliver(
        self,
        job_or_call: Any,
        status: str = "SUCCESS",
        *,
        client: Any = None,
        result: bytes | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> Any:
        """Finish the remove-bg run of ``job_or_call`` (a ``RemovalJob`` or one of ``calls``)
        as ImageKit would and POST its callback to the webhook URL the app sent, through
        ``client`` (a ``django.test.Client`` by default). SUCCESS adds ``result`` (by default
        the current version as a PNG) as a new version of the file; FAILURE sends ``error``.
        Returns the response of the app's webhook view."""
        from django.test import Client

        call = self._call_for(job_or_call)
        stored = self._file(call.file_id)
        if status == "SUCCESS":
            data = result if result is not None else cut_out(stored.versions[stored.current].data)
            self._add_version(stored, data, "image/png")
            payload: dict[str, Any] = {
                "service": removebg.NAME,
                "status": "SUCCESS",
                "fileObject": self._details(stored),
            }
        elif status == "FAILURE":
            payload = {
                "service": removebg.NAME,
                "status": "FAILURE",
                "fileId": stored.id,
                "error": dict(error or {"message": "remove.bg could not process the image"}),
            }
        else:
            raise ValueError("status must be 'SUCCESS' or 'FAILURE'")
        if not call.webhook_url:
            raise ValueError("the app sent no webhook URL (is WEBHOOK_BASE_URL set?)")
        body = json.dumps(payload).encode()
        secrets = app_settings.webhook_secrets
        headers = signature_headers(body, secrets) if secrets else {}
        target = urlsplit(call.webhook_url)
        path = target.path + (f"?{target.query}" if target.query else "")
        return (client or Client()).post(
            path, data=body, content_type="application/json", headers=headers
        )

    def _call_for(self, job_or_call: Any) -> Call:
        if isinstance(job_or_call, Call):
            return job_or_call
        from .services.request import webhook_url

        wanted = urlsplit(webhook_url(job_or_call)).path
        for call in reversed(self.calls):
            if call.options is not None and urlsplit(call.webhook_url).path == wanted:
                return call
        raise LookupError(f"no remove-bg request for job {job_or_call.pk} reached the fake")

    # -- state ------------------------------------------------------------------------------
    def _file(self, file_id: str) -> _File:
        try:
            return self._files[file_id]
        except KeyError:
            raise ImageKitError("The requested file does not exist.", status=404) from None

    def _add_version(self, stored: _File, data: bytes, mime: str) -> None:
        stored.versions.append(
            _Version(
                id=f"{stored.id}v{len(stored.versions) + 1}",
                data=data,
                mime=mime,
                created_at=_now(),
            )
        )
        stored.current = len(stored.versions) - 1

    def _url(self, stored: _File, version: _Version) -> str:
        return f"{URL_ENDPOINT}{stored.path}?ik-obj-version={version.id}"

    def _details(self, stored: _File, index: int | None = None) -> dict[str, Any]:
        index = stored.current if index is None else index
        version = stored.versions[index]
        width, height = _size(version.data)
        return {
            "type": "file" if index == stored.current else "file-version",
            "fileId": stored.id,
            "name": stored.name,
            "filePath": stored.path,
            "url": self._url(stored, version),
            "fileType": "image",
            "mime": version.mime,
            "size": len(version.data),
            "width": width,
            "height": height,
            "tags": list(stored.tags),
            "versionInfo": {"id": version.id, "name": f"Version {index + 1}"},
            "createdAt": stored.versions[0].created_at,
            "updatedAt": version.created_at,
        }
