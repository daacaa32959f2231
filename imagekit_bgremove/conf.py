"""The app's settings: one ``IMAGEKIT_BGREMOVE`` dict, read on every access.

Reading at access time (never caching at import) is what lets ``override_settings`` and per-test
emulators work. Which ImageKit is used is always explicit: a ``PRIVATE_KEY`` means ImageKit (or
whatever its base URLs name); without one, ``EMULATOR_URL`` names a running ImageKit emulator whose
well-known credentials fill in what a real account would provide. With neither, nothing is sent.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .defaults import EMULATOR_PRIVATE_KEY, EMULATOR_WEBHOOK_SECRET

SETTINGS_NAME = "IMAGEKIT_BGREMOVE"

DEFAULTS: dict[str, Any] = {
    # ImageKit account. Without PRIVATE_KEY, the ImageKit emulator at EMULATOR_URL.
    "PRIVATE_KEY": "",
    "URL_ENDPOINT": "",
    "UPLOAD_BASE_URL": "https://upload.imagekit.io",
    "API_BASE_URL": "https://api.imagekit.io",
    # Webhooks.
    "WEBHOOK_SECRETS": [],
    "WEBHOOK_TOLERANCE_SECONDS": 300,
    "WEBHOOK_BASE_URL": "",
    "WEBHOOK_REQUIRE_SIGNATURE": False,
    # Take the result's URL from ImageKit's file details, never from the callback body.
    "WEBHOOK_CONFIRM_WITH_API": True,
    "WEBHOOK_MAX_BODY_BYTES": 512 * 1024,
    "WEBHOOK_DELIVERY_RETENTION_DAYS": 30,
    # What gets sent.
    "DEFAULT_OPTIONS": {},
    "FOLDER": "/bgremove",
    "TAGS": [],
    # HTTP behaviour of the client.
    "CONNECT_TIMEOUT": 5.0,
    "READ_TIMEOUT": 60.0,
    "MAX_RETRIES": 3,
    "RETRY_BACKOFF": 0.5,
    "RETRY_BACKOFF_MAX": 30.0,
    # Tasks.
    "TASK_BACKEND": "default",
    "TASK_QUEUE": "default",
    "TASK_MAX_ATTEMPTS": 5,
    "TASK_RETRY_DELAY": 30.0,
    # How long a worker holds a job it is submitting or storing before reconcile takes it back.
    "TASK_LEASE_SECONDS": 600,
    # Results.
    "COPY_RESULT": True,
    "RESULT_MAX_BYTES": 25 * 1024 * 1024,
    # Delivery hosts results may be downloaded from, besides URL_ENDPOINT's ("host" or
    # "host:port").
    "RESULT_HOSTS": [],
    # Your ImageKit plan's upload limit: larger originals fail at once instead of being sent.
    "MAX_UPLOAD_BYTES": 25 * 1024 * 1024,
    "RESULT_SUFFIX": "_nobg",
    # At most this many removal requests per day (None: no limit).
    "DAILY_REMOVAL_LIMIT": None,
    # Lost callbacks.
    "RECONCILE_AFTER_SECONDS": 600,
    "PENDING_DEADLINE_SECONDS": 26 * 3600,
    # A running ImageKit emulator (python -m imagekit_emulator), used when PRIVATE_KEY is empty.
    "EMULATOR_URL": "",
}


class AppSettings:
    """Upper-case attributes are the raw keys (user value or default); lower-case ones are the
    effective values the rest of the app should use, with the emulator filled in when no account
    is configured."""

    def _user(self) -> dict[str, Any]:
        return getattr(settings, SETTINGS_NAME, None) or {}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"{SETTINGS_NAME} has no setting {name!r}")
        return self._user().get(name, DEFAULTS[name])

    def is_set(self, name: str) -> bool:
        return name in self._user()

    @property
    def emulator_mode(self) -> bool:
        return not self.PRIVATE_KEY and bool(self.EMULATOR_URL)

    @property
    def private_key(self) -> str:
        return self.PRIVATE_KEY or (EMULATOR_PRIVATE_KEY if self.emulator_mode else "")

    def require_imagekit(self) -> None:
        """Refuse to talk to any ImageKit when none is configured (the system check reports it
        as an error when DEBUG is False; this names it at the first request otherwise)."""
        if not self.PRIVATE_KEY and not self.EMULATOR_URL:
            raise ImproperlyConfigured(
                f"{SETTINGS_NAME} names no ImageKit: set PRIVATE_KEY (your ImageKit private API "
                "key) or, for development, EMULATOR_URL (a running `python -m imagekit_emulator`, "
                "e.g. 'http://127.0.0.1:8790')."
            )

    def _emulator_or(self, name: str) -> str:
        if self.emulator_mode and not self.is_set(name):
            return str(self.EMULATOR_URL).rstrip("/")
        return str(getattr(self, name)).rstrip("/")

    @property
    def upload_base_url(self) -> str:
        return self._emulator_or("UPLOAD_BASE_URL")

    @property
    def api_base_url(self) -> str:
        return self._emulator_or("API_BASE_URL")

    @property
    def url_endpoint(self) -> str:
        if self.URL_ENDPOINT:
            return str(self.URL_ENDPOINT).rstrip("/")
        if self.emulator_mode:
            return str(self.EMULATOR_URL).rstrip("/") + "/ik"
        return ""

    @property
    def result_hosts(self) -> frozenset[str]:
        """Where results may be downloaded from: the URL_ENDPOINT's host (with its port when it
        names one) and RESULT_HOSTS, lower-cased."""
        hosts = self.RESULT_HOSTS
        if isinstance(hosts, str):
            hosts = hosts.split(",")
        allowed = {str(h).strip().lower() for h in hosts or () if str(h).strip()}
        endpoint = urlsplit(self.url_endpoint) if self.url_endpoint else None
        if endpoint is not None and endpoint.hostname:
            host = endpoint.hostname.lower()
            allowed.add(f"{host}:{endpoint.port}" if endpoint.port else host)
        return frozenset(allowed)

    @property
    def webhook_secrets(self) -> list[str]:
        secrets = self.WEBHOOK_SECRETS
        if isinstance(secrets, str):
            secrets = [s.strip() for s in secrets.split(",")]
        secrets = [s for s in secrets if s]
        if not secrets and self.emulator_mode:
            return [EMULATOR_WEBHOOK_SECRET]
        return secrets

    @property
    def webhook_base_url(self) -> str:
        return str(self.WEBHOOK_BASE_URL).rstrip("/")

    @property
    def timeout(self) -> tuple[float, float]:
        return (float(self.CONNECT_TIMEOUT), float(self.READ_TIMEOUT))


app_settings = AppSettings()
