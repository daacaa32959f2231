"""The service layer: the one place entry points call, and the only caller of the ImageKit client.

One module per stage of a job's life::

    request      record a request in the caller's transaction; enqueue after commit
    submission   send it to ImageKit (submit task), with a lease
    dedupe       identical (image, options) is paid for once
    results      a result or failure arrives (webhook callback, or asking ImageKit)
    finalization store the result next to the original (finalize task)
    reconciliation deferred checks, deadlines, lost tasks and dead workers

Below them: ``lifecycle`` (moves shared by every stage), ``queueing`` (enqueue by name, backoff),
``models``, ``callback`` (the typed parser of ImageKit's answers) and the client.
"""

from ..callback import CallbackError, failure_reason, parse_callback
from ..removebg import OptionsError
from . import budget
from .budget import BudgetExhausted
from .finalization import finalize
from .reconciliation import check, reconcile
from .request import (
    CANCELLABLE,
    AlreadyRetried,
    JobInProgress,
    NotCancellable,
    NotRetryable,
    RequestError,
    base_options,
    cancel,
    cancel_unpaid,
    field_options,
    removal_field,
    removal_field_names,
    request_batch,
    request_on_save,
    request_removal,
    retry,
    webhook_url,
)
from .results import (
    CallbackOutcome,
    apply_callback,
    apply_parsed_callback,
)
from .submission import submit

__all__ = [
    "CANCELLABLE",
    "AlreadyRetried",
    "BudgetExhausted",
    "CallbackError",
    "CallbackOutcome",
    "JobInProgress",
    "NotCancellable",
    "NotRetryable",
    "OptionsError",
    "RequestError",
    "apply_callback",
    "apply_parsed_callback",
    "base_options",
    "budget",
    "cancel",
    "cancel_unpaid",
    "check",
    "enqueue_reconcile",
    "failure_reason",
    "field_options",
    "finalize",
    "parse_callback",
    "reconcile",
    "removal_field",
    "removal_field_names",
    "request_batch",
    "request_on_save",
    "request_removal",
    "retry",
    "submit",
    "webhook_url",
]


def enqueue_reconcile():
    """Queue one ``reconcile_removals`` run now; never raises (None when it could not)."""
    from .. import queueing

    return queueing.enqueue_now(queueing.RECONCILE)
