"""``BackgroundRemovalImageField``: an ``ImageField`` whose images get their background removed.

The original is stored and served exactly as by ``ImageField``; the app never modifies it. When a
new or changed image is saved (and the trigger allows it), a removal is requested once the
transaction commits. ``save()`` itself does no network I/O and never reads the image.

The field adds a companion ``ForeignKey`` ``<name>_removal`` to the latest
:class:`~imagekit_bgremove.models.RemovalJob`, so lists can filter and ``select_related`` it::

    Product.objects.filter(photo_removal__status="succeeded").select_related("photo_removal")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from django.core import checks
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import models, transaction
from django.db.models.fields.files import FieldFile, ImageFieldFile
from django.db.models.signals import post_init, post_save

from .options import OptionsError, RemoveBgOptions

logger = logging.getLogger(__name__)

TRIGGER_CHANGED = "changed"
TRIGGER_NEVER = "never"
TRIGGER_MANUAL = "manual"
TRIGGERS = (TRIGGER_CHANGED, TRIGGER_NEVER, TRIGGER_MANUAL)

_UNSET = object()


class BackgroundRemovalFieldFile(ImageFieldFile):
    """The original image (an ``ImageFieldFile``) plus what became of its background removal."""

    @property
    def removal(self):
        """The latest :class:`RemovalJob` of this field (``None`` before the first request)."""
        return getattr(self.instance, self.field.removal_field_name, None)

    @property
    def removal_status(self) -> str | None:
        job = self.removal
        return job.status if job is not None else None

    @property
    def removal_error(self) -> str:
        job = self.removal
        return job.error_message if job is not None else ""

    @property
    def result_url(self) -> str | None:
        """ImageKit's URL of the cut-out, once the removal has succeeded."""
        from .models import JobStatus

        job = self.removal
        if job is None or job.status != JobStatus.SUCCEEDED:
            return None
        return job.result_url or None

    @property
    def result_file(self) -> FieldFile | None:
        """The copy of the cut-out in this field's storage, next to the original (or ``None``)."""
        from .models import JobStatus

        job = self.removal
        if job is None or job.status != JobStatus.SUCCEEDED or not job.result_name:
            return None
        return FieldFile(self.instance, self.field, job.result_name)

    def request_removal(
        self,
        options: Any = None,
        *,
        user: Any = None,
        trigger: str | None = None,
        force: bool = False,
    ):
        """Ask for the background to be removed (again). Returns the new ``RemovalJob``."""
        from . import services
        from .models import Trigger

        return services.request_removal(
            self.instance,
            self.field.name,
            options=options,
            user=user,
            trigger=trigger or Trigger.API,
            force=force,
        )


class BackgroundRemovalImageField(models.ImageField):
    attr_class = BackgroundRemovalFieldFile
    description = "Image whose background is removed through ImageKit"

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

    @property
    def removal_field_name(self) -> str:
        return f"{self.name}_removal"

    # -- model class set-up ------------------------------------------------------------------

    def contribute_to_class(self, cls: type[models.Model], name: str, **kwargs: Any) -> None:
        if self._options_error is not None:
            self._raise_options_error(f"{cls.__module__}.{cls.__qualname__}.{name}")
        super().contribute_to_class(cls, name, **kwargs)
        if cls._meta.abstract:
            return
        if cls.__module__ == "__fake__":
            # A migration state model: it already carries the pointer from the migration, and
            # saves in data migrations must not request removals.
            return
        if not any(f.name == self.removal_field_name for f in cls._meta.local_fields):
            pointer = models.ForeignKey(
                "imagekit_bgremove.RemovalJob",
                null=True,
                blank=True,
                editable=False,
                on_delete=models.SET_NULL,
                related_name="+",
                verbose_name=f"{self.verbose_name or name} background removal",
            )
            cls.add_to_class(self.removal_field_name, pointer)
        # Bound methods are held weakly; the field lives as long as its model.
        post_init.connect(self._snapshot, sender=cls, dispatch_uid=f"ikbg_init_{id(self)}")
        post_save.connect(self._after_save, sender=cls, dispatch_uid=f"ikbg_save_{id(self)}")

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

    # -- save hooks ----------------------------------------------------------------------------

    def _stored_name(self, instance: models.Model) -> Any:
        value = instance.__dict__.get(self.attname, _UNSET)
        if value is _UNSET:
            return _UNSET  # deferred
        if value is None or isinstance(value, str):
            return value or ""
        if isinstance(value, FieldFile):
            return (value.name or "") if value._committed else None
        return None  # a File not saved yet: a new upload

    def _snapshot(self, instance: models.Model, **kwargs: Any) -> None:
        instance.__dict__[f"_ikbg_{self.attname}"] = self._stored_name(instance)

    def _trigger_allows(self, instance: models.Model) -> bool:
        trigger = self.remove_bg_trigger
        if callable(trigger):
            try:
                return bool(trigger(instance))
            except Exception:
                logger.exception("remove_bg_trigger of %s raised; no removal requested", self)
                return False
        return trigger == TRIGGER_CHANGED

    def _after_save(
        self,
        sender: type,
        instance: models.Model,
        created: bool,
        raw: bool,
        update_fields: Any = None,
        **kwargs: Any,
    ) -> None:
        if raw or (update_fields is not None and self.name not in update_fields):
            return
        current = self._stored_name(instance)
        key = f"_ikbg_{self.attname}"
        # A new row has no previous image, even when created with the name of a stored file.
        before = "" if created else instance.__dict__.get(key, _UNSET)
        instance.__dict__[key] = current
        if current is _UNSET or not current or current == before:
            return
        if not self._trigger_allows(instance):
            return
        model, pk, name = type(instance), instance.pk, self.name
        using = kwargs.get("using")

        def request() -> None:
            _request_after_commit(model, pk, name, instance)

        transaction.on_commit(request, using=using, robust=True)


def _request_after_commit(
    model: type[models.Model], pk: Any, field_name: str, instance: models.Model
) -> None:
    """Runs once the save committed. Never raises: the user's save has already succeeded."""
    from . import services
    from .models import Trigger

    try:
        services.request_removal(instance, field_name, trigger=Trigger.SAVE)
    except Exception:
        logger.exception(
            "could not request background removal for %s %s.%s", model._meta.label, pk, field_name
        )
