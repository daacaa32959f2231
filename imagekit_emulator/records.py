"""The emulator's records: files and their versions, extension jobs, callbacks, and the
activity counter behind ``wait_idle``. Plain data; ``store.Store`` keeps and persists them."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int | None) -> str | None:
    """ImageKit's timestamp format: ``2019-08-24T06:14:41.313Z``."""
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def object_id() -> str:
    """24 hex digits like ImageKit's ids (a MongoDB ObjectId: seconds, then random)."""
    return f"{int(time.time()) & 0xFFFFFFFF:08x}{secrets.token_hex(8)}"


class StoreError(Exception):
    pass


class VersionLimitError(StoreError):
    pass


class PathExistsError(StoreError):
    pass


@dataclass
class Version:
    id: str
    number: int
    created_at: int
    updated_at: int
    mime: str
    size: int
    sha256: str
    file_type: str  # "image" or "non-image"
    width: int | None = None
    height: int | None = None
    has_alpha: bool = False
    source: str = "upload"  # upload, overwrite, remove-bg
    job_id: str | None = None
    tags: list[str] | None = None
    ai_tags: list[dict[str, Any]] | None = None
    custom_metadata: dict[str, Any] = field(default_factory=dict)
    custom_coordinates: str | None = None
    description: str | None = None
    is_published: bool = True

    @property
    def name(self) -> str:
        return f"Version {self.number}"


@dataclass
class FileRecord:
    id: str
    name: str
    file_path: str
    created_at: int
    is_private: bool
    current_version_id: str
    versions: list[Version] = field(default_factory=list)
    #: The fileName the client asked for (before sanitising / the unique suffix).
    requested_name: str = ""

    @property
    def current(self) -> Version:
        return self.version(self.current_version_id)  # type: ignore[return-value]

    def version(self, version_id: str) -> Version | None:
        for version in self.versions:
            if version.id == version_id:
                return version
        return None

    def next_number(self) -> int:
        return max((v.number for v in self.versions), default=0) + 1


@dataclass
class Job:
    id: str
    file_id: str
    service: str
    options: dict[str, Any]
    source_version_id: str
    webhook_url: str | None
    origin: str  # "upload" or "update"
    request_id: str
    created_at: int
    status: str = "pending"  # pending, running, success, failed
    result_version_id: str | None = None
    error: dict[str, Any] | None = None
    started_at: int | None = None
    finished_at: int | None = None
    callback_id: str | None = None
    #: The options exactly as the request gave them (``options`` has the defaults filled in).
    requested_options: dict[str, Any] | None = None
    #: sha256 of the bytes the run worked on (ground truth for "paid once per image").
    input_sha256: str | None = None
    #: The file the result went to when it is not ``file_id`` (the new-file knob).
    result_file_id: str | None = None
    #: Done before the API answered (``extensionStatus`` success, no callback).
    synchronous: bool = False


@dataclass
class Callback:
    id: str
    job_id: str
    file_id: str
    service: str
    status_reported: str  # SUCCESS or FAILURE
    url: str
    body: str
    webhook_id: str
    created_at: int
    #: scheduled -> delivered | gave_up; lost (never sent); cancelled (reset/stop)
    status: str = "scheduled"
    copies: int = 1
    deliveries: int = 0
    fail_first_attempts: int = 0
    unsigned: bool = False
    first_attempt_at: int | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    #: Retries repeat the first attempt's signature headers (same timestamp) instead of
    #: signing afresh; the headers of that first attempt.
    keep_signature: bool = False
    signature_headers: dict[str, str] | None = None


class Activity:
    """Counts work in progress (queued/running jobs, scheduled/in-flight callbacks)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._counts: Counter[str] = Counter()

    def add(self, kind: str, n: int = 1) -> None:
        with self._cond:
            self._counts[kind] += n

    def done(self, kind: str, n: int = 1) -> None:
        with self._cond:
            self._counts[kind] -= n
            if self._counts[kind] <= 0:
                del self._counts[kind]
            self._cond.notify_all()

    @contextlib.contextmanager
    def busy(self, kind: str) -> Iterator[None]:
        self.add(kind)
        try:
            yield
        finally:
            self.done(kind)

    def clear(self, kind: str) -> None:
        with self._cond:
            self._counts.pop(kind, None)
            self._cond.notify_all()

    def snapshot(self) -> dict[str, int]:
        with self._cond:
            return {k: v for k, v in self._counts.items() if v > 0}

    def wait_idle(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while any(v > 0 for v in self._counts.values()):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is None else min(remaining, 0.5))
            return True
