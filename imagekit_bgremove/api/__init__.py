"""The REST API (Django REST framework) for front-ends: removal jobs.

==========================================  ======================================================
``POST   api/removals/``                    request a removal; body ``{"model": "catalogue.product",
                                            "object_id": "1", "field": "photo", "options": {...},
                                            "force": false}`` -> 202 with the job, ``Location`` and
                                            ``Retry-After``; 409 while a job for that image is
                                            unfinished; ``field`` may be left out when the model
                                            has one image field
``GET    api/removals/``                    jobs, newest first, paginated; filters ``model``,
                                            ``object_id``, ``field``, ``status``
``GET    api/removals/<id>/``               one job, with an ``ETag``: ``If-None-Match`` -> 304
                                            while nothing changed (cheap polling)
``POST   api/removals/<id>/retry/``         try a failed job again, optionally with new options
                                            -> 202 with the new job (409 for a job that has not
                                            failed or that was retried already)
==========================================  ======================================================

Input is strict: a key the endpoint does not take is a 400 naming it, and ``options`` is an
object or the same object as a JSON string (multipart forms); JSON nested more than 32 levels
deep, or with ``NaN``, ``Infinity`` or ``1e999``, is a 400 like any malformed body. Errors
other than validation are ``{"detail": ..., "code": ...}``: 401 (with ``WWW-Authenticate`` when
one of the configured authentication classes can ask for credentials), 403, 404, 409 (with the
job concerned), 413 (body too large), 429 (the ``imagekit_bgremove`` throttle scope, or the
daily budget).

Who may do what: an authenticated user with Django's ``change`` permission on the target model
(:class:`CanChangeTarget`); creating or retrying a job also runs the permission classes'
``has_object_permission`` on the target object itself (a retry also on the job). Replace it per
project by subclassing :class:`RemovalViewSet` and setting ``permission_classes``;
authentication comes from the project's DRF settings.

The pieces a project's own API needs (the image field, the ``remove-background`` action) are in
:mod:`imagekit_bgremove.rest_framework`; the views here only resolve, check and delegate to
:mod:`imagekit_bgremove.services`.
"""

from .helpers import (
    absolute,
    job_etag,
    job_url,
    model_label,
    options_errors,
    resolve_model,
    result_file_url,
)
from .parsers import PARSER_CLASSES, BoundedJSONParser
from .responses import ACCEPTED_HEADERS, accepted_response, error_responses
from .serializers import (
    OptionsField,
    RemovalJobSerializer,
    RemovalRequestSerializer,
    RetryRequestSerializer,
    StrictFieldsMixin,
)
from .views import (
    BudgetSpent,
    CanChangeTarget,
    CodedErrorsMixin,
    PayloadTooLarge,
    RemovalAPIViewMixin,
    RemovalPagination,
    RemovalRateThrottle,
    RemovalViewSet,
)

__all__ = [
    "ACCEPTED_HEADERS",
    "PARSER_CLASSES",
    "BoundedJSONParser",
    "BudgetSpent",
    "CanChangeTarget",
    "CodedErrorsMixin",
    "OptionsField",
    "PayloadTooLarge",
    "RemovalAPIViewMixin",
    "RemovalJobSerializer",
    "RemovalPagination",
    "RemovalRateThrottle",
    "RemovalRequestSerializer",
    "RemovalViewSet",
    "RetryRequestSerializer",
    "StrictFieldsMixin",
    "absolute",
    "accepted_response",
    "error_responses",
    "job_etag",
    "job_url",
    "model_label",
    "options_errors",
    "resolve_model",
    "result_file_url",
]
