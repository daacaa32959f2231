"""Recognising image files from their first bytes, without decoding them (no Pillow needed)."""

from __future__ import annotations

#: How many leading bytes ``sniff_image`` needs.
HEAD_BYTES = 16

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)

MIME_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "webp": "image/webp",
    "avif": "image/avif",
}

EXTENSIONS = {"jpeg": ".jpg", "tiff": ".tif"}


def sniff_image(head: bytes) -> str | None:
    """The image format of a file starting with ``head``, or None if it is not one we know."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:12] in (b"ftypavif", b"ftypavis", b"ftypheic", b"ftypmif1"):
        return "avif"
    return None


def extension(fmt: str) -> str:
    """The usual file extension of an image format from ``sniff_image``: ``.png``, ``.jpg``."""
    return EXTENSIONS.get(fmt, f".{fmt}")
