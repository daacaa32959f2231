"""Admin for the app's own models, and a mixin for your ModelAdmins.

``RemovalJobAdmin`` and ``WebhookDeliveryAdmin`` are read-only views of what happened (no Save
buttons; a change POST is refused). The jobs list can retry failed jobs (with the change
permission on each job's object) and queue a reconcile run.

``BackgroundRemovalAdminMixin`` goes in front of ``admin.ModelAdmin`` for models with a
:class:`~imagekit_bgremove.fields.BackgroundRemovalImageField`::

    @admin.register(Product)
    class ProductAdmin(BackgroundRemovalAdminMixin, admin.ModelAdmin):
        list_display = ["name", "removal_status_column"]

Modules: ``display`` (badges, thumbnails, captions, advice), ``forms`` (the options as form
fields), ``pages`` (the "Remove background…" page), ``mixin``, ``filters``, ``status`` (the JSON
the live list polls), ``jobs`` and ``deliveries`` (the app's own models).
"""

from .deliveries import WebhookDeliveryAdmin
from .display import RemovalState, badge, status_badge
from .forms import RemoveBackgroundForm
from .jobs import RemovalJobAdmin, attach_targets, job_target
from .mixin import BackgroundRemovalAdminMixin

__all__ = [
    "BackgroundRemovalAdminMixin",
    "RemovalJobAdmin",
    "RemovalState",
    "RemoveBackgroundForm",
    "WebhookDeliveryAdmin",
    "attach_targets",
    "badge",
    "job_target",
    "status_badge",
]
