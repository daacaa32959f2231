"""Which download URLs may be fetched (the SSRF defence), and ImageKit's ``tr=orig-true``."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import idna
import urllib3.exceptions
import urllib3.util

from ..exceptions import (
    DisallowedURLError,
)

# ---------------------------------------------------------------------------------------------
# Download URLs: which hosts may be fetched

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
# Characters no download URL may contain at all: whitespace, controls and backslashes are where
# URL parsers disagree (and so where allow-list checks get bypassed).
_BAD_URL_CHARACTER = re.compile(
    r"[\x00-\x20\x7f-\xa0\\\u1680\u2000-\u200f\u2028-\u202f\u205f\u3000\ufeff]"
)

AllowedHosts = frozenset[tuple[str, int | None]]


def _canonical_host(host: str) -> str:
    """A host name or IP literal in the form the connection will use: lower case, IDNA (UTS 46)
    for non-ASCII names as requests encodes them, no trailing dot, IPv6 compressed. ValueError
    when it is neither a host name nor an IP literal."""
    text = host.lower()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    if not text:
        raise ValueError("empty host")
    if ":" in text:
        if "%" in text:
            raise ValueError("IPv6 zone ids are not allowed")
        return ipaddress.IPv6Address(text).compressed
    if not text.isascii():
        try:
            text = idna.encode(text, uts46=True).decode("ascii").lower()
        except (UnicodeError, idna.IDNAError) as exc:
            raise ValueError("not a valid international host name") from exc
    if not _HOST_NAME.fullmatch(text):
        raise ValueError("not a valid host name")
    return text


def _display_host(host: str, port: int | None) -> str:
    name = f"[{host}]" if ":" in host else host
    return f"{name}:{port}" if port is not None else name


def _allowed_hosts(allowed_hosts: Collection[str]) -> AllowedHosts:
    """``allowed_hosts`` as ``(canonical host, port or None)`` pairs."""
    if isinstance(allowed_hosts, str | bytes):
        raise TypeError("allowed_hosts must be a collection of host names, not one string")
    result: set[tuple[str, int | None]] = set()
    for entry in allowed_hosts:
        if not isinstance(entry, str):
            raise TypeError(f"allowed_hosts must hold strings, not {type(entry).__name__}")
        text = entry.strip()
        port: int | None = None
        if text.startswith("["):  # [IPv6] or [IPv6]:port
            host, bracket, rest = text[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"allowed host {entry!r} is not host or host:port")
            port_text = rest[1:] if rest else None
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        else:  # a name, an IPv4 address, or a bare IPv6 address
            host, port_text = text, None
        if port_text is not None:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"allowed host {entry!r} has an invalid port")
            port = int(port_text)
        if _BAD_URL_CHARACTER.search(host) or any(c in host for c in "/?#@"):
            raise ValueError(f"allowed host {entry!r} is not host or host:port")
        try:
            result.add((_canonical_host(host), port))
        except ValueError as exc:
            raise ValueError(f"allowed host {entry!r}: {exc}") from None
    return frozenset(result)


@dataclass(frozen=True)
class _DownloadTarget:
    url: str  # the URL actually fetched, rebuilt from its checked parts
    host: str  # the allowed host, with its port when that is not the scheme's default
    path: str


def _download_target(url: Any, allowed: AllowedHosts) -> _DownloadTarget:
    """Check ``url`` against ``allowed``; DisallowedURLError (before any connection) if refused."""
    if not isinstance(url, str):
        raise DisallowedURLError(f"the URL must be a string, not {type(url).__name__}")
    if _BAD_URL_CHARACTER.search(url):
        raise DisallowedURLError("the URL contains spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        hostname = parts.hostname
        port = parts.port
    except ValueError:
        raise DisallowedURLError("the URL cannot be parsed") from None
    if scheme not in _DEFAULT_PORTS:
        shown = f"{scheme}: URLs" if scheme else "relative URLs"
        raise DisallowedURLError(f"only http and https URLs are downloaded, not {shown}")
    if not hostname:
        raise DisallowedURLError("the URL names no host")
    try:
        host = _canonical_host(hostname)
    except ValueError:
        shown = hostname if len(hostname) <= 100 else hostname[:97] + "..."
        raise DisallowedURLError(f"{shown!r} is not a valid host name") from None
    default = _DEFAULT_PORTS[scheme]
    shown_host = _display_host(host, port if port not in (None, default) else None)
    if "@" in parts.netloc:
        raise DisallowedURLError(
            f"URLs with user info are not downloaded (host {shown_host})", host=shown_host
        )
    if port == 0:
        raise DisallowedURLError(f"port 0 of {host} is not a valid port", host=shown_host)
    effective = default if port is None else port
    if (host, effective) not in allowed and not (effective == default and (host, None) in allowed):
        raise DisallowedURLError(f"{shown_host} is not one of the allowed hosts", host=shown_host)
    netloc = _display_host(host, port)
    path = parts.path or "/"
    rebuilt = urlunsplit((scheme, netloc, path, parts.query, ""))
    # What requests/urllib3 will parse must be the very host that was checked.
    parsed = urllib3.util.parse_url(rebuilt)
    if (parsed.host or "").strip("[]").lower() != host.strip("[]") or parsed.port != port:
        raise DisallowedURLError("the URL is ambiguous", host=shown_host)
    return _DownloadTarget(rebuilt, shown_host, path)


@dataclass(frozen=True)
class _Redirect:
    location: str


# ---------------------------------------------------------------------------------------------
# Delivery URLs

ORIGINAL_TRANSFORMATION = "orig-true"


def original_url(url: str) -> str:
    """``url`` (an ImageKit delivery URL) with the query parameter ``tr=orig-true`` added, so the
    bytes served are exactly the stored file, e.g. remove-bg's PNG, and not a copy converted by
    the account's automatic format and quality settings.

    Other query parameters (``updatedAt=...``, ``ik-obj-version=...``) are kept byte for byte, in
    their order. An existing ``tr`` parameter is REPLACED, not chained: ``orig-true`` means
    "serve the original file without applying any transformations" (ImageKit's spec and its
    "Deliver original file as-is" docs), so chaining it with others (``tr=w-100:orig-true``)
    would ask for two contradictory things. A transformation in the path (``/tr:w-100/...``) is
    left alone: the URLs ImageKit's API returns never have one. Signed URLs (``ik-s``) cannot be
    changed without re-signing them; this function does not do that."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a string, not {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.netloc:
        raise ValueError("not an absolute http(s) URL")
    kept = [
        piece
        for piece in parts.query.split("&")
        if piece and unquote(piece.partition("=")[0].replace("+", " ")) != "tr"
    ]
    kept.append(f"tr={ORIGINAL_TRANSFORMATION}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(kept), parts.fragment))


# ---------------------------------------------------------------------------------------------
