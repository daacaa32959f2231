"""The remove-bg work queue: jobs queued by upload/PATCH, run on worker threads (never on the
request threads, unless the synchronous-success knob asks for it), their result stored as a
new version (or, by knob, a new file), and the SUCCESS/FAILURE callback handed to delivery.

Every accepted (paid) run is recorded with the sha256 of its input and its options, the
ground truth a soak test checks "each distinct (image, options) paid for at most once" with.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from .config import REMOVE_BG_UNITS
from .errors import MSG_VERSION_LIMIT, FetchError, JobFailure
from .extensions import REMOVE_BG, ExtensionRequest, OptionRejected, check_remove_bg_options
from .records import iso
from .rendering import file_details
from .store import FileRecord, Job, StoreError, Version, VersionLimitError, now_ms
from .uploads import unique_name
from .workers import WorkerPool

if TYPE_CHECKING:
    from .server import Emulator

logger = logging.getLogger("imagekit_bgremove.emulator")

ACTIVITY = "jobs"


class JobRunner:
    def __init__(self, emulator: Emulator):
        self._emulator = emulator
        config = emulator.config
        self._pool = WorkerPool(
            "ik-emulator-job",
            config.workers,
            daemon=config.daemon_threads,
            on_discard=lambda _item: emulator.activity.done(ACTIVITY),
        )

    def start(self) -> None:
        self._pool.start()

    def stop(self, timeout: float | None = None) -> None:
        self._pool.stop(timeout)

    def resume(self) -> None:
        """Queue again the jobs a previous run (persistent mode) left unfinished."""
        store = self._emulator.store
        with store.lock:
            unfinished = [j for j in store.jobs.values() if j.status in ("pending", "running")]
        for job in unfinished:
            store.update_job(job.id, status="pending")
            self._enqueue(job.id)

    # ------------------------------------------------------------------ accepting

    def start_extensions(
        self,
        record: FileRecord,
        extensions: list[ExtensionRequest],
        webhook_url: str | None,
        origin: str,
        request_id: str,
        *,
        source: str | None = None,
    ) -> Started:
        """Each requested extension's status, queueing remove-bg on ``source`` (a version id;
        default the current version). The caller has already taken the quota for a remove-bg
        that can run; a file at its version limit gets ``failed`` at once (no run, no charge).
        Also gives the file as it is now (changed when the work was done synchronously)."""
        emulator = self._emulator
        statuses: dict[str, str] = {}
        runs = 0
        for extension in extensions:
            if extension.name != REMOVE_BG:
                statuses[extension.name] = "success"  # accepted, no effect in the emulator
                continue
            if len(record.versions) >= emulator.config.max_versions:
                statuses[extension.name] = "failed"
                continue
            source_id = source or record.current_version_id
            source_version = record.version(source_id)
            job = Job(
                id=f"job_{secrets.token_hex(8)}",
                file_id=record.id,
                service=REMOVE_BG,
                options=extension.options,
                requested_options=extension.requested_options,
                source_version_id=source_id,
                webhook_url=webhook_url,
                origin=origin,
                request_id=request_id,
                created_at=now_ms(),
                input_sha256=source_version.sha256 if source_version else None,
                synchronous=emulator.injector.chance(emulator.faults.sync_success_rate),
            )
            runs += 1
            emulator.store.add_job_and_run(
                job,
                {
                    "jobId": job.id,
                    "fileId": job.file_id,
                    "sourceVersionId": job.source_version_id,
                    "inputSha256": job.input_sha256,
                    "options": job.options,
                    "requestedOptions": job.requested_options,
                    "origin": origin,
                    "requestId": request_id,
                    "units": REMOVE_BG_UNITS,
                    "at": iso(job.created_at),
                },
            )
            if job.synchronous:
                done = self._execute(job)
                statuses[extension.name] = "success" if done.status == "success" else "failed"
                record = emulator.store.get_file(record.id) or record
                continue
            self._enqueue(job.id)
            statuses[extension.name] = "pending"
        return Started(statuses, record, runs)

    def _enqueue(self, job_id: str) -> None:
        self._emulator.activity.add(ACTIVITY)
        self._pool.submit(self._run_job, job_id)

    # ------------------------------------------------------------------ running

    def _run_job(self, job_id: str) -> None:
        emulator = self._emulator
        try:
            job = emulator.store.jobs.get(job_id)
            if job is None or job.status != "pending" or emulator.stop_event.is_set():
                return
            done = self._execute(job)
            if done.callback_payload is not None:  # None: reset meanwhile. While stopping,
                emulator.callbacks.submit(done.job, done.callback_payload)  # still recorded.
        finally:
            emulator.activity.done(ACTIVITY)

    def _execute(self, job: Job) -> _Outcome:
        emulator = self._emulator
        store = emulator.store
        store.update_job(job.id, status="running", started_at=now_ms())
        try:
            record, version = self._remove_background(job)
        except JobFailure as failure:
            error = {"message": failure.message, "reason": failure.reason}
            payload: dict[str, Any] = {
                "service": REMOVE_BG,
                "status": "FAILURE",
                "fileId": job.file_id,
                "error": error,
            }
            done = store.update_job(job.id, status="failed", error=error, finished_at=now_ms())
        else:
            with store.lock:
                payload = {
                    "service": REMOVE_BG,
                    "status": "SUCCESS",
                    "fileObject": file_details(record, version, emulator.url_endpoint),
                }
            done = store.update_job(
                job.id,
                status="success",
                result_version_id=version.id,
                result_file_id=record.id if record.id != job.file_id else None,
                finished_at=now_ms(),
            )
        if done is None:
            return _Outcome(job, "reset", None)
        return _Outcome(done, done.status, None if job.synchronous else payload)

    def _remove_background(self, job: Job) -> tuple[FileRecord, Version]:
        emulator = self._emulator
        config = emulator.config
        faults = emulator.faults
        if emulator.injector.chance(faults.extension_failure_rate):
            raise JobFailure(
                "Background removal failed (emulator fault injection).", "simulated_failure"
            )
        try:
            check_remove_bg_options(job.options)
        except OptionRejected as exc:
            raise JobFailure(f"remove.bg refused the options: {exc.message}", exc.reason) from None
        try:
            source = emulator.store.blob(job.source_version_id)
        except (KeyError, OSError):
            raise JobFailure(
                "The file version to process no longer exists.", "source_missing"
            ) from None
        options = job.options
        background = None
        if options.get("bg_image_url"):
            try:
                background = emulator.fetcher.fetch(
                    options["bg_image_url"], limit=config.max_upload_bytes
                )
            except FetchError as exc:
                reason = "untrusted_bg_image_url" if exc.untrusted else "bg_image_url_fetch_failed"
                raise JobFailure(f"Could not use bg_image_url: {exc}", reason) from None
        try:
            from .removal import RemovalError, remove_background
        except ImportError as exc:  # pragma: no cover - the emulator extra is not installed
            raise JobFailure(
                f"The emulator cannot remove backgrounds here: {exc}", "internal_error"
            ) from None
        try:
            # add_shadow is not passed: remove.bg shadows photos of cars only (see removal.py).
            result = remove_background(
                source,
                semitransparency=options.get("semitransparency") is not False,
                bg_color=options.get("bg_color") or None,
                background=background,
                max_pixels=config.max_pixels,
                segmentation_model=emulator.segmentation_model,
            )
        except RemovalError as exc:
            raise JobFailure(f"Background removal failed: {exc}", "invalid_image") from None
        except Exception as exc:
            logger.exception("remove-bg job %s crashed", job.id)
            raise JobFailure(
                f"Background removal failed: {type(exc).__name__}", "internal_error"
            ) from None
        info = {
            "mime": result.mime,
            "file_type": "image",
            "width": result.width,
            "height": result.height,
            "has_alpha": result.has_alpha,
        }
        store = emulator.store
        try:
            if emulator.injector.chance(faults.result_as_new_file_rate):
                record = store.get_file(job.file_id)
                if record is None:
                    raise StoreError(f"file {job.file_id} no longer exists")
                stem = record.name.rsplit(".", 1)[0] if "." in record.name else record.name
                name = unique_name(f"{stem}-remove-bg.png")
                return store.add_result_file(job.file_id, name, result.data, info, job.id)
            return store.add_result_version(
                job.file_id, result.data, info, job.id, config.max_versions
            )
        except VersionLimitError:
            raise JobFailure(MSG_VERSION_LIMIT, "version_limit") from None
        except StoreError as exc:
            raise JobFailure(str(exc), "source_missing") from None


class Started:
    def __init__(self, statuses: dict[str, str], record: FileRecord, runs: int):
        self.statuses = statuses
        self.record = record
        self.runs = runs


class _Outcome:
    def __init__(self, job: Job, status: str, callback_payload: dict[str, Any] | None):
        self.job = job
        self.status = status
        self.callback_payload = callback_payload


__all__ = ["ACTIVITY", "JobRunner"]
