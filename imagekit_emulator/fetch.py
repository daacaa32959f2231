"""Fetching URLs the way ImageKit does for URL uploads and ``bg_image_url``: only from trusted
hosts (the emulator must not become an open proxy), redirects checked too, and the emulator's
own delivery URLs read straight from the store."""

from __future__ import annotations

import http.client
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from .errors import FetchError
from .version import USER_AGENT

if TYPE_CHECKING:
    from .server import Emulator


class Fetcher:
    def __init__(self, emulator: Emulator):
        self._emulator = emulator

    def trusted_hosts(self) -> set[str]:
        emulator = self._emulator
        hosts = {emulator.host.strip("[]").lower()}
        endpoint_host = urlsplit(emulator.url_endpoint).hostname
        if endpoint_host:
            hosts.add(endpoint_host.lower())
        hosts.update(emulator.config.trust_hosts or ("127.0.0.1", "localhost"))
        return hosts

    def is_trusted(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        trusted = self.trusted_hosts()
        return host in trusted or f"{host}:{port}" in trusted

    def _own_file(self, url: str) -> bytes | None:
        """The bytes behind one of this emulator's delivery URLs, if ``url`` is one."""
        from .delivery import resolve

        emulator = self._emulator
        endpoint = emulator.url_endpoint
        if not url.startswith(endpoint + "/"):
            return None
        parts = urlsplit(url[len(endpoint) :])
        found = resolve(emulator, parts.path, parts.query)
        if found is None:
            raise FetchError(f"fetching {url} answered HTTP 404")
        return emulator.store.blob(found[1].id)

    def fetch(self, url: str, *, limit: int, max_redirects: int = 3) -> bytes:
        """GET ``url`` from a trusted host; FetchError otherwise. The timeout is ImageKit's
        8 seconds for the headers (``fetch_timeout``, scaled by ``time_scale``)."""
        config = self._emulator.config
        timeout = config.wall_timeout(config.fetch_timeout)
        for _ in range(max_redirects + 1):
            own = self._own_file(url)
            if own is not None:
                if len(own) > limit:
                    raise FetchError(f"the file at {url} exceeds {limit} bytes")
                return own
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise FetchError(f"{url!r} is not an absolute http(s) URL")
            if not self.is_trusted(url):
                raise FetchError(
                    f"host {parts.hostname!r} is not trusted by the emulator (trusted: "
                    f"{', '.join(sorted(self.trusted_hosts()))}; add more with --trust-host)",
                    untrusted=True,
                )
            cls = (
                http.client.HTTPSConnection
                if parts.scheme == "https"
                else http.client.HTTPConnection
            )
            try:
                conn = cls(parts.hostname, parts.port, timeout=timeout)
                target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                try:
                    conn.request("GET", target, headers={"User-Agent": USER_AGENT})
                    response = conn.getresponse()
                    location = response.getheader("Location")
                    if response.status in (301, 302, 303, 307, 308) and location:
                        url = urljoin(url, location)
                        continue
                    if response.status != 200:
                        raise FetchError(f"fetching {url} answered HTTP {response.status}")
                    data = response.read(limit + 1)
                finally:
                    conn.close()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise FetchError(f"fetching {url} failed: {type(exc).__name__}: {exc}") from None
            if len(data) > limit:
                raise FetchError(f"the file at {url} exceeds {limit} bytes")
            return data
        raise FetchError(f"too many redirects fetching {url}")
