"""Fault injection: API errors, rate limits, slowness, dropped connections, answers lost
after the work was done, failing extensions, the service's legitimate variations (a result as
a new file, a synchronous success) and misbehaving webhook delivery.

Every knob has a safe default (no fault). The same names are used by the ``--`` flags, by
``GET/PUT /_emulator/faults`` and by ``Emulator.faults``. Random choices come from one
``random.Random`` seeded with ``--seed``, so a run is repeatable.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

#: Endpoint names usable in ``Faults.endpoints``.
API_ENDPOINTS = (
    "upload",
    "list_files",
    "get_details",
    "update_details",
    "delete_file",
    "list_versions",
    "get_version",
    "restore_version",
)

_RATES = (
    "error_rate_5xx",
    "rate_limit_rate",
    "slow_rate",
    "drop_rate",
    "extension_failure_rate",
    "duplicate_rate",
    "lost_rate",
    "answer_drop_rate",
    "answer_error_rate",
    "answer_late_rate",
    "upload_too_many_requests_rate",
    "result_as_new_file_rate",
    "sync_success_rate",
)


class FaultsError(ValueError):
    """Invalid fault settings; ``errors`` maps each knob to its message."""

    def __init__(self, errors: Mapping[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.errors.items()))


@dataclass(frozen=True)
class Faults:
    # ---- API endpoints (upload, details, versions, restore; never /ik/ or /_emulator/)
    #: Probability of answering a 5xx (status drawn from ``error_statuses``).
    error_rate_5xx: float = 0.0
    error_statuses: tuple[int, ...] = (500,)
    #: Probability of a 429 with X-RateLimit-Limit/-Reset/-Interval headers.
    rate_limit_rate: float = 0.0
    rate_limit_reset_ms: int = 1000
    rate_limit_limit: int = 100
    rate_limit_interval_ms: int = 1000
    #: The real upload endpoint is not rate limited; set true to rate limit it anyway.
    rate_limit_upload: bool = False
    #: Probability of sleeping ``slow_seconds`` before handling a request.
    slow_rate: float = 0.0
    slow_seconds: float = 2.0
    #: Probability of closing the connection without any response.
    drop_rate: float = 0.0
    #: Only these endpoints get API faults (see API_ENDPOINTS); None = all of them.
    endpoints: tuple[str, ...] | None = None
    #: Stop injecting API faults (5xx, 429, drop, the answer_* faults, the upload's
    #: too-many-requests 400) after this many; None = no limit. Lets a test say "fail twice,
    #: then work".
    max_api_faults: int | None = None
    # ---- "work done, answer lost": applied AFTER a successful request did its work (the
    # upload stored, the PATCH applied and its extension started), so a client that retries
    # blindly makes a second file or pays a second run.
    #: Probability of closing the connection instead of sending the answer.
    answer_drop_rate: float = 0.0
    #: Probability of answering a 5xx (from ``error_statuses``) instead of the real answer.
    answer_error_rate: float = 0.0
    #: Probability of holding the answer ``answer_late_seconds`` (wall clock) before sending
    #: it: past the client's timeout, the client sees a timeout.
    answer_late_rate: float = 0.0
    answer_late_seconds: float = 5.0
    #: Probability that an upload is refused, before anything is stored, with the spec's 400
    #: "You have sent too many requests to update the file recently. Please try again later."
    #: (a rate limit in disguise: retrying later works).
    upload_too_many_requests_rate: float = 0.0
    # ---- extensions
    #: Probability that a remove-bg job fails (FAILURE callback, reason "simulated_failure").
    extension_failure_rate: float = 0.0
    #: Probability that the remove-bg result becomes a NEW file (another fileId, in the same
    #: folder) instead of a new version of the same file (the contract's "same fileId" is
    #: UNCONFIRMED).
    result_as_new_file_rate: float = 0.0
    #: Probability that remove-bg is done before the API answers: ``extensionStatus``
    #: ``{"remove-bg": "success"}`` (in the spec's enum), the response already describing the
    #: result, and no callback.
    sync_success_rate: float = 0.0
    # ---- webhook callbacks
    #: Probability that a callback is delivered more than once (1..duplicate_max extra copies).
    duplicate_rate: float = 0.0
    duplicate_max: int = 1
    #: Each callback waits uniform(min, max) seconds before its first attempt.
    delay_seconds: tuple[float, float] = (0.0, 0.0)
    #: Hold callbacks and release them newest first, once ``reorder_window`` are held or the
    #: oldest has waited ``reorder_hold_seconds``.
    reorder: bool = False
    reorder_window: int = 2
    reorder_hold_seconds: float = 2.0
    #: The first N attempts of every callback are really sent, then counted as failed whatever
    #: the answer (so the receiver sees the retries as duplicates).
    fail_first_attempts: int = 0
    #: Probability that a callback is never sent at all.
    lost_rate: float = 0.0
    #: Send callbacks without signature headers.
    unsigned_callbacks: bool = False
    #: Retries and duplicate copies of a callback carry the very headers of its first attempt
    #: (the original signature timestamp) instead of being signed afresh.
    retry_original_signature: bool = False

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, base: Faults | None = None) -> Faults:
        """Validate ``data``; keys not given keep the value from ``base`` (or the default)."""
        if data is None:
            return base or cls()
        if not isinstance(data, Mapping):
            raise FaultsError({"__all__": "faults must be a JSON object"})
        errors: dict[str, str] = {}
        values = asdict(base or cls())
        for key, raw in data.items():
            if isinstance(key, str) and key.startswith("_"):
                continue  # read-only extras of GET /_emulator/faults, sent back as they came
            if key not in values:
                errors[key] = "unknown fault knob"
                continue
            try:
                values[key] = _coerce(key, raw)
            except (TypeError, ValueError) as exc:
                errors[key] = str(exc)
        if not errors and values["delay_seconds"][0] > values["delay_seconds"][1]:
            errors["delay_seconds"] = "min must not exceed max"
        if errors:
            raise FaultsError(errors)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_statuses"] = list(self.error_statuses)
        data["delay_seconds"] = list(self.delay_seconds)
        data["endpoints"] = None if self.endpoints is None else list(self.endpoints)
        return data

    def updated(self, **changes: Any) -> Faults:
        return self.from_dict(changes, base=self) if changes else replace(self)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"{what} expected, not {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{what} expected, not {value!r}") from None


def _integer(value: Any, minimum: int = 0) -> int:
    number = _number(value, "an integer")
    if number != int(number) or number < minimum:
        raise ValueError(f"an integer >= {minimum} expected, not {value!r}")
    return int(number)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off", ""):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"true or false expected, not {value!r}")


def _coerce(key: str, raw: Any) -> Any:
    if key in _RATES:
        rate = _number(raw, "a probability")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"a probability between 0 and 1 expected, not {raw!r}")
        return rate
    if key in ("slow_seconds", "reorder_hold_seconds", "answer_late_seconds"):
        seconds = _number(raw, "a number of seconds")
        if seconds < 0:
            raise ValueError("must not be negative")
        return seconds
    if key in ("rate_limit_reset_ms", "rate_limit_interval_ms", "fail_first_attempts"):
        return _integer(raw)
    if key in ("rate_limit_limit", "duplicate_max", "reorder_window"):
        return _integer(raw, 1)
    if key == "max_api_faults":
        return None if raw is None else _integer(raw)
    if key in ("rate_limit_upload", "reorder", "unsigned_callbacks", "retry_original_signature"):
        return _boolean(raw)
    if key == "error_statuses":
        items = [raw] if isinstance(raw, int | str) else raw
        if not isinstance(items, list | tuple) or not items:
            raise ValueError("a non-empty list of 5xx statuses expected")
        statuses = tuple(_integer(s) for s in items)
        if any(not 500 <= s <= 599 for s in statuses):
            raise ValueError("statuses must be between 500 and 599")
        return statuses
    if key == "delay_seconds":
        if isinstance(raw, str):
            raw = [p for p in raw.replace(",", " ").split() if p]
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            raw = [raw, raw]
        if not isinstance(raw, list | tuple) or len(raw) != 2:
            raise ValueError("[min, max] seconds expected")
        low, high = (_number(v, "a number of seconds") for v in raw)
        if low < 0 or high < 0:
            raise ValueError("must not be negative")
        return (low, high)
    if key == "endpoints":
        if raw is None:
            return None
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ValueError("a list of endpoint names expected")
        unknown = sorted(set(items) - set(API_ENDPOINTS))
        if unknown:
            raise ValueError(f"unknown endpoint(s) {unknown}; known: {list(API_ENDPOINTS)}")
        return tuple(items)
    raise ValueError("unknown fault knob")  # pragma: no cover - guarded by from_dict


@dataclass(frozen=True)
class ApiFault:
    #: Before the work: "drop", "error", "rate_limit", "too_many_requests".
    #: After it: "answer_drop", "answer_error", "answer_late".
    kind: str
    status: int = 0
    seconds: float = 0.0


class FaultInjector:
    """The current ``Faults`` plus the seeded random source; thread-safe."""

    def __init__(self, faults: Faults | Mapping[str, Any] | None = None, seed: int | None = None):
        self._lock = threading.Lock()
        self._seed = seed
        self._random = random.Random(seed)
        self._initial = faults if isinstance(faults, Faults) else Faults.from_dict(faults)
        self._faults = self._initial
        self._api_faults_fired = 0

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def set(self, faults: Faults | Mapping[str, Any] | None) -> Faults:
        """Replace every knob (missing keys take their defaults)."""
        new = faults if isinstance(faults, Faults) else Faults.from_dict(faults)
        with self._lock:
            self._faults = new
            self._api_faults_fired = 0
        return new

    def update(self, changes: Mapping[str, Any]) -> Faults:
        """Change only the given knobs."""
        with self._lock:
            self._faults = Faults.from_dict(changes, base=self._faults)
            self._api_faults_fired = 0
            return self._faults

    def reset(self) -> Faults:
        """Back to the faults the emulator started with, and a freshly seeded random source."""
        with self._lock:
            self._faults = self._initial
            self._random = random.Random(self._seed)
            self._api_faults_fired = 0
            return self._faults

    def chance(self, rate: float) -> bool:
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        with self._lock:
            return self._random.random() < rate

    def uniform(self, low: float, high: float) -> float:
        if high <= low:
            return low
        with self._lock:
            return self._random.uniform(low, high)

    def randint(self, low: int, high: int) -> int:
        if high <= low:
            return low
        with self._lock:
            return self._random.randint(low, high)

    def slow_seconds(self, endpoint: str) -> float:
        f = self.faults
        if f.endpoints is not None and endpoint not in f.endpoints:
            return 0.0
        return f.slow_seconds if self.chance(f.slow_rate) else 0.0

    def api_fault(self, endpoint: str) -> ApiFault | None:
        """Which fault (if any) to inject into this API request; drop, then 5xx, then 429."""
        f = self.faults
        if f.endpoints is not None and endpoint not in f.endpoints:
            return None
        fault: ApiFault | None = None
        if self.chance(f.drop_rate):
            fault = ApiFault("drop")
        elif self.chance(f.error_rate_5xx):
            status = f.error_statuses[self.randint(0, len(f.error_statuses) - 1)]
            fault = ApiFault("error", status)
        elif (endpoint != "upload" or f.rate_limit_upload) and self.chance(f.rate_limit_rate):
            fault = ApiFault("rate_limit", 429)
        elif endpoint == "upload" and self.chance(f.upload_too_many_requests_rate):
            fault = ApiFault("too_many_requests", 400)
        return self._spend(f, fault)

    def answer_fault(self, endpoint: str) -> ApiFault | None:
        """Which fault (if any) replaces the answer of a request that did its work."""
        f = self.faults
        if f.endpoints is not None and endpoint not in f.endpoints:
            return None
        fault: ApiFault | None = None
        if self.chance(f.answer_drop_rate):
            fault = ApiFault("answer_drop")
        elif self.chance(f.answer_error_rate):
            status = f.error_statuses[self.randint(0, len(f.error_statuses) - 1)]
            fault = ApiFault("answer_error", status)
        elif self.chance(f.answer_late_rate):
            fault = ApiFault("answer_late", 200, f.answer_late_seconds)
        return self._spend(f, fault)

    def _spend(self, f: Faults, fault: ApiFault | None) -> ApiFault | None:
        if fault is None:
            return None
        with self._lock:
            if f.max_api_faults is not None and self._api_faults_fired >= f.max_api_faults:
                return None
            self._api_faults_fired += 1
        return fault

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self._faults.to_dict(),
                "_api_faults_fired": self._api_faults_fired,
                "_seed": self._seed,
            }
