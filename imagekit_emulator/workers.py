"""A fixed pool of worker threads (remove-bg jobs, callback sends)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("imagekit_emulator")


class WorkerPool:
    """A fixed number of threads running queued callables (daemon or not, unlike
    ThreadPoolExecutor, whose workers always hold up interpreter exit)."""

    _STOP = object()

    def __init__(
        self, name: str, size: int, *, daemon: bool, on_discard: Callable[[Any], None] | None = None
    ):
        self._queue: queue.Queue[Any] = queue.Queue()
        self._on_discard = on_discard
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=daemon)
            for i in range(size)
        ]
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._queue.put((fn, args))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # a task must never kill its worker
                logger.exception("emulator task %r failed", fn)

    def stop(self, timeout: float | None = None) -> None:
        """Discard what has not started, let running tasks finish, join the threads."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not self._STOP and self._on_discard is not None:
                self._on_discard(item)
        if not self._started:
            return
        for _ in self._threads:
            self._queue.put(self._STOP)
        for thread in self._threads:
            thread.join(timeout)
