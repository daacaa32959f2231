"""The processes of one soak run: started, killed (SIGKILL, as a crash or the OOM killer would)
and started again under the same name, each in its own process group, logging to its own file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"


class SoakError(RuntimeError):
    """The soak could not run (no PostgreSQL, a process did not start, ...)."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM if this process dies without cleaning up (SIGKILL)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Children:
    """Named child processes. ``kill`` sends SIGKILL to the whole process group (a db_worker,
    gunicorn's master and its workers, an rqworker and its work horse and scheduler);
    ``restart`` starts the same command again. Every generation is remembered, so the end of
    the run can prove that none is left."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.argv: dict[str, list[str]] = {}
        self.env: dict[str, dict[str, str]] = {}
        self.generation: dict[str, int] = {}
        self.all_pids: dict[str, int] = {}
        self._logs: list[Any] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        proc = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches this process only; it stops the children
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.procs[name] = proc
        self.argv[name] = list(argv)
        self.env[name] = dict(env)
        generation = self.generation.get(name, 0) + 1
        self.generation[name] = generation
        self.all_pids[f"{name}#{generation}"] = proc.pid
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL ``name``'s process group and reap it."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def restart(self, name: str, argv: Sequence[str] | None = None) -> subprocess.Popen:
        return self.start(name, argv or self.argv[name], self.env[name])

    def check_alive(self, names: Sequence[str] | None = None) -> None:
        for name, proc in self.procs.items():
            if names is not None and name not in names:
                continue
            if proc.poll() is not None:
                raise SoakError(
                    f"{name} (pid {proc.pid}) exited early with status {proc.returncode}"
                )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to each child's process group, SIGKILL to what is left after ``timeout``."""
        running = {name: p for name, p in self.procs.items() if p.poll() is None}
        for proc in running.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group: forked children too
            if proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        for log in self._logs:
            with contextlib.suppress(OSError):
                log.close()

    def tails(self, lines: int = 25) -> str:
        out = []
        for path in sorted(self.log_dir.glob("*.log")):
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            out.append(f"----- {path.name} (last {min(lines, len(text))} of {len(text)} lines)")
            out.extend(text[-lines:])
        return "\n".join(out)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def http_json(method: str, url: str, body: Any = None, timeout: float = 30.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def http_json_retrying(method: str, url: str, *, timeout: float = 60.0, wait: float = 60.0) -> Any:
    """``http_json``, retried while the server is down (the emulator being restarted)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return http_json(method, url, timeout=timeout)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def wait_until_answers(url: str, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SoakError(f"{what} exited with status {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise SoakError(f"{what} did not answer {url} within {timeout:g} s")
