"""ImageKitClient.download only reaches allowed hosts, follows redirects by hand, checks every hop
before connecting, and says nothing about the network beyond the allowed host. Real servers that
count every TCP connection they accept, so "refused before connecting" is observed, not assumed."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from imagekit_bgremove.client import (
    MAX_REDIRECTS,
    ImageKitClient,
    _allowed_hosts,
    _download_target,
    original_url,
)
from imagekit_bgremove.exceptions import (
    DisallowedURLError,
    ImageKitError,
    ImageKitTimeout,
    ResponseTooLargeError,
    TransportError,
)
from tests.test_client import KEY

PNG = b"\x89PNG\r\n\x1a\n" + b"\x02" * 500


class CountingServer(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that counts accepted connections and records requests.
    ``routes`` maps a path to ``(status, headers, body)``."""

    daemon_threads = True

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]] | None = None):
        self.routes = routes or {}
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        self.port = self.server_address[1]
        self.hostport = f"127.0.0.1:{self.port}"
        self.base = f"http://{self.hostport}"
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def get_request(self):
        conn = super().get_request()
        with self._lock:
            self.connections += 1
        return conn

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(2)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        server: CountingServer = self.server  # type: ignore[assignment]
        server.requests.append((self.path, dict(self.headers)))
        status, headers, body = server.routes.get(self.path, (404, {}, b"no such thing"))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    started: list[CountingServer] = []

    def start(routes=None) -> CountingServer:
        server = CountingServer(routes)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def client():
    with ImageKitClient(
        private_key=KEY,
        upload_base_url="http://127.0.0.1:9",
        api_base_url="http://127.0.0.1:9",
        timeout=(2, 5),
        max_retries=2,
        backoff=0.01,
        backoff_max=1,
        sleep=lambda _: None,
    ) as client:
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def image(body: bytes = PNG) -> tuple[int, dict[str, str], bytes]:
    return (200, {"Content-Type": "image/png"}, body)


def redirect(location: str, status: int = 302) -> tuple[int, dict[str, str], bytes]:
    return (status, {"Location": location}, b"")


# --- 3. allowed hosts ---------------------------------------------------------------------------


def test_allowed_host_and_port_is_fetched(client, servers):
    server = servers({"/ik/cat.png?updatedAt=1": image()})
    content, media_type = client.download(
        f"{server.base}/ik/cat.png?updatedAt=1", max_bytes=10_000, allowed_hosts=[server.hostport]
    )
    assert content == PNG and media_type == "image/png"
    assert server.connections == 1
    # Also through the name, when the name is what is allowed.
    content, _ = client.download(
        f"http://LocalHost:{server.port}/ik/cat.png?updatedAt=1",
        max_bytes=10_000,
        allowed_hosts={f"localhost:{server.port}"},
    )
    assert content == PNG


REFUSED = [
    # (url, allowed hosts, refused host named in the error); {p} is the server's port.
    ("http://127.0.0.1:{p}/x", ["127.0.0.1:{other}"], "127.0.0.1:{p}"),
    ("http://127.0.0.1:{p}/x", ["127.0.0.1"], "127.0.0.1:{p}"),  # no port: default port only
    ("http://127.0.0.1:{p}/x", [], "127.0.0.1:{p}"),
    ("http://localhost:{p}/x", ["127.0.0.1:{p}"], "localhost:{p}"),
    ("http://127.0.0.1:{p}/x", ["localhost:{p}"], "127.0.0.1:{p}"),
    ("http://[::1]:{p}/x", ["127.0.0.1:{p}"], "[::1]:{p}"),
    ("http://user:secret@127.0.0.1:{p}/x", ["127.0.0.1:{p}"], "127.0.0.1:{p}"),
    ("http://127.0.0.1:{p}@evil.example/x", ["127.0.0.1:{p}"], "evil.example"),
    ("http://127.0.0.1:{p}\\@evil.example/x", ["127.0.0.1:{p}"], None),
    ("http://127.0.0.1:{p}/x y", ["127.0.0.1:{p}"], None),
    ("http://127.0.0.1:{p}/x\n", ["127.0.0.1:{p}"], None),
    ("file:///etc/passwd", ["127.0.0.1:{p}", "localhost"], None),
    ("ftp://127.0.0.1:{p}/x", ["127.0.0.1:{p}"], None),
    ("//127.0.0.1:{p}/x", ["127.0.0.1:{p}"], None),
    ("/x", ["127.0.0.1:{p}"], None),
    ("http:///x", ["127.0.0.1:{p}"], None),
    ("http://127.0.0.1:99999/x", ["127.0.0.1:{p}"], None),
]


@pytest.mark.parametrize(("url", "allowed", "named"), REFUSED)
def test_refused_urls_never_reach_the_server(client, servers, url, allowed, named):
    server = servers({"/x": image()})
    fill = {"p": server.port, "other": free_port()}
    with pytest.raises(DisallowedURLError) as info:
        client.download(
            url.format(**fill),
            max_bytes=10_000,
            allowed_hosts=[a.format(**fill) for a in allowed],
        )
    error = info.value
    assert isinstance(error, ImageKitError) and isinstance(error, ValueError)
    assert error.retryable is False and error.status is None and error.attempts == 1
    assert str(error).startswith("Download refused: ")
    assert "secret" not in str(error) and "secret" not in repr(error)
    if named is not None:
        assert error.host == named.format(**fill) and error.host in str(error)
    assert server.connections == 0 and server.requests == []


@pytest.mark.parametrize("url", [None, 42, b"http://127.0.0.1/x", ["http://127.0.0.1/x"]])
def test_non_string_urls_are_refused(client, servers, url):
    server = servers()
    with pytest.raises(DisallowedURLError) as info:
        client.download(url, max_bytes=10, allowed_hosts=[server.hostport, "127.0.0.1"])
    assert "must be a string" in str(info.value)
    assert server.connections == 0


def test_allowed_hosts_must_be_a_collection_of_hosts(client):
    with pytest.raises(TypeError):
        client.download("http://127.0.0.1/x", max_bytes=10, allowed_hosts="127.0.0.1")
    for bad in (["http://127.0.0.1"], ["127.0.0.1:0"], ["127.0.0.1:x"], ["a b"], ["u@h"], [""]):
        with pytest.raises(ValueError):
            client.download("http://127.0.0.1/x", max_bytes=10, allowed_hosts=bad)


def test_host_normalisation():
    allowed = _allowed_hosts(
        ["IK.ImageKit.io", "bücher.example", "127.0.0.1:8790", "[::1]:8080", "example.org."]
    )
    assert allowed == {
        ("ik.imagekit.io", None),
        ("xn--bcher-kva.example", None),
        ("127.0.0.1", 8790),
        ("::1", 8080),
        ("example.org", None),
    }
    ok = [
        ("https://ik.imagekit.io/id/a.png", "ik.imagekit.io"),
        ("https://IK.IMAGEKIT.IO./id/a.png", "ik.imagekit.io"),
        ("https://ik.imagekit.io:443/id/a.png", "ik.imagekit.io"),
        ("http://ik.imagekit.io/id/a.png", "ik.imagekit.io"),  # port 80 is http's default
        ("https://BÜCHER.example/a.png", "xn--bcher-kva.example"),
        ("https://xn--bcher-kva.example/a.png", "xn--bcher-kva.example"),
        ("http://127.0.0.1:8790/ik/a.png", "127.0.0.1:8790"),
        ("https://127.0.0.1:8790/ik/a.png", "127.0.0.1:8790"),
        ("http://[0:0::1]:8080/a.png", "[::1]:8080"),
    ]
    for url, host in ok:
        assert _download_target(url, allowed).host == host
    target = _download_target("https://BÜCHER.example/a.png?updatedAt=1#frag", allowed)
    assert target.url == "https://xn--bcher-kva.example/a.png?updatedAt=1"
    refused = [
        "https://ik.imagekit.io:8443/a.png",  # a host without port: only the default port
        "http://ik.imagekit.io:443/a.png",  # 443 is not http's default port
        "http://127.0.0.1/ik/a.png",
        "http://127.0.0.1:8791/ik/a.png",
        "http://[::1]/a.png",
        "https://ik.imagekit.io.evil.example/a.png",
        "https://evil.example/ik.imagekit.io",
        "https://ik%2eimagekit.io/a.png",
        "https://ik.imagekit.io%00/a.png",
        "http://2130706433:8790/ik/a.png",  # 127.0.0.1 in disguise is another name
        "http://[fe80::1%25eth0]:8080/a.png",
    ]
    for url in refused:
        with pytest.raises(DisallowedURLError):
            _download_target(url, allowed)


# --- redirects ----------------------------------------------------------------------------------


def test_redirects_are_followed_across_allowed_hosts(client, servers):
    second = servers({"/final.png": image()})
    first = servers(
        {
            "/start": redirect("/middle?x=1", 301),
            "/middle?x=1": redirect(f"{second.base}/final.png", 307),
        }
    )
    first.routes["/start"] = (302, {"Location": "/middle?x=1", "Set-Cookie": "s=1; Path=/"}, b"")
    content, media_type = client.download(
        f"{first.base}/start", max_bytes=10_000, allowed_hosts=[first.hostport, second.hostport]
    )
    assert content == PNG and media_type == "image/png"
    assert [path for path, _ in first.requests] == ["/start", "/middle?x=1"]
    assert [path for path, _ in second.requests] == ["/final.png"]
    for _, headers in first.requests + second.requests:
        assert "Authorization" not in headers and "Cookie" not in headers


def test_redirect_to_a_host_not_allowed_is_refused_before_connecting(client, servers):
    elsewhere = servers({"/secret": image(b"internal")})
    first = servers({"/start": redirect(f"{elsewhere.base}/secret")})
    with pytest.raises(DisallowedURLError) as info:
        client.download(f"{first.base}/start", max_bytes=10_000, allowed_hosts=[first.hostport])
    assert info.value.host == elsewhere.hostport
    assert elsewhere.hostport in str(info.value)
    assert len(first.requests) == 1
    assert elsewhere.connections == 0


@pytest.mark.parametrize(
    "location",
    [
        "file:///etc/passwd",
        "http://localhost:{p}/x",
        "//localhost:{p}/x",
        "http://user@127.0.0.1:{p}/x",
        "/\\localhost/x",
    ],
)
def test_redirects_to_refused_urls(client, servers, location):
    first = servers({"/x": image()})
    first.routes["/start"] = redirect(location.format(p=first.port))
    with pytest.raises(DisallowedURLError):
        client.download(f"{first.base}/start", max_bytes=10_000, allowed_hosts=[first.hostport])
    assert [path for path, _ in first.requests] == ["/start"]


def test_at_most_five_redirects(client, servers):
    server = servers()
    for i in range(MAX_REDIRECTS + 1):
        server.routes[f"/ok{i}"] = redirect(f"/ok{i + 1}")
        server.routes[f"/no{i}"] = redirect(f"/no{i + 1}")
    server.routes[f"/ok{MAX_REDIRECTS}"] = image()  # five redirects, then the image
    content, _ = client.download(
        f"{server.base}/ok0", max_bytes=10_000, allowed_hosts=[server.hostport]
    )
    assert content == PNG and len(server.requests) == MAX_REDIRECTS + 1
    server.requests.clear()
    with pytest.raises(ImageKitError) as info:
        client.download(f"{server.base}/no0", max_bytes=10_000, allowed_hosts=[server.hostport])
    assert "redirected more than 5 times" in str(info.value)
    assert info.value.retryable is False
    assert len(server.requests) == MAX_REDIRECTS + 1  # /no6 is never asked for


def test_no_cookies_are_kept_between_downloads(client, servers):
    server = servers(
        {
            "/set": (200, {"Set-Cookie": "session=abc; Path=/", "Content-Type": "image/png"}, PNG),
            "/check": image(),
        }
    )
    for path in ("/set", "/check"):
        client.download(f"{server.base}{path}", max_bytes=10_000, allowed_hosts=[server.hostport])
    assert "Cookie" not in server.requests[1][1]


# --- 4. errors say nothing about the network beyond the allowed host ----------------------------

# Fragments of the underlying exceptions' text that must not reach an error message.
LOW_LEVEL = ("Errno", "refused", "HTTPConnectionPool", "Max retries", "Caused by", "timed out.")


def assert_no_low_level_details(error: ImageKitError) -> None:
    for text in (str(error), repr(error), error.message):
        for fragment in LOW_LEVEL:
            assert fragment not in text, (fragment, text)


def test_download_connection_failure_names_only_the_allowed_host(client):
    port = free_port()  # nothing listens there
    with pytest.raises(TransportError) as info:
        client.download(
            f"http://127.0.0.1:{port}/ik/a.png", max_bytes=10, allowed_hosts=[f"127.0.0.1:{port}"]
        )
    error = info.value
    assert str(error) == (
        f"ImageKit connection error: download: could not connect to 127.0.0.1:{port} "
        "(connection failed)"
    )
    assert_no_low_level_details(error)
    assert isinstance(error.__cause__, requests.ConnectionError)  # the details, for logs
    assert "refused" in str(error.__cause__).lower()
    assert error.retryable is True and error.attempts == 3


class Misbehaving:
    """A TCP server on 127.0.0.1 that reads a request and then answers too slowly (``slow``),
    sends part of an image and hangs up (``cut``), or sends part and stalls (``stall``)."""

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.hostport = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                if self.behaviour == "slow":
                    time.sleep(0.4)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
                    + PNG[:100]
                )
                if self.behaviour == "stall":
                    time.sleep(0.4)

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.mark.parametrize(
    ("behaviour", "cls", "said"),
    [
        ("slow", ImageKitTimeout, "{host} timed out (no answer within the read timeout of 0.1 s)"),
        ("stall", ImageKitTimeout, "{host} timed out (no answer within the read timeout of 0.1 s)"),
        (
            "cut",
            TransportError,
            "the answer from {host} was cut short",
        ),
    ],
)
def test_download_timeout_and_cut_short_name_only_the_host(behaviour, cls, said):
    server = Misbehaving(behaviour)
    try:
        client = ImageKitClient(
            private_key=KEY,
            upload_base_url="http://127.0.0.1:9",
            api_base_url="http://127.0.0.1:9",
            timeout=(1, 0.1),
            max_retries=0,
            sleep=lambda _: None,
        )
        with pytest.raises(cls) as info:
            client.download(
                f"http://{server.hostport}/ik/a.png",
                max_bytes=10_000,
                allowed_hosts=[server.hostport],
            )
    finally:
        server.close()
    assert info.value.message == "download: " + said.format(host=server.hostport)
    assert_no_low_level_details(info.value)
    assert info.value.__cause__ is not None


def test_download_too_large_names_the_host(client, servers):
    server = servers({"/big.png": image(b"x" * 5000)})
    with pytest.raises(ResponseTooLargeError) as info:
        client.download(f"{server.base}/big.png", max_bytes=4999, allowed_hosts=[server.hostport])
    assert info.value.message == (
        f"download from {server.hostport} is 5000 bytes; the limit is 4999 bytes"
    )


@pytest.mark.parametrize(
    ("base", "host"),
    [("http://127.0.0.1:{port}", "127.0.0.1:{port}"), ("http://upload.invalid", "upload.invalid")],
)
def test_api_connection_failure_names_only_the_configured_host(base, host):
    port = free_port()
    client = ImageKitClient(
        private_key=KEY,
        upload_base_url=base.format(port=port),
        api_base_url=base.format(port=port),
        timeout=1,
        max_retries=0,
        sleep=lambda _: None,
    )
    with pytest.raises(TransportError) as info:
        client.upload(b"img", "a.jpg")
    assert str(info.value) == (
        "ImageKit connection error: POST /api/v1/files/upload: could not connect to "
        f"{host.format(port=port)} (connection failed)"
    )
    assert_no_low_level_details(info.value)
    assert "Name or service" not in str(info.value) and "resolve" not in str(info.value)
    assert KEY not in str(info.value)


# --- 5. byte-exact results: tr=orig-true ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://ik.imagekit.io/id/a.png", "https://ik.imagekit.io/id/a.png?tr=orig-true"),
        (
            "https://ik.imagekit.io/id/a.jpg?updatedAt=1566630881313",
            "https://ik.imagekit.io/id/a.jpg?updatedAt=1566630881313&tr=orig-true",
        ),
        (  # an existing transformation is replaced, wherever it stands
            "https://ik.imagekit.io/id/a.jpg?updatedAt=1&tr=n-ik_ml_thumbnail&x=%2F+y",
            "https://ik.imagekit.io/id/a.jpg?updatedAt=1&x=%2F+y&tr=orig-true",
        ),
        (
            "https://ik.imagekit.io/id/a.jpg?tr=w-100:h-50&t%72=q-10&tr=orig-true",
            "https://ik.imagekit.io/id/a.jpg?tr=orig-true",
        ),
        (  # other parameters merely starting with tr stay
            "http://127.0.0.1:8790/ik/a.png?trx=1&ik-obj-version=v%3D1#f",
            "http://127.0.0.1:8790/ik/a.png?trx=1&ik-obj-version=v%3D1&tr=orig-true#f",
        ),
    ],
)
def test_original_url(url, expected):
    assert original_url(url) == expected
    assert original_url(expected) == expected  # idempotent


def test_original_url_rejects_what_is_not_a_delivery_url():
    for bad in ("/ik/a.png", "file:///etc/passwd", "ik.imagekit.io/a.png"):
        with pytest.raises(ValueError):
            original_url(bad)
    with pytest.raises(TypeError):
        original_url(None)


def test_original_url_is_what_reaches_the_server(client, servers):
    server = servers({"/ik/cut.png?updatedAt=7&tr=orig-true": image()})
    content, media_type = client.download(
        original_url(f"{server.base}/ik/cut.png?updatedAt=7&tr=f-jpg"),
        max_bytes=10_000,
        allowed_hosts=[server.hostport],
    )
    assert content == PNG and media_type == "image/png"
    assert [path for path, _ in server.requests] == ["/ik/cut.png?updatedAt=7&tr=orig-true"]
