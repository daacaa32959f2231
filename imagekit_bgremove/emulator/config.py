"""The emulator's configuration; its default credentials and URL come from the Django-free
``imagekit_bgremove.defaults`` that the app's settings use too."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from imagekit_bgremove import defaults

MB = 1024 * 1024

#: What one remove-bg costs in ImageKit extension units.
REMOVE_BG_UNITS = 130
#: ImageKit keeps at most this many versions of a file.
MAX_VERSIONS = 100
#: The free plan's image upload limit.
DEFAULT_MAX_UPLOAD_BYTES = 25 * MB
#: Where ImageKit's error bodies send people.
HELP_TEXT = "For support kindly contact us at support@imagekit.io."


DEFAULT_PRIVATE_KEY: str = defaults.EMULATOR_PRIVATE_KEY
DEFAULT_WEBHOOK_SECRET: str = defaults.EMULATOR_WEBHOOK_SECRET
DEFAULT_URL: str = defaults.EMULATOR_URL.rstrip("/")
DEFAULT_HOST: str = urlsplit(DEFAULT_URL).hostname or "127.0.0.1"
DEFAULT_PORT: int = urlsplit(DEFAULT_URL).port or 8790


def _strings(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    return tuple(v.strip() for v in value if v and v.strip())


@dataclass
class EmulatorConfig:
    """Everything an :class:`~imagekit_bgremove.emulator.Emulator` needs; all fields optional."""

    host: str = DEFAULT_HOST
    #: 0 picks a free port (read it back from ``Emulator.port``/``.url`` after ``start()``).
    port: int = DEFAULT_PORT
    private_key: str = DEFAULT_PRIVATE_KEY
    #: Callbacks are signed with every secret (rotation); the first is the "current" one.
    webhook_secrets: tuple[str, ...] = (DEFAULT_WEBHOOK_SECRET,)
    #: Base of delivery URLs; default ``http://HOST:PORT/ik``.
    url_endpoint: str | None = None
    #: Persist files, versions, jobs and callbacks here (JSON index + blobs); None = memory.
    data_dir: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    #: Threads running remove-bg jobs (never the request threads).
    workers: int = 2
    #: Hosts (``name`` or ``name:port``) that ``bg_image_url`` and URL uploads may be fetched
    #: from. Empty = the emulator itself, 127.0.0.1 and localhost. The emulator's own host is
    #: always trusted.
    trust_hosts: tuple[str, ...] = ()
    #: Seeds the random choices of fault injection (and nothing else) for repeatable runs.
    seed: int | None = None
    #: Extension units available; None = unlimited. Each remove-bg costs 130.
    extension_quota_units: int | None = None
    max_versions: int = MAX_VERSIONS
    #: Pixel limit handed to the background remover.
    max_pixels: int = 50_000_000
    # Callback delivery: only HTTP 200 counts; anything else is retried with backoff
    # (base * 2**n, capped) until ``callback_retry_seconds`` after the first attempt.
    callback_timeout: float = 10.0
    callback_retry_seconds: float = 3600.0
    callback_backoff_base: float = 10.0
    callback_backoff_max: float = 600.0
    #: Sign callbacks with both schemes (x-ik-signature and Standard Webhooks).
    sign_callbacks: bool = True
    #: Fault knobs at start (a mapping or a ``Faults``); see ``faults.Faults``.
    faults: Any = None
    #: Run every thread as a daemon (the embedded emulator must never keep a process alive).
    daemon_threads: bool = False
    #: Log each request at INFO on the ``imagekit_bgremove.emulator`` logger.
    log_requests: bool = False
    #: Seconds an idle keep-alive connection is kept open.
    idle_timeout: float = 30.0

    def __post_init__(self) -> None:
        self.webhook_secrets = _strings(self.webhook_secrets)
        self.trust_hosts = tuple(h.lower() for h in _strings(self.trust_hosts))
        if self.port < 0 or self.port > 65535:
            raise ValueError(f"port must be 0..65535, not {self.port}")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.max_upload_bytes < 1:
            raise ValueError("max_upload_bytes must be positive")
        if not self.private_key:
            raise ValueError("private_key must not be empty")
        if self.max_versions < 1:
            raise ValueError("max_versions must be at least 1")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def updated(self, **changes: Any) -> EmulatorConfig:
        return replace(self, **changes)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> EmulatorConfig:
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise TypeError(f"unknown emulator setting(s): {', '.join(unknown)}")
        return cls(**dict(data))


def display_host(host: str) -> str:
    """The host to put in URLs: wildcard binds are reached through the loopback address."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - naming the wildcard, not binding to it
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_PORT",
    "DEFAULT_PRIVATE_KEY",
    "DEFAULT_URL",
    "DEFAULT_WEBHOOK_SECRET",
    "HELP_TEXT",
    "MAX_VERSIONS",
    "REMOVE_BG_UNITS",
    "EmulatorConfig",
    "display_host",
]
