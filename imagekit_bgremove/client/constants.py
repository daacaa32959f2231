"""The client's fixed values."""

from __future__ import annotations

import os
from typing import Any, BinaryIO

import requests

from .. import __version__

UPLOAD_PATH = "/api/v1/files/upload"
FILES_PATH = "/v1/files"
USER_AGENT = f"imagekit-bgremove/{__version__} python-requests/{requests.__version__}"

CHUNK_SIZE = 64 * 1024
# How many redirects a download follows (each one checked against the allowed hosts).
MAX_REDIRECTS = 5
# How much of an error response body to read from a streamed download.
ERROR_BODY_LIMIT = 64 * 1024

FileInput = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO | Any
Timeout = float | tuple[float, float]
