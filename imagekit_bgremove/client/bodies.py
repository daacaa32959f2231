"""Request bodies for ImageKit: streamed multipart uploads and the form values' encodings."""

from __future__ import annotations

import io
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..exceptions import (
    ImageKitError,
)
from .constants import CHUNK_SIZE, FileInput

# ---------------------------------------------------------------------------------------------
# Streaming multipart bodies


class _UploadSource:
    """The file of an upload, readable again from its start for every attempt.

    bytes are used in place; a path is opened once; a seekable file object is read from where it
    stands now; anything else is first spooled to an anonymous temporary file on disk."""

    def __init__(self, file: FileInput):
        self._data: memoryview | None = None
        self._stream: Any = None
        self._owned: Any = None
        self._start = 0
        if isinstance(file, bytes | bytearray | memoryview):
            self._data = memoryview(file).cast("B")
            self.size = self._data.nbytes
        elif isinstance(file, str | os.PathLike):
            self._owned = self._stream = open(file, "rb")  # noqa: SIM115 - closed in close()
            self.size = os.fstat(self._stream.fileno()).st_size
        elif hasattr(file, "read"):
            if isinstance(file, io.TextIOBase):
                raise TypeError("the file must be opened in binary mode ('rb'), not text mode")
            if _seekable(file):
                self._stream = file
                self._start = file.tell()
                file.seek(0, os.SEEK_END)
                self.size = max(0, file.tell() - self._start)
                file.seek(self._start)
            else:
                # Not seekable (a pipe, a network stream): keep a copy on disk for retries.
                self._owned = self._stream = tempfile.TemporaryFile()  # noqa: SIM115
                self.size = 0
                try:
                    while True:
                        chunk = file.read(CHUNK_SIZE)
                        if not chunk:
                            break
                        self._stream.write(_as_bytes(chunk))
                        self.size += len(chunk)
                    self._stream.seek(0)
                except BaseException:
                    self.close()
                    raise
        else:
            raise TypeError(
                f"file must be bytes, a path or a binary file object, not {type(file).__name__}"
            )

    def rewind(self) -> Callable[[int], bytes]:
        """Start again from the beginning; returns a ``read(n)`` for this attempt."""
        if self._data is not None:
            data = self._data
            position = 0

            def read_bytes(n: int) -> bytes:
                nonlocal position
                chunk = data[position : position + n].tobytes()
                position += len(chunk)
                return chunk

            return read_bytes
        self._stream.seek(self._start)
        stream = self._stream

        def read_stream(n: int) -> bytes:
            return _as_bytes(stream.read(n))

        return read_stream

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None


def _seekable(file: Any) -> bool:
    try:
        seekable = getattr(file, "seekable", None)
        if seekable is not None and not seekable():
            return False
        file.tell()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _as_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, str):
        raise TypeError("the file must be opened in binary mode ('rb'), not text mode")
    return bytes(chunk) if not isinstance(chunk, bytes) else chunk


class _MultipartStream:
    """A multipart/form-data body produced on demand: text parts from memory, the file part read
    in chunks. ``len()`` is the exact body size, so requests sends a Content-Length."""

    def __init__(self, preamble: bytes, source: _UploadSource, epilogue: bytes):
        self._parts: list[bytes | tuple[Callable[[int], bytes], int]] = [
            preamble,
            (source.rewind(), source.size),
            epilogue,
        ]
        self._length = len(preamble) + source.size + len(epilogue)
        self._index = 0
        self._offset = 0  # within the current part

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(CHUNK_SIZE), b""))
        while self._index < len(self._parts):
            part = self._parts[self._index]
            if isinstance(part, bytes):
                chunk = part[self._offset : self._offset + size]
            else:
                read, total = part
                remaining = total - self._offset
                chunk = read(min(size, remaining)) if remaining > 0 else b""
                if remaining > 0 and not chunk:
                    raise ImageKitError(
                        f"the file ended after {self._offset} of its {total} bytes while "
                        "uploading; was it changed meanwhile?",
                        retryable=False,
                    )
            if chunk:
                self._offset += len(chunk)
                return chunk
            self._index += 1
            self._offset = 0
        return b""

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.read(CHUNK_SIZE), b"")


def _quote_header_value(value: str) -> str:
    """Escape a form-data name or filename as browsers do (WHATWG HTML): ", CR and LF."""
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _multipart_factory(
    fields: Sequence[tuple[str, str]], source: _UploadSource, file_name: str, content_type: str
) -> Callable[[], tuple[_MultipartStream, dict[str, str]]]:
    """A function returning a fresh body (and its headers) for each attempt."""
    boundary = f"imagekit-bgremove-{uuid.uuid4().hex}"
    dash = f"--{boundary}\r\n".encode()
    pieces = []
    for name, value in fields:
        pieces.append(dash)
        pieces.append(
            f'Content-Disposition: form-data; name="{_quote_header_value(name)}"\r\n\r\n'.encode()
        )
        pieces.append(value.encode("utf-8"))
        pieces.append(b"\r\n")
    pieces.append(dash)
    pieces.append(
        (
            'Content-Disposition: form-data; name="file"; '
            f'filename="{_quote_header_value(file_name)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
    )
    preamble = b"".join(pieces)
    epilogue = f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def make() -> tuple[_MultipartStream, dict[str, str]]:
        return _MultipartStream(preamble, source, epilogue), dict(headers)

    return make


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _extensions(extensions: Any) -> list[Any]:
    """Extension items as dicts; RemoveBgOptions (anything with ``to_extension``) is converted."""
    if isinstance(extensions, Mapping) or hasattr(extensions, "to_extension"):
        extensions = [extensions]
    return [item.to_extension() if hasattr(item, "to_extension") else item for item in extensions]


def _tags(tags: Iterable[str] | str) -> list[str]:
    if isinstance(tags, str):
        tags = tags.split(",")
    cleaned = [str(tag).strip() for tag in tags]
    for tag in cleaned:
        if "," in tag:
            raise ValueError(f"tag {tag!r} contains a comma; ImageKit tags cannot")
    return [tag for tag in cleaned if tag]


def _comma_list(values: Iterable[str] | str) -> str:
    return values if isinstance(values, str) else ",".join(str(v) for v in values)


def _folder_path(folder: str) -> str:
    """A folder as ImageKit writes it in ``filePath``: ``/`` or ``/a/b`` (no trailing slash)."""
    if not isinstance(folder, str):
        raise TypeError(f"folder must be a string, not {type(folder).__name__}")
    return "/" + "/".join(segment for segment in folder.split("/") if segment)
