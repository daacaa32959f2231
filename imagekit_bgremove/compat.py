"""The one place that knows where Django's tasks framework lives.

Django 6 ships ``django.tasks``; on Django 5.2 the ``django-tasks`` backport provides the same API.
"""

try:
    from django.tasks import TaskResultStatus, task, task_backends
    from django.tasks.exceptions import InvalidTask, InvalidTaskBackend
except ImportError:  # Django 5.2
    from django_tasks import TaskResultStatus, task, task_backends  # type: ignore[no-redef]
    from django_tasks.exceptions import (  # type: ignore[no-redef]
        InvalidTaskBackendError as InvalidTaskBackend,
    )
    from django_tasks.exceptions import (
        InvalidTaskError as InvalidTask,
    )

__all__ = ["InvalidTask", "InvalidTaskBackend", "TaskResultStatus", "task", "task_backends"]
