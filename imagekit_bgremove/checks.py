"""System checks for the ``IMAGEKIT_BGREMOVE`` setting (``manage.py check``).

=========================== =====================================================================
imagekit_bgremove.E010      neither PRIVATE_KEY nor EMULATOR_URL while DEBUG is False (with DEBUG
                            on, W001, and the first request raises ImproperlyConfigured)
imagekit_bgremove.W001      neither PRIVATE_KEY nor EMULATOR_URL (DEBUG on)
imagekit_bgremove.W009      EMULATOR_URL set while DEBUG is False: images go to an emulator
imagekit_bgremove.E001      IMAGEKIT_BGREMOVE is not a dict
imagekit_bgremove.E002      unknown keys in IMAGEKIT_BGREMOVE
imagekit_bgremove.E003      PRIVATE_KEY is a public key
imagekit_bgremove.W002      a real key but no WEBHOOK_SECRETS
imagekit_bgremove.E004      WEBHOOK_REQUIRE_SIGNATURE without any WEBHOOK_SECRETS
imagekit_bgremove.W003      a real key but no WEBHOOK_BASE_URL
imagekit_bgremove.E005      WEBHOOK_BASE_URL is not an absolute http(s) URL
imagekit_bgremove.W004      WEBHOOK_BASE_URL is not https (DEBUG False, real key)
imagekit_bgremove.W005      WEBHOOK_BASE_URL points at this machine or a private network
imagekit_bgremove.E006      DEFAULT_OPTIONS is invalid
imagekit_bgremove.E007      TASK_BACKEND is not a configured task backend
imagekit_bgremove.E008      TASK_QUEUE is not a queue of that backend
imagekit_bgremove.E009      a timeout, retry or size setting is not a usable number
imagekit_bgremove.W006      neither WEBHOOK_SECRETS nor WEBHOOK_CONFIRM_WITH_API (DEBUG False):
                            nothing but the URL token vouches for a callback's content
imagekit_bgremove.E011      a real key but no URL_ENDPOINT: every job would fail on its result host
imagekit_bgremove.E012      WEBHOOK_BASE_URL's host is not in ALLOWED_HOSTS (DEBUG False): every
                            callback would be answered 400 (DisallowedHost); W008 with DEBUG on
imagekit_bgremove.E013      the routers put the app's tables outside the "default" database
imagekit_bgremove.E020      a field's remove_bg_options or DEFAULT_OPTIONS name a bg_image_url
                            that is not public or does not resolve (the check resolves it)
=========================== =====================================================================
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.core.checks import Warning as CheckWarning
from django.http.request import split_domain_port, validate_host

from .conf import DEFAULTS, SETTINGS_NAME, app_settings
from .inputs import InputError, check_bg_image_url
from .removebg import NON_FIELD, OptionsError, RemoveBgOptions

TAG = "imagekit_bgremove"
PREFIX = "imagekit_bgremove"

# Settings that must be numbers, with the smallest acceptable value and whether it may equal it.
NUMERIC_SETTINGS: dict[str, tuple[float, bool, bool]] = {
    # name: (minimum, minimum allowed, must be an integer)
    "CONNECT_TIMEOUT": (0, False, False),
    "READ_TIMEOUT": (0, False, False),
    "MAX_RETRIES": (0, True, True),
    "RETRY_BACKOFF": (0, True, False),
    "RETRY_BACKOFF_MAX": (0, True, False),
    "WEBHOOK_TOLERANCE_SECONDS": (0, False, False),
    "WEBHOOK_MAX_BODY_BYTES": (0, False, True),
    "RESULT_MAX_BYTES": (0, False, True),
    "MAX_UPLOAD_BYTES": (0, False, True),
    "MAX_IMAGE_PIXELS": (0, False, True),
    "TASK_LEASE_SECONDS": (0, False, False),
    "TASK_MAX_ATTEMPTS": (1, True, True),
    "TASK_RETRY_DELAY": (0, True, False),
    "RECONCILE_AFTER_SECONDS": (0, False, False),
    "PENDING_DEADLINE_SECONDS": (0, False, False),
    "DAILY_REMOVAL_LIMIT": (0, True, True),
}


#: Numeric settings where None means "no limit".
NULLABLE_SETTINGS = {"DAILY_REMOVAL_LIMIT", "MAX_IMAGE_PIXELS"}


def _user_settings() -> dict[str, Any] | None:
    """The user's dict, or None when it is missing or unusable (other checks report that)."""
    raw = getattr(settings, SETTINGS_NAME, None)
    if raw is None:
        return {}
    return dict(raw) if isinstance(raw, Mapping) else None


def _real_key() -> bool:
    user = _user_settings()
    return bool(user and user.get("PRIVATE_KEY"))


@register(TAG)
def check_settings_present(app_configs=None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    raw = getattr(settings, SETTINGS_NAME, None)
    if raw is not None and not isinstance(raw, Mapping):
        messages.append(
            Error(
                f"{SETTINGS_NAME} must be a dict, not {type(raw).__name__}.",
                id=f"{PREFIX}.E001",
            )
        )
        return messages
    user = _user_settings() or {}
    if not user.get("PRIVATE_KEY") and not user.get("EMULATOR_URL"):
        # Development may run without ImageKit until something is sent (which then raises).
        level, code = (CheckWarning, "W001") if settings.DEBUG else (Error, "E010")
        messages.append(
            level(
                f"{SETTINGS_NAME}['PRIVATE_KEY'] is not set, nor EMULATOR_URL: no ImageKit to "
                "remove backgrounds with.",
                hint="Set PRIVATE_KEY to your ImageKit private API key (e.g. from the "
                "environment); for development, EMULATOR_URL to a running "
                "`python -m imagekit_emulator` instead.",
                id=f"{PREFIX}.{code}",
            )
        )
    elif not user.get("PRIVATE_KEY") and not settings.DEBUG:
        messages.append(
            CheckWarning(
                f"{SETTINGS_NAME}['EMULATOR_URL'] is set and PRIVATE_KEY is not, while DEBUG is "
                "False: images are sent to the ImageKit emulator, not to ImageKit.",
                hint="Set PRIVATE_KEY to your ImageKit private API key in production.",
                id=f"{PREFIX}.W009",
            )
        )
    key = user.get("PRIVATE_KEY")
    if isinstance(key, str) and key.strip().startswith("public_"):
        messages.append(
            Error(
                f"{SETTINGS_NAME}['PRIVATE_KEY'] holds a public key (public_...).",
                hint="Use the private API key (private_...) from the ImageKit dashboard.",
                id=f"{PREFIX}.E003",
            )
        )
    elif key is not None and not isinstance(key, str):
        messages.append(
            Error(f"{SETTINGS_NAME}['PRIVATE_KEY'] must be a string.", id=f"{PREFIX}.E003")
        )
    return messages


@register(TAG)
def check_unknown_keys(app_configs=None, **kwargs: Any) -> list[CheckMessage]:
    user = _user_settings()
    if not user:
        return []
    unknown = sorted(str(key) for key in user if key not in DEFAULTS)
    if not unknown:
        return []
    suggestions = []
    for key in unknown:
        close = difflib.get_close_matches(key.upper(), list(DEFAULTS), n=1)
        if close:
            suggestions.append(f"{key!r} -> {close[0]!r}?")
    hint = f"Valid keys: {', '.join(sorted(DEFAULTS))}."
    if suggestions:
        hint = f"Did you mean {', '.join(suggestions)} {hint}"
    return [
        Error(
            f"{SETTINGS_NAME} has unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}.",
            hint=hint,
            id=f"{PREFIX}.E002",
        )
    ]


def _is_local_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return (
        address.is_loopback or address.is_private or address.is_unspecified or address.is_link_local
    )


def _host_allowed(netloc: str) -> bool:
    """Whether Django's host validation lets a request to ``netloc`` through."""
    domain, _port = split_domain_port(netloc.rpartition("@")[2])
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        # What HttpRequest.get_host() allows in that case.
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


@register(TAG)
def check_webhooks(app_configs=None, **kwargs: Any) -> list[CheckMessage]:
    user = _user_settings()
    if user is None:
        return []
    messages: list[CheckMessage] = []
    real_key = _real_key()
    try:
        secrets = app_settings.webhook_secrets
    except TypeError:
        secrets = []
    if real_key and not secrets:
        messages.append(
            CheckWarning(
                f"{SETTINGS_NAME}['WEBHOOK_SECRETS'] is empty: ImageKit webhook signatures "
                "cannot be checked; callbacks are only authenticated by the signed token in "
                "their URL.",
                hint="Copy the webhook secret (whsec_...) from the ImageKit dashboard.",
                id=f"{PREFIX}.W002",
            )
        )
    confirm = user.get("WEBHOOK_CONFIRM_WITH_API", DEFAULTS["WEBHOOK_CONFIRM_WITH_API"])
    if real_key and not settings.DEBUG and not secrets and not confirm:
        messages.append(
            CheckWarning(
                f"Neither {SETTINGS_NAME}['WEBHOOK_SECRETS'] nor WEBHOOK_CONFIRM_WITH_API is "
                "set: nothing but the token in the URL vouches for what a callback says.",
                hint="Set WEBHOOK_SECRETS, or leave WEBHOOK_CONFIRM_WITH_API on (the default), "
                "so results are taken from ImageKit's API rather than from the callback body.",
                id=f"{PREFIX}.W006",
            )
        )
    if real_key and not user.get("URL_ENDPOINT"):
        messages.append(
            Error(
                f"{SETTINGS_NAME}['URL_ENDPOINT'] is empty: every job would fail when its "
                "result is downloaded from ImageKit's delivery host.",
                hint="Set URL_ENDPOINT to your endpoint, e.g. 'https://ik.imagekit.io/your_id' "
                "(extra delivery hosts go in RESULT_HOSTS).",
                id=f"{PREFIX}.E011",
            )
        )
    if user.get("WEBHOOK_REQUIRE_SIGNATURE") and not secrets:
        messages.append(
            Error(
                f"{SETTINGS_NAME}['WEBHOOK_REQUIRE_SIGNATURE'] is True but no WEBHOOK_SECRETS "
                "are set: every callback would be refused.",
                id=f"{PREFIX}.E004",
            )
        )
    base = str(user.get("WEBHOOK_BASE_URL") or "").strip()
    if not base:
        if real_key:
            messages.append(
                CheckWarning(
                    f"{SETTINGS_NAME}['WEBHOOK_BASE_URL'] is empty: ImageKit cannot call back "
                    "when a background has been removed; results arrive only by polling.",
                    hint="Set it to the public https origin of this site, e.g. "
                    "'https://www.example.com'.",
                    id=f"{PREFIX}.W003",
                )
            )
        return messages
    try:
        parts = urlsplit(base)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        messages.append(
            Error(
                f"{SETTINGS_NAME}['WEBHOOK_BASE_URL'] must be an absolute http(s) URL, "
                f"not {base!r}.",
                hint="For example 'https://www.example.com'.",
                id=f"{PREFIX}.E005",
            )
        )
        return messages
    if not _host_allowed(parts.netloc):
        level, code = (CheckWarning, "W008") if settings.DEBUG else (Error, "E012")
        messages.append(
            level(
                f"{SETTINGS_NAME}['WEBHOOK_BASE_URL'] names the host {host!r}, which is not in "
                "ALLOWED_HOSTS: Django would answer every callback with 400 (DisallowedHost).",
                hint=f"Add {host!r} to ALLOWED_HOSTS (a tunnel's host too, while you use one).",
                id=f"{PREFIX}.{code}",
            )
        )
    if real_key and not settings.DEBUG:
        if parts.scheme != "https":
            messages.append(
                CheckWarning(
                    f"{SETTINGS_NAME}['WEBHOOK_BASE_URL'] is not https ({base!r}): callbacks "
                    "and their tokens would travel in clear text.",
                    id=f"{PREFIX}.W004",
                )
            )
        if _is_local_host(host):
            messages.append(
                CheckWarning(
                    f"{SETTINGS_NAME}['WEBHOOK_BASE_URL'] points at {host!r}, which ImageKit "
                    "cannot reach from the internet.",
                    hint="Use the public address of this site.",
                    id=f"{PREFIX}.W005",
                )
            )
    return messages


@register(TAG)
def check_default_options(app_configs=None, **kwargs: Any) -> list[CheckMessage]:
    user = _user_settings()
    if not user or "DEFAULT_OPTIONS" not in user:
        return []
    value = user["DEFAULT_OPTIONS"]
    name = f"{SETTINGS_NAME}['DEFAULT_OPTIONS']"
    if value is not None and not isinstance(value, Mapping):
        return [
            Error(
                f"{name} must be a dict of remove-bg options, not {type(value).__name__}.",
                hint=f"Valid options: {', '.join(RemoveBgOptions.field_names())}.",
                id=f"{PREFIX}.E006",
            )
        ]
    try:
        RemoveBgOptions.from_dict(value)
    except OptionsError as exc:
        return [
            Error(
                f"{name}: {message}" if field == NON_FIELD else f"{name}['{field}']: {message}",
                id=f"{PREFIX}.E006",
            )
            for field, messages in exc.errors.items()
            for message in messages
        ]
    return []


@register(TAG)
def check_bg_image_urls(app_configs=None, **kwargs: Any) -> list[CheckMessage]:
    """Defaults that would send every request to ImageKit with a background it cannot fetch
    stop the site at start-up rather than fail (and cost) one job at a time."""
    from django.apps import apps

    found: list[tuple[str, Any, Any]] = []
    default = (_user_settings() or {}).get("DEFAULT_OPTIONS")
    if isinstance(default, Mapping):
        found.append((f"{SETTINGS_NAME}['DEFAULT_OPTIONS']", default.get("bg_image_url"), None))
    for model in apps.get_models():
        for field in model._meta.local_fields:
            if getattr(field, "removes_background", False):
                url = field.remove_bg_options.get("bg_image_url")
                found.append((f"{model._meta.label}.{field.name}", url, field))
    messages: list[CheckMessage] = []
    for where, url, field in found:
        if not url or not isinstance(url, str):
            continue  # none, or E006 / the field itself says what is wrong with it
        try:
            check_bg_image_url(url)
        except InputError as exc:
            messages.append(Error(f"{where}: bg_image_url {exc}", obj=field, id=f"{PREFIX}.E020"))
    return messages


@register(TAG)
def check_tasks(app_configs=None, **kwargs: Any) -> list[CheckMessage]:
    user = _user_settings()
    if user is None:
        return []
    from .compat import task_backends

    alias = user.get("TASK_BACKEND", DEFAULTS["TASK_BACKEND"])
    queue = user.get("TASK_QUEUE", DEFAULTS["TASK_QUEUE"])
    try:
        # Read TASKS afresh: the handler's own copy is cached.
        configured = task_backends.configure_settings(None)
    except AttributeError:  # TASKS deleted outright (e.g. by a test): only the default exists
        configured = {"default": {}}
    except Exception as exc:  # an invalid TASKS setting is reported by Django's own checks
        return [
            Error(
                f"TASKS could not be read ({exc!r}), so {SETTINGS_NAME}['TASK_BACKEND'] "
                "cannot be checked.",
                id=f"{PREFIX}.E007",
            )
        ]
    if alias not in configured:
        where = "TASKS" if hasattr(settings, "TASKS") else "TASKS (not set: only 'default')"
        return [
            Error(
                f"{SETTINGS_NAME}['TASK_BACKEND'] is {alias!r}, which is not in {where}.",
                hint=f"Configured task backends: {', '.join(map(repr, configured)) or 'none'}.",
                id=f"{PREFIX}.E007",
            )
        ]
    params = configured[alias] or {}
    queues = set(params.get("QUEUES", ["default"]))
    if queues and queue not in queues:
        return [
            Error(
                f"{SETTINGS_NAME}['TASK_QUEUE'] is {queue!r}, which the task backend "
                f"{alias!r} does not accept.",
                hint=f"Its QUEUES are {', '.join(map(repr, sorted(queues)))}; add {queue!r} "
                "there or choose one of them.",
                id=f"{PREFIX}.E008",
            )
        ]
    return []


@register(TAG)
def check_numbers(app_configs=None, **kwargs: Any) -> list[CheckMessage]:
    user = _user_settings()
    if not user:
        return []
    messages: list[CheckMessage] = []
    for name, (minimum, inclusive, integer) in NUMERIC_SETTINGS.items():
        if name not in user:
            continue
        value = user[name]
        if value is None and name in NULLABLE_SETTINGS:
            continue
        valid = isinstance(value, int | float) and not isinstance(value, bool)
        if valid and integer and not float(value).is_integer():
            valid = False
        if valid:
            valid = value >= minimum if inclusive else value > minimum
        if not valid:
            kind = "a whole number" if integer else "a number"
            bound = f">= {minimum}" if inclusive else f"> {minimum}"
            messages.append(
                Error(
                    f"{SETTINGS_NAME}['{name}'] must be {kind} {bound}, not {value!r}.",
                    id=f"{PREFIX}.E009",
                )
            )
    return messages


@register(TAG)
def check_jobs_database(app_configs=None, **kwargs: Any) -> list[CheckMessage]:
    """The jobs' transactions and on-commit hooks run on the default database: a router that
    moves the app's tables elsewhere would make every callback fail."""
    from django.db import DEFAULT_DB_ALIAS, router

    from .models import RemovalJob

    where = {router.db_for_read(RemovalJob), router.db_for_write(RemovalJob)}
    if where == {DEFAULT_DB_ALIAS}:
        return []
    return [
        Error(
            f"The database routers put imagekit_bgremove's tables in {sorted(where)!r}; they must "
            f"stay in {DEFAULT_DB_ALIAS!r} (your models with the field may live anywhere).",
            hint="Let your routers return None or 'default' for the app label 'imagekit_bgremove'.",
            id=f"{PREFIX}.E013",
        )
    ]
