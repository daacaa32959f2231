"""The emulator's version string, read from the installed distribution."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("imagekit-emulator")
except metadata.PackageNotFoundError:  # pragma: no cover - run from a bare checkout
    VERSION = "0+unknown"

SERVER_NAME = f"ImageKitEmulator/{VERSION}"
USER_AGENT = f"ImageKit-Emulator/{VERSION}"
