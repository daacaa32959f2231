"""The emulator's state: files and their versions, extension jobs, callbacks, remove-bg runs,
quota.

Everything lives in memory; with a ``data_dir`` every change is also written out before the
change is acted upon, so a restarted (or killed) emulator finds its files, unfinished jobs,
paid runs and undelivered callbacks again: one blob file per version, and a journal that gets
one JSON line per changed record (a file, a job, a callback, a run...), appended in one write.
The journal is folded into a JSON index (replaced atomically) at start-up and every
``COMPACT_EVERY`` lines, so a write costs the size of what changed, not of the whole state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections import Counter, deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .records import (
    Activity,
    Callback,
    FileRecord,
    Job,
    PathExistsError,
    StoreError,
    Version,
    VersionLimitError,
    iso,
    now_ms,
    object_id,
)

INDEX_NAME = "index.json"
JOURNAL_NAME = "journal.jsonl"
INDEX_FORMAT = 1
#: Fold the journal into the index after this many lines.
COMPACT_EVERY = 20000

__all__ = [
    "Activity",
    "Callback",
    "FileRecord",
    "Job",
    "PathExistsError",
    "Store",
    "StoreError",
    "Version",
    "VersionLimitError",
    "iso",
    "now_ms",
    "object_id",
]


class Store:
    def __init__(self, data_dir: str | os.PathLike[str] | None = None):
        self.lock = threading.RLock()
        self.data_dir = Path(data_dir) if data_dir else None
        self.files: dict[str, FileRecord] = {}
        self.paths: dict[str, str] = {}
        self.jobs: dict[str, Job] = {}
        self.callbacks: dict[str, Callback] = {}
        self.uploads_by_name: Counter[str] = Counter()
        self.quota_used = 0
        #: Every paid remove-bg run: job, file, sha256 of the input, options.
        self.runs: list[dict[str, Any]] = []
        self.requests: deque[dict[str, Any]] = deque(maxlen=2000)
        #: How many API requests got each fault, over the whole life of the state (``requests``
        #: keeps only the last 2000).
        self.faults_fired: Counter[str] = Counter()
        self._blobs: dict[str, bytes] = {}
        self._journal: Any = None
        self._journal_lines = 0
        if self.data_dir:
            (self.data_dir / "blobs").mkdir(parents=True, exist_ok=True)
            with self.lock:
                self._load()
                self.save()  # the journal folded in: a fresh index, an empty journal

    # ------------------------------------------------------------------ persistence

    def _index_path(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / INDEX_NAME

    def _load(self) -> None:
        path = self._index_path()
        if not path.exists():
            return
        data = json.loads(path.read_text(encoding="utf-8"))
        for raw in data.get("files", []):
            versions = [Version(**v) for v in raw.pop("versions")]
            record = FileRecord(**raw, versions=versions)
            self.files[record.id] = record
            self.paths[record.file_path] = record.id
        self.jobs = {j["id"]: Job(**j) for j in data.get("jobs", [])}
        self.callbacks = {c["id"]: Callback(**c) for c in data.get("callbacks", [])}
        self.uploads_by_name = Counter(data.get("uploads_by_name", {}))
        self.quota_used = int(data.get("quota_used", 0))
        self.runs = list(data.get("runs", []))
        self.faults_fired = Counter(data.get("faults_fired", {}))
        journal = self.data_dir / JOURNAL_NAME if self.data_dir else None
        if journal is not None and journal.exists():
            for line in journal.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    break  # a line cut short by a kill: nothing after it was written
                self._replay(entry)

    def _replay(self, entry: dict[str, Any]) -> None:
        if "file" in entry:
            raw = dict(entry["file"])
            versions = [Version(**v) for v in raw.pop("versions")]
            record = FileRecord(**raw, versions=versions)
            self.files[record.id] = record
            self.paths[record.file_path] = record.id
        if "deleted_file" in entry:
            self._forget(entry["deleted_file"])
        if "job" in entry:
            self.jobs[entry["job"]["id"]] = Job(**entry["job"])
        if "callback" in entry:
            self.callbacks[entry["callback"]["id"]] = Callback(**entry["callback"])
        if "run" in entry and all(r["jobId"] != entry["run"]["jobId"] for r in self.runs):
            self.runs.append(entry["run"])
        if "upload_name" in entry:
            name, count = entry["upload_name"]
            self.uploads_by_name[name] = count
        if "quota_used" in entry:
            self.quota_used = int(entry["quota_used"])
        if "faults_fired" in entry:
            self.faults_fired = Counter(entry["faults_fired"])

    def _log(self, **entry: Any) -> None:
        """Append what changed to the journal, in one write (callers hold ``lock``). A no-op in
        memory mode. Records are whole, so replaying one twice changes nothing."""
        if not self.data_dir:
            return
        for key, value in list(entry.items()):
            if key in ("file", "job", "callback"):
                entry[key] = asdict(value)
        if self._journal is None:
            self._journal = open(self.data_dir / JOURNAL_NAME, "a", encoding="utf-8")  # noqa: SIM115
        self._journal.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._journal.flush()
        self._journal_lines += 1
        if self._journal_lines >= COMPACT_EVERY:
            self.save()

    def save(self) -> None:
        """Write the whole index and empty the journal (callers hold ``lock``). A no-op in
        memory mode."""
        if not self.data_dir:
            return
        data = {
            "format": INDEX_FORMAT,
            "files": [asdict(f) for f in self.files.values()],
            "jobs": [asdict(j) for j in self.jobs.values()],
            "callbacks": [asdict(c) for c in self.callbacks.values()],
            "uploads_by_name": dict(self.uploads_by_name),
            "quota_used": self.quota_used,
            "runs": self.runs,
            "faults_fired": dict(self.faults_fired),
        }
        fd, tmp = tempfile.mkstemp(prefix=".index-", dir=self.data_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, separators=(",", ":"))
            os.replace(tmp, self._index_path())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        # Only once the index has everything: a kill in between replays whole records again.
        if self._journal is not None:
            self._journal.close()
        self._journal = open(self.data_dir / JOURNAL_NAME, "w", encoding="utf-8")  # noqa: SIM115
        self._journal_lines = 0

    def close(self) -> None:
        with self.lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    def _blob_path(self, version_id: str) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "blobs" / f"{version_id}.bin"

    def _put_blob(self, version_id: str, data: bytes) -> None:
        if not self.data_dir:
            self._blobs[version_id] = data
            return
        path = self._blob_path(version_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def blob(self, version_id: str) -> bytes:
        if not self.data_dir:
            return self._blobs[version_id]
        return self._blob_path(version_id).read_bytes()

    # ------------------------------------------------------------------ files

    def get_file(self, file_id: str) -> FileRecord | None:
        with self.lock:
            return self.files.get(file_id)

    def file_at(self, file_path: str) -> FileRecord | None:
        with self.lock:
            file_id = self.paths.get(file_path)
            return self.files.get(file_id) if file_id else None

    def new_version(
        self,
        record: FileRecord | None,
        data: bytes,
        info: dict[str, Any],
        meta: dict[str, Any],
        source: str,
        job_id: str | None = None,
        version_id: str | None = None,
    ) -> Version:
        stamp = now_ms()
        return Version(
            id=version_id or object_id(),
            number=record.next_number() if record else 1,
            created_at=stamp,
            updated_at=stamp,
            mime=info["mime"],
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            file_type=info["file_type"],
            width=info.get("width"),
            height=info.get("height"),
            has_alpha=bool(info.get("has_alpha")),
            source=source,
            job_id=job_id,
            tags=meta.get("tags"),
            ai_tags=meta.get("ai_tags"),
            custom_metadata=dict(meta.get("custom_metadata") or {}),
            custom_coordinates=meta.get("custom_coordinates"),
            description=meta.get("description"),
        )

    def put_upload(
        self,
        *,
        file_path: str,
        name: str,
        requested_name: str,
        data: bytes,
        info: dict[str, Any],
        meta: dict[str, Any],
        is_private: bool,
        overwrite: bool,
        keep: dict[str, bool],
        max_versions: int,
    ) -> tuple[FileRecord, Version, bool]:
        """Create a file at ``file_path`` or, if one is there, add a version (``overwrite``).

        ``keep`` says which metadata of the current version survives an overwrite when the
        request does not set it (overwriteTags=false etc.). Returns (file, version, created).
        """
        with self.lock:
            self.uploads_by_name[requested_name] += 1
            existing = self.file_at(file_path)
            if existing is not None:
                if not overwrite:
                    self._log(upload_name=[requested_name, self.uploads_by_name[requested_name]])
                    raise PathExistsError(file_path)
                if len(existing.versions) >= max_versions:
                    self._log(upload_name=[requested_name, self.uploads_by_name[requested_name]])
                    raise VersionLimitError(existing.id)
                current = existing.current
                merged = dict(meta)
                for key, attr in (
                    ("tags", "tags"),
                    ("custom_metadata", "custom_metadata"),
                    ("ai_tags", "ai_tags"),
                ):
                    if keep.get(key) and merged.get(key) is None:
                        merged[key] = getattr(current, attr)
                version = self.new_version(existing, data, info, merged, "overwrite")
                self._put_blob(version.id, data)
                existing.versions.append(version)
                existing.current_version_id = version.id
                existing.is_private = is_private
                self._log(
                    file=existing,
                    upload_name=[requested_name, self.uploads_by_name[requested_name]],
                )
                return existing, version, False
            file_id = object_id()
            # ImageKit's first version has the file's own id.
            version = self.new_version(None, data, info, meta, "upload", version_id=file_id)
            self._put_blob(version.id, data)
            record = FileRecord(
                id=file_id,
                name=name,
                file_path=file_path,
                created_at=version.created_at,
                is_private=is_private,
                current_version_id=version.id,
                versions=[version],
                requested_name=requested_name,
            )
            self.files[file_id] = record
            self.paths[file_path] = file_id
            self._log(
                file=record, upload_name=[requested_name, self.uploads_by_name[requested_name]]
            )
            return record, version, True

    def add_result_version(
        self, file_id: str, data: bytes, info: dict[str, Any], job_id: str, max_versions: int
    ) -> tuple[FileRecord, Version]:
        """A remove-bg result: a new current version carrying the current metadata."""
        with self.lock:
            record = self.files.get(file_id)
            if record is None:
                raise StoreError(f"file {file_id} no longer exists")
            if len(record.versions) >= max_versions:
                raise VersionLimitError(file_id)
            current = record.current
            meta = {
                "tags": current.tags,
                "ai_tags": current.ai_tags,
                "custom_metadata": current.custom_metadata,
                "custom_coordinates": current.custom_coordinates,
                "description": current.description,
            }
            version = self.new_version(record, data, info, meta, "remove-bg", job_id=job_id)
            self._put_blob(version.id, data)
            record.versions.append(version)
            record.current_version_id = version.id
            self._log(file=record)
            return record, version

    def add_result_file(
        self, file_id: str, name: str, data: bytes, info: dict[str, Any], job_id: str
    ) -> tuple[FileRecord, Version]:
        """A remove-bg result stored as a new file named ``name`` in the source's folder
        (the new-file knob), carrying the source's current metadata."""
        with self.lock:
            source = self.files.get(file_id)
            if source is None:
                raise StoreError(f"file {file_id} no longer exists")
            current = source.current
            meta = {
                "tags": current.tags,
                "ai_tags": current.ai_tags,
                "custom_metadata": current.custom_metadata,
                "custom_coordinates": current.custom_coordinates,
                "description": current.description,
            }
            folder = source.file_path.rsplit("/", 1)[0]
            new_id = object_id()
            version = self.new_version(
                None, data, info, meta, "remove-bg", job_id=job_id, version_id=new_id
            )
            self._put_blob(version.id, data)
            record = FileRecord(
                id=new_id,
                name=name,
                file_path=f"{folder}/{name}",
                created_at=version.created_at,
                is_private=source.is_private,
                current_version_id=version.id,
                versions=[version],
                requested_name=name,
            )
            self.files[new_id] = record
            self.paths[record.file_path] = new_id
            self._log(file=record)
            return record, version

    def add_run(self, run: dict[str, Any]) -> None:
        """Record one paid remove-bg run."""
        with self.lock:
            self.runs.append(run)
            self._log(run=run)

    def add_job_and_run(self, job: Job, run: dict[str, Any]) -> Job:
        """A remove-bg job and its paid run, recorded together (one journal line): a kill
        cannot leave a job that runs without its run on record, or the other way round."""
        with self.lock:
            self.jobs[job.id] = job
            self.runs.append(run)
            self._log(job=job, run=run)
            return job

    def list_files(self) -> list[FileRecord]:
        with self.lock:
            return list(self.files.values())

    def update_current(self, file_id: str, changes: dict[str, Any]) -> FileRecord:
        with self.lock:
            record = self.files[file_id]
            version = record.current
            for key, value in changes.items():
                setattr(version, key, value)
            version.updated_at = now_ms()
            self._log(file=record)
            return record

    def delete_file(self, file_id: str) -> None:
        """Delete the file and all its versions (their bytes too)."""
        with self.lock:
            self._forget(file_id)
            self._log(deleted_file=file_id)

    def _forget(self, file_id: str) -> None:
        record = self.files.pop(file_id, None)
        if record is None:
            return
        self.paths.pop(record.file_path, None)
        for version in record.versions:
            if not self.data_dir:
                self._blobs.pop(version.id, None)
                continue
            with contextlib.suppress(OSError):
                self._blob_path(version.id).unlink()

    def restore(self, file_id: str, version_id: str) -> FileRecord:
        """Make an existing version current again (no new version is created)."""
        with self.lock:
            record = self.files[file_id]
            version = record.version(version_id)
            if version is None:
                raise KeyError(version_id)
            record.current_version_id = version.id
            version.updated_at = max(now_ms(), version.updated_at + 1)
            self._log(file=record)
            return record

    def consume_quota(self, units: int, limit: int | None) -> bool:
        with self.lock:
            if limit is not None and self.quota_used + units > limit:
                return False
            self.quota_used += units
            self._log(quota_used=self.quota_used)
            return True

    # ------------------------------------------------------------------ jobs & callbacks

    def add_job(self, job: Job) -> Job:
        with self.lock:
            self.jobs[job.id] = job
            self._log(job=job)
            return job

    def update_job(self, job_id: str, **changes: Any) -> Job | None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            for key, value in changes.items():
                setattr(job, key, value)
            self._log(job=job)
            return job

    def add_callback(self, callback: Callback) -> Callback:
        with self.lock:
            self.callbacks[callback.id] = callback
            job = self.jobs.get(callback.job_id)
            if job is not None:
                job.callback_id = callback.id
                self._log(callback=callback, job=job)
            else:
                self._log(callback=callback)
            return callback

    def update_callback(
        self, callback_id: str, attempt: dict[str, Any] | None = None, **changes: Any
    ) -> Callback | None:
        with self.lock:
            callback = self.callbacks.get(callback_id)
            if callback is None:
                return None
            if attempt is not None:
                callback.attempts.append(attempt)
            for key, value in changes.items():
                setattr(callback, key, value)
            self._log(callback=callback)
            return callback

    def log_request(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.requests.append(entry)
            if entry.get("fault"):
                self.faults_fired[entry["fault"]] += 1
                self._log(faults_fired=dict(self.faults_fired))

    # ------------------------------------------------------------------ whole-state

    def reset(self) -> None:
        with self.lock:
            if self.data_dir:
                for version_id in [v.id for f in self.files.values() for v in f.versions]:
                    with contextlib.suppress(OSError):
                        self._blob_path(version_id).unlink()
            self.files.clear()
            self.paths.clear()
            self.jobs.clear()
            self.callbacks.clear()
            self.uploads_by_name.clear()
            self.requests.clear()
            self._blobs.clear()
            self.quota_used = 0
            self.runs.clear()
            self.faults_fired.clear()
            self.save()

    def state(self) -> dict[str, Any]:
        with self.lock:
            files = []
            for record in self.files.values():
                files.append(
                    {
                        "fileId": record.id,
                        "name": record.name,
                        "filePath": record.file_path,
                        "requestedName": record.requested_name,
                        "isPrivateFile": record.is_private,
                        "createdAt": iso(record.created_at),
                        "currentVersionId": record.current_version_id,
                        "versions": [
                            {
                                "id": v.id,
                                "name": v.name,
                                "current": v.id == record.current_version_id,
                                "source": v.source,
                                "jobId": v.job_id,
                                "createdAt": iso(v.created_at),
                                "updatedAt": iso(v.updated_at),
                                "mime": v.mime,
                                "fileType": v.file_type,
                                "size": v.size,
                                "width": v.width,
                                "height": v.height,
                                "hasAlpha": v.has_alpha,
                                "sha256": v.sha256,
                            }
                            for v in record.versions
                        ],
                    }
                )
            jobs = [
                {
                    "id": j.id,
                    "fileId": j.file_id,
                    "service": j.service,
                    "options": j.options,
                    "requestedOptions": j.requested_options,
                    "inputSha256": j.input_sha256,
                    "synchronous": j.synchronous,
                    "resultFileId": j.result_file_id,
                    "status": j.status,
                    "origin": j.origin,
                    "requestId": j.request_id,
                    "webhookUrl": j.webhook_url,
                    "sourceVersionId": j.source_version_id,
                    "resultVersionId": j.result_version_id,
                    "error": j.error,
                    "callbackId": j.callback_id,
                    "createdAt": iso(j.created_at),
                    "startedAt": iso(j.started_at),
                    "finishedAt": iso(j.finished_at),
                }
                for j in self.jobs.values()
            ]
            callbacks = []
            attempts = []
            for c in self.callbacks.values():
                try:
                    payload = json.loads(c.body)
                except ValueError:  # pragma: no cover - we wrote it ourselves
                    payload = c.body
                callbacks.append(
                    {
                        "id": c.id,
                        "jobId": c.job_id,
                        "fileId": c.file_id,
                        "service": c.service,
                        "reportedStatus": c.status_reported,
                        "url": c.url,
                        "webhookId": c.webhook_id,
                        "status": c.status,
                        "copies": c.copies,
                        "deliveries": c.deliveries,
                        "failFirstAttempts": c.fail_first_attempts,
                        "unsigned": c.unsigned,
                        "createdAt": iso(c.created_at),
                        "payload": payload,
                        "attempts": list(c.attempts),
                    }
                )
                attempts.extend(
                    {"callbackId": c.id, "jobId": c.job_id, "url": c.url, **a} for a in c.attempts
                )
            attempts.sort(key=lambda a: (a.get("sentAtMs") or 0, a.get("seq") or 0))
            return {
                "files": files,
                "uploadsByFileName": dict(self.uploads_by_name),
                "jobs": jobs,
                "callbacks": callbacks,
                "callbackAttempts": attempts,
                "quota": {"used": self.quota_used},
                "removeBgRunCount": len(self.runs),
                "removeBgRuns": [dict(run) for run in self.runs],
                "requests": list(self.requests),
                "faultsFired": dict(self.faults_fired),
            }
