"""Crashes during the run: a random task worker SIGKILLed every few seconds and started again;
the web server (gunicorn's whole process group) SIGKILLed and started again, twice; the
emulator SIGKILLed and started again once, on the same port and ``--data-dir``, so ImageKit's
state survives while every request and callback in flight is cut."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .engines import Engine
from .procs import Children, SoakError, wait_until_answers


class Chaos(threading.Thread):
    def __init__(
        self,
        children: Children,
        engine: Engine,
        workers: list[str],
        *,
        rng: random.Random,
        kill_every: tuple[float, float],
        events: list[tuple[float, str]],
        web_probe: str,
        emulator_probe: str,
        started: float,
    ):
        super().__init__(name="soak-chaos", daemon=True)
        self.children = children
        self.engine = engine
        self.workers = workers
        self.rng = rng
        self.kill_every = kill_every
        #: (seconds after ``started``, "web" or "emulator"), in order
        self.events = sorted(events)
        self.web_probe = web_probe
        self.emulator_probe = emulator_probe
        self.started = started
        self.stop_event = threading.Event()
        #: set once the planned crashes are over: no more kills, but the thread stays alive,
        #: since the processes it restarted die with it (PR_SET_PDEATHSIG follows the thread)
        self.quiet = threading.Event()
        self.kills: Counter[str] = Counter()
        self.log: list[str] = []
        self.downtime: Counter[str] = Counter()
        self.errors: list[str] = []
        #: set while the web server is up (HTTP clients wait on it)
        self.web_up = threading.Event()
        self.web_up.set()
        self.lock = threading.Lock()

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:6.1f} s  {text}")

    def run(self) -> None:
        try:
            next_kill = time.monotonic() + self.rng.uniform(*self.kill_every)
            while not self.stop_event.wait(0.1):
                if self.quiet.is_set():
                    continue
                now = time.monotonic()
                if self.events and now - self.started >= self.events[0][0]:
                    _, what = self.events.pop(0)
                    self._restart(what)
                if now >= next_kill:
                    self._kill_worker()
                    next_kill = time.monotonic() + self.rng.uniform(*self.kill_every)
        except Exception as exc:  # reported as a violation
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _kill_worker(self) -> None:
        name = self.rng.choice(self.workers)
        number = int(name.rsplit("-", 1)[1])
        with self.lock:
            self.children.kill(name)
            self.engine.dead.add(self.engine.worker_id(number, self.children.generation[name]))
            self.kills["worker"] += 1
            generation = self.children.generation[name] + 1
            self.children.restart(name, self.engine.worker_argv(number, generation))
        self.note(f"SIGKILL {name}, started again")

    def _restart(self, what: str) -> None:
        probe = self.web_probe if what == "web" else self.emulator_probe
        began = time.monotonic()
        with self.lock:
            if what == "web":
                self.web_up.clear()
            self.children.kill(what)
            self.kills[what] += 1
            time.sleep(self.rng.uniform(0.5, 1.5))  # down for a moment
            proc = self.children.restart(what)
        try:
            wait_until_answers(probe, proc, what, timeout=90)
        except SoakError as exc:
            self.errors.append(str(exc))
        finally:
            self.web_up.set()
        self.downtime[what] += time.monotonic() - began
        self.note(f"SIGKILL {what}, started again; down {time.monotonic() - began:.1f} s")

    def pending_events(self) -> int:
        return len(self.events)

    def quiesce(self) -> None:
        """No more crashes (waits for one in progress)."""
        self.quiet.set()
        with self.lock:
            pass

    @property
    def active(self) -> bool:
        return self.is_alive() and not self.quiet.is_set()

    def stop(self) -> None:
        self.quiet.set()
        self.stop_event.set()
        self.join(120)

    def summary(self) -> dict[str, Any]:
        return {
            "kills": dict(self.kills),
            "downtime": {k: round(v, 1) for k, v in self.downtime.items()},
            "log": list(self.log),
            "errors": list(self.errors),
        }


def wait_web(chaos: Chaos | None) -> Callable[[float], bool]:
    def is_up(timeout: float) -> bool:
        return True if chaos is None else chaos.web_up.wait(timeout)

    return is_up
