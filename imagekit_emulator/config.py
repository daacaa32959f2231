"""The emulator's configuration.

The emulator imports nothing from the Django app, so its well-known development credentials live
here; the app's ``imagekit_bgremove.defaults`` carries the same values and a test keeps the two
equal.

Durations are in *ImageKit seconds*: how long the real service waits. ``time_scale`` turns
them into wall-clock seconds (``wall = imagekit * time_scale``), so a test can run a day of
webhook retries in minutes. Fault knobs (``faults.Faults``) are wall-clock seconds: a test
states them against its own client's timeouts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

MB = 1024 * 1024

#: What one remove-bg costs in ImageKit extension units.
REMOVE_BG_UNITS = 130
#: ImageKit keeps at most this many versions of a file.
MAX_VERSIONS = 100
#: The free plan's upload limit for images, audio and raw files (the spec's "File size limit").
DEFAULT_MAX_UPLOAD_BYTES = 25 * MB
#: ImageKit waits this long for a webhook answer (HTTP 200) ...
IMAGEKIT_CALLBACK_TIMEOUT = 30.0
#: ... and retries a failed callback for this long.
IMAGEKIT_CALLBACK_RETRY_SECONDS = 24 * 3600.0
#: ImageKit gives a URL upload this long to answer with its headers (the spec: 8 seconds).
IMAGEKIT_FETCH_TIMEOUT = 8.0
#: Where ImageKit's error bodies send people.
HELP_TEXT = "For support kindly contact us at support@imagekit.io."
#: Per-channel (R, G, B) normalisation of a segmentation model's input, on pixels scaled to
#: 0..1: ImageNet's statistics, which most PyTorch-trained segmentation models expect.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Largest accepted ``segmentation_input_size``.
MAX_SEGMENTATION_INPUT_SIZE = 4096


#: The well-known development credentials and address (they only ever unlock a local emulator).
DEFAULT_PRIVATE_KEY = "private_emulator_key"
DEFAULT_WEBHOOK_SECRET = "whsec_emulator_secret"
DEFAULT_URL = "http://127.0.0.1:8790"
DEFAULT_HOST: str = urlsplit(DEFAULT_URL).hostname or "127.0.0.1"
DEFAULT_PORT: int = urlsplit(DEFAULT_URL).port or 8790


class SegmentationModelError(ValueError):
    """The configured segmentation model cannot be used (missing file, not a valid ONNX
    model, or an output that is not a single-channel map). Raised when the emulator is
    created, so a bad model stops it at startup rather than failing every job."""


def _triple(name: str, value: Any) -> tuple[float, float, float]:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three numbers (R, G, B), not {value!r}") from None
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"{name} must be three finite numbers (R, G, B), not {value!r}")
    return numbers  # type: ignore[return-value]


def _strings(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    return tuple(v.strip() for v in value if v and v.strip())


@dataclass
class EmulatorConfig:
    """Everything an :class:`~imagekit_emulator.Emulator` needs; all fields optional."""

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
    #: The plan's upload size limit (the free plan: 25 MB for images).
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
    #: Wall-clock seconds per ImageKit second for every duration below (and the rate limiter):
    #: 1 is real time, 0.01 runs a day of callback retries in under 15 minutes.
    time_scale: float = 1.0
    #: No network timeout (webhook answer, URL fetch) is scaled below this many wall seconds:
    #: a shorter one would measure the machine's load rather than the protocol.
    min_timeout: float = 0.0
    # Callback delivery: only HTTP 200 counts; anything else is retried with backoff
    # (base * 2**n, capped) until ``callback_retry_seconds`` after the first attempt.
    # ImageKit seconds (see ``time_scale``).
    callback_timeout: float = IMAGEKIT_CALLBACK_TIMEOUT
    callback_retry_seconds: float = IMAGEKIT_CALLBACK_RETRY_SECONDS
    callback_backoff_base: float = 10.0
    callback_backoff_max: float = 3600.0
    #: How long a URL upload or ``bg_image_url`` may take to answer (ImageKit seconds).
    fetch_timeout: float = IMAGEKIT_FETCH_TIMEOUT
    #: The account's automatic format conversion: a delivery request whose Accept header
    #: includes image/webp gets a WebP conversion unless it asks for ``tr=orig-true``
    #: (on by default on a new ImageKit account).
    auto_format: bool = True
    #: A per-account rate limit on every API but upload: at most ``rate_limit_requests`` in
    #: any ``rate_limit_interval_ms`` (ImageKit milliseconds); None = unlimited. Answers 429
    #: with X-RateLimit-Limit, -Reset and -Interval (wall-clock milliseconds).
    rate_limit_requests: int | None = None
    rate_limit_interval_ms: int = 1000
    #: Sign callbacks with both schemes (x-ik-signature and Standard Webhooks).
    sign_callbacks: bool = True
    #: Fault knobs at start (a mapping or a ``Faults``); see ``faults.Faults``.
    faults: Any = None
    #: Run every thread as a daemon (an emulator inside a test process must never keep it alive).
    daemon_threads: bool = False
    #: Log each request at INFO on the ``imagekit_emulator`` logger.
    log_requests: bool = False
    #: Seconds an idle keep-alive connection is kept open.
    idle_timeout: float = 30.0
    #: Path to an ONNX segmentation model that replaces the built-in remove-bg methods: it gets
    #: the RGB image resized to ``segmentation_input_size`` squared, as a 1x3xNxN float32
    #: tensor of ``(pixel / 255 - mean) / std``, and its first output is read as a foreground
    #: map (see ``removal.SegmentationModel``). Loaded by ``Emulator()``; None = built-ins.
    segmentation_model: str | None = None
    segmentation_input_size: int = 320
    segmentation_mean: tuple[float, float, float] = IMAGENET_MEAN
    segmentation_std: tuple[float, float, float] = IMAGENET_STD

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
        if not (isinstance(self.time_scale, int | float) and 0 < self.time_scale <= 1000):
            raise ValueError(f"time_scale must be a number in (0, 1000], not {self.time_scale!r}")
        for name in (
            "min_timeout",
            "callback_timeout",
            "callback_retry_seconds",
            "callback_backoff_base",
            "callback_backoff_max",
            "fetch_timeout",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, not {value!r}")
        if self.rate_limit_requests is not None and self.rate_limit_requests < 1:
            raise ValueError("rate_limit_requests must be at least 1 (or None)")
        if self.rate_limit_interval_ms < 1:
            raise ValueError("rate_limit_interval_ms must be positive")
        if self.segmentation_model is not None:
            self.segmentation_model = os.fspath(self.segmentation_model) or None
        size = self.segmentation_input_size
        if isinstance(size, bool) or not isinstance(size, int):
            raise ValueError(f"segmentation_input_size must be an integer, not {size!r}")
        if not 1 <= size <= MAX_SEGMENTATION_INPUT_SIZE:
            raise ValueError(
                f"segmentation_input_size must be 1..{MAX_SEGMENTATION_INPUT_SIZE}, not {size}"
            )
        self.segmentation_mean = _triple("segmentation_mean", self.segmentation_mean)
        self.segmentation_std = _triple("segmentation_std", self.segmentation_std)
        if min(self.segmentation_std) <= 0:
            raise ValueError(f"segmentation_std must be positive, not {self.segmentation_std}")

    def wall(self, seconds: float) -> float:
        """Wall-clock seconds for a duration in ImageKit seconds."""
        return seconds * self.time_scale

    def wall_timeout(self, seconds: float) -> float:
        """A scaled network timeout, never below ``min_timeout``."""
        return max(self.wall(seconds), self.min_timeout)

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
    "IMAGEKIT_CALLBACK_RETRY_SECONDS",
    "IMAGEKIT_CALLBACK_TIMEOUT",
    "IMAGEKIT_FETCH_TIMEOUT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_SEGMENTATION_INPUT_SIZE",
    "MAX_VERSIONS",
    "REMOVE_BG_UNITS",
    "EmulatorConfig",
    "SegmentationModelError",
    "display_host",
]
