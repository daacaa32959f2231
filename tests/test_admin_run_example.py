"""``./dev run`` (scripts/run_example.sh): free ports when the defaults are taken, and nothing
left running after Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "run_example.sh"


def busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("IMAGEKIT_", "DJANGO_")) and key not in ("PORT", "EMULATOR_PORT")
    }
    env.pop("DATABASE_URL", None)
    return {**env, "PY": sys.executable, "VAR_DIR": str(tmp_path / "var"), **extra}


def test_an_asked_port_that_is_taken_is_an_error(tmp_path):
    with busy_port() as sock:
        port = sock.getsockname()[1]
        result = subprocess.run(
            ["bash", str(SCRIPT), "--port", str(port)],
            env=script_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert f"port {port} for the web server is not free" in result.stderr


@pytest.mark.slow
def test_busy_defaults_move_to_free_ports_and_ctrl_c_stops_every_process(tmp_path):
    with busy_port() as web, busy_port() as emu:
        web_port, emu_port = web.getsockname()[1], emu.getsockname()[1]
        process = subprocess.Popen(
            ["bash", str(SCRIPT)],
            env=script_env(
                tmp_path,
                DEFAULT_PORT=str(web_port),
                DEFAULT_EMULATOR_PORT=str(emu_port),
                RECONCILE_EVERY="1",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group, as a terminal would give it
        )
        output = []
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                line = process.stdout.readline()
                if not line:
                    break
                output.append(line)
                if "Ctrl-C stops everything" in line:
                    break
            text = "".join(output)
            assert "Ctrl-C stops everything" in text, text
            assert f"Port {web_port} is taken: the web server uses port" in text
            assert f"Port {emu_port} is taken: the ImageKit emulator uses port" in text
            check_the_banner(text)
            time.sleep(2.5)  # the reconcile loop has slept and run at least once
        finally:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                raise
    # Nothing of its process group is left running: no server, worker, emulator or sleep.
    assert wait_until(lambda: not group_members(process.pid)), group_members(process.pid)


def check_the_banner(text: str) -> None:
    """Every URL a newcomer wants is printed and answers; the login printed works."""
    urls = {
        name: re.search(rf"{name} +(http://\S+)", text).group(1)
        for name in (
            "admin login",
            r"catalogue \(admin\)",
            "removal jobs",
            "demo page",
            "products API",
            "jobs API",
            "API docs",
        )
    }
    urls["Redoc"] = re.search(r"(http://\S+/api/redoc/)", text).group(1)
    password = re.search(r"user admin, password (\S+)", text).group(1)
    base = urls["admin login"].removesuffix("/admin/login/")
    token_request = urllib.request.Request(
        f"{base}/api/token/",
        data=json.dumps({"username": "admin", "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(token_request, timeout=10) as response:
        token = json.load(response)["token"]
    for name, url in urls.items():
        request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:  # a redirect to log in
            assert response.status == 200, (name, url)


def group_members(pgid: int) -> list[str]:
    """The live (not zombie) processes of a process group, with their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            found.append(f"{entry.name} {state} {cmdline.strip()}")
    return found


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
