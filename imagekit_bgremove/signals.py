"""Public signals, sent after the database transaction that settled the job has committed.

Receivers get ``job`` (the :class:`~imagekit_bgremove.models.RemovalJob`) and ``instance`` (the
model object whose image it is, or ``None`` when that object has been deleted meanwhile)::

    from django.dispatch import receiver
    from imagekit_bgremove.signals import removal_succeeded

    @receiver(removal_succeeded)
    def publish(sender, job, instance, **kwargs):
        ...

``sender`` is the model class of ``instance`` (``RemovalJob`` when the object is gone).
"""

from django.dispatch import Signal

removal_succeeded = Signal()
removal_failed = Signal()
