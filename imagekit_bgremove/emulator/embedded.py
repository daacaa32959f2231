"""The emulator the Django app starts for itself when no ImageKit account is configured."""

from __future__ import annotations

import http.client
import json
import logging
import threading
from typing import Any
from urllib.parse import urlsplit

from .config import EmulatorConfig
from .server import Emulator

logger = logging.getLogger("imagekit_bgremove.emulator")

HEALTH_PATH = "/_emulator/health"

_lock = threading.Lock()
_embedded: Emulator | None = None


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"the emulator URL must be http://HOST:PORT, not {url!r}")
    return parts.hostname, parts.port or 80


def is_emulator(url: str, timeout: float = 1.0) -> bool:
    """Whether an emulator answers ``GET /_emulator/health`` at ``url``."""
    host, port = _address(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", HEALTH_PATH)
        response = conn.getresponse()
        body = response.read(65536)
        if response.status != 200:
            return False
        return json.loads(body).get("emulator") is True
    except (OSError, http.client.HTTPException, ValueError, AttributeError):
        return False
    finally:
        conn.close()


def embedded_emulator() -> Emulator | None:
    """The emulator this process started, if any."""
    return _embedded


def ensure_emulator(url: str, **overrides: Any) -> None:
    """Make sure an emulator answers at ``url``: use the one already there, or start one in this
    process (once, with the default credentials, on daemon threads). ``overrides`` are
    ``EmulatorConfig`` fields for the one started here (``data_dir=...`` for instance).

    Raises RuntimeError when something else holds the port.
    """
    global _embedded
    host, port = _address(url)
    if _embedded is not None and _embedded.running and _embedded.port == port:
        return
    if is_emulator(url):
        return
    with _lock:
        if _embedded is not None and _embedded.running and _embedded.port == port:
            return  # another thread of this process just started it
        settings = {**overrides, "host": host, "port": port, "daemon_threads": True}
        emulator = Emulator(EmulatorConfig.from_mapping(settings))
        try:
            emulator.start()
        except OSError as exc:
            # Another process may have won the race for the port; fine if it is an emulator.
            if is_emulator(url, timeout=2.0):
                return
            raise RuntimeError(
                f"cannot start the ImageKit emulator on {host}:{port}: {exc}. Something else is "
                f"listening there; set IMAGEKIT_BGREMOVE['EMULATOR_URL'] to a free port or "
                f"configure real ImageKit credentials."
            ) from exc
        _embedded = emulator
        logger.info("started the embedded ImageKit emulator at %s", emulator.url)


__all__ = ["embedded_emulator", "ensure_emulator", "is_emulator"]
