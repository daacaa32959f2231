"""``BackgroundRemovalImageField``: an ``ImageField`` whose images get their background removed.

The original is stored and served exactly as by ``ImageField``; the app never modifies it. When a
save stores a new image (and the trigger allows it), the save records a removal job in its own
transaction; the submit task is enqueued once that transaction commits. ``save()`` itself does no
network I/O and never reads the image.

The field adds no column: what became of an image's removal is read from the job table
(``imagekit_bgremove.state``), lazily and cached on the instance; for lists in two queries per
page (``prefetch_removal_state``), and filtered with ``with_removal_status``::

    with_removal_status(Product.objects.all(), "photo").filter(photo_removal_status="succeeded")

A new image is recognised from what the save actually stores, not from a name: a file written by
this save (so a storage that overwrites names, like S3's default, is no obstacle), or a different
stored name than the one last loaded from the database (``refresh_from_db`` and deferred loading
included). Proxy models and multi-table children share their concrete model's jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from django.core import checks
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import models
from django.db.models.fields.files import FieldFile, ImageFieldFile, ImageFileDescriptor
from django.db.models.signals import class_prepared, post_init, post_save

from . import services
from .inputs import validate_image_pixels
from .models import Trigger
from .removebg import OptionsError, RemoveBgOptions
from .state import forget_state, state_of

logger = logging.getLogger(__name__)

TRIGGER_CHANGED = "changed"
TRIGGER_NEVER = "never"
TRIGGER_MANUAL = "manual"
TRIGGERS = (TRIGGER_CHANGED, TRIGGER_NEVER, TRIGGER_MANUAL)

_UNSET = object()
#: What pre_save records for a save that clears the image.
CLEARED = "cleared"


def _snapshot_key(attname: str) -> str:
    """Where an instance keeps the name its field had in the database when last loaded/saved."""
    return f"_ikbg_stored_{attname}"


def _changed_key(attname: str) -> str:
    return f"_ikbg_changed_{attname}"


def _options_key(attname: str) -> str:
    return f"_ikbg_options_{attname}"


def _user_key(attname: str) -> str:
    return f"_ikbg_user_{attname}"


class BackgroundRemovalFieldFile(ImageFieldFile):
    """The original image (an ``ImageFieldFile``) plus what became of its background removal."""

    @property
    def removal(self):
        """The latest :class:`RemovalJob` of this field (``None`` before the first request)."""
        return state_of(self.instance, self.field.name).latest

    @property
    def last_success(self):
        """The latest job of this field that succeeded (``None`` if none has)."""
        return state_of(self.instance, self.field.name).last_success

    @property
    def removal_status(self) -> str | None:
        job = self.removal
        return job.status if job is not None else None

    @property
    def removal_error(self) -> str:
        job = self.removal
        return job.error_message if job is not None else ""

    def _result_job(self):
        """The job whose cut-out is of the image the field holds now, if there is one."""
        job = state_of(self.instance, self.field.name).current_success
        if job is None or job.source_name != self.name:
            return None  # no cut-out yet, or it is the cut-out of an earlier image
        return job

    @property
    def result_url(self) -> str | None:
        """ImageKit's URL of this image's cut-out, once a removal has succeeded."""
        job = self._result_job()
        return (job.result_url or None) if job is not None else None

    @property
    def result_file(self) -> FieldFile | None:
        """The copy of this image's cut-out in the field's storage, next to the original."""
        job = self._result_job()
        if job is None or not job.result_name:
            return None
        return FieldFile(self.instance, self.field, job.result_name)

    @property
    def next_removal_options(self) -> dict[str, Any] | None:
        return self.instance.__dict__.get(_options_key(self.field.attname))

    @next_removal_options.setter
    def next_removal_options(self, options: RemoveBgOptions | Mapping[str, Any] | None) -> None:
        """Options for the removal the next save requests (for example, chosen at upload)."""
        key = _options_key(self.field.attname)
        if options is None:
            self.instance.__dict__.pop(key, None)
        elif isinstance(options, RemoveBgOptions):
            self.instance.__dict__[key] = options.to_dict()
        else:
            self.instance.__dict__[key] = dict(options)

    @property
    def next_removal_user(self) -> Any:
        return self.instance.__dict__.get(_user_key(self.field.attname))

    @next_removal_user.setter
    def next_removal_user(self, user: Any) -> None:
        """Who asks for the removal the next save requests (the user who uploaded the image)."""
        if user is None:
            self.instance.__dict__.pop(_user_key(self.field.attname), None)
        else:
            self.instance.__dict__[_user_key(self.field.attname)] = user

    def request_removal(
        self,
        options: Any = None,
        *,
        user: Any = None,
        trigger: str | None = None,
        force: bool = False,
    ):
        """Ask for the background to be removed (again). Returns the new ``RemovalJob``."""
        return services.request_removal(
            self.instance,
            self.field.name,
            options=options,
            user=user,
            trigger=trigger or Trigger.API,
            force=force,
        )


class _Descriptor(ImageFileDescriptor):
    """Notices ``refresh_from_db`` (and the loading of a deferred field), which assign the
    value of a fresh copy of the same row: the stored name is then the one just read."""

    def __set__(self, instance: models.Model, value: Any) -> None:
        super().__set__(instance, value)
        source = getattr(value, "instance", None)
        if (
            isinstance(value, FieldFile)
            and value._committed
            and source is not None
            and source is not instance
            and source.pk is not None
            and source.pk == instance.pk
            and source._meta.concrete_model is instance._meta.concrete_model
        ):
            instance.__dict__[_snapshot_key(self.field.attname)] = value.name or ""
            forget_state(instance, self.field.name)  # read the jobs afresh too


class BackgroundRemovalImageField(models.ImageField):
    attr_class = BackgroundRemovalFieldFile
    descriptor_class = _Descriptor
    # Forms and the admin refuse a new image over MAX_IMAGE_PIXELS before a job is recorded.
    default_validators = [*models.ImageField.default_validators, validate_image_pixels]
    description = "Image whose background is removed through ImageKit"
    #: How the rest of the app recognises these fields without importing this module.
    removes_background = True

    def __init__(
        self,
        verbose_name: Any = None,
        name: str | None = None,
        *,
        remove_bg_options: RemoveBgOptions | Mapping[str, Any] | None = None,
        remove_bg_trigger: str | Callable[[models.Model], bool] = TRIGGER_CHANGED,
        imagekit_folder: str | None = None,
        imagekit_tags: list[str] | tuple[str, ...] | None = None,
        imagekit_file_id_field: str | None = None,
        **kwargs: Any,
    ):
        self._options_error: OptionsError | None = None
        if isinstance(remove_bg_options, RemoveBgOptions):
            self.remove_bg_options: dict[str, Any] = remove_bg_options.to_dict()
        else:
            given = dict(remove_bg_options or {})
            try:
                validated = RemoveBgOptions.from_dict(given)
            except OptionsError as exc:
                self._options_error = exc
                self.remove_bg_options = given
            else:
                # Keep only the keys given, so they win over settings DEFAULT_OPTIONS.
                self.remove_bg_options = {k: getattr(validated, k) for k in given}
        if not (callable(remove_bg_trigger) or remove_bg_trigger in TRIGGERS):
            raise ImproperlyConfigured(
                f"remove_bg_trigger must be one of {', '.join(map(repr, TRIGGERS))} or a "
                f"callable taking the model instance, not {remove_bg_trigger!r}."
            )
        self.remove_bg_trigger = remove_bg_trigger
        self.imagekit_folder = imagekit_folder
        self.imagekit_tags = list(imagekit_tags or [])
        self.imagekit_file_id_field = imagekit_file_id_field
        super().__init__(verbose_name, name, **kwargs)
        if self._options_error is not None and name:
            self._raise_options_error(name)

    def _raise_options_error(self, label: str) -> None:
        raise ImproperlyConfigured(f"{label}: invalid remove_bg_options: {self._options_error}")

    # -- model class set-up ------------------------------------------------------------------

    def contribute_to_class(self, cls: type[models.Model], name: str, **kwargs: Any) -> None:
        if self._options_error is not None:
            self._raise_options_error(f"{cls.__module__}.{cls.__qualname__}.{name}")
        super().contribute_to_class(cls, name, **kwargs)

    def deconstruct(self):
        name, path, args, kwargs = super().deconstruct()
        path = "imagekit_bgremove.fields.BackgroundRemovalImageField"
        if self.remove_bg_options:
            kwargs["remove_bg_options"] = dict(self.remove_bg_options)
        if self.remove_bg_trigger != TRIGGER_CHANGED:
            kwargs["remove_bg_trigger"] = self.remove_bg_trigger
        if self.imagekit_folder:
            kwargs["imagekit_folder"] = self.imagekit_folder
        if self.imagekit_tags:
            kwargs["imagekit_tags"] = list(self.imagekit_tags)
        if self.imagekit_file_id_field:
            kwargs["imagekit_file_id_field"] = self.imagekit_file_id_field
        return name, path, args, kwargs

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        errors = super().check(**kwargs)
        if self.imagekit_file_id_field:
            try:
                self.model._meta.get_field(self.imagekit_file_id_field)
            except FieldDoesNotExist:
                if not hasattr(self.model, self.imagekit_file_id_field):
                    errors.append(
                        checks.Error(
                            f"imagekit_file_id_field refers to {self.imagekit_file_id_field!r}, "
                            f"which is not an attribute of {self.model._meta.label}.",
                            obj=self,
                            id="imagekit_bgremove.E101",
                        )
                    )
        if self.imagekit_folder and not self.imagekit_folder.startswith("/"):
            errors.append(
                checks.Warning(
                    "imagekit_folder should be an absolute ImageKit folder such as '/products'.",
                    obj=self,
                    id="imagekit_bgremove.W101",
                )
            )
        return errors

    # -- change detection --------------------------------------------------------------------

    def _stored_name(self, instance: models.Model) -> Any:
        value = instance.__dict__.get(self.attname, _UNSET)
        if value is _UNSET:
            return _UNSET  # deferred
        if value is None or isinstance(value, str):
            return value or ""
        if isinstance(value, FieldFile):
            return (value.name or "") if value._committed else _UNSET
        return _UNSET  # a File not saved yet

    def pre_save(self, model_instance: models.Model, add: bool) -> Any:
        """Decide, while the row is not yet written, whether this save stores a new image."""
        file = getattr(model_instance, self.attname)
        writes_file = bool(file) and not file._committed
        value = super().pre_save(model_instance, add)
        name = (value.name or "") if value else ""
        if writes_file or (add and name):
            changed = True
        elif not name:
            # Cleared: its unfinished job is stopped (unless this is a new row).
            changed = CLEARED if not add else False
        else:
            before = model_instance.__dict__.get(_snapshot_key(self.attname), _UNSET)
            if model_instance._state.adding:
                before = _UNSET  # built in code with the pk of an existing row, never loaded
            if before is _UNSET:
                # Never loaded from the database: ask it what it holds now.
                stored = (
                    type(model_instance)
                    ._base_manager.db_manager(model_instance._state.db)
                    .filter(pk=model_instance.pk)
                    .values_list(self.attname, flat=True)
                    .first()
                )
                changed = stored != name
            else:
                changed = before != name
        model_instance.__dict__[_changed_key(self.attname)] = changed
        return value

    def not_requested(self, instance: models.Model) -> bool:
        """Whether the image the field holds has no removal job yet: a callable trigger that
        declined when it was stored (a draft) is asked again at each later save until it
        accepts. Asked only when the trigger accepts: a read of the jobs."""
        name = self._stored_name(instance)
        if not isinstance(name, str) or not name or not self.trigger_allows(instance):
            return False
        latest = state_of(instance, self.name).latest
        return latest is None or latest.source_name != name

    def trigger_allows(self, instance: models.Model) -> bool:
        trigger = self.remove_bg_trigger
        if callable(trigger):
            try:
                return bool(trigger(instance))
            except Exception:
                logger.exception("remove_bg_trigger of %s raised; no removal requested", self)
                return False
        return trigger == TRIGGER_CHANGED


def _removal_fields(model: type[models.Model]) -> list[BackgroundRemovalImageField]:
    return [f for f in model._meta.fields if isinstance(f, BackgroundRemovalImageField)]


def _after_init(sender: type, instance: models.Model, **kwargs: Any) -> None:
    for field in sender._ikbg_fields:  # type: ignore[attr-defined]
        instance.__dict__[_snapshot_key(field.attname)] = field._stored_name(instance)


def _after_save(
    sender: type,
    instance: models.Model,
    created: bool,
    raw: bool,
    update_fields: Any = None,
    using: str | None = None,
    **kwargs: Any,
) -> None:
    for field in sender._ikbg_fields:  # type: ignore[attr-defined]
        if update_fields is not None and field.name not in update_fields:
            continue  # the image was not written: what was last stored still stands
        changed = instance.__dict__.pop(_changed_key(field.attname), False)
        instance.__dict__[_snapshot_key(field.attname)] = field._stored_name(instance)
        if raw:
            continue
        if changed is CLEARED:
            services.cancel_unpaid(instance, field.name)
            continue
        if changed:
            wanted = field.trigger_allows(instance)
        else:
            wanted = callable(field.remove_bg_trigger) and field.not_requested(instance)
        if wanted:
            # In the save's transaction: if the job cannot be recorded, the save fails with it.
            services.request_on_save(instance, field, created=created, using=using)


def _connect(sender: type[models.Model], **kwargs: Any) -> None:
    """Hook up every model with removal fields, proxies and multi-table children included."""
    if sender._meta.abstract or sender.__module__ == "__fake__":
        return
    fields = _removal_fields(sender)
    if not fields:
        return
    sender._ikbg_fields = fields  # type: ignore[attr-defined]
    uid = f"ikbg_{sender.__module__}.{sender.__qualname__}"
    post_init.connect(_after_init, sender=sender, dispatch_uid=f"{uid}_init")
    post_save.connect(_after_save, sender=sender, dispatch_uid=f"{uid}_save")


class_prepared.connect(_connect, dispatch_uid="imagekit_bgremove_connect")
