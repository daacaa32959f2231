"""Stage 1: recording a request. Runs in the caller's transaction and never talks to the network.

The job row is written in the same transaction as whatever asked for it (the model save, the
admin action, the API call); the submit task is enqueued only once that transaction commits, so a
rollback sends nothing, and a crash after the commit leaves a queued job that reconcile enqueues.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

from django.core.exceptions import FieldDoesNotExist
from django.db import models, router, transaction
from django.db.models import Case, When
from django.urls import reverse
from django.utils import timezone

from .. import lifecycle, queueing
from ..conf import app_settings
from ..models import UNFINISHED, JobStatus, RemovalJob, Trigger, owner_content_type
from ..removebg import OptionsError, RemoveBgOptions
from ..signals import removal_failed
from ..state import forget_state
from ..tokens import make_token
from . import budget


class RequestError(ValueError):
    """A request that cannot be made as asked; the message says why."""


class NotRetryable(RequestError):
    pass


class NotCancellable(RequestError):
    pass


class AlreadyRetried(RequestError):
    """The job has a newer attempt already (``newer``): retry that one instead."""

    def __init__(self, job: RemovalJob, newer: RemovalJob):
        self.job, self.newer = job, newer
        super().__init__(
            f"Job #{job.pk} has already been retried as job #{newer.pk}; "
            f"retry job #{newer.pk} instead if it fails too."
        )


class JobInProgress(RequestError):
    """An unfinished job exists for the image (``job``) and the caller asked not to replace it."""

    def __init__(self, job: RemovalJob):
        self.job = job
        super().__init__(
            f"Job #{job.pk} for this image is still {job.get_status_display().lower()}; "
            "wait for it to finish."
        )


def removal_field_names(model: type[models.Model]) -> list[str]:
    """The image fields of ``model`` whose backgrounds this app can remove."""
    return [f.name for f in model._meta.fields if getattr(f, "removes_background", False)]


def removal_field(model: type[models.Model], field_name: str) -> Any:
    """``model``'s BackgroundRemovalImageField ``field_name``; RequestError naming the problem."""
    try:
        field = model._meta.get_field(field_name)
    except FieldDoesNotExist:
        raise RequestError(f"{model._meta.label} has no field {field_name!r}.") from None
    if not getattr(field, "removes_background", False):
        raise RequestError(
            f"{model._meta.label}.{field_name} is a {type(field).__name__}, "
            "not a BackgroundRemovalImageField."
        )
    return field


def base_options() -> RemoveBgOptions:
    """The site-wide defaults (settings ``DEFAULT_OPTIONS``) over remove.bg's own."""
    return RemoveBgOptions.coerce(app_settings.DEFAULT_OPTIONS or {})


#: (field, repr of DEFAULT_OPTIONS, repr of its remove_bg_options) -> their validated merge. By
#: repr, not equality: True == 1, yet only True is a valid boolean option.
_field_options: dict[tuple[Any, str, str], RemoveBgOptions] = {}


def field_options(field: Any) -> RemoveBgOptions:
    """A field's effective options: its ``remove_bg_options`` merged over ``DEFAULT_OPTIONS``.

    Every save asks, and validating both twice over was a visible part of a save: the merge is
    kept while neither input changes (settings are still read now, so ``override_settings``
    applies). Options are immutable, so callers can share the result."""
    key = (field, repr(app_settings.DEFAULT_OPTIONS), repr(field.remove_bg_options))
    merged = _field_options.get(key)
    if merged is None:
        merged = RemoveBgOptions.from_dict(field.remove_bg_options, base=base_options())
        _field_options[key] = merged
    return merged


def file_id_of(field: Any, instance: models.Model | None) -> str:
    """The ImageKit fileId the object names for this field (its ``imagekit_file_id_field``)."""
    if instance is None or not field.imagekit_file_id_field:
        return ""
    value = getattr(instance, field.imagekit_file_id_field, "") or ""
    return str(value).strip()


def webhook_url(job: RemovalJob | int) -> str:
    """The callback URL for ``job``: ``WEBHOOK_BASE_URL`` + the webhook route + a signed token."""
    job_id = job if isinstance(job, int) else job.pk
    path = reverse("imagekit_bgremove:webhook", kwargs={"token": make_token(job_id)})
    return f"{app_settings.webhook_base_url}{path}"


def _source_name(instance: models.Model, field: Any) -> str:
    file = getattr(instance, field.attname)
    if file and not file._committed:
        raise RequestError(
            f"{type(instance)._meta.label}.{field.name} holds a new image that has not been "
            "saved yet; save the object first."
        )
    name = (file.name or "") if file else ""
    if not name and not file_id_of(field, instance):
        raise RequestError(
            f"{type(instance)._meta.label}.{field.name} has no image to remove the background of."
        )
    return name


def _mark_enqueue_failed(job_id: int):
    def record(exc: BaseException) -> None:
        RemovalJob.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
            error_code="enqueue_failed",
            error_message=(
                f"The job could not be queued ({type(exc).__name__}); "
                "reconcile_removals will queue it again."
            ),
            updated_at=timezone.now(),
        )

    return record


def enqueue_submit_on_commit(job_id: int, *, using: str | None = None) -> None:
    """Enqueue the submit once the job's database has committed, and, when the object lives in
    another database (``using``), once that one has too: either may hold an outer transaction
    (``ATOMIC_REQUESTS`` on one database only), and the worker must find both rows."""
    jobs_db = router.db_for_write(RemovalJob)

    def enqueue() -> None:
        queueing.enqueue_on_commit(
            queueing.SUBMIT, job_id, on_error=_mark_enqueue_failed(job_id), using=jobs_db
        )

    if using is None or using == jobs_db:
        enqueue()
    else:
        transaction.on_commit(enqueue, using=using, robust=True)


def _atomic(objects_db: str, jobs_db: str, *, savepoint: bool = True) -> Any:
    """One transaction, or two when the objects and the jobs live in different databases: the
    objects' commits last, so the task enqueued at its commit finds the job committed."""
    if objects_db == jobs_db:
        return transaction.atomic(using=jobs_db, savepoint=savepoint)
    stack = ExitStack()
    stack.enter_context(transaction.atomic(using=objects_db, savepoint=False))
    stack.enter_context(transaction.atomic(using=jobs_db, savepoint=savepoint))
    return stack


def _create(
    instance: models.Model,
    field: Any,
    *,
    options: RemoveBgOptions | None,
    error: OptionsError | None = None,
    trigger: str,
    user: Any,
    force: bool,
    retry_of: RemovalJob | None,
    is_new_object: bool,
    only_if_idle: bool = False,
    using: str | None = None,
) -> RemovalJob:
    """Write the job in the current transaction (the caller's, or a new one in autocommit).

    The jobs live in the database the routers give ``RemovalJob`` (where every worker looks for
    them); the object may live in another (``using``): its row is locked there, and the submit
    task is enqueued when the object's transaction commits."""
    content_type = owner_content_type(type(instance), field.name)
    object_id = str(instance.pk)
    model = type(instance)
    objects_db = using or instance._state.db or router.db_for_write(model)
    jobs_db = router.db_for_write(RemovalJob)
    source_name = _source_name(instance, field)
    now = timezone.now()
    failure = (
        ("invalid_options", f"The remove-bg options are invalid: {error} Change the options.")
        if error is not None
        else None
    )
    # The save path runs inside the save's transaction: no savepoint, a failure fails the save.
    with _atomic(objects_db, jobs_db, savepoint=trigger != Trigger.SAVE):
        if failure is None:
            try:
                budget.reserve(1)
            except budget.BudgetExhausted as exc:
                if trigger != Trigger.SAVE:
                    raise
                failure = ("budget_spent", str(exc))  # a save cannot be refused: say why
        if not is_new_object:
            # The object's row lock serialises requests for the same image: the second one
            # waits here, then sees (and supersedes) the first one's committed job. The image
            # is the row's, read under the lock: a concurrent save may have stored a newer one
            # than this instance holds, and the live job must be for what the row holds.
            stored = list(
                model._base_manager.db_manager(objects_db)
                .select_for_update()
                .filter(pk=instance.pk)
                .values_list(field.attname, flat=True)
            )
            if not stored:
                raise RequestError(f"{model._meta.label} {instance.pk} no longer exists.")
            source_name = stored[0] or ""
            if not source_name and not file_id_of(field, instance):
                raise RequestError(f"{model._meta.label} {instance.pk} no longer has an image.")
            if only_if_idle:
                live = (
                    RemovalJob.objects.filter(
                        content_type=content_type, object_id=object_id, field_name=field.name
                    )
                    .unfinished()
                    .first()
                )
                if live is not None:
                    raise JobInProgress(live)
        # Also for a new object: a deleted one's unfinished job may hold its primary key.
        older = lifecycle.supersede_older(
            RemovalJob(content_type=content_type, object_id=object_id, field_name=field.name)
        )
        job = RemovalJob.objects.create(
            content_type=content_type,
            object_id=object_id,
            field_name=field.name,
            status=JobStatus.QUEUED if failure is None else JobStatus.FAILED,
            options=options.to_dict() if options is not None else {},
            force=bool(force),
            trigger=trigger,
            requested_by=user,
            retry_of=retry_of,
            source_name=source_name,
            error_code=failure[0] if failure else "",
            error_message=failure[1] if failure else "",
            created_at=now,
            updated_at=now,
            finished_at=now if failure else None,
        )
        if older:
            RemovalJob.objects.filter(pk__in=older, superseded_by__isnull=True).update(
                superseded_by=job
            )
        forget_state(instance, field.name)
        if failure is None:
            enqueue_submit_on_commit(job.pk, using=objects_db)
        else:
            lifecycle.send_on_commit(removal_failed, job.pk)
    return job


def cancel_unpaid(instance: models.Model, field_name: str) -> int:
    """Cancel the image's unfinished job while nothing has been paid for it yet (queued, or
    waiting on an identical image): the save that cleared the image no longer wants it. A job
    a worker is already sending runs on. Returns how many were cancelled."""
    unpaid = [JobStatus.QUEUED, JobStatus.WAITING]
    ids = list(
        RemovalJob.objects.filter(
            content_type=owner_content_type(type(instance), field_name),
            object_id=str(instance.pk),
            field_name=field_name,
            status__in=unpaid,
        ).values_list("pk", flat=True)
    )
    forget_state(instance, field_name)
    if not ids:
        return 0
    return lifecycle.transition(
        ids,
        unpaid,
        JobStatus.CANCELLED,
        error_code="image_cleared",
        error_message="The image was cleared before it was sent to ImageKit.",
    )


def request_removal(
    instance: models.Model,
    field_name: str,
    *,
    options: RemoveBgOptions | Mapping[str, Any] | str | None = None,
    trigger: str = Trigger.API,
    user: Any = None,
    force: bool = False,
    only_if_idle: bool = False,
    retry_of: RemovalJob | None = None,
) -> RemovalJob:
    """Ask for the background of ``instance.<field_name>`` to be removed.

    Creates a ``queued`` job (superseding older unfinished jobs of the same image) and enqueues
    the submit task once the transaction commits.
    With ``only_if_idle``, raises JobInProgress instead of superseding an unfinished job.
    Raises ``OptionsError`` for invalid options and ``RequestError`` for anything else."""
    if instance is None or instance.pk is None:
        raise RequestError("Save the object before requesting a background removal.")
    field = removal_field(type(instance), field_name)
    defaults = field_options(field)
    merged = RemoveBgOptions.coerce(options, base=defaults) if options else defaults
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    return _create(
        instance,
        field,
        options=merged,
        trigger=trigger,
        user=user,
        force=force,
        retry_of=retry_of,
        is_new_object=False,
        only_if_idle=only_if_idle,
    )


def request_on_save(
    instance: models.Model,
    field: Any,
    *,
    created: bool,
    using: str | None,
) -> RemovalJob:
    """The save hook's request: inside the save's transaction (or right after the row was written
    in autocommit), never raising for bad options: those leave a failed job that says why."""
    options = error = None
    user = instance.__dict__.pop(f"_ikbg_user_{field.attname}", None)
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None  # AnonymousUser is no row to point at
    try:
        options = field_options(field)
        pending = instance.__dict__.pop(f"_ikbg_options_{field.attname}", None)
        if pending:
            options = RemoveBgOptions.coerce(pending, base=options)
    except OptionsError as exc:
        error = exc
    return _create(
        instance,
        field,
        options=options,
        error=error,
        trigger=Trigger.SAVE,
        user=user,
        force=False,
        retry_of=None,
        is_new_object=created,
        using=using,
    )


#: A user may cancel a job nobody is busy with: not sent yet, waiting on an identical job, or
#: awaiting ImageKit's result. A worker's submitting or storing is never interrupted.
CANCELLABLE = (JobStatus.QUEUED, JobStatus.WAITING, JobStatus.PENDING)


def cancel(job: RemovalJob, *, user: Any = None) -> RemovalJob:
    """Cancel ``job`` if it is still cancellable; returns it as it is now. A pending run goes on
    at ImageKit (and is paid for): its result is ignored when it comes."""
    who = f" by {user}" if getattr(user, "is_authenticated", False) else ""
    if not lifecycle.cancel(
        job.pk,
        list(CANCELLABLE),
        error_code="cancelled",
        error_message=f"Cancelled{who}.",
    ):
        job.refresh_from_db()
        raise NotCancellable(
            f"Job #{job.pk} is {job.get_status_display().lower()}: only a queued, waiting or "
            "pending job can be cancelled."
        )
    job.refresh_from_db()
    return job


def retry(
    job: RemovalJob,
    *,
    user: Any = None,
    options: RemoveBgOptions | Mapping[str, Any] | str | None = None,
) -> RemovalJob:
    """Try a failed job again: a new job (trigger RETRY) linked to it, with the same options or
    new ones, from the original image (never modified by the app; on the fileId path the
    original version is restored first). A job can be retried once: its retry is the next
    attempt (``AlreadyRetried`` points at it)."""
    with transaction.atomic():
        locked = RemovalJob.objects.select_for_update().filter(pk=job.pk).first()
        if locked is None:
            raise NotRetryable(f"Job #{job.pk} no longer exists.")
        if locked.status != JobStatus.FAILED:
            raise NotRetryable(
                f"Only failed jobs can be retried; job #{job.pk} is {locked.status}."
            )
        newer = RemovalJob.objects.filter(retry_of=locked).first()
        if newer is not None:
            raise AlreadyRetried(locked, newer)
        instance = locked.get_target()
        if instance is None:
            raise NotRetryable(f"The object of job #{job.pk} no longer exists.")
        return request_removal(
            instance,
            locked.field_name,
            options=options if options is not None else locked.options,
            trigger=Trigger.RETRY,
            user=user,
            force=locked.force,
            retry_of=locked,
        )


def request_batch(
    model: type[models.Model],
    field: Any,
    rows: list[tuple[Any, str]],
    *,
    options: RemoveBgOptions,
    force: bool = False,
    trigger: str = Trigger.COMMAND,
) -> list[int]:
    """``request_removal`` for many objects at once: ``rows`` are (pk, stored name) pairs.
    A fixed number of queries per batch, whatever its size: lock the rows, supersede their
    unfinished jobs, insert the new ones. Returns the new job ids."""
    content_type = owner_content_type(model, field.name)
    now = timezone.now()
    objects_db = router.db_for_write(model)
    with _atomic(objects_db, router.db_for_write(RemovalJob)):
        objects = model._base_manager.db_manager(objects_db).select_for_update()
        # What the rows hold now, under the lock: an upload since the caller read them wins.
        held = dict(objects.filter(pk__in=[pk for pk, _ in rows]).values_list("pk", field.attname))
        rows = [(pk, held[pk]) for pk, _ in rows if held.get(pk)]
        object_ids = [str(pk) for pk, _ in rows]
        budget.reserve(len(rows))
        live = RemovalJob.objects.filter(
            content_type=content_type,
            field_name=field.name,
            object_id__in=object_ids,
            status__in=UNFINISHED,
        )
        older = dict(live.values_list("object_id", "pk"))
        if older:
            lifecycle.transition(
                list(older.values()), UNFINISHED, JobStatus.SUPERSEDED, updated_at=now
            )
        jobs = RemovalJob.objects.bulk_create(
            [
                RemovalJob(
                    content_type=content_type,
                    object_id=str(pk),
                    field_name=field.name,
                    status=JobStatus.QUEUED,
                    options=options.to_dict(),
                    force=force,
                    trigger=trigger,
                    source_name=source,
                    created_at=now,
                    updated_at=now,
                )
                for pk, source in rows
            ]
        )
        if any(job.pk is None for job in jobs):  # a backend that cannot return ids
            by_object = dict(
                RemovalJob.objects.filter(
                    content_type=content_type,
                    field_name=field.name,
                    object_id__in=object_ids,
                    status=JobStatus.QUEUED,
                ).values_list("object_id", "pk")
            )
            for job in jobs:
                job.pk = by_object[job.object_id]
        new_by_object = {job.object_id: job.pk for job in jobs}
        if older:
            RemovalJob.objects.filter(pk__in=older.values()).update(
                superseded_by_id=Case(
                    *[When(pk=old, then=new_by_object[obj]) for obj, old in older.items()],
                    output_field=models.BigIntegerField(),
                )
            )
        for job in jobs:
            enqueue_submit_on_commit(job.pk, using=objects_db)
    return [job.pk for job in jobs]
