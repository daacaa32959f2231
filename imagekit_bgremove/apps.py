from django.apps import AppConfig


class ImageKitBgRemoveConfig(AppConfig):
    name = "imagekit_bgremove"
    verbose_name = "Background removal"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import (
            checks,  # noqa: F401  (registers the system checks)
            tasks,  # noqa: F401  (registers the tasks with queueing)
        )
