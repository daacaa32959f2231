"""What a request asks ImageKit to work on, checked before anything is paid for.

A ``bg_image_url`` that ImageKit cannot fetch (loopback, private, link-local, reserved or
unresolvable hosts) and an image over the pixel limit both fail at ImageKit after the extension
units are spent. So they are refused where a request is made (API, admin, commands, field
defaults at start-up) and again by the submit task, which also covers requests made in code.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from .conf import app_settings
from .removebg import OptionsError, RemoveBgOptions

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class InputError(ValueError):
    """Something ImageKit would refuse after charging for it."""


def _allowed() -> tuple[set[str], list[_Network]]:
    """BG_IMAGE_ALLOWED_HOSTS as host names and IP networks."""
    entries = app_settings.BG_IMAGE_ALLOWED_HOSTS or ()
    if isinstance(entries, str):
        entries = entries.split(",")
    names: set[str] = set()
    networks: list[_Network] = []
    for entry in (str(e).strip().lower().strip("[]") for e in entries):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return names, networks


def _addresses(host: str) -> set[_Address]:
    try:
        return {ipaddress.ip_address(host)}
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}


def _public(address: _Address) -> bool:
    address = getattr(address, "ipv4_mapped", None) or address
    return address.is_global and not address.is_multicast


def check_bg_image_url(url: str) -> None:
    """InputError unless ImageKit can fetch ``url``: every address its host resolves to is
    public, or the host is in BG_IMAGE_ALLOWED_HOSTS. Resolves the host (DNS)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        raise InputError(f"must be an absolute http(s) URL, not {url!r}.")
    names, networks = _allowed()
    if host in names:
        return
    try:
        addresses = _addresses(host)
    except (OSError, ValueError):  # ValueError: a name IDNA cannot encode, a NUL
        raise InputError(
            f"names the host {host!r}, which does not resolve: ImageKit could not fetch it. "
            "Use a public http(s) URL."
        ) from None
    for address in sorted(addresses, key=str):
        if not _public(address) and not any(address in network for network in networks):
            raise InputError(
                f"names the host {host!r}, which is not a public address ({address}): ImageKit "
                "fetches the background from the internet. Use a public http(s) URL "
                "(BG_IMAGE_ALLOWED_HOSTS allows more)."
            )


def check_options(options: RemoveBgOptions) -> None:
    """OptionsError (on ``bg_image_url``) when ImageKit could not use these options."""
    if options.bg_image_url:
        try:
            check_bg_image_url(options.bg_image_url)
        except InputError as exc:
            raise OptionsError({"bg_image_url": [f"bg_image_url {exc}"]}) from None


def check_pixels(file: Any) -> None:
    """InputError when the image's header says it has more than MAX_IMAGE_PIXELS pixels. Reads
    only as much of ``file`` as Pillow needs for the size, and puts it back where it was."""
    from django.core.files.images import get_image_dimensions
    from PIL import Image

    limit = app_settings.MAX_IMAGE_PIXELS
    if not limit:
        return
    try:
        width, height = get_image_dimensions(file)
    except Image.DecompressionBombError as exc:
        raise InputError(f"The image is too large to process: {exc}") from None
    except Exception:
        return  # not an image Pillow reads: the checks of its type say so
    if width and height and width * height > int(limit):
        raise InputError(
            f"The image is {width} x {height} pixels ({width * height / 1e6:.1f} megapixels); "
            f"the limit is {int(limit) / 1e6:g} megapixels (MAX_IMAGE_PIXELS)."
        )


def validate_image_pixels(value: Any) -> None:
    """Model field validator: a new upload within MAX_IMAGE_PIXELS (stored images are not
    read again; the submit task checks those)."""
    from django.core.exceptions import ValidationError

    if not value or getattr(value, "_committed", False):
        return
    try:
        check_pixels(value)
    except InputError as exc:
        raise ValidationError(str(exc), code="too_many_pixels") from None
