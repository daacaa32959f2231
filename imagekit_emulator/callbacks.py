"""Webhook delivery: POST the extension result to the request's ``webhookUrl``.

Like ImageKit, only an HTTP 200 within ``callback_timeout`` (30 s) counts as delivered;
anything else (other statuses, errors, timeouts) is retried with exponential backoff until
``callback_retry_seconds`` (24 h) have passed since the first attempt. Those durations are
ImageKit seconds, turned into wall-clock ones by ``time_scale``. Bodies are signed with both
of ImageKit's schemes (``signing``). The webhook faults (delay, duplicates,
reordering, failing first attempts, loss, retries with the original signature) are applied
here.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .config import EmulatorConfig
from .faults import FaultInjector
from .signing import signature_headers
from .store import Activity, Callback, Job, Store, iso, now_ms
from .version import USER_AGENT
from .workers import WorkerPool

logger = logging.getLogger("imagekit_emulator")

ACTIVITY = "callbacks"
_MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(order=True)
class _Entry:
    due: float
    seq: int
    callback_id: str = ""
    copy: int = 1
    first: bool = False  # the first attempt of the first copy (the one reordering may hold)


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        response.read(_MAX_RESPONSE_BYTES)
        return response.status
    finally:
        conn.close()


class CallbackDispatcher:
    def __init__(
        self,
        *,
        store: Store,
        config: EmulatorConfig,
        injector: FaultInjector,
        activity: Activity,
        secrets_: Sequence[str],
    ):
        self._store = store
        self._config = config
        self._injector = injector
        self._activity = activity
        self._secrets = list(secrets_)
        self._cond = threading.Condition()
        self._heap: list[_Entry] = []
        self._held: list[tuple[float, _Entry]] = []
        self._seq = itertools.count()
        self._attempt_seq = itertools.count(1)
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="ik-emulator-callback-scheduler", daemon=config.daemon_threads
        )
        self._senders = WorkerPool(
            "ik-emulator-callback",
            4,
            daemon=config.daemon_threads,
            on_discard=lambda _item: self._activity.done(ACTIVITY),
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._senders.start()
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            dropped = len(self._heap) + len(self._held)
            self._heap.clear()
            self._held.clear()
            self._cond.notify_all()
        if dropped:
            self._activity.done(ACTIVITY, dropped)
        if self._thread.is_alive():
            self._thread.join()
        self._senders.stop()

    def clear(self) -> None:
        """Forget every scheduled delivery (``POST /_emulator/reset``)."""
        with self._cond:
            dropped = len(self._heap) + len(self._held)
            self._heap.clear()
            self._held.clear()
            self._cond.notify_all()
        if dropped:
            self._activity.done(ACTIVITY, dropped)

    def resume(self) -> int:
        """Reschedule deliveries left unfinished by a previous run (persistent mode)."""
        with self._store.lock:
            pending = [c for c in self._store.callbacks.values() if c.status == "scheduled"]
        for callback in pending:
            self._schedule(callback.id, 0.0, copy=callback.deliveries + 1, first=False)
        return len(pending)

    # ------------------------------------------------------------------ submitting

    def submit(self, job: Job, payload: dict[str, Any]) -> Callback | None:
        """Record and schedule the callback for ``job`` (no-op without a webhookUrl)."""
        if not job.webhook_url:
            return None
        faults = self._injector.faults
        copies = 1
        if self._injector.chance(faults.duplicate_rate):
            copies += self._injector.randint(1, faults.duplicate_max)
        lost = self._injector.chance(faults.lost_rate)
        callback = Callback(
            id=f"cb_{secrets.token_hex(8)}",
            job_id=job.id,
            file_id=job.file_id,
            service=job.service,
            status_reported=str(payload.get("status")),
            url=job.webhook_url,
            body=json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
            webhook_id=f"msg_{secrets.token_hex(16)}",
            created_at=now_ms(),
            status="lost" if lost else "scheduled",
            copies=copies,
            fail_first_attempts=faults.fail_first_attempts,
            unsigned=faults.unsigned_callbacks or not self._config.sign_callbacks,
            keep_signature=faults.retry_original_signature,
        )
        self._store.add_callback(callback)
        if lost:
            logger.info("callback %s for job %s is lost (fault)", callback.id, job.id)
            return callback
        delay = self._injector.uniform(*faults.delay_seconds)
        self._schedule(callback.id, delay, copy=1, first=True)
        return callback

    def _schedule(self, callback_id: str, delay: float, *, copy: int, first: bool) -> None:
        self._activity.add(ACTIVITY)
        with self._cond:
            if self._stopping:
                self._activity.done(ACTIVITY)
                return
            entry = _Entry(
                time.monotonic() + max(0.0, delay), next(self._seq), callback_id, copy, first
            )
            heapq.heappush(self._heap, entry)
            self._cond.notify_all()

    # ------------------------------------------------------------------ scheduler

    def _run(self) -> None:
        while True:
            with self._cond:
                ready: list[_Entry] = []
                release: list[_Entry] = []
                while not self._stopping:
                    now = time.monotonic()
                    while self._heap and self._heap[0].due <= now:
                        ready.append(heapq.heappop(self._heap))
                    release = self._due_release(now)
                    if ready or release:
                        break
                    wake = [self._heap[0].due] if self._heap else []
                    if self._held:
                        wake.append(self._held[0][0] + self._injector.faults.reorder_hold_seconds)
                    self._cond.wait(max(0.001, min(wake) - now) if wake else None)
                if self._stopping:
                    return
                if self._injector.faults.reorder:
                    held_now = [e for e in ready if e.first]
                    ready = [e for e in ready if not e.first]
                    self._held.extend((time.monotonic(), e) for e in held_now)
                if not release:
                    release = self._due_release(time.monotonic())
            for entry in ready:
                self._senders.submit(self._attempt, entry)
            if release:
                self._senders.submit(self._attempt_all, release)

    def _due_release(self, now: float) -> list[_Entry]:
        """Held callbacks to send now, newest first (callers hold ``_cond``)."""
        if not self._held:
            return []
        faults = self._injector.faults
        full = len(self._held) >= faults.reorder_window
        waited = now - self._held[0][0] >= faults.reorder_hold_seconds
        if not (full or waited or not faults.reorder):
            return []
        released = [entry for _, entry in reversed(self._held)]
        self._held.clear()
        return released

    def _attempt_all(self, entries: list[_Entry]) -> None:
        for entry in entries:
            try:
                self._attempt(entry)
            except Exception:
                logger.exception("callback attempt failed unexpectedly")

    # ------------------------------------------------------------------ one attempt

    def _attempt(self, entry: _Entry) -> None:
        try:
            self._attempt_inner(entry)
        finally:
            self._activity.done(ACTIVITY)

    def _attempt_inner(self, entry: _Entry) -> None:
        callback = self._store.callbacks.get(entry.callback_id)
        if callback is None or callback.status != "scheduled":
            return  # reset meanwhile
        body = callback.body.encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if not callback.unsigned and self._secrets:
            if callback.keep_signature and callback.signature_headers:
                headers.update(callback.signature_headers)  # the first attempt's, as it was
            else:
                signed = signature_headers(body, self._secrets, webhook_id=callback.webhook_id)
                headers.update(signed)
                if callback.keep_signature:
                    self._store.update_callback(callback.id, signature_headers=signed)
        number = len(callback.attempts) + 1
        sent_ms = now_ms()
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        timeout = self._config.wall_timeout(self._config.callback_timeout)
        try:
            status = _post(callback.url, body, headers, timeout)
        except TimeoutError:
            error = f"timed out after {timeout:g} s"
        except (OSError, http.client.HTTPException, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        simulated = number <= callback.fail_first_attempts
        delivered = status == 200 and not simulated
        attempt = {
            "attempt": number,
            "copy": entry.copy,
            "seq": next(self._attempt_seq),
            "sentAt": iso(sent_ms),
            "sentAtMs": sent_ms,
            "durationMs": int((time.monotonic() - started) * 1000),
            "status": status,
            "error": error,
            "delivered": delivered,
            "simulatedFailure": simulated,
            "signed": "x-ik-signature" in headers,
            "signatureTimestamp": headers.get("webhook-timestamp"),
        }
        first_attempt_at = callback.first_attempt_at or sent_ms
        if delivered:
            deliveries = callback.deliveries + 1
            done = deliveries >= callback.copies
            self._store.update_callback(
                callback.id,
                attempt,
                deliveries=deliveries,
                first_attempt_at=first_attempt_at,
                status="delivered" if done else "scheduled",
            )
            logger.info(
                "callback %s delivered to %s (copy %d)", callback.id, callback.url, entry.copy
            )
            if not done:  # a duplicate delivery of the very same callback
                self._schedule(
                    callback.id, self._injector.uniform(0.01, 0.2), copy=entry.copy + 1, first=False
                )
            return
        failures = (
            sum(1 for a in callback.attempts if a["copy"] == entry.copy and not a["delivered"]) + 1
        )
        config = self._config
        backoff = config.wall(
            min(config.callback_backoff_base * 2 ** (failures - 1), config.callback_backoff_max)
        )
        elapsed = (now_ms() - first_attempt_at) / 1000
        give_up = elapsed + backoff > config.wall(config.callback_retry_seconds)
        self._store.update_callback(
            callback.id,
            attempt,
            first_attempt_at=first_attempt_at,
            status="gave_up" if give_up else "scheduled",
        )
        logger.info(
            "callback %s attempt %d to %s failed (%s)%s",
            callback.id,
            number,
            callback.url,
            error or f"HTTP {status}" + (" simulated" if simulated else ""),
            "; giving up" if give_up else f"; retry in {backoff:g} s",
        )
        if not give_up:
            self._schedule(callback.id, backoff, copy=entry.copy, first=False)
